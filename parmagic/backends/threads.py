"""Threads: ``multiprocessing.pool.ThreadPool``, kept warm between cells.

Items share the kernel's objects, so they suit loops that wait on I/O; the GIL lets only
one of them run Python at a time.
"""

from __future__ import annotations

import queue
from multiprocessing.pool import ThreadPool

from ..worker import ChunkResult, Task, capturing_output, run_chunk
from . import Backend, usable_cores


class ThreadBackend(Backend):
    name = "threads"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._pool = ThreadPool(workers)

    @classmethod
    def default_workers(cls) -> int:
        return min(32, usable_cores() + 4)  # concurrent.futures' default for I/O-bound work

    @property
    def capacity(self) -> int:
        return 2 * self.workers  # one queued chunk per thread keeps every thread busy

    def begin(self, task: Task) -> None:
        self._task = task
        self._results: queue.SimpleQueue = queue.SimpleQueue()  # one per run: late results of an
        self._in_flight = 0  # abandoned run land in its own queue, never in the next run's
        self._capture = capturing_output()
        self._capture.__enter__()

    def has_capacity(self) -> bool:
        return self._in_flight < self.capacity

    def submit(self, seq: int, start: int, items: list) -> None:
        self._in_flight += 1
        results = self._results
        self._pool.apply_async(
            run_chunk, (self._task, seq, start, items), callback=results.put,
            error_callback=results.put,
        )  # fmt: skip

    def wait(self, timeout: float) -> list[ChunkResult]:
        try:
            ready = [self._results.get(timeout=timeout)]
        except queue.Empty:
            return []
        while not self._results.empty():
            ready.append(self._results.get())
        self._in_flight -= len(ready)
        for result in ready:
            if isinstance(result, BaseException):
                raise result
        return ready

    def end(self, completed: bool) -> list[str]:
        self._capture.__exit__(None, None, None)
        return []

    def close(self) -> None:
        self._pool.close()
        self._pool.join()
