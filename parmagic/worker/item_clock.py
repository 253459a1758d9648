"""An item's clocks and its time limit: CPU time by thread or by coroutine step, the time a
thread waited for a core, and ``--timeout``'s SIGALRM on a main thread. Worker side too;
imports nothing heavy.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..machine import has_item_alarms

if TYPE_CHECKING:
    from .task import ChunkResult, Task


CPU_SPAN = 0.001  # seconds between readings of a thread's CPU clock (see CpuSpans)
GROUP_SPAN = 200e-6  # seconds: items cheaper than this are timed a group at a time (group_size)
MAX_GROUP = 256
SCHEDSTAT = "/proc/thread-self/schedstat"  # Linux: this thread's time on a CPU, and queued


def run_queue_wait() -> float:
    """Seconds this thread has spent ready to run but waiting for a core (Linux's scheduler
    accounting; 0 elsewhere): the time a busy machine adds to an item that only computes,
    which must not be mistaken for the item waiting on I/O."""
    try:
        fd = os.open(SCHEDSTAT, os.O_RDONLY)  # a bare descriptor: no file object to leak
        try:
            return int(os.read(fd, 256).split()[1]) / 1e9
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return 0.0


class ItemTimedOut(BaseException):
    """Raised by the --timeout alarm; a BaseException so the body's ``except Exception``
    cannot swallow it and carry on as if the item had succeeded."""


class CpuSpans:
    """Items' CPU time, read per span of at least ``CPU_SPAN`` seconds rather than per item.

    Reading a thread's CPU clock is a system call (about 0.5 µs), as dear as a cheap item
    itself; a span's CPU time is shared among its items in proportion to their wall time.
    """

    def __init__(self, result: ChunkResult) -> None:
        self.result, self.first = result, len(result)
        self.since, self.cpu = time.monotonic(), time.thread_time()

    def after_item(self, ended: float) -> None:
        if ended - self.since >= CPU_SPAN:
            self.close()

    def close(self) -> None:
        result, first = self.result, self.first
        if first == len(result):
            return
        cpu = time.thread_time()
        spans = zip(result.starts[first:], result.ends[first:], strict=True)
        walls = [end - start for start, end in spans]
        total = sum(walls)
        for offset, wall in enumerate(walls, first):
            share = wall / total if total else 1 / len(walls)
            result.cpus[offset] = (cpu - self.cpu) * share
        self.first, self.since, self.cpu = len(result), result.ends[-1], cpu


def group_size(mean: float) -> int:
    """How many items the next group of items timed together holds (TimedItems._plainly),
    after items of ``mean`` seconds: one, or as many cheap ones as take about ``GROUP_SPAN``.
    Reading the clock (0.05-0.1 µs) costs as much as a cheap item."""
    return MAX_GROUP if mean <= GROUP_SPAN / MAX_GROUP else max(1, int(GROUP_SPAN / mean))


@contextmanager
def alarms(task: Task):
    """--timeout on a main thread (the kernel's, or a worker process's): SIGALRM per item."""
    if not task.timeout or not on_main_thread() or not has_item_alarms():  # refused before the run
        yield None
        return
    previous = signal.signal(signal.SIGALRM, expire)
    try:
        yield task.timeout
    finally:
        signal.signal(signal.SIGALRM, previous)


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class CpuCounted:
    """Awaits a coroutine, adding up the loop thread's CPU time over that coroutine's own
    steps (the coroutines of a run interleave on one thread, so the thread's CPU time over
    one item's span would count the others' too), and counting the times it woke up."""

    def __init__(self, coroutine) -> None:
        self.coroutine, self.cpu, self.wakeups = coroutine, 0.0, 0

    def __await__(self):
        coroutine, sent, thrown = self.coroutine, None, None
        while True:
            self.wakeups += 1
            began = time.thread_time()
            try:
                step = coroutine.send(sent) if thrown is None else coroutine.throw(thrown)
            except StopIteration as done:
                return done.value
            finally:
                self.cpu += time.thread_time() - began
            try:
                sent, thrown = (yield step), None
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # cancellation, a timeout: to the coroutine
                sent, thrown = None, error


armed = threading.Event()


def arm(seconds: float) -> None:
    """An item starts on a main thread: SIGALRM stops it after ``seconds``."""
    armed.set()
    signal.setitimer(signal.ITIMER_REAL, seconds)


def disarm() -> None:
    """The item is over: an alarm that fires from here on finds no item to stop."""
    armed.clear()
    signal.setitimer(signal.ITIMER_REAL, 0)


def expire(signum, frame) -> None:
    """SIGALRM during an item on a main thread (the kernel's, or a worker process's)."""
    if armed.is_set():
        raise ItemTimedOut
