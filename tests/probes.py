"""Objects that count how often they are pickled (in the kernel) and unpickled (in a worker)."""

from __future__ import annotations

import asyncio
import threading

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


# An item that must outlast its --timeout on a thread, which nothing can stop: it naps until
# the test wakes it at teardown, so that no abandoned thread outlives its test.
WAKE = threading.Event()


def nap(seconds: float) -> None:
    WAKE.wait(seconds)


async def nap_async(seconds: float) -> None:
    """The same, blocking the event loop it is awaited on (as ``time.sleep`` would)."""
    await asyncio.sleep(0)
    WAKE.wait(seconds)
