"""Processes: a warm pool of worker processes under ``fork``, ``spawn`` or ``forkserver``.

Built on ``multiprocessing`` (context, Process, Pipe, ``connection.wait``) rather than on
``multiprocessing.Pool``: the pool must know which worker holds which chunk, so that a dead
worker is noticed at once and named with its items instead of hanging the kernel
(cpython#96062), and so that the task goes to each worker once per run.

Data flow of one run (what the three out-of-process backends share is in other_processes.py)::

    kernel: dispatch ──(seq, start, items)──▶ ProcessBackend.submit ─┐ a SentChunk per chunk
                                                                   │ one duplex pipe per worker
        worker k ◀── one message: ("chunk", seq, start, applied, ───┘
                     task size), the task's bytes (the run's first chunk
                     for the worker; else none), the items' bytes
        worker k: serve ── run_chunk(...) ── ChunkResult bytes ──▶ ProcessBackend.wait
        kernel: wait ── load_result ──▶ ChunkResult ──▶ dispatch
        (wait() also watches every busy worker's process sentinel: a death ends the run)
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections import deque
from contextlib import suppress
from multiprocessing import connection

from .. import errors
from ..errors import WorkerDied
from ..worker.held_names import NAMES_REPLY, received
from ..worker.process import serve
from ..worker.task import ChunkResult, Task
from .base import BackendSettings, Deadline, failed_chunk
from .other_processes import KILL_GRACE, SentChunk, WorkerProcesses, plain_main

NAMES_WAIT = 5.0  # seconds a worker has to send the values it kept, once the run ends


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


def describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


class ProcessBackend(WorkerProcesses):
    """Each worker holds up to two chunks: one running, one queued in its pipe, so that it
    starts the next chunk the moment it ends one, without waiting for the kernel (as
    ``Pool``'s task queue does). With ``--timeout``, one: a deadline needs a known start."""

    name = "processes"
    holds_names = True
    PREFETCH = 2

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        self._workers = [self._new_worker(n) for n in range(self.workers)]
        self._run = 0

    def _new_worker(self, number: int) -> _Worker:
        return _Worker(self._context, number, self.native_threads)

    @property
    def capacity(self) -> int:
        return self.workers * self.PREFETCH

    def begin(self, task: Task) -> None:
        self._payload = self._pack(task)
        self.send_blocked = 0.0
        self._deadline = Deadline.of(task.timeout, KILL_GRACE)
        self._depth = 1 if task.timeout else self.PREFETCH
        self._run += 1
        self._holding: set[_Worker] = set()  # workers that kept values of names
        self._applied = 0
        self._watching: set[_Worker] = set()  # workers whose task captured data (watched)

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
        task = self._payload if worker.run != self._run else b""
        header = pickle.dumps(("chunk", chunk.seq, chunk.start, self._applied, len(task)))
        try:  # one write wakes the worker once (each wake-up can cost the kernel its core)
            worker.conn.send_bytes(b"".join((header, task, chunk.payload)))
            worker.run = self._run
            self.bytes_sent += len(task) + len(chunk.payload)
        except OSError:
            pass
        self.send_blocked += time.monotonic() - began
        if not worker.chunks:
            worker.since = time.monotonic()
        worker.chunks.append(chunk)

    def wait(self, timeout: float) -> list[ChunkResult]:
        if self._refused:
            return self._take_refused()
        busy = [w for w in self._workers if w.chunks]
        if self._deadline:
            timeout = self._deadline.wait_at_most(timeout, (w.since for w in busy))
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
                items = lost.named
                error = WorkerDied(errors.WORKER_DIED.format(how=how, items=items))
                results.append(failed_chunk(lost.seq, lost.start, lost.items, error, worker.name))
            elif self._deadline and self._deadline.passed(worker.since):
                worker.kill()  # the item ignored its alarm (C code holding on): stop it
                lost = self._replace(worker)
                error = self._deadline.error(errors.TIMEOUT_KILLED)
                results.append(failed_chunk(lost.seq, lost.start, lost.items, error, worker.name))
        return results

    def _load(self, worker: _Worker, data: bytes) -> ChunkResult:
        chunk = worker.chunks.popleft()
        worker.since = time.monotonic()  # the next chunk, if any, starts now
        result = self.load_result(data, chunk.seq, chunk.start, chunk.items, worker.name)
        if result.held_names:
            self._holding.add(worker)
        if result.watched:
            self._watching.add(worker)
        return result

    def chunks_applied(self, count: int) -> None:
        """Told at once to the workers that keep values (they free those now superseded),
        and to every worker with its next chunk (held_names.py)."""
        self._applied = count
        for worker in self._holding:
            with suppress(OSError):  # gone: wait() finds out
                worker.conn.send(("applied", count))

    def fetch_names(self, wanted: dict[str, tuple[str, int, str]]) -> tuple[dict, list[str]]:
        """The values workers kept, asked for at once from every worker that kept any (each
        then forgets the rest), and the names whose values are lost with their worker.
        Names kept as one value (``b = a``) get the one value."""
        keys: dict[str, set[tuple[int, str]]] = {}
        for worker_name, seq, kept_as in wanted.values():
            keys.setdefault(worker_name, set()).add((seq, kept_as))
        asked = []
        for worker in self._holding:
            with suppress(OSError):  # gone: its values are lost
                worker.conn.send(("names", sorted(keys.get(worker.name, ()))))
                asked.append(worker)
        self._holding.clear()
        found: dict = {}
        for worker in asked:
            found.update({(worker.name, *key): value
                          for key, value in self._names_reply(worker).items()})  # fmt: skip
        values = {name: found[where] for name, where in wanted.items() if where in found}
        return values, [name for name in wanted if name not in values]

    def _names_reply(self, worker: _Worker) -> dict:
        """A worker's reply to "names"; the results of chunks a stopped run still had out
        may come first, and are dropped. Nothing, if the worker is gone or does not answer
        (C code that keeps Python's lock) within ``NAMES_WAIT`` seconds."""
        deadline = time.monotonic() + NAMES_WAIT
        try:
            while worker.conn.poll(max(0.0, deadline - time.monotonic())):
                data = worker.conn.recv_bytes()
                if data[: len(NAMES_REPLY)] == NAMES_REPLY:
                    return received(data)
                if worker.chunks:
                    worker.chunks.popleft()
        except (EOFError, OSError):
            pass
        return {}

    def _replace(self, worker: _Worker) -> SentChunk:
        """Put a new worker in the place of one that will not report back. Its running chunk
        is lost (returned, to fail); its queued chunks go to the new worker."""
        lost, *queued = worker.chunks
        replacement = self._new_worker(len(self._workers))
        self._workers[self._workers.index(worker)] = replacement
        self._watching.discard(worker)
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
        for worker in self._watching:
            worker.conn.send(("changes",))
        for worker in self._watching:
            with suppress(EOFError, OSError):  # it died after its last chunk: nothing to say
                changed.update(worker.conn.recv())
        return [errors.CHANGED_IN_WORKER.format(name=name) for name in sorted(changed)]

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []
