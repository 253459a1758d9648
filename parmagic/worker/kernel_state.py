"""What a run may swap in the kernel (output streams, hooks, signal handlers), put back on
every way out of the run: success, an error, an interrupt (also one that lands while the run
starts or ends), a timeout, a dead worker."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_HOOKS = ("stdout", "stderr", "excepthook", "displayhook")
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGALRM") if hasattr(signal, name))


@contextmanager
def kept_as_it_was(random_state: bool = False) -> Iterator[None]:
    """``random_state``: also the global random states (``--seed`` reseeds them per item, and
    items of a serial run run here)."""
    hooks = {name: getattr(sys, name) for name in _HOOKS}
    states = _random_states() if random_state else []
    on_main = threading.current_thread() is threading.main_thread()
    handlers = {number: signal.getsignal(number) for number in _SIGNALS} if on_main else {}
    try:
        yield
    finally:
        for name, value in hooks.items():
            if getattr(sys, name) is not value:
                setattr(sys, name, value)
        for number, handler in handlers.items():
            if signal.getsignal(number) is not handler:
                signal.signal(number, handler)
        for restore, state in states:
            restore(state)


def _random_states() -> list[tuple]:
    import random

    states = [(random.setstate, random.getstate())]
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        states.append((numpy.random.set_state, numpy.random.get_state()))
    return states


class HeldInterrupt:
    """Holds a Ctrl-C (SIGINT on the kernel's main thread) until the item being applied is
    whole: the run then stops between items, and its counts are exact. Not while values go
    to the user's code between items (a lazy generator): Ctrl-C must reach that code."""

    def __init__(self, hold: bool = True) -> None:
        self.pressed = False
        self.passing = False  # Ctrl-C interrupts at once (the loop runs in place: see serial)
        self.previous = None
        if hold and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._press)

    def _press(self, signum, frame) -> None:
        if self.passing:
            raise KeyboardInterrupt
        self.pressed = True

    def raise_if_pressed(self) -> None:
        if self.pressed:
            self.pressed = False
            raise KeyboardInterrupt

    def release(self, raise_pressed: bool = True) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
        if raise_pressed:
            self.raise_if_pressed()
