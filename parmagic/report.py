"""The run's figures as an object (``parmagic.last_report()``); render.py draws them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .monitor import Usage


CPU_BOUND_SHARE = 0.7  # the items' CPU share from which a loop counts as computing


@dataclass
class ItemTiming:
    index: int
    worker: str
    start: float  # time.monotonic(), comparable across the kernel and its workers
    end: float
    cpu: float


MAX_ITEM_RECORDS = 100_000  # per-item timings kept; the totals count every item


@dataclass
class RunReport:
    """What one run did. ``parmagic.last_report()`` returns the latest one."""

    backend: str
    workers: int
    start_method: str | None = None
    chunks: int = 0
    wall: float = 0.0
    startup: float = 0.0  # preparing the run: pickling the task, a pool's first start
    sending: float = 0.0  # reading the iterable and handing chunks to the backend
    waiting: float = 0.0  # waiting for results while the items run
    bytes_sent: int = 0  # pickled task and items sent to worker processes
    timings: list[tuple] = field(default_factory=list)  # per item, the first MAX_ITEM_RECORDS
    item_count: int = 0
    busy: float = 0.0  # sum of the items' own times: what a serial run would roughly take
    cpu: float = 0.0
    queued: float = 0.0  # of busy: items ready to run, waiting for a core (a loaded machine)
    per_worker: dict[str, int] = field(default_factory=dict)
    unfinished: list[int] = field(default_factory=list)  # handed out, never applied (interrupt)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # index, item, error
    auto_reason: str | None = None  # why --backend auto chose this backend
    native_limit: int | None = None  # BLAS/OpenMP threads per worker, when a cap applied
    stopped_at: int | None = None  # the failing item that stopped the run (--on-error raise)
    interrupted: bool = False
    started: bool = False  # False: refused before any item ran (no summary to show)
    warnings: list[str] = field(default_factory=list)
    worker_busy: dict[str, float] = field(default_factory=dict)
    cores: int = 1  # usable cores during the run
    copies_objects: bool = False  # items ran in other processes, on copies of kernel objects
    usage: Usage | None = None  # per-core and machine samples (monitor.py)
    dashboard: str | None = None  # a link to the cluster's dashboard (dask)

    def add(self, result, count: int) -> None:
        """Count the first ``count`` items of a chunk result."""
        starts, ends, cpus = result.starts[:count], result.ends[:count], result.cpus[:count]
        self.item_count += count
        self.busy += sum(ends) - sum(starts)
        self.cpu += sum(cpus)
        if len(result):
            self.queued += result.queued * count / len(result)
        self.per_worker[result.worker] = self.per_worker.get(result.worker, 0) + count
        busy = self.worker_busy.get(result.worker, 0.0)
        self.worker_busy[result.worker] = busy + sum(ends) - sum(starts)
        room = MAX_ITEM_RECORDS - len(self.timings)
        if room > 0:
            indices = range(result.first, result.first + count)
            workers = [result.worker] * count
            self.timings += list(zip(indices, workers, starts, ends, cpus, strict=True))[:room]

    @property
    def items(self) -> list[ItemTiming]:
        """Per-item records (index, worker, start, end, CPU time) of the first items."""
        return [ItemTiming(*timing) for timing in self.timings]

    @property
    def worker_ids(self) -> set[str]:
        return set(self.per_worker)

    @property
    def applying(self) -> float:
        """The rest of the wall time: results shown, changes replayed, names bound."""
        return max(0.0, self.wall - self.startup - self.sending - self.waiting)

    @property
    def cpu_share(self) -> float:
        """The items' CPU time over the time they were not kept from a core: near 1 they
        compute, near 0 they wait (I/O, sleep, locks). Time spent ready but queued for a core
        (other programs on a busy machine) is left out: it says nothing of the items."""
        running = max(self.busy - self.queued, self.cpu)  # a thread's CPU time fits in it
        return min(1.0, self.cpu / running) if running > 0 else 0.0

    @property
    def speedup(self) -> float:
        """Over the serial estimate (the items' summed times)."""
        return self.busy / self.wall if self.wall > 0 else 0.0

    @property
    def ideal(self) -> float:
        """The best speedup this backend could reach on this machine for this loop."""
        parallel = max(1, min(self.workers, self.item_count))
        if self.backend == "serial":
            return 1.0
        if self.cpu_share >= CPU_BOUND_SHARE:
            if self.copies_objects:
                return float(min(parallel, self.cores))
            return 1.0  # one thread runs Python at a time (the GIL)
        return float(parallel)

    @property
    def efficiency(self) -> float:
        return self.speedup / self.ideal if self.ideal else 0.0

    def summary(self) -> str:
        from .render import text_summary

        return text_summary(self)

    __str__ = summary

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(self.summary())

    def _repr_html_(self) -> str:
        from .render import html_summary

        return html_summary(self)
