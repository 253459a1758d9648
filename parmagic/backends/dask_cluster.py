"""dask: items as tasks on a ``dask.distributed`` cluster, for loops that outgrow one machine.

Without ``--scheduler`` a local cluster of worker processes (one thread each) is started on first
use, bound to 127.0.0.1 only (scheduler, workers, nannies and dashboard: dask's own default
dashboard listens on every interface), and kept warm across cells. With ``--scheduler``, an
existing cluster is used as it is.

Shipping is the process backends' (one path, not a second): the task is ``pack_task``'s bytes,
sent once per run (each worker fetches it once from the cluster, never once per item); chunks
carry only their pickled items; each chunk is one dask task, ``run_dask_chunk``, which returns
``dump_result``'s bytes. Effects are applied in the kernel only, so a task that dask retries
on another worker after its first worker died is still applied exactly once::

    kernel: begin ── client.submit(hold_task, task bytes) ──▶ cluster (once per run)
            submit ── client.submit(run_dask_chunk, run, task future, seq, start, items)
    worker thread: run_chunk(...) ── dump_result bytes ──▶ _fetch (on dask's client thread)
    kernel: wait ── _collect ── load_result ──▶ ChunkResult ──▶ dispatch (item order)

The task bytes travel as the argument of one ``hold_task`` task rather than through
``Client.scatter``: scattered data cannot be recomputed, so an item that crashes its worker
would, once dask had retried it on every worker, take every copy along; the run's remaining
tasks and even finished results were then forgotten, and dask's ``KilledWorker`` (which names
the culprit) was never reached. A task is recomputed from its spec on a live worker instead.

Sending each chunk's items, or the task, inside its one task's spec is what dask's
maintainers recommend over ``scatter`` for data the client holds (dask/distributed#8814): the
scheduler keeps a copy, so it survives its worker. Each byte goes once, so dask's warning about
a large graph (meant for data repeated in a graph, or better loaded by dask) says nothing about
these sends, and is not shown: its threshold is raised past each send's size.

``distributed`` is imported here only, when a run first asks for ``dask``.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from .. import errors
from ..errors import ParmagicUsageError, WorkerDied
from ..worker.hash_seeds import (
    cluster_keeps_kernel_hashing,
    dask_keeps_kernel_hashing,
    dask_seed_config,
)
from ..worker.process import hold_task, run_dask_chunk
from ..worker.shipping import pack_task
from ..worker.task import ChunkResult, Task
from .base import BackendSettings, Deadline, drain, failed_chunk
from .other_processes import PickledItems, SentChunk, plain_main

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT = 3.0  # seconds to reach an existing scheduler before saying it cannot be
KILL_GRACE = 2.0  # seconds past --timeout for the worker's own snapshot of the item to arrive
RESENDS = 2  # times a chunk whose finished result was lost with its worker is run again
LARGE_GRAPH = "distributed.admin.large-graph-warning-threshold"
GRAPH_OVERHEAD = 1 << 20  # bytes a one-task graph holds beyond its payload, with room to spare


@dataclass
class _Chunk(SentChunk):
    since: float = 0.0  # when it was submitted
    attempt: int = 0


def _distributed():
    try:
        import dask.config  # noqa: F401 - the module's other uses find it imported
        import distributed
    except ImportError:
        raise ParmagicUsageError(errors.DASK_MISSING) from None
    # dask logs to the kernel's stderr, which a notebook shows in the cell: INFO lines, and
    # ERROR lines while it recovers from a dead worker; parmagic reports what matters itself
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    return distributed


@contextmanager
def _sent_once(payload: bytes):
    """Around a submit whose graph carries ``payload`` once: dask's large-graph warning is
    raised past its size (the user's own threshold kept where it is higher)."""
    import dask.config
    from dask.utils import parse_bytes

    threshold = parse_bytes(dask.config.get(LARGE_GRAPH, "10MB"))
    with dask.config.set({LARGE_GRAPH: max(threshold, len(payload) + GRAPH_OVERHEAD)}):
        yield


def check_reachable(address: str) -> None:
    """Refuse, before the cell runs anything, a TCP scheduler address nothing answers at."""
    if not address.startswith("tcp://"):
        return
    host, _, port = address.removeprefix("tcp://").rstrip("/").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT).close()
    except (OSError, ValueError) as reason:
        raise _unreachable(address, reason) from None


def _unreachable(address: str, reason: Exception) -> ParmagicUsageError:
    """The one sentence for a scheduler nothing answers at, whichever check found it."""
    message = errors.SCHEDULER_UNREACHABLE.format(
        address=address, seconds=CONNECT_TIMEOUT, reason=str(reason).split("\n")[0]
    )
    return ParmagicUsageError(message)


def _connect(distributed, address: str):
    """A client of an existing scheduler, or a sentence saying why there is none.

    A TCP address is tried with a plain socket first: a ``Client`` that fails to connect
    leaves its event-loop thread running in the kernel."""
    try:
        protocol, location = distributed.comm.parse_address(address)
        if protocol == "tcp":
            host_port = distributed.comm.parse_host_port(location)
            socket.create_connection(host_port, CONNECT_TIMEOUT).close()
        return distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as reason:
        raise _unreachable(address, reason) from None


def keeps_kernel_hashing(scheduler: str | None) -> bool:
    """Whether the cluster's workers hash strings as the kernel does: a local cluster's get
    the kernel's seed when it is known; an existing cluster's are asked."""
    if not scheduler:
        return dask_keeps_kernel_hashing()
    client = _connect(_distributed(), scheduler)
    try:
        return cluster_keeps_kernel_hashing(client)
    finally:
        client.close()


def _local_cluster(distributed, workers: int):
    """Worker processes with one thread each, everything on the loopback interface.

    Worker dashboards stay off (``worker_dashboard_address`` None); the nannies start their
    workers with ``spawn``, here without the kernel's ``__main__`` (see ``plain_main``)."""
    # one task at a time per worker thread (dask's default queues a second one behind it):
    # a worker that dies then takes only the task it ran, and KilledWorker names the culprit
    import dask.config

    settings = {"distributed.scheduler.worker-saturation": 1.0, **dask_seed_config()}
    with plain_main(), dask.config.set(settings):
        return distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host=LOOPBACK,
            scheduler_port=0,
            dashboard_address=f"{LOOPBACK}:0",
            silence_logs=logging.ERROR,
        )


class DaskBackend(PickledItems):
    name = "dask"
    takes_scheduler = True
    hash_order_advice = errors.HASH_ORDER_DASK

    @classmethod
    def hashes_otherwise(cls, start_method: str | None, scheduler: str | None) -> str | None:
        return None if keeps_kernel_hashing(scheduler) else "dask's workers"

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        distributed = _distributed()
        workers, scheduler = settings.workers, settings.scheduler
        self.requested, self.scheduler = workers, scheduler
        self._killed_worker = distributed.KilledWorker
        self.cluster = None if scheduler else _local_cluster(distributed, workers)
        if scheduler:
            self.client = _connect(distributed, scheduler)
        else:
            self.client = distributed.Client(self.cluster, set_as_default=False)
        self.address = self.client.scheduler.address
        self.dashboard = self.client.dashboard_link
        # an existing cluster's size is its own: the summary shows its worker threads
        self.workers = max(1, sum(self.client.nthreads().values())) if scheduler else workers
        self._running: dict = {}  # future -> _Chunk
        self._done: queue.SimpleQueue = queue.SimpleQueue()  # futures, from dask's callbacks
        self._task_future = None

    def fits(self, settings: BackendSettings) -> bool:
        """The cluster serves any start method (its nannies spawn); an existing cluster is
        told apart by its address, a local one by the workers it was asked for (not the
        worker threads it reports)."""
        return self.requested == settings.workers and self.scheduler == settings.scheduler

    @property
    def description(self) -> str:
        kind = "existing cluster" if self.scheduler else "local cluster"
        dashboard = f", dashboard {self.dashboard}" if self.dashboard else ""
        return f"dask ({kind}, {self.workers} worker threads, scheduler {self.address}{dashboard})"

    def begin(self, task: Task) -> None:
        # NotPicklable before any item runs; see kernel_objects.Pickler for the generators
        payload = pack_task(task, sent=self.kernel_objects, generators_by_name=False)
        self._run = uuid.uuid4().hex  # unique across kernels that share a cluster
        self._payload = payload
        self._send_task()
        self._deadline = Deadline.of(task.timeout, KILL_GRACE)
        self._running.clear()
        self.bytes_sent = len(payload) * len(self.client.nthreads())

    def _send_task(self) -> None:
        with _sent_once(self._payload):  # the captured data, once per run
            self._task_future = self.client.submit(
                hold_task, self._payload, key=f"parmagic-task-{self._run}", pure=False
            )

    def has_capacity(self) -> bool:
        # one chunk queued behind each running one hides the scheduler's round trip; with
        # --timeout none waits, since an item's time counts from its submission
        limit = self.workers if self._deadline else 2 * self.workers
        return not self._refused and len(self._running) < limit

    def submit(self, seq: int, start: int, items: list) -> None:
        payload = self._items_bytes(seq, start, items)
        if payload is None:
            return
        self._send(_Chunk(seq, start, items, payload, time.monotonic()))
        self.bytes_sent += len(payload)

    def _send(self, chunk: _Chunk) -> None:
        with _sent_once(chunk.payload):
            future = self.client.submit(
                run_dask_chunk, self._run, self._task_future, chunk.seq, chunk.start,
                chunk.payload, key=f"parmagic-{self._run[:8]}-{chunk.seq}-{chunk.attempt}",
                pure=False,
            )  # fmt: skip
        self._running[future] = chunk
        future.add_done_callback(self._fetch)  # called on a thread of dask's client

    def wait(self, timeout: float) -> list[ChunkResult]:
        if self._refused:
            return self._take_refused()
        if self._deadline:
            started = (chunk.since for chunk in self._running.values())
            timeout = self._deadline.wait_at_most(timeout, started)
        finished = drain(self._done, max(timeout, 0.0))  # not those cancelled by _stop:
        collected = [self._collect(*entry) for entry in finished if entry[0] in self._running]
        results = [result for result in collected if result is not None]
        if self._deadline:
            late = self._deadline.overdue((f, chunk.since) for f, chunk in self._running.items())
            if late:
                error = self._deadline.error(self._stop(late))
                for future in late:
                    chunk = self._running.pop(future)
                    results.append(failed_chunk(chunk.seq, chunk.start, chunk.items, error, "dask"))
        return results

    def _fetch(self, future) -> None:
        """On dask's callback thread, as soon as a chunk's task ends: its result is fetched
        at once, before the worker holding it can die with it (an item that crashes workers
        would otherwise take finished results of earlier items along). Not for a run that
        ended without it: its client may be closing, and nothing would read the result."""
        if future not in self._running:
            return
        try:
            outcome = future.result(timeout=CONNECT_TIMEOUT), None
        except BaseException as error:  # the task's own error, KilledWorker, cancelled, lost
            outcome = None, error
        self._done.put((future, *outcome))

    def _collect(self, future, data: bytes | None, error) -> ChunkResult | None:
        """The chunk's result; None when it was sent again (lost by the cluster: items change
        nothing outside their run, so a second run of them is safe, as is dask's own retry)."""
        chunk = self._running.pop(future)
        items = chunk.named
        if isinstance(error, self._killed_worker):
            reason = str(error).split("\n")[0]
            error = WorkerDied(errors.DASK_WORKER_DIED.format(items=items, reason=reason))
        elif error is not None and future.status != "error":  # cancelled or lost
            if chunk.attempt < RESENDS:
                chunk.attempt, chunk.since = chunk.attempt + 1, time.monotonic()
                self._send(chunk)
                return None
            error = WorkerDied(errors.DASK_LOST.format(items=items, reason=error))
        if error is not None:
            return failed_chunk(chunk.seq, chunk.start, chunk.items, error, "dask")
        result = self.load_result(data, chunk.seq, chunk.start, chunk.items, "dask")
        if result.still_running is not None:
            self._timed_out(result)
        return result

    def _timed_out(self, result: ChunkResult) -> None:
        """A chunk its worker returned at its item's limit, that item still running in the
        worker (see worker.process.run_dask_chunk): on the local cluster the worker process
        is killed, as for a task still running at the kernel's deadline."""
        busy = {result.worker} if self.cluster is not None else set()
        error = self._deadline.error(self._kill(busy))
        for offset, failed in result.errors.items():
            if offset >= result.still_running:
                failed.exception = error

    def _stop(self, futures: list) -> str:
        """Cancel tasks nobody will use. A running dask task cannot be stopped, so on the
        local cluster the worker processes running them are killed (their nannies start new
        ones); on an existing cluster they run on. Returns what happened, for a message."""
        busy = set()
        if self.cluster is not None:
            keys = {future.key for future in futures}
            busy = {w for w, ks in self.client.processing().items() if keys & set(ks)}
        self.client.cancel(futures, force=True)
        return self._kill(busy)

    def _kill(self, busy: set) -> str:
        """Kill these local workers (their nannies start new ones); what happened, to say."""
        if not busy:
            return errors.TIMEOUT_DASK_ABANDONED
        for pid in self.client.run(os.getpid, workers=list(busy)).values():
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # our child: a local worker
        deadline = time.monotonic() + 3  # until the scheduler has let go of them
        while busy & set(self.client.nthreads()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return errors.TIMEOUT_DASK_RESTARTED

    def end(self, completed: bool) -> list[str]:
        if self._running:
            self._stop(list(self._running))  # interrupted, or stopped at a failing item
        self._running.clear()
        self._task_future = None  # released: the cluster forgets the task bytes
        return []

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
