"""The worker-process side: what runs in each worker process, and nothing else.

Three ways in, one way of working. ``serve`` is the loop of a ``processes`` worker, fed through
its own pipe (see backends/processes.py). ``prepare_pool_worker`` and ``run_shipped_chunk`` are
what a ``concurrent.futures.ProcessPoolExecutor`` worker runs for ``futures:processes``, where
the task is read once per run from a temporary file. ``run_dask_chunk`` is what a dask worker
thread runs for ``dask``, where the task arrives once per run as the value of a dask task.
Imports nothing heavy, never IPython, never dask.
"""

from __future__ import annotations

import gc
import io
import os
import pickle
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass

from ..errors import ITEM_TIMEOUT
from ..machine import affinity_cores
from .chunk import LiveChunk, run_chunk
from .held_names import NameStore
from .hidden_state import Guard
from .item_output import ItemOutput, OutputCapture
from .kernel_objects import ChunkObjects, HeldObjects
from .native_threads import CapWatch, cap_environment
from .shared_files import process_alive
from .shipping import captured_digests, dump_result, load_task
from .task import ChunkResult, Task, forget_inherited_error


def _become_worker(native_threads: int) -> None:
    """SIGINT is ignored here: a terminal's Ctrl-C reaches the whole process group, and the
    kernel alone decides what happens to workers. Output goes to this process's own file
    descriptors (never to a forked kernel's stream objects) unless an item captures it.

    Everything the worker holds at its start (a forked kernel's whole heap) is frozen out of
    its garbage collector (``gc.freeze``, CPython's own advice for forked children): never
    walked by its collections, so never copied page by page into this process for them."""
    gc.freeze()
    forget_inherited_error()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cap_environment(native_threads)
    _cap.limit, _cap.cores = native_threads, affinity_cores()
    for number, attr in ((1, "stdout"), (2, "stderr")):
        stream = io.TextIOWrapper(open(number, "wb", closefd=False), write_through=True)  # noqa: SIM115
        setattr(sys, attr, ItemOutput(stream, number))


class _Policy:
    """Linux's batch scheduling policy for a ``processes`` worker's waiting: its thread that
    reads the pipe, and its main thread while it waits for a chunk. Woken by the kernel's
    chunk, they do not preempt the kernel on its core (which still has the other workers'
    chunks to send): they take an idle core. The items run under the policy the worker was
    started with, the kernel's, as do the processes they start."""

    def __init__(self) -> None:
        self.batch = getattr(os, "SCHED_BATCH", None)
        self.own = os.sched_getscheduler(0) if self.batch is not None else None

    def waiting(self) -> None:
        self._set(self.batch)

    def running(self) -> None:
        self._set(self.own)

    def _set(self, policy: int | None) -> None:
        if policy is None or self.batch is None:
            return
        try:  # on this thread only (pid 0)
            os.sched_setscheduler(0, policy, os.sched_param(0))
        except OSError:  # a sandbox that forbids it: as it was, and not asked again
            self.batch = None


def _load_task(payload: bytes, shared: bool = False) -> Task:
    """The task of a run, its loaded native pools capped. ``shared``: a dask worker's, whose
    nanny caps them itself, and whose own threads draw from the ``random`` module, which the
    guard then leaves out."""
    try:
        task = load_task(payload)
    except Exception as exc:  # e.g. a module the kernel has and this process cannot import
        task = _failing_task(exc)
    _cap.check()
    if task.guarded:  # after the capping, which sets variables of the environment
        task.guard = Guard.around(task.function, task.seed is None, random_module=not shared)
    return task


_cap = CapWatch()  # this worker's cap on native threads (set up by _become_worker)


def _failing_task(error: Exception) -> Task:
    """A task whose every item raises the error that kept the real task from loading here."""
    error.add_note("(raised while loading the loop's code in a worker process)")

    def fail(item, log):
        raise error

    return Task(fail, frozenset(), stop_on_error=True, held=HeldObjects.none())


def _run(
    task: Task, seq: int, start: int, items: bytes, worker: str
) -> tuple[ChunkResult, ChunkObjects]:
    """One chunk from its bytes: the items are the worker's copies of the kernel's objects,
    and what comes back refers to those objects (kernel_objects.py)."""
    loaded, objects = _loaded(task, items)
    return run_chunk(task, seq, start, loaded, worker, objects), objects


def _loaded(task: Task, items: bytes) -> tuple[list, ChunkObjects]:
    """A chunk's items, unpickled into the worker's copies; then the guard's fingerprints
    taken again for what unpickling changed (that is loading, not the items)."""
    loaded, objects = task.held.load_chunk(items)
    if task.guard is not None:
        task.guard.settle()
    return loaded, objects


KERNEL_CHECK = 0.5  # seconds between a worker's checks that the kernel still lives


def _exit_with_kernel(kernel: int, parent: int) -> None:
    """End this worker once the kernel that started it is gone (killed, out of memory,
    restarted by Jupyter): nobody is left to read its results. A forkserver's children hold
    the forkserver open, so the kernel itself is watched, not only this process's parent."""
    if os.getppid() != parent or not process_alive(kernel):
        os._exit(0)


def _watch_kernel(kernel: int) -> None:
    """The same check on a thread of its own, for workers whose main thread a pool owns."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(KERNEL_CHECK)
            _exit_with_kernel(kernel, parent)

    threading.Thread(target=watch, name="parmagic-kernel-watch", daemon=True).start()


def _read_inbox(conn, inbox: queue.SimpleQueue, kernel: int, store: NameStore, sending) -> None:
    """Take every message off the pipe as soon as it comes, so that the kernel's sends never
    wait for this worker's sends (both ends writing a full pipe, nobody reading, is a
    deadlock); the kernel sends at most two chunks ahead, so the inbox stays small. The
    kernel's request for kept values is answered here, at once, items running or not."""
    parent = os.getppid()
    _Policy().waiting()  # for good: this thread only reads and answers
    while True:
        try:
            if conn.poll(KERNEL_CHECK):
                header, body = _message(conn.recv_bytes())
                if header[0] == "names":
                    with sending:
                        store.send(header[1], conn)
                    continue
                if header[0] == "applied":
                    store.applied(header[1])
                    continue
                inbox.put((header, body))
                continue
        except (EOFError, OSError):  # the kernel closed its end, or is gone
            inbox.put((("stop",), None))
            return
        _exit_with_kernel(kernel, parent)


def _message(data: bytes) -> tuple[tuple, memoryview]:
    """A message from the kernel: its pickled header, then the bytes it carries, if any."""
    stream = io.BytesIO(data)
    header = pickle.load(stream)
    return header, memoryview(data)[stream.tell() :]


def serve(conn, native_threads: int, kernel: int) -> None:
    """A ``processes`` worker: a task once per run, then chunks; chunk results back."""
    _become_worker(native_threads)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    store, sending = NameStore(), threading.Lock()  # two threads send: one message at a time
    reader = threading.Thread(
        target=_read_inbox, args=(conn, inbox, kernel, store, sending), name="parmagic-inbox",
        daemon=True,
    )  # fmt: skip
    reader.start()
    try:
        _serve(conn, inbox, native_threads, store, sending)
    except OSError:  # the kernel went away while this worker was sending to it
        os._exit(0)


def _serve(conn, inbox: queue.SimpleQueue, native_threads: int, store: NameStore, sending):
    task: Task | None = None
    digests: dict[str, bytes] = {}
    name, policy = f"pid {os.getpid()}", _Policy()
    while True:
        policy.waiting()
        header, body = inbox.get()
        policy.running()
        if header[0] == "chunk":
            _, seq, start, applied, task_size = header
            if task_size:  # the run's first chunk for this worker
                task = _load_task(body[:task_size])
                digests = captured_digests(task.function.__globals__)
                store.clear()
            body = body[task_size:]
            store.applied(applied)
            result, objects = _run(task, seq, start, body, name)
            result.native_limit = native_threads if _cap.check() else None
            result.watched = bool(digests)
            if task.hold_names:
                store.keep(result, objects)
            data = dump_result(result, objects)
            with sending:
                conn.send_bytes(data)
        elif header[0] == "changes":
            now = captured_digests(task.function.__globals__, only=digests)
            with sending:
                conn.send(sorted(n for n, d in now.items() if d != digests[n]))
        else:
            return


@dataclass
class _PoolWorker:
    """A ``futures:processes`` worker's state between the chunks the pool hands it."""

    run: int | None = None  # the run whose task is loaded
    task: Task | None = None
    threads: int = 1  # its cap on native threads


_pool = _PoolWorker()


def prepare_pool_worker(native_threads: int, kernel: int) -> None:
    """The ``initializer`` of a ``futures:processes`` worker."""
    _become_worker(native_threads)
    _watch_kernel(kernel)
    _pool.threads = native_threads


def run_shipped_chunk(run: int, path: str, seq: int, start: int, items: bytes) -> bytes:
    """One chunk in a ``futures:processes`` worker; the run's task is read from ``path`` once."""
    if _pool.run != run:
        with open(path, "rb") as payload:
            _pool.task = _load_task(payload.read())
        _pool.run = run
    result, objects = _run(_pool.task, seq, start, items, f"pid {os.getpid()}")
    result.native_limit = _pool.threads if _cap.check() else None
    return dump_result(result, objects)


@dataclass
class _DaskWorker:
    """A dask worker process's state between the chunks its threads run."""

    loaded: tuple = (None, None)  # (run, task): one assignment, so threads see a whole pair
    capture: OutputCapture | None = None  # the process's stream stand-ins, once installed


_dask = _DaskWorker()


def hold_task(payload: bytes) -> bytes:
    """The dask task whose value is a run's packed task: dask recomputes it from its spec if
    every worker holding it dies, which scattered data cannot be (see dask_cluster.py)."""
    return payload


def run_dask_chunk(run: str, payload: bytes, seq: int, start: int, items: bytes) -> bytes:
    """One chunk on a dask worker thread. ``payload`` is the run's task, sent once per run
    (dask hands each worker the same bytes); it is unpickled once per run and worker process.

    Output: the first chunk installs :class:`ItemOutput` stand-ins for the process's streams
    (kept: other tasks' output passes through them untouched), so each item's prints go to its
    own record. No alarm: SIGALRM works on a main thread only (see ``_run_until_deadline``).
    """
    if _dask.capture is None:
        _dask.capture = OutputCapture()
    loaded_run, task = _dask.loaded
    if loaded_run != run:
        task = _load_task(payload, shared=True)
        _dask.loaded = (run, task)
    from distributed import get_worker  # already imported in any dask worker: costs nothing

    if task.timeout:
        return _run_until_deadline(task, seq, start, items, get_worker().address)
    result, objects = _run(task, seq, start, items, get_worker().address)
    return dump_result(result, objects)


def _run_until_deadline(task: Task, seq: int, start: int, items: bytes, worker: str) -> bytes:
    """--timeout where no alarm can stop the item: the chunk runs on a thread of its own, and
    at its limit the task returns what it did so far (see LiveChunk), its running item failed,
    so that it keeps its prefix as on every other backend. The item's thread runs on: the
    result says so (``still_running``), and the kernel stops this worker process."""
    loaded, objects = _loaded(task, items)
    live, ended = LiveChunk(), queue.SimpleQueue()

    def run() -> None:
        try:
            ended.put(run_chunk(task, seq, start, loaded, worker, objects, live))
        except BaseException as error:  # raised in the task's own thread, as without a limit
            ended.put(error)

    threading.Thread(target=run, name="parmagic-item", daemon=True).start()
    try:
        result = ended.get(timeout=task.timeout)
    except queue.Empty:
        error = TimeoutError(ITEM_TIMEOUT.format(seconds=task.timeout, fate=""))
        result = live.freeze(seq, start, loaded, error, worker)
    if isinstance(result, BaseException):
        raise result
    return dump_result(result, objects)
