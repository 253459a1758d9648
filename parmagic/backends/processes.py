"""Processes: a warm pool of worker processes under ``fork``, ``spawn`` or ``forkserver``.

Built on ``multiprocessing`` (context, Process, Pipe, ``connection.wait``) rather than on
``multiprocessing.Pool``: the pool must know which worker holds which chunk, so that a dead
worker is noticed at once and named with its items instead of hanging the kernel
(cpython#96062), and so that the task goes to each worker once per run.

Data flow of one run::

    kernel: dispatch ──(seq, start, items)──▶ ProcessBackend.submit ─┐
                                                                   │ one duplex pipe per worker
        worker k ◀── ("task", run) + task bytes, once per run ◀────┤
        worker k ◀── ("chunk", seq, start) + items bytes ◀─────────┘
        worker k ── run_chunk(...) ── ChunkResult bytes ──▶ ProcessBackend.wait ──▶ dispatch
        (wait() also watches every busy worker's process sentinel: a death ends the run)
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import time
import types
from collections import deque
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing import connection

from .. import errors, imported_code
from ..chunk import ChunkResult, Task
from ..errors import WorkerDied
from ..machine import usable_cores
from ..native_threads import threads_per_worker
from ..shipping import dumps, pack_task
from ..worker_process import serve
from . import Backend, failed_chunk

KILL_GRACE = 1.0  # seconds past --timeout before a worker that ignores its alarm is killed


@contextmanager
def plain_main():
    """Start workers without the kernel's ``__main__``.

    ``spawn`` and ``forkserver`` re-run the parent's main script in each child, which is why
    scripts need the ``if __name__ == "__main__":`` guard. A notebook's main is the kernel
    itself (or a test runner, or the ``ipython`` script): its children must not import it.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class _Worker:
    def __init__(self, context, number: int, native_threads: int) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(
            target=serve,
            args=(child, native_threads, os.getpid()),
            name=f"parmagic-worker-{number}",
            daemon=True,
        )
        with plain_main():
            self.process.start()
        child.close()
        self.run: int | None = None
        self.chunks: deque[SentChunk] = deque()  # sent, not yet reported back; the first runs
        self.since = 0.0  # when the first of them started

    def stop(self, timeout: float = 1.0) -> None:
        with suppress(OSError):  # already gone
            self.conn.send(("stop",))
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()

    @property
    def name(self) -> str:
        return f"pid {self.process.pid}"

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


@dataclass
class SentChunk:
    """A chunk handed to a worker, kept until its result is back."""

    seq: int
    start: int
    items: list
    payload: bytes  # the pickled items: sent again if a worker dies with this chunk queued

    @property
    def numbers(self) -> str:
        return ", ".join(str(self.start + offset) for offset in range(len(self.items)))


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


class PickledItems(Backend):
    """What every backend whose items run in other processes shares (both process backends
    and dask): items travel pickled, and items that cannot be pickled are refused as failed
    items (the serial prefix still applies)."""

    copies_kernel_objects = True

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._refused: list[ChunkResult] = []

    def _items_bytes(self, seq: int, start: int, items: list) -> bytes | None:
        """The items pickled, or None once they are queued as failed items (never half a
        message to a worker)."""
        try:
            return dumps(items)
        except Exception as reason:
            error = TypeError(errors.ITEM_NOT_PICKLABLE.format(start=start, reason=reason))
            self._refused.append(failed_chunk(seq, start, items, error, "kernel"))
            return None

    def _take_refused(self) -> list[ChunkResult]:
        refused, self._refused = self._refused, []
        return refused


class WorkerProcesses(PickledItems):
    """What both process backends share: the start method, native thread caps, and large
    captured buffers in shared memory (workers on this machine can map them)."""

    def __init__(self, workers: int, start_method: str | None = None) -> None:
        super().__init__(workers)
        self.start_method = start_method or multiprocessing.get_start_method()
        self._context = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            self._context.set_forkserver_preload(["parmagic.worker_process"])
        self.native_threads = threads_per_worker(usable_cores(), workers)
        self._shared_files: list[str] = []
        self.started_with = imported_code.fingerprint()

    def _pack(self, task: Task) -> bytes:
        """The task's bytes (raises NotPicklable before any item runs); large captured
        buffers go once to shared memory, counted once in ``bytes_sent``."""
        payload = pack_task(task, self._shared_files)
        self.bytes_sent = sum(os.path.getsize(path) for path in self._shared_files)
        return payload

    def _remove_shared_files(self) -> None:
        for path in self._shared_files:
            with suppress(FileNotFoundError):
                os.unlink(path)
        self._shared_files.clear()


class ProcessBackend(WorkerProcesses):
    """Each worker holds up to two chunks: one running, one queued in its pipe, so that it
    starts the next chunk the moment it ends one, without waiting for the kernel (as
    ``Pool``'s task queue does). With ``--timeout``, one: a deadline needs a known start."""

    name = "processes"
    PREFETCH = 2

    def __init__(self, workers: int, start_method: str | None = None) -> None:
        super().__init__(workers, start_method)
        self._workers = [self._new_worker(n) for n in range(workers)]
        self._run = 0

    def _new_worker(self, number: int) -> _Worker:
        return _Worker(self._context, number, self.native_threads)

    @property
    def capacity(self) -> int:
        return self.workers * self.PREFETCH

    def begin(self, task: Task) -> None:
        self._payload = self._pack(task)
        self.send_blocked = 0.0
        self._timeout = task.timeout
        self._depth = 1 if task.timeout else self.PREFETCH
        self._run += 1
        self._used: set[_Worker] = set()

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def has_capacity(self) -> bool:
        return not self._refused and any(len(w.chunks) < self._depth for w in self._workers)

    def submit(self, seq: int, start: int, items: list) -> None:
        payload = self._items_bytes(seq, start, items)
        if payload is not None:
            worker = min(self._workers, key=lambda w: len(w.chunks))
            self._send(worker, SentChunk(seq, start, items, payload))

    def _send(self, worker: _Worker, chunk: SentChunk) -> None:
        """Never blocks for long: the worker reads its pipe on a thread of its own. A worker
        that died keeps the chunk, and :meth:`wait` learns of the death from its sentinel.
        A large chunk still waits for the worker's reading thread to get a core between the
        items computing: that wait counts as running, not as sending."""
        began = time.monotonic()
        try:
            if worker.run != self._run:
                worker.conn.send(("task", self._run))
                worker.conn.send_bytes(self._payload)
                worker.run = self._run
                self.bytes_sent += len(self._payload)
            worker.conn.send(("chunk", chunk.seq, chunk.start))
            worker.conn.send_bytes(chunk.payload)
            self.bytes_sent += len(chunk.payload)
        except OSError:
            pass
        self.send_blocked += time.monotonic() - began
        if not worker.chunks:
            worker.since = time.monotonic()
        worker.chunks.append(chunk)
        self._used.add(worker)

    def wait(self, timeout: float) -> list[ChunkResult]:
        if self._refused:
            return self._take_refused()
        busy = [w for w in self._workers if w.chunks]
        if self._timeout:
            deadline = min(w.since for w in busy) + self._timeout + KILL_GRACE
            timeout = max(0.0, min(timeout, deadline - time.monotonic()))
        watched = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        ready = set(connection.wait(watched, timeout))
        results = []
        for worker in busy:
            if worker.conn in ready:
                try:
                    results.append(self._load(worker, worker.conn.recv_bytes()))
                    while worker.chunks and worker.conn.poll():  # its queued chunk, done too
                        results.append(self._load(worker, worker.conn.recv_bytes()))
                    continue
                except (EOFError, OSError):
                    pass  # it died: the sentinel case below
            if worker.conn in ready or worker.process.sentinel in ready:
                worker.process.join()
                how = describe_exit(worker.process.exitcode)
                lost = self._replace(worker)
                error = WorkerDied(errors.WORKER_DIED.format(how=how, items=lost.numbers))
                results.append(failed_chunk(lost.seq, lost.start, lost.items, error, worker.name))
            elif self._timeout and time.monotonic() - worker.since > self._timeout + KILL_GRACE:
                worker.kill()  # the item ignored its alarm (C code holding on): stop it
                lost = self._replace(worker)
                fate = errors.TIMEOUT_KILLED
                error = TimeoutError(errors.ITEM_TIMEOUT.format(seconds=self._timeout, fate=fate))
                results.append(failed_chunk(lost.seq, lost.start, lost.items, error, worker.name))
        return results

    def _load(self, worker: _Worker, data: bytes) -> ChunkResult:
        chunk = worker.chunks.popleft()
        worker.since = time.monotonic()  # the next chunk, if any, starts now
        try:
            return pickle.loads(data)
        except Exception as reason:  # e.g. a class the kernel no longer has
            error = TypeError(errors.RESULT_NOT_LOADABLE.format(reason=reason))
            return failed_chunk(chunk.seq, chunk.start, chunk.items, error, worker.name)

    def _replace(self, worker: _Worker) -> SentChunk:
        """Put a new worker in the place of one that will not report back. Its running chunk
        is lost (returned, to fail); its queued chunks go to the new worker."""
        lost, *queued = worker.chunks
        replacement = self._new_worker(len(self._workers))
        self._workers[self._workers.index(worker)] = replacement
        self._used.discard(worker)
        worker.conn.close()
        for chunk in queued:
            self._send(replacement, chunk)
        return lost

    def end(self, completed: bool) -> list[str]:
        self._remove_shared_files()  # every worker that took a chunk has mapped them
        if not completed:
            for index, worker in enumerate(self._workers):
                if worker.chunks:  # running items nobody will use: replace it
                    worker.kill()
                    self._workers[index] = self._new_worker(index)
            return []
        changed: set[str] = set()
        for worker in self._used:
            worker.conn.send(("changes",))
        for worker in self._used:
            with suppress(EOFError, OSError):  # it died after its last chunk: nothing to say
                changed.update(worker.conn.recv())
        return [errors.CHANGED_IN_WORKER.format(name=name) for name in sorted(changed)]

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []
