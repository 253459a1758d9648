"""The contract between the dispatcher and every backend, and what more than one backend needs
to keep it.

The dispatcher owns ordering, effects and errors, so a backend only has to run chunks and hand
back their results in any order; what a chunk that never reports back looks like (failed items,
so that the serial prefix still applies) is decided here once, so that every backend fails
chunks in the same words.
"""

from __future__ import annotations

import math
import multiprocessing
import queue
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..errors import short_repr
from ..machine import usable_cores
from ..worker.task import ChunkResult, ItemError, Task


@dataclass(frozen=True)
class BackendSettings:
    """What a run asks of a backend's pool, in one argument: the session builds every backend
    the same way, and a warm backend compares the next run's settings with its own to decide
    whether it can serve it or must be replaced."""

    workers: int
    start_method: str | None = None  # set only where items run in processes that copy objects
    scheduler: str | None = None  # dask's --scheduler: an existing cluster instead of a local one
    event_loop: object | None = None  # the session's event-loop thread, for coroutine backends
    # worker processes' native (BLAS, OpenMP) threads: None caps them to share the cores,
    # a number keeps the kernel's (--keep-native-threads)
    native_threads: int | None = None


class Backend(ABC):
    """Runs chunks of items; knows nothing of order, effects or the kernel's namespace."""

    name: str
    copies_kernel_objects = False  # True where items see copies of kernel objects
    holds_names = False  # True where workers keep large values of names (held_names.py)
    one_item_per_chunk = False  # True where every item needs its own message (coroutines)
    runs_coroutines = False  # True where the item function is a coroutine function
    items_share_a_process = False  # True where items take turns at one process's Python
    starts_processes = False  # True where items run in worker processes (a machine's limit)
    takes_start_method = False  # True where --start-method chooses how those processes start
    takes_scheduler = False  # True where --scheduler names an existing cluster to run on
    maps_shared_memory = False  # True where workers on this machine map large captured buffers
    # True where each running item has the global random state to itself, so that --seed can
    # give each one its own stream (not on threads, which share one)
    seedable = False
    # True where the kernel runs the loop itself, item after item: whatever the plain loop
    # does, it does (nothing is refused or moved)
    is_the_plain_loop = False
    # True where --timeout stops an item with SIGALRM on a main thread (not on Windows)
    times_out_by_alarm = False
    # Seconds of items a chunk holds (dispatch.ChunkSizer), and, as the end nears, at most
    # 1 / (shares x workers) of the items left: where each chunk costs a message there and
    # back, its result's pickling and the worker's checks, chunks are longer and fewer
    chunk_seconds, chunk_shares = 0.02, 4
    bytes_sent = 0  # to worker processes during the current run (task and items)
    send_blocked = 0.0  # seconds sends waited for busy workers to take them (not sending)
    start_method: str | None = None
    dashboard: str | None = None  # a link to watch the run (dask's dashboard)
    started_with: tuple | None = None  # the user's modules when workers started (if it matters)
    kernel_objects = None  # where items get copies: what the kernel sent (SentObjects)

    hash_order_advice = ""  # what to do where items hash strings otherwise (errors.HASH_ORDER)

    def __init__(self, settings: BackendSettings) -> None:
        self.workers = settings.workers
        self.kept_native_threads = settings.native_threads

    @classmethod
    def hashes_otherwise(cls, start_method: str | None, scheduler: str | None) -> str | None:
        """Where items hash strings with another salt than the kernel's (other interpreters),
        the interpreters as a sentence names them; None where they hash as the kernel does."""
        return None

    @classmethod
    def settings_for(
        cls, workers: int | None, start_method: str | None, scheduler: str | None = None,
        native_threads: int | None = None,
    ) -> BackendSettings:  # fmt: skip
        """A run's options as this backend sees them. Without ``--workers``, the backend's own
        default; a start method only matters where items run in processes that copy kernel
        objects (there, none asked for means the platform's default, so that a warm pool
        started under it still fits), and elsewhere must not make a warm pool look stale."""
        method = None
        if cls.copies_kernel_objects:
            method = start_method or multiprocessing.get_start_method()
        native = native_threads if cls.copies_kernel_objects else None
        return BackendSettings(workers or cls.default_workers(), method, scheduler, None, native)

    def fits(self, settings: BackendSettings) -> bool:
        """Whether this warm backend can serve a run asking for these settings."""
        return (
            self.workers == settings.workers
            and self.start_method == settings.start_method
            and self.kept_native_threads == settings.native_threads
        )

    @property
    def description(self) -> str:
        """One line for %parallel_info's warm pools."""
        method = f", {self.start_method}" if self.start_method else ""
        return f"{self.name} ({errors.plural(self.workers, 'worker')}{method})"

    @classmethod
    def default_workers(cls) -> int:
        return usable_cores()

    @property
    def capacity(self) -> int:
        """How many chunks may be submitted and not yet returned."""
        return self.workers

    def begin(self, task: Task) -> None:  # noqa: B027 - optional hook
        """A run starts: everything the items need is prepared (and checked) here."""

    def worker_pids(self) -> list[int] | None:
        """The processes the items run in, for the CPU figures (None: look for the kernel's
        child processes, which costs a walk through every process on the machine)."""
        return [] if not self.copies_kernel_objects else None

    @abstractmethod
    def has_capacity(self) -> bool: ...

    @abstractmethod
    def submit(self, seq: int, start: int, items: list) -> None: ...

    @abstractmethod
    def wait(self, timeout: float) -> list[ChunkResult]:
        """Results that are ready within ``timeout`` seconds (possibly none)."""

    def chunks_applied(self, count: int) -> None:  # noqa: B027 - optional hook
        """The kernel has applied the run's first ``count`` chunks."""

    def fetch_names(self, wanted: dict[str, tuple[str, int, str]]) -> tuple[dict, list[str]]:
        """The values of names that workers kept (held_names.py): for each name, its worker,
        chunk and the name it was kept under. Returns the values, and the names whose values
        are lost."""
        return {}, list(wanted)

    def end(self, completed: bool) -> list[str]:
        """The run is over (``completed`` False: stopped early). Returns warnings to show."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads and processes; called on a configuration change and on unload."""


def failed_chunk(seq: int, start: int, items: list, error: Exception, worker: str) -> ChunkResult:
    """A chunk that never reported back (a dead worker, an expired item) as failed items, so
    that the dispatcher still applies every earlier item, the serial prefix, before the error."""
    result = ChunkResult(seq, start, worker)
    now = time.monotonic()
    for offset, item in enumerate(items):
        result.add(now, now, 0.0, [], None, None)
        result.errors[offset] = ItemError(error, [], short_repr(item))
    return result


@dataclass(frozen=True)
class Deadline:
    """``--timeout`` as the kernel enforces it, for backends whose items no alarm stops in
    time (threads, dask's worker threads) or whose alarm an item can ignore (C code holding
    on in a worker process). Chunks then hold one item each, so a chunk's deadline is its
    item's.

    ``grace``: seconds past ``seconds`` before the kernel acts: in a worker process, the
    item's own alarm should end it first and say so itself; on dask, the result may still be
    on its way. The messages still name ``seconds``, the limit the user set.
    """

    seconds: float
    grace: float = 0.0

    @classmethod
    def of(cls, seconds: float | None, grace: float = 0.0) -> Deadline | None:
        """The deadline of a run's ``--timeout`` (None: no limit, nothing to watch)."""
        return cls(seconds, grace) if seconds else None

    def wait_at_most(self, timeout: float, started: Iterable[float]) -> float:
        """``timeout``, cut short to when the oldest of these chunks runs out of time: a chunk
        that hangs must fail on time even when no other result comes to end the wait."""
        oldest = min(started, default=math.inf)
        return max(0.0, min(timeout, oldest + self.seconds + self.grace - time.monotonic()))

    def passed(self, began: float, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now - began > self.seconds + self.grace

    def overdue(self, started: Iterable[tuple[Any, float]]) -> list:
        """The keys of the (key, start time) pairs whose time is up, by one reading of the
        clock, so that chunks that ran out together fail together."""
        now = time.monotonic()
        return [key for key, began in started if self.passed(began, now)]

    def error(self, fate: str) -> TimeoutError:
        """The error an overdue item fails with; ``fate`` says what became of its worker."""
        return TimeoutError(errors.ITEM_TIMEOUT.format(seconds=self.seconds, fate=fate))


def drain(ready: queue.SimpleQueue, timeout: float) -> list:
    """What is in the queue: waits up to ``timeout`` for the first entry, then takes the rest."""
    try:
        entries = [ready.get(timeout=timeout)]
    except queue.Empty:
        return []
    while not ready.empty():
        entries.append(ready.get())
    return entries
