"""asyncio: one coroutine per item on a private event loop, at most ``--workers`` at once.

The loop runs on a helper thread of its own, kept warm between cells, so it never competes
with the loop a Jupyter kernel already runs (``asyncio.run`` cannot be called there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time

from ..worker.chunk import LiveChunk, run_chunk_async
from ..worker.item_output import OutputCapture
from ..worker.task import ChunkResult, Task
from .base import Backend, BackendSettings, Deadline, drain

DEFAULT_CONCURRENCY = 100
LATENESS_PERIOD = 0.002  # seconds between the lateness probe's timers


class EventLoopThread:
    """An event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="parmagic-event-loop", daemon=True
        )
        self.thread.start()

    def submit(self, coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        if self.thread.is_alive():
            self.submit(cancel_all()).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        self.loop.close()


class LoopLateness:
    """How late the event loop runs a timer that is due, on average over a run: while other
    coroutines' steps run, a coroutine whose wait is over waits that long again for the
    loop. (A thread's run-queue wait, for the one loop thread.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.total, self.count = loop, 0.0, 0
        self.handle: asyncio.TimerHandle | None = None  # the next reading (loop thread only)
        self.first = loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        self.due = self.loop.time() + LATENESS_PERIOD
        self.handle = self.loop.call_at(self.due, self._fire)

    def _fire(self) -> None:
        self.total += max(0.0, self.loop.time() - self.due)
        self.count += 1
        self._arm()

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def stop(self) -> None:
        def cancel() -> None:
            self.first.cancel()
            if self.handle is not None:
                self.handle.cancel()

        self.loop.call_soon_threadsafe(cancel)


class AsyncioBackend(Backend):
    name = "asyncio"
    one_item_per_chunk = True
    runs_coroutines = True

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        # the session's loop, not one of its own: cells that await share it
        self.loop_thread: EventLoopThread = settings.event_loop

    @classmethod
    def default_workers(cls) -> int:
        return DEFAULT_CONCURRENCY

    def begin(self, task: Task) -> None:
        self._task = task
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._running: dict[int, concurrent.futures.Future] = {}
        self._tasks: set[asyncio.Task] = set()  # touched on the loop thread only
        self._deadline = Deadline.of(task.timeout)
        self._live: dict[int, tuple[LiveChunk, int, list]] = {}  # with --timeout
        self._started: dict[int, tuple[float, asyncio.Task]] = {}  # set on the loop thread
        self._given_up: list[concurrent.futures.Future] = []  # timed out, cancelled
        self._capture = OutputCapture()
        self._lateness = LoopLateness(self.loop_thread.loop)

    async def _tracked(self, seq: int, coroutine):
        """Run an item's coroutine as a task the run can cancel from another thread."""
        task = asyncio.current_task()
        self._tasks.add(task)
        self._started[seq] = (time.monotonic(), task)
        try:
            return await coroutine
        finally:
            self._tasks.discard(task)

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def has_capacity(self) -> bool:
        return len(self._running) < self.capacity

    def submit(self, seq: int, start: int, items: list) -> None:
        live = LiveChunk() if self._deadline else None
        if live is not None:
            self._live[seq] = (live, start, items)
        chunk = run_chunk_async(self._task, seq, start, items, self._lateness.mean, live)
        future = self.loop_thread.submit(self._tracked(seq, chunk))
        self._running[seq] = future
        future.add_done_callback(self._done.put)

    def wait(self, timeout: float) -> list[ChunkResult]:
        if self._deadline:
            timeout = self._deadline.wait_at_most(timeout, self._running_since().values())
        results = []
        for future in drain(self._done, timeout):
            if future.cancelled():
                continue
            result = future.result()  # run_chunk_async records item errors itself
            if self._running.pop(result.seq, None) is not None:  # not one given up on
                self._live.pop(result.seq, None)
                results.append(result)
        return results + self._expired()

    def _running_since(self) -> dict[int, float]:
        started = dict(self._started)  # the loop thread adds to it meanwhile
        return {seq: started[seq][0] for seq in self._running if seq in started}

    def _expired(self) -> list[ChunkResult]:
        """Items past their timeout fail now, from the kernel's thread: an item that swallows
        its cancellation, or blocks the loop, must not outlast its limit. Each keeps what it
        did before the limit, as an item that raised then would; it is cancelled, and what it
        does after (an ``except CancelledError`` block) is never seen."""
        if not self._deadline:
            return []
        expired = []
        for seq in self._deadline.overdue(self._running_since().items()):
            self._given_up.append(self._running.pop(seq))
            live, start, items = self._live.pop(seq)
            error = self._deadline.error("")
            expired.append(live.freeze(seq, start, items, error, "event loop"))
            self.loop_thread.loop.call_soon_threadsafe(self._started[seq][1].cancel)
        return expired

    def end(self, completed: bool) -> list[str]:
        if not completed and self._running:
            self.loop_thread.loop.call_soon_threadsafe(self._cancel_all)
        ending = [*self._given_up, *(() if completed else self._running.values())]
        if ending:  # their output still captured (and dropped) while they handle it; an item
            # blocking the loop (no await) cannot be cancelled: do not wait long for it
            concurrent.futures.wait(ending, timeout=0.5)
        self._running.clear()
        self._capture.release()
        self._lateness.stop()
        return []
