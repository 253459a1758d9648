"""futures:processes: ``concurrent.futures.ProcessPoolExecutor`` with an explicit start method.

Shares the ``processes`` backend's shipping: the task (item function and captured data) is
pickled once per run with cloudpickle and written to a temporary file, which each worker
reads once; chunks carry only their items. The executor cannot address one worker, so a dead
worker breaks the whole pool (``BrokenProcessPool``): every chunk it held fails, and a new pool
is started.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import select
import threading
import time
from concurrent.futures.process import BrokenProcessPool

from .. import errors
from ..errors import WorkerDied
from ..worker.process import prepare_pool_worker, run_shipped_chunk
from ..worker.shared_files import shared_file
from ..worker.task import ChunkResult, Task
from .base import BackendSettings, Deadline, failed_chunk
from .other_processes import (
    KILL_GRACE,
    WorkerProcesses,
    plain_main,
    result_not_loadable,
)

MANAGER_GRACE = 5.0  # seconds for the executor's manager thread to end once unblocked


def _unblock_manager(manager: threading.Thread, calls, results) -> None:
    """Let the executor's manager thread end after its workers were killed.

    Two pipes can hold it for ever (and ``shutdown(wait=True)``, and the interpreter at exit).
    A worker killed between writing a result's header and its body leaves half a message in
    the result pipe, and the manager waits for the rest: zeros written into the pipe complete
    the message, which the manager reads as a broken result and ends, as after a dead worker.
    And the queue feeding calls to workers blocks on a full pipe nobody reads: closing the
    reader's pipe here, as CPython does for a broken pool, makes that write fail instead. Both must
    happen before the next pool forks, or its workers inherit the old pipes' ends.
    """
    with contextlib.suppress(OSError):  # the manager closed it already
        null = os.open(os.devnull, os.O_RDONLY)
        try:  # the pipe's read end closed in one step, its number left to the manager to
            os.dup2(null, calls._reader.fileno())  # close: both closing it raced (EBADF)
        finally:
            os.close(null)
    writer = results._writer.fileno()
    os.set_blocking(writer, False)  # the killed workers were the only other writers
    zeros = bytes(1 << 16)
    deadline = time.monotonic() + MANAGER_GRACE
    while manager.is_alive() and time.monotonic() < deadline:
        if select.select([], [writer], [], 0.05)[1]:
            with contextlib.suppress(BlockingIOError):  # the manager read less than we wrote
                os.write(writer, zeros)
        manager.join(0.01)


class ProcessFuturesBackend(WorkerProcesses):
    name = "futures:processes"

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        self._executor = self._new_executor()
        self._run = 0
        self._path: str | None = None

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        executor = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=self._context, initializer=prepare_pool_worker,
            initargs=(self.native_threads, os.getpid()),
        )  # fmt: skip
        with plain_main():  # start every worker now, without the kernel's __main__
            warm = [executor.submit(os.getpid) for _ in range(self.workers)]
        concurrent.futures.wait(warm)
        return executor

    def begin(self, task: Task) -> None:
        payload = self._pack(task)
        with shared_file() as f:
            f.write(payload)
        self._path = f.name
        self._shared_files.append(f.name)  # removed with the buffers when the run ends
        self._deadline = Deadline.of(task.timeout, KILL_GRACE)
        self._run += 1
        self._running: dict[concurrent.futures.Future, tuple[int, int, list, float]] = {}
        self._task_size, self._submits = len(payload), 0

    def worker_pids(self) -> list[int] | None:
        processes = getattr(self._executor, "_processes", None)  # started on first submit
        return list(processes) if processes else None

    def has_capacity(self) -> bool:
        return not self._refused and len(self._running) < 2 * self.workers

    def submit(self, seq: int, start: int, items: list) -> None:
        payload = self._items_bytes(seq, start, items)
        if payload is None:
            return
        with plain_main():
            future = self._executor.submit(
                run_shipped_chunk, self._run, self._path, seq, start, payload
            )
        self._running[future] = (seq, start, items, time.monotonic())
        self._submits += 1
        self.bytes_sent += len(payload)

    def wait(self, timeout: float) -> list[ChunkResult]:
        if self._refused:
            return self._take_refused()
        if self._deadline:
            timeout = self._deadline.wait_at_most(timeout, (c[3] for c in self._running.values()))
        done, _ = concurrent.futures.wait(
            list(self._running), timeout, concurrent.futures.FIRST_COMPLETED
        )
        results = []
        for future in done:
            seq, start, items, _ = self._running.pop(future)
            try:
                data = future.result()
            except BrokenProcessPool:
                return results + self._restart(
                    WorkerDied(errors.POOL_BROKEN), [(seq, start, items)]
                )
            except Exception as reason:  # e.g. items the worker could not unpickle
                results.append(result_not_loadable(reason, seq, start, items, "pool"))
            else:
                results.append(self.load_result(data, seq, start, items, "pool"))
        if self._deadline:
            late = self._deadline.overdue((c[:3], c[3]) for c in self._running.values())
            if late:
                return results + self._restart(self._deadline.error(errors.TIMEOUT_KILLED), late)
        return results

    def _restart(self, error: Exception, culprits: list) -> list[ChunkResult]:
        """Kill the pool; the culprits' items fail with ``error``, every other chunk it held
        with a note that it was stopped along with the pool."""
        others = [c[:3] for c in self._running.values() if c[:3] not in culprits]
        self._kill()
        stopped = WorkerDied(errors.STOPPED_WITH_POOL)
        chunks = [(c, error) for c in culprits] + [(c, stopped) for c in others]
        return [failed_chunk(seq, start, items, e, "pool") for (seq, start, items), e in chunks]

    def _kill(self) -> None:
        # Before 3.14, ProcessPoolExecutor has no way to stop a running task: its processes
        # are killed one by one; 3.14's kill_workers() does the same, publicly.
        executor = self._executor
        manager = executor._executor_manager_thread  # shutdown() forgets these
        calls, results = executor._call_queue, executor._result_queue
        if hasattr(executor, "kill_workers"):
            executor.kill_workers()
        else:
            processes = list(getattr(executor, "_processes", {}).values())
            for process in processes:
                process.kill()
            for process in processes:
                process.join(KILL_GRACE)  # dead before shutdown counts who is alive
        executor.shutdown(wait=False, cancel_futures=True)
        if manager is not None:
            _unblock_manager(manager, calls, results)
        self._running.clear()
        self._executor = self._new_executor()

    def end(self, completed: bool) -> list[str]:
        # each worker that took a chunk read the task file once (which ones, the pool hides)
        self.bytes_sent += self._task_size * min(self.workers, self._submits)
        if not completed and self._running:
            self._kill()  # running items nobody will use
        self._remove_shared_files()
        return []

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
