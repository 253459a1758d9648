"""Threads: ``multiprocessing.pool.ThreadPool`` (``threads``) and
``concurrent.futures.ThreadPoolExecutor`` (``futures``), kept warm between cells.

Items share the kernel's objects, so they suit loops that wait on I/O; the GIL lets only one
of them run Python at a time. A thread cannot be killed: an item past its timeout, or still
running when the run is interrupted, is abandoned, and a fresh pool takes over. The two
backends differ only in the standard-library API that runs the chunks.
"""

from __future__ import annotations

import concurrent.futures
import queue
import time
from abc import abstractmethod
from multiprocessing.pool import ThreadPool

from .. import errors
from ..machine import usable_cores
from ..worker.chunk import LiveChunk, run_chunk
from ..worker.item_output import OutputCapture
from ..worker.task import ChunkResult, Task
from .base import Backend, BackendSettings, Deadline, drain

END_GRACE = 0.2  # seconds a stopped run waits for its threads' current items


class _PooledThreads(Backend):
    """What both thread backends share: bookkeeping, timeouts, abandoning, output capture."""

    items_share_a_process = True

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        self._pool = self._new_pool()

    @classmethod
    def default_workers(cls) -> int:
        return min(32, usable_cores() + 4)  # concurrent.futures' default for I/O-bound work

    @property
    def capacity(self) -> int:
        return 2 * self.workers  # one queued chunk per thread keeps every thread busy

    @abstractmethod
    def _new_pool(self): ...

    @abstractmethod
    def _start(self, function, task: Task) -> None:
        """Have the pool call ``function(task)``; its result must reach :meth:`_ready`."""

    @abstractmethod
    def _ready(self, timeout: float) -> list:
        """Chunk results (or exceptions) that finished within ``timeout`` seconds."""

    @abstractmethod
    def _close_pool(self, wait: bool) -> None:
        """Stop taking chunks; ``wait``: until the running ones end (False: abandon them)."""

    def begin(self, task: Task) -> None:
        self._task = task
        self._deadline = Deadline.of(task.timeout)
        self._running: dict[int, list] = {}  # seq -> [first index, items]
        self._started: dict[int, float] = {}
        self._live: dict[int, LiveChunk] = {}  # what each chunk did so far (with --timeout)
        self._capture = OutputCapture()

    def has_capacity(self) -> bool:
        return len(self._running) < self.capacity

    def submit(self, seq: int, start: int, items: list) -> None:
        self._running[seq] = [start, items]
        started = self._started
        live = self._live[seq] = LiveChunk() if self._deadline else None

        def run(task: Task) -> ChunkResult:
            started[seq] = time.monotonic()
            return run_chunk(task, seq, start, items, live=live)

        self._start(run, self._task)

    def wait(self, timeout: float) -> list[ChunkResult]:
        if self._deadline:
            timeout = self._deadline.wait_at_most(timeout, self._running_since().values())
        ready = self._ready(timeout)
        for result in ready:
            if isinstance(result, BaseException):
                raise result
        ready = [r for r in ready if self._running.pop(r.seq, None) is not None]
        for result in ready:
            self._live.pop(result.seq, None)
        return ready + self._expired()

    def _running_since(self) -> dict[int, float]:
        """When each chunk a thread has started began: a queued chunk's time is not running."""
        return {seq: self._started[seq] for seq in self._running if seq in self._started}

    def _expired(self) -> list[ChunkResult]:
        """Items past their timeout fail now, keeping what they did before it (as an item that
        raised then would); their thread goes on, and is abandoned."""
        if not self._deadline:
            return []
        expired = []
        for seq in self._deadline.overdue(self._running_since().items()):
            start, items = self._running.pop(seq)
            error = self._deadline.error(errors.TIMEOUT_ABANDONED)
            expired.append(self._live.pop(seq).freeze(seq, start, items, error, "thread"))
            self._replace_pool()
        return expired

    def _replace_pool(self) -> None:
        """Leave busy threads to finish on their own; new chunks go to a fresh pool."""
        self._close_pool(wait=False)
        self._pool = self._new_pool()

    def end(self, completed: bool) -> list[str]:
        if not completed:
            self._let_cancelled_chunks_end()
        abandoned = not completed and bool(self._running)
        self._capture.release()
        if not abandoned:
            return []
        running, queued = [], []
        for seq, (start, chunk) in self._running.items():
            (running if seq in self._started else queued).extend(range(start, start + len(chunk)))
        self._replace_pool()
        said = [(errors.ITEMS_ABANDONED, running), (errors.ITEMS_NEVER_STARTED, queued)]
        return [m.format(items=errors.items_named(_ranges(sorted(i)))) for m, i in said if i]

    def _let_cancelled_chunks_end(self) -> None:
        """Chunks of a stopped run end after their current item: wait briefly for them,
        while their output is still captured (and dropped), so that an item the plain loop
        never ran prints nothing in the cell."""
        deadline = time.monotonic() + END_GRACE
        while self._running and time.monotonic() < deadline:
            for result in self._ready(0.01):
                if not isinstance(result, BaseException):
                    self._running.pop(result.seq, None)

    def close(self) -> None:
        self._close_pool(wait=True)


class ThreadBackend(_PooledThreads):
    """``multiprocessing.pool.ThreadPool`` with ``apply_async``."""

    name = "threads"

    def _new_pool(self) -> ThreadPool:
        return ThreadPool(self.workers)

    def begin(self, task: Task) -> None:
        super().begin(task)
        self._results: queue.SimpleQueue = queue.SimpleQueue()  # per run: an abandoned run's
        # late results land in its own queue, never in the next run's

    def _start(self, function, task: Task) -> None:
        results = self._results
        self._pool.apply_async(function, (task,), callback=results.put, error_callback=results.put)

    def _ready(self, timeout: float) -> list:
        return drain(self._results, timeout)

    def _close_pool(self, wait: bool) -> None:
        self._pool.close()
        if wait:
            self._pool.join()


class FuturesBackend(_PooledThreads):
    """``concurrent.futures.ThreadPoolExecutor`` with ``submit``; results as they complete."""

    name = "futures"

    def _new_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(self.workers, "parmagic-futures")

    def begin(self, task: Task) -> None:
        super().begin(task)
        self._futures: set[concurrent.futures.Future] = set()  # this run's, across pools

    def _start(self, function, task: Task) -> None:
        self._futures.add(self._pool.submit(function, task))

    def _ready(self, timeout: float) -> list:
        done, self._futures = concurrent.futures.wait(
            self._futures, timeout, concurrent.futures.FIRST_COMPLETED
        )  # what as_completed() does, one step at a time
        return [f.exception() or f.result() for f in done]

    def _close_pool(self, wait: bool) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


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
