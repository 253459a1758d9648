"""Objects that count how often they are pickled (in the kernel) and unpickled (in a worker)."""

from __future__ import annotations

PICKLED = 0
LOADED = 0


def loads_here() -> int:
    """How many times this process unpickled a CountedPickles (a function, so that parmagic
    does not send the kernel's count along, as it sends module values the body reads)."""
    return LOADED


def _load(payload):
    global LOADED
    LOADED += 1
    return CountedPickles(payload)


class CountedPickles:
    def __init__(self, payload) -> None:
        self.payload = payload

    def __reduce__(self):
        global PICKLED
        PICKLED += 1
        return _load, (self.payload,)
