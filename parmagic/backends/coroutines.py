"""asyncio: one coroutine per item on a private event loop, at most ``--workers`` at once.

The loop runs on a helper thread of its own, kept warm between cells, so it never competes
with the loop a Jupyter kernel already runs (``asyncio.run`` cannot be called there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading

from ..chunk import ChunkResult, OutputCapture, Task, run_chunk_async
from .base import Backend, BackendSettings, drain

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
        self._capture = OutputCapture()
        self._lateness = LoopLateness(self.loop_thread.loop)

    async def _tracked(self, coroutine):
        """Run an item's coroutine as a task the run can cancel from another thread."""
        task = asyncio.current_task()
        self._tasks.add(task)
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
        future = self.loop_thread.submit(
            self._tracked(run_chunk_async(self._task, seq, start, items, self._lateness.mean))
        )
        self._running[seq] = future
        future.add_done_callback(self._done.put)

    def wait(self, timeout: float) -> list[ChunkResult]:
        results = []
        for future in drain(self._done, timeout):
            if future.cancelled():
                continue
            result = future.result()  # run_chunk_async records item errors itself
            self._running.pop(result.seq, None)
            results.append(result)
        return results

    def end(self, completed: bool) -> list[str]:
        if not completed and self._running:
            self.loop_thread.loop.call_soon_threadsafe(self._cancel_all)
            # an item blocking the loop (no await) cannot be cancelled: do not wait for it
            concurrent.futures.wait(list(self._running.values()), timeout=0.5)
        self._running.clear()
        self._capture.release()
        self._lateness.stop()
        return []
