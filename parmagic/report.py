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
    items: list[ItemTiming] = field(default_factory=list)  # the first MAX_ITEM_RECORDS items
    item_count: int = 0
    busy: float = 0.0  # sum of the items' own times: what a serial run would roughly take
    cpu: float = 0.0
    per_worker: dict[str, int] = field(default_factory=dict)
    unfinished: list[int] = field(default_factory=list)  # handed out, never applied (interrupt)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # index, item, error
    native_limit: int | None = None  # BLAS/OpenMP threads per worker, when a cap applied
    stopped_at: int | None = None  # the failing item that stopped the run (--on-error raise)
    warnings: list[str] = field(default_factory=list)

    def add(self, record, worker: str) -> None:
        self.item_count += 1
        self.busy += record.end - record.start
        self.cpu += record.cpu
        self.per_worker[worker] = self.per_worker.get(worker, 0) + 1
        if len(self.items) < MAX_ITEM_RECORDS:
            self.items.append(
                ItemTiming(record.index, worker, record.start, record.end, record.cpu)
            )

    @property
    def worker_ids(self) -> set[str]:
        return set(self.per_worker)

    def summary(self) -> str:
        method = f" ({self.start_method})" if self.start_method else ""
        plural = "s" if self.workers != 1 else ""
        line = (
            f"parmagic: {self.backend}{method} · {self.workers} worker{plural} · "
            f"{self.item_count} items in {self.chunks} chunks · wall {self.wall:.3f} s · "
            f"busy {self.busy:.3f} s"
        )
        if self.stopped_at is not None:
            line += f" · stopped at item {self.stopped_at}"
        if self.unfinished:
            line += f" · interrupted ({len(self.unfinished)} unfinished)"
        lines = [line]
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
