"""The run's figures as an object, and the short summary shown after each run."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    startup: float = 0.0
    timings: list[tuple] = field(default_factory=list)  # per item, the first MAX_ITEM_RECORDS
    item_count: int = 0
    busy: float = 0.0  # sum of the items' own times: what a serial run would roughly take
    cpu: float = 0.0
    per_worker: dict[str, int] = field(default_factory=dict)
    unfinished: list[int] = field(default_factory=list)  # handed out, never applied (interrupt)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # index, item, error
    auto_reason: str | None = None  # why --backend auto chose this backend
    native_limit: int | None = None  # BLAS/OpenMP threads per worker, when a cap applied
    stopped_at: int | None = None  # the failing item that stopped the run (--on-error raise)
    warnings: list[str] = field(default_factory=list)

    def add(self, result, count: int) -> None:
        """Count the first ``count`` items of a chunk result."""
        starts, ends, cpus = result.starts[:count], result.ends[:count], result.cpus[:count]
        self.item_count += count
        self.busy += sum(ends) - sum(starts)
        self.cpu += sum(cpus)
        self.per_worker[result.worker] = self.per_worker.get(result.worker, 0) + count
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

    def summary(self) -> str:
        method = f" ({self.start_method})" if self.start_method else ""
        plural = "s" if self.workers != 1 else ""
        workers = f"{self.workers} worker{plural}"
        if self.backend == "asyncio":
            workers = f"at most {self.workers} at once"
        line = (
            f"parmagic: {self.backend}{method} · {workers} · "
            f"{self.item_count} items in {self.chunks} chunks · wall {self.wall:.3f} s · "
            f"busy {self.busy:.3f} s"
        )
        if self.stopped_at is not None:
            line += f" · stopped at item {self.stopped_at}"
        if self.unfinished:
            line += f" · interrupted ({len(self.unfinished)} unfinished)"
        lines = [line]
        if self.auto_reason:
            lines.append(f"auto chose {self.backend}: {self.auto_reason}")
        if self.native_limit:
            lines.append(
                f"native thread pools (BLAS, OpenMP) limited to {self.native_limit} per worker "
                "process, so that workers × threads fit the cores"
            )
        if self.failures:
            lines.append(f"{len(self.failures)} item(s) failed:")
            lines += [f"  item {i} ({item}): {error}" for i, item, error in self.failures[:10]]
        return "\n".join(lines)

    __str__ = summary

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(self.summary())
