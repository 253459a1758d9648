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
from .worker import ItemError, ItemRecord, Task

TARGET_CHUNK_SECONDS = 0.02
MIN_CHUNK_SECONDS = 0.002
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
        limit = float(self.size)
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
    iterator = iter(iterable)
    sizer = ChunkSizer(chunksize, backend.workers, operator.length_hint(iterable))
    window = backend.capacity + max(4, backend.workers)
    began = time.monotonic()
    backend.begin(task)
    report.startup = time.monotonic() - began
    completed = False
    chunks: dict[int, list] = {}  # seq -> items, until applied (names items in errors)
    pending: dict[int, object] = {}
    submitted = applied = next_index = 0
    exhausted = failed = False
    try:
        while True:
            while (
                not (exhausted or failed)
                and backend.has_capacity()
                and submitted - applied < window
            ):
                items = list(itertools.islice(iterator, sizer.next_size()))
                if not items:
                    exhausted = True
                    break
                backend.submit(submitted, next_index, items)
                chunks[submitted] = items
                next_index += len(items)
                submitted += 1
            if applied == submitted:
                break
            for result in backend.wait(WAIT_SLICE):
                pending[result.seq] = result
                sizer.observe(result.records)
            while applied in pending:
                result = pending.pop(applied)
                items = chunks.pop(applied)
                applied += 1
                report.chunks += 1
                for record in result.records:
                    item = items[record.index - result.records[0].index]
                    _apply(record, ns, item, filename, keep_failed=task.stop_on_error)
                    report.add(record, result.worker)
                    if record.error is None:
                        yield record
                    elif task.stop_on_error:
                        failed = True
                        report.stopped_at = record.index
                        ns.update(result.names)
                        _raise(record.error, record.index)
                    else:
                        report.failures.append(
                            (record.index, record.error.item, repr(record.error.exception))
                        )
                ns.update(result.names)
                for name, kind in result.dropped_names.items():
                    report.warnings.append(errors.NAME_NOT_RETURNED.format(name=name, type=kind))
        completed = True
    finally:
        report.warnings += backend.end(completed)
        report.wall = time.monotonic() - began


def _apply(record: ItemRecord, ns: dict, item, filename: str, keep_failed: bool) -> None:
    """Show the item's output and replay its effects on the kernel's objects.

    A failed item's output is always shown. Its effects up to the failure are kept when the
    run stops there (as a serial loop leaves them) and dropped under ``--on-error continue``.
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
