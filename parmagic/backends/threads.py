"""Threads: ``multiprocessing.pool.ThreadPool``, kept warm between cells.

Items share the kernel's objects, so they suit loops that wait on I/O; the GIL lets only
one of them run Python at a time. A thread cannot be killed: an item past its timeout, or
still running when the run is interrupted, is abandoned, and a fresh pool takes over.
"""

from __future__ import annotations

import queue
import time
from multiprocessing.pool import ThreadPool

from .. import errors
from ..worker import ChunkResult, OutputCapture, Task, run_chunk
from . import Backend, failed_chunk, usable_cores


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
        self._running: dict[int, list] = {}  # abandoned run land in their own queue
        self._started: dict[int, float] = {}
        self._capture = OutputCapture()

    def has_capacity(self) -> bool:
        return len(self._running) < self.capacity

    def submit(self, seq: int, start: int, items: list) -> None:
        self._running[seq] = [start, items]
        results, started = self._results, self._started

        def run(task: Task) -> ChunkResult:
            started[seq] = time.monotonic()
            return run_chunk(task, seq, start, items)

        self._pool.apply_async(run, (self._task,), callback=results.put, error_callback=results.put)

    def wait(self, timeout: float) -> list[ChunkResult]:
        timeout = min(timeout, self._next_deadline())
        try:
            ready = [self._results.get(timeout=max(timeout, 0))]
        except queue.Empty:
            ready = []
        while not self._results.empty():
            ready.append(self._results.get())
        for result in ready:
            if isinstance(result, BaseException):
                raise result
        ready = [r for r in ready if self._running.pop(r.seq, None) is not None]
        return ready + self._expired()

    def _next_deadline(self) -> float:
        if not self._task.timeout or not self._started:
            return float("inf")
        live = [self._started[seq] for seq in self._running if seq in self._started]
        return min(live, default=float("inf")) + self._task.timeout - time.monotonic()

    def _expired(self) -> list[ChunkResult]:
        """Items past their timeout fail now; their thread goes on, and is abandoned."""
        if not self._task.timeout:
            return []
        now, expired = time.monotonic(), []
        for seq, (start, items) in list(self._running.items()):
            began = self._started.get(seq)
            if began is not None and now - began > self._task.timeout:
                del self._running[seq]
                message = errors.ITEM_TIMEOUT.format(
                    seconds=self._task.timeout, fate=errors.TIMEOUT_ABANDONED
                )
                expired.append(failed_chunk(seq, start, items, TimeoutError(message), "thread"))
                self._replace_pool()
        return expired

    def _replace_pool(self) -> None:
        """Leave busy threads to finish on their own; new chunks go to a fresh pool."""
        self._pool.close()
        self._pool = ThreadPool(self.workers)

    def end(self, completed: bool) -> list[str]:
        abandoned = not completed and bool(self._running)
        self._capture.release(items_still_running=abandoned)
        if not abandoned:
            return []
        items = sorted(
            i for start, chunk in self._running.values() for i in range(start, start + len(chunk))
        )
        self._replace_pool()
        return [errors.ITEMS_ABANDONED.format(items=_ranges(items))]

    def close(self) -> None:
        self._pool.close()
        self._pool.join()


def _ranges(indices: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    parts, first = [], None
    for position, index in enumerate(indices):
        if first is None:
            first = index
        if position + 1 == len(indices) or indices[position + 1] != index + 1:
            parts.append(str(first) if first == index else f"{first}-{index}")
            first = None
    return ", ".join(parts)
