"""One small module per backend behind one interface, and a registry that imports them lazily.

A backend runs chunks of items (:func:`parmagic.worker.run_chunk`) somewhere and hands back
their results in any order; the dispatcher owns ordering, effects and errors. Adding a backend
means one module with one :class:`Backend` subclass and one line in ``REGISTRY``.
"""

from __future__ import annotations

import importlib
import queue
import time
from abc import ABC, abstractmethod

from ..chunk import ChunkResult, ItemError, Task
from ..errors import short_repr
from ..machine import usable_cores

REGISTRY = {
    "serial": "serial:SerialBackend",
    "threads": "threads:ThreadBackend",
    "futures": "threads:FuturesBackend",
    "processes": "processes:ProcessBackend",
    "futures:processes": "process_futures:ProcessFuturesBackend",
    "asyncio": "coroutines:AsyncioBackend",
    "dask": "dask_cluster:DaskBackend",
}
CHOICES = (*REGISTRY, "auto")


class Backend(ABC):
    """Runs chunks of items; knows nothing of order, effects or the kernel's namespace."""

    name: str
    copies_kernel_objects = False  # True where items see copies of kernel objects
    one_item_per_chunk = False  # True where every item needs its own message (coroutines)
    runs_coroutines = False  # True where the item function is a coroutine function
    items_share_a_process = False  # True where items take turns at one process's Python
    bytes_sent = 0  # to worker processes during the current run (task and items)
    send_blocked = 0.0  # seconds sends waited for busy workers to take them (not sending)
    start_method: str | None = None
    dashboard: str | None = None  # a link to watch the run (dask's dashboard)
    started_with: tuple | None = None  # the user's modules when workers started (if it matters)

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def fits(self, workers: int, start_method: str | None, scheduler: str | None) -> bool:
        """Whether this warm backend can serve a run asking for these settings."""
        return self.workers == workers and self.start_method == start_method

    @property
    def description(self) -> str:
        """One line for %parallel_info's warm pools."""
        method = f", {self.start_method}" if self.start_method else ""
        return f"{self.name} ({self.workers} workers{method})"

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


def drain(ready: queue.SimpleQueue, timeout: float) -> list:
    """What is in the queue: waits up to ``timeout`` for the first entry, then takes the rest."""
    try:
        entries = [ready.get(timeout=timeout)]
    except queue.Empty:
        return []
    while not ready.empty():
        entries.append(ready.get())
    return entries


def load_backend(name: str) -> type[Backend]:
    module_name, class_name = REGISTRY[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)
