"""Drives one run: pull items lazily, dispatch chunks, apply results in item order, stop on error.

Memory stays bounded whatever the iterable: at most ``window`` chunks are out (submitted but
not yet applied), so an endless generator is read only as fast as items complete, and results
that finish early wait for at most that many earlier chunks.
"""

from __future__ import annotations

import itertools
import operator
import sys
import time
from collections.abc import Iterator

from . import errors
from .backends import Backend
from .effects import ReplayError, apply_ops
from .errors import short_repr
from .report import RunReport
from .worker import ChunkResult, ItemError, ItemRecord, Task

TARGET_CHUNK_SECONDS = 0.02
MIN_CHUNK_SECONDS = 0.002
MAX_CHUNK_ITEMS = 4096  # with the window, bounds how far the iterable is read ahead
WAIT_SLICE = 0.25  # seconds per wait, so the kernel thread stays responsive


class ChunkSizer:
    """Adaptive chunk sizes: start at one item, double while items are cheap.

    Cheap items end in large chunks (little messaging per item), slow items stay one per
    chunk. With a known length, chunks shrink as the end nears (OpenMP's "guided" schedule),
    so that no worker is left alone with a large last chunk.
    """

    def __init__(self, fixed: int | None, workers: int, length: int) -> None:
        self.fixed = fixed
        self.workers = workers
        self.remaining = length or None
        self.size = 1
        self.seconds_per_item: float | None = None

    def next_size(self) -> int:
        if self.fixed:
            return self.fixed
        limit = float(min(self.size, MAX_CHUNK_ITEMS))
        if self.seconds_per_item:
            limit = min(limit, TARGET_CHUNK_SECONDS / self.seconds_per_item)
        if self.remaining is not None:
            share = self.remaining / (4 * self.workers)
            if self.seconds_per_item:  # a chunk of under ~2 ms of work balances nothing
                share = max(share, MIN_CHUNK_SECONDS / self.seconds_per_item)
            limit = min(limit, share)
        size = max(1, int(limit))
        self.size = size * 2
        if self.remaining is not None:
            self.remaining -= size
        return size

    def observe(self, records: list[ItemRecord]) -> None:
        """Follow the latest chunk: items often get dearer (or cheaper) as a loop goes on."""
        if records:
            busy = sum(r.end - r.start for r in records)
            self.seconds_per_item = max(busy / len(records), 1e-7)


def _raise(error: ItemError, index: int) -> None:
    exc = error.exception
    exc.add_note(errors.ITEM_NOTE.format(index=index, item=error.item))
    raise errors.present(exc, error.frames)


class _Run:
    """The state of one run between the iterable, the backend and the kernel's namespace."""

    def __init__(self, backend, task, iterable, ns, report, filename, chunksize) -> None:
        self.backend, self.task, self.ns, self.report = backend, task, ns, report
        self.filename = filename
        self.iterator = iter(iterable)
        if task.timeout:
            chunksize = 1  # a deadline per message is a deadline per item
        self.sizer = ChunkSizer(chunksize, backend.workers, operator.length_hint(iterable))
        self.window = backend.capacity + max(4, backend.workers)
        self.chunks: dict[int, list] = {}  # seq -> items, until applied (names items in errors)
        self.starts: dict[int, int] = {}  # seq -> index of its first item
        self.pending: dict[int, ChunkResult] = {}
        self.submitted = self.applied = self.next_index = 0
        self.exhausted = self.failed = False

    def fill(self) -> None:
        """Submit chunks while the backend has room and the window allows."""
        while (
            not (self.exhausted or self.failed)
            and self.backend.has_capacity()
            and self.submitted - self.applied < self.window
        ):
            items = list(itertools.islice(self.iterator, self.sizer.next_size()))
            if not items:
                self.exhausted = True
                return
            self.backend.submit(self.submitted, self.next_index, items)
            self.chunks[self.submitted] = items
            self.starts[self.submitted] = self.next_index
            self.next_index += len(items)
            self.submitted += 1

    def collect(self) -> None:
        for result in self.backend.wait(WAIT_SLICE):
            self.pending[result.seq] = result
            self.sizer.observe(result.records)
            if result.native_limit:
                self.report.native_limit = result.native_limit

    def apply_ready(self) -> Iterator[ItemRecord]:
        """Apply every result whose earlier items are all applied, in item order."""
        while self.applied in self.pending:
            result = self.pending.pop(self.applied)
            items = self.chunks.pop(self.applied)
            first = self.starts.pop(self.applied)
            self.applied += 1
            self.report.chunks += 1
            for record in result.records:
                _apply(record, self.ns, items[record.index - first], self.filename,
                       keep_failed=self.task.stop_on_error)  # fmt: skip
                self.report.add(record, result.worker)
                if record.error is None:
                    yield record
                elif self.task.stop_on_error:
                    self.failed = True
                    self.report.stopped_at = record.index
                    _raise(record.error, record.index)
                else:
                    error = record.error
                    self.report.failures.append((record.index, error.item, repr(error.exception)))
            for name, kind in result.dropped_names.items():
                self.report.warnings.append(errors.NAME_NOT_RETURNED.format(name=name, type=kind))

    @property
    def done(self) -> bool:
        return self.applied == self.submitted and (self.exhausted or self.failed)

    def unfinished(self) -> list[int]:
        """Items that were handed to workers but never applied."""
        return [
            i
            for seq, items in self.chunks.items()
            for i in range(self.starts[seq], self.starts[seq] + len(items))
        ]


def execute(
    backend: Backend,
    task: Task,
    iterable,
    ns: dict,
    report: RunReport,
    *,
    filename: str,
    chunksize: int | None = None,
) -> Iterator[ItemRecord]:
    """Yield each item's record, in item order, once its effects are applied to ``ns``."""
    run = _Run(backend, task, iterable, ns, report, filename, chunksize)
    began = time.monotonic()
    backend.begin(task)
    report.startup = time.monotonic() - began
    completed = False
    try:
        while True:
            run.fill()
            if run.done:
                break
            run.collect()
            yield from run.apply_ready()
        completed = True
    except KeyboardInterrupt as interrupt:
        report.unfinished = run.unfinished()
        interrupt.add_note(errors.INTERRUPTED.format(applied=report.item_count))
        raise errors.present(interrupt, []) from None
    finally:
        task.cancelled.set()  # pool threads start no further item of this run
        report.warnings += backend.end(completed)
        report.wall = time.monotonic() - began


def _apply(record: ItemRecord, ns: dict, item, filename: str, keep_failed: bool) -> None:
    """Show the item's output, replay its effects on the kernel's objects, bind its names.

    A failed item's output is always shown. Its effects and names up to the failure are kept
    when the run stops there (as a serial loop leaves them) and dropped under
    ``--on-error continue``. A change that fails to replay here fails its item at that point.
    """
    for stream, text in record.output:
        (sys.stdout if stream == 1 else sys.stderr).write(text)
    if record.error is not None and not keep_failed:
        return
    try:
        apply_ops(ns, record.ops)
    except ReplayError as failure:
        frames = [(filename, failure.line, errors.ITEM_FUNCTION_NAME)]
        record.error = ItemError(failure.error, frames, short_repr(item))
    if record.names and (record.error is None or keep_failed):
        ns.update(record.names)
