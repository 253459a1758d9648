"""Drives one run: pull items lazily, dispatch chunks, apply results in item order, stop on error.

Memory stays bounded whatever the iterable: at most ``window`` chunks are out (submitted but
not yet applied), so an endless generator is read only as fast as items complete, and results
that finish early wait for at most that many earlier chunks.
"""

from __future__ import annotations

import itertools
import operator
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import CodeType
from typing import TYPE_CHECKING

from .. import errors
from ..backends import Backend
from ..errors import short_repr
from ..summary.report import RunReport
from ..worker.effects import FORGET, ReplayError, apply_ops
from ..worker.item_output import ItemOutput
from ..worker.kernel_state import HeldInterrupt, kept_as_it_was
from ..worker.shell import DISPLAYED
from ..worker.task import ChunkResult, ItemError, Task, leaves_its_changes

if TYPE_CHECKING:
    from ..worker.kernel_objects import SentObjects

MIN_CHUNK_SECONDS = 0.002
CHUNK_WORTH = 0.00025  # seconds of work worth a chunk of its own: about what one costs
MAX_CHUNK_ITEMS = 8192  # with the window, bounds how far the iterable is read ahead
WAIT_SLICE = 0.25  # seconds per wait, so the kernel thread stays responsive


@dataclass
class Pace:
    """The seconds per item a loop's latest run on a backend measured: its next run sizes
    its first chunks from it, rather than starting again from chunks of one item."""

    seconds: float | None = None


class ChunkSizer:
    """Chunk sizes from measured item time: each chunk about ``seconds`` of work (the
    backend's ``chunk_seconds``).

    Until an item has been timed every chunk holds one item, so that every worker starts at
    once and a slow item never sits queued behind another; then sizes follow the latest
    chunk's items, growing at most ``RAMP`` times past the largest chunk timed so far (a
    loop's first items are often cheaper than the rest). With a known length, chunks shrink
    as the end nears (OpenMP's "guided" schedule), so that no worker is left alone with a
    large last chunk. A loop run before (``pace``) starts from the pace of its slowest
    chunk then: items that get dearer as the loop goes on never start in chunks too large.
    """

    RAMP = 8

    def __init__(
        self,
        fixed: int | None,
        workers: int,
        length: int,
        pace: Pace | None = None,
        seconds: float = 0.02,
        shares: int = 4,
    ) -> None:
        self.fixed, self.seconds, self.shares = fixed, seconds, shares
        self.workers = workers
        self.remaining = length or None
        self.seconds_per_item = pace.seconds if pace is not None else None
        self.largest = 0  # with a pace, chunks grow from its size as from one timed so large
        if self.seconds_per_item:
            sized = int(seconds / self.seconds_per_item)
            self.largest = max(1, min(sized, MAX_CHUNK_ITEMS))
        self.slowest = 0.0  # per item, in the slowest chunk: the next run's pace
        self.latest = -1  # the first item of the latest chunk in the loop observed
        self.share = self._even_share()

    def _even_share(self) -> int | None:
        """A loop whose whole work, at its last run's pace, is under a chunk's target per
        worker is shared out evenly at once: a chunk per worker (fewer, if the work is not
        worth that many chunks), none left over for one worker alone at the end."""
        if not (self.seconds_per_item and self.remaining):
            return None
        work = self.remaining * self.seconds_per_item
        if work > self.workers * self.seconds:
            return None
        chunks = max(1, min(self.workers, int(work / CHUNK_WORTH)))
        return min(-(-self.remaining // chunks), 2 * MAX_CHUNK_ITEMS)

    def next_size(self) -> int:
        if self.fixed:
            return self.fixed
        size = 1
        if self.share:
            size = self.share
        elif self.seconds_per_item:
            limit = min(
                self.seconds / self.seconds_per_item,
                self.largest * self.RAMP,
                MAX_CHUNK_ITEMS,
            )
            if self.remaining is not None:  # a chunk of under ~2 ms of work balances nothing
                share = self.remaining / (self.shares * self.workers)
                limit = min(limit, max(share, MIN_CHUNK_SECONDS / self.seconds_per_item))
            size = max(1, int(limit))
        if self.remaining is not None:
            self.remaining -= size
        return size

    def observe(self, result: ChunkResult) -> None:
        """Follow the latest chunk in the loop (not the latest to come back: an early chunk
        can come back last): items often get dearer (or cheaper) as a loop goes on."""
        if len(result):
            busy = result.busy_and_cpu(len(result))[0]
            pace = max(busy / len(result), 1e-7)
            self.largest = max(self.largest, len(result))
            self.slowest = max(self.slowest, pace)
            if result.first >= self.latest:
                self.seconds_per_item, self.latest = pace, result.first


ECHO_ROOM = 3  # columns left after the bar: the "^C" a terminal echoes, and one to spare


def progress_bar(total: int):
    """tqdm, shown only once a run has lasted a second: a widget in a notebook with
    ipywidgets, text elsewhere; gone when the run ends (the summary follows)."""
    try:
        import ipywidgets  # noqa: F401 - tqdm.auto warns without it; then plain text
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    shown = {"total": total or None, "delay": 1.0, "unit": "item", "leave": False}
    if all(kind.__module__ != "tqdm.notebook" for kind in tqdm.__mro__):
        shown |= text_bar_settings()
    return tqdm(desc="parmagic", **shown)


def text_bar_settings() -> dict:
    """The same text bar on every backend. The threads backend puts stand-ins in sys.stderr
    (item output goes to its item), which have no encoding and no terminal: tqdm drew ASCII
    at a fixed width there and blocks at full width elsewhere. The bar writes to the stream
    underneath, narrow enough that a "^C" echoed after it stays on its line, so that closing
    clears both (a full-width bar wrapped the echo, and its line stayed behind)."""
    stream = sys.stderr.original if isinstance(sys.stderr, ItemOutput) else sys.stderr
    try:
        width = os.get_terminal_size(stream.fileno()).columns - ECHO_ROOM
    except (AttributeError, OSError, ValueError):  # not a terminal: tqdm's own default width
        width = None
    return {"file": stream, "ncols": width}


def close_progress(bar) -> None:
    """Gone on every way out of a run. tqdm keeps a notebook bar whose count fell short (an
    error, Ctrl-C, a timeout), frozen in red with a time left; the summary or the error says
    what happened, so its widgets are closed too (tqdm leaves them open in any case). In a
    terminal, the line is erased to its end: tqdm blanks only the bar's own width, not the
    "^C" the terminal echoed after it."""
    drawn = hasattr(bar, "last_print_t") and bar.last_print_t >= bar.start_t + bar.delay
    bar.close()
    box = getattr(bar, "container", None)  # tqdm.notebook's: a label, the bar, a label
    if box is not None:
        for widget in (*box.children, box):
            widget.close()
    elif drawn and _is_terminal(bar.fp):
        bar.fp.write("\r\x1b[K")
        bar.fp.flush()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


def _shown_as_text(*objects, **options) -> None:
    """Displayed objects where no display was given (a run outside IPython's magics)."""
    print(*map(repr, objects))


def _raise(error: ItemError, index: int, kind: str) -> None:
    exc = error.chained()
    exc.add_note(errors.item_note(index, error.item, kind))
    if isinstance(exc, StopIteration):
        exc.raised_by_an_item = True  # type: ignore[attr-defined]  # see unwrap_stop_iteration
    raise errors.shown_with_frames(exc, error.frames)


def unwrap_stop_iteration(error: RuntimeError) -> BaseException:
    """An item's StopIteration, which the run's generators turned into a RuntimeError (PEP
    479): the plain loop raises the StopIteration itself."""
    cause = error.__cause__
    return cause if getattr(cause, "raised_by_an_item", False) else error


class Applier:
    """Applies chunk results to the kernel's namespace in item order; runs the loop's ordered
    tail (``tail``, compiled) for each item once its results are applied."""

    def __init__(
        self,
        ns: dict,
        task: Task,
        report: RunReport,
        filename: str,
        tail: CodeType | None = None,
        lazy: bool = False,
        kernel_objects: SentObjects | None = None,
        show: Callable[..., None] = _shown_as_text,
    ) -> None:
        """``show``: IPython's ``display``, for what items in worker processes displayed."""
        self.ns, self.task, self.report, self.filename = ns, task, report, filename
        self.show = show
        self.tail = tail
        self.lazy = lazy  # the values go to the user's code as they come (a generator)
        self.kernel_objects = kernel_objects  # what items in worker processes got copies of
        self.failed = False
        self.held: dict[str, tuple[str, int, str]] = {}  # name -> where its value was kept

    def _run_tail(self, item) -> ItemError | None:
        try:
            exec(self.tail, self.ns)
        except Exception as error:
            return ItemError(error, errors.user_frames(error.__traceback__), short_repr(item))
        return None

    def apply_chunk(self, result: ChunkResult, items: list) -> Iterator:
        """Show output, replay changes, bind names, item by item; stop at a failure (raise).

        Values go one item at a time to a lazy consumer, else one list per chunk."""
        if self._nothing_per_item(result):
            held = HeldInterrupt()  # the chunk is bound and counted whole, or not at all
            try:
                if result.names_merged:  # the chunk's names, as its items left them
                    self._bind(next(n for n in reversed(result.names) if n is not None), result)
                self.report.add(result, len(result))
                self._applied(result)
            finally:
                held.release()  # a Ctrl-C held till now stops the run after this chunk
            yield result.all_values()
            return
        batch: list = []
        for values in self._apply_items(result, items):
            if self.lazy:
                yield values
            elif values:
                batch += values
        self._applied(result)
        if batch:
            yield batch

    def _bind(self, names: dict, result: ChunkResult) -> None:
        """Bind the names an item left; a value its worker kept is fetched when the run
        ends (held_names.py), and a later value of the name supersedes it."""
        if self.held:
            for name in names:
                self.held.pop(name, None)
        if result.held_names:
            names = names.copy()
            for name in result.held_names:
                self.held[name] = (result.worker, result.seq, names.pop(name).name)
        self.ns.update(names)

    def _forget_held(self, ops: list[tuple]) -> None:
        """An item deleted the name (``del x``): a value a worker kept for it is not its."""
        if self.held:
            for op in ops:
                if op[0] == FORGET:
                    self.held.pop(op[2], None)

    def fetch_held(self, backend: Backend) -> list[str]:
        """The kept values, bound at last (on every way out of a run); warnings for those
        lost with their worker process."""
        if not self.held:
            return []
        values, lost = backend.fetch_names(self.held)
        self.ns.update(values)
        self.held.clear()
        return [errors.HELD_NAME_LOST.format(name=name) for name in lost]

    def _applied(self, result: ChunkResult) -> None:
        """The chunk's copies of kernel objects are spent: later items see the kernel's."""
        if self.kernel_objects is not None:
            self.kernel_objects.applied(result.seq)

    def _nothing_per_item(self, result: ChunkResult) -> bool:
        """Whether the chunk's items left nothing to apply one by one (the serial backend's
        chunks, items that only computed a comprehension's values)."""
        return not (
            self.lazy
            or self.tail is not None
            or result.outputs
            or result.errors
            or result.interrupted
            or any(result.ops)
            or (not result.names_merged and any(result.names))
        )

    def _apply_items(self, result: ChunkResult, items: list) -> Iterator:
        ns, stop_on_error, counted = self.ns, self.task.stop_on_error, 0
        outputs, failures = result.outputs, result.errors
        objects = self.kernel_objects
        checks = objects.checks(result.seq) if objects is not None else None
        held = HeldInterrupt(not self.lazy)  # an item is applied whole: Ctrl-C waits
        # the chunk's names come on its last item: Ctrl-C waits for the whole chunk
        between_items = _nothing if result.names_merged else held.raise_if_pressed
        try:
            for offset, (ops, names) in enumerate(zip(result.ops, result.names, strict=True)):
                between_items()
                counted = offset + 1
                if outputs and offset in outputs:
                    for stream, text in outputs[offset]:
                        if stream == DISPLAYED:
                            objects, options = text
                            self.show(*objects, **options)
                        else:
                            (sys.stdout if stream == 1 else sys.stderr).write(text)
                error = failures.get(offset) if failures else None
                interrupted = error is not None and isinstance(error.exception, KeyboardInterrupt)
                if error is None or leaves_its_changes(error.exception, stop_on_error):
                    # a failed item's changes up to its failure stay, as a serial loop leaves
                    # them; under --on-error continue a failed item leaves nothing
                    if ops:
                        try:
                            apply_ops(ns, ops, checks)
                        except ReplayError as failure:
                            frames = [(self.filename, failure.line, errors.ITEM_FUNCTION_NAME)]
                            item = short_repr(items[offset])
                            error = error or ItemError(failure.error, frames, item)
                        self._forget_held(ops)
                    if names:
                        self._bind(names, result)
                    between_items()
                    if error is None and self.tail is not None:
                        error = self._run_tail(items[offset])
                if error is None:
                    yield result.item_values(offset)
                    continue
                index = result.first + offset
                if interrupted:  # whoever raised it: the run stops, the item half-applied
                    self.failed, counted = True, offset
                    raise error.exception
                if stop_on_error or isinstance(error.exception, errors.SharedObjectChanged):
                    self.failed = True
                    self.report.stop_at(index)
                    _raise(error, index, self.task.kind)
                self.report.failures.append((index, error.item, repr(error.exception)))
            if result.interrupted:
                self.failed = True
                raise KeyboardInterrupt
        finally:
            self.report.add(result, counted)
            held.release()  # a Ctrl-C held till now stops the run after this chunk


def _nothing() -> None:
    pass


class Recording:
    """Keeps chunk results, in item order, instead of applying them (``--compare``): each
    backend's run is recorded, and only one recording is applied (:func:`replay`)."""

    def __init__(self, task: Task, report: RunReport) -> None:
        self.task, self.report = task, report
        self.transcript: list[tuple[ChunkResult, list]] = []
        self.failed = False
        self.hidden: str | None = None  # state an item changed unnamed (the guard saw it)

    def apply_chunk(self, result: ChunkResult, items: list) -> Iterator:
        if self.failed:
            return  # past the item that stopped the run, as a serial run never gets there
        if result.hidden:  # the run as a real one would have stopped it: here, no further
            self.failed, self.hidden = True, result.hidden
            self.report.stop_at(result.first)
            return
        self.transcript.append((result, items))
        count = len(result)
        if result.errors and self.task.stop_on_error:
            self.failed = True
            count = min(result.errors) + 1
            self.report.stop_at(result.first + count - 1)
        for offset, error in sorted(result.errors.items()):
            if offset < count:
                failure = (result.first + offset, error.item, repr(error.exception))
                self.report.failures.append(failure)
        self.report.add(result, count)
        yield from ()


def replay(transcript: list, applier: Applier) -> Iterator[list]:
    """Apply a recorded run to the kernel, exactly as the run would have applied it."""
    for result, items in transcript:
        yield from applier.apply_chunk(result, items)


class _Run:
    """The state of one run between the iterable, the backend and the kernel's namespace."""

    def __init__(self, backend, task, iterable, applier, report, chunksize, length, pace) -> None:
        self.backend, self.task, self.applier, self.report = backend, task, applier, report
        self.iterator = iter(iterable)
        self.range = iterable if type(iterable) is range else None  # chunks: its slices
        if task.timeout or backend.one_item_per_chunk:
            chunksize = 1  # a deadline per message is a deadline per item
        self.sizer = ChunkSizer(
            chunksize, backend.workers, length, pace, backend.chunk_seconds, backend.chunk_shares
        )
        self.pace = pace
        self.window = backend.capacity + max(4, backend.workers)
        self.chunks: dict[int, list] = {}  # seq -> items, until applied (names items in errors)
        self.starts: dict[int, int] = {}  # seq -> index of its first item, until applied
        self.pending: dict[int, ChunkResult] = {}
        self.submitted = self.applied = self.next_index = self.first_index = 0
        self.exhausted = False
        self.iterable_error: Exception | None = None  # raised by the iterable, after its prefix
        self.until: Callable[[], bool] | None = None
        self.progress = None

    @property
    def failed(self) -> bool:
        return self.applier.failed

    def fill(self) -> None:
        """Submit chunks while the backend has room and the window allows."""
        while (
            not (self.exhausted or self.failed)
            and self.backend.has_capacity()
            and self.submitted - self.applied < self.window
        ):
            if self.until is not None and self.until():
                self.exhausted = True  # for this backend: the rest goes elsewhere
                return
            items = self._take(self.sizer.next_size())
            if not items:
                self.exhausted = True
                return
            self.backend.submit(self.submitted, self.next_index, items)
            self.chunks[self.submitted] = items
            self.starts[self.submitted] = self.next_index
            self.next_index += len(items)
            self.submitted += 1

    def _take(self, count: int) -> Sequence:
        """The next items; an iterable that raises part-way ends the run there, and its
        items before the failure still run, as a plain loop runs them. A range's items are
        its slices, which cost nothing to make or to send."""
        if self.range is not None:
            taken = self.next_index - self.first_index
            return self.range[taken : taken + count]
        items: list = []
        try:
            items.extend(itertools.islice(self.iterator, count))
        except Exception as error:
            self.iterable_error, self.exhausted = error, True
        return items

    def collect(self) -> None:
        for result in self.backend.wait(WAIT_SLICE):
            self.pending[result.seq] = result
            self.sizer.observe(result)
            if result.native_limit and not self.backend.kept_native_threads:  # capped
                self.report.capped(result.native_limit, self.chunks.get(result.seq))

    def apply_ready(self) -> Iterator:
        """Apply every result whose earlier items are all applied, in item order, item by
        item; yield each successful item's values (a comprehension's) once it is applied, so
        that a consumer that stops early (``any``, ``next``) sees nothing of later items."""
        while self.applied in self.pending:
            if self.pending[self.applied].hidden and not isinstance(self.applier, Recording):
                raise self._hidden_change(self.pending[self.applied])
            result = self.pending.pop(self.applied)
            items = self.chunks.pop(self.applied)
            del self.starts[self.applied]
            self.applied += 1
            self.backend.chunks_applied(self.applied)
            self.report.chunk_applied()
            yield from self.applier.apply_chunk(result, items)
            if self.progress is not None:
                self.progress.update(len(result))
            for name, kind in result.dropped_names.items():  # every chunk says so: once
                warning = errors.NAME_NOT_RETURNED.format(name=name, type=kind)
                if warning not in self.report.warnings:
                    self.report.warnings.append(warning)

    def _hidden_change(self, result: ChunkResult) -> errors.HiddenChange:
        """The stop before a chunk that changed state the loop's lines do not name: its items
        and every later one are not applied (auto runs them in the kernel instead)."""
        self.applier.failed = True
        first, last = result.first, result.first + len(self.chunks[result.seq]) - 1
        if not self.backend.copies_kernel_objects:
            who = errors.HIDDEN_IN_KERNEL.format(first=first)
        elif first == last:
            item = short_repr(self.chunks[result.seq][0])
            who = errors.HIDDEN_IN_WORKER.format(first=first, item=item)
        else:
            who = errors.HIDDEN_IN_WORKER_CHUNK.format(first=first, last=last)
        unapplied = [item for seq in sorted(self.chunks) for item in self.chunks[seq]]
        return errors.HiddenChange(result.hidden, first, unapplied, who, self.backend.name)

    @property
    def done(self) -> bool:
        return self.applied == self.submitted and (self.exhausted or self.failed)

    def end(self, completed: bool) -> list[str]:
        """The backend's part is over: the values workers kept are fetched (on every way
        out), then the backend ends. Returns the warnings of both."""
        applier = self.applier
        fetched = applier.fetch_held(self.backend) if isinstance(applier, Applier) else []
        warnings = fetched + self.backend.end(completed)
        if self.pace is not None and self.sizer.slowest:
            self.pace.seconds = self.sizer.slowest
        if self.backend.kernel_objects is not None:
            self.backend.kernel_objects.clear()
        return warnings

    def unfinished(self) -> list[int]:
        """Items that were handed to workers but never applied."""
        return [
            i
            for seq, items in self.chunks.items()
            for i in range(self.starts[seq], self.starts[seq] + len(items))
        ]


@dataclass
class RunSpec:
    """What one run needs besides its backend, task and items: the namespace its items'
    effects go to, the report it fills, and how it hands out, stops and shows them."""

    ns: dict
    report: RunReport
    filename: str
    chunksize: int | None = None
    stop: threading.Event | None = None  # set by the kernel thread: stop at the next chunk
    first_index: int = 0
    length: int | None = None
    progress: bool = False
    recording: Recording | None = None  # nothing applied: the recording keeps the results
    tail: CodeType | None = None
    lazy: bool = False
    until: Callable[[], bool] | None = None  # True: the rest goes elsewhere (auto)
    pace: Pace | None = None
    show: Callable[..., None] = _shown_as_text  # IPython's display, given by the magics


def execute(backend: Backend, task: Task, iterable, spec: RunSpec) -> Iterator[list]:
    """Run the loop; yield each successful item's values (for comprehensions) once the item
    is applied to ``spec.ns``, in item order. With a recording, nothing is applied: the
    recording keeps the results. ``until``: asked before each chunk is taken; True ends the
    run there, and the rest of the iterable stays unread (auto moves it elsewhere)."""
    length = operator.length_hint(iterable) if spec.length is None else spec.length
    recording, report, tail = spec.recording, spec.report, spec.tail
    if task.in_place is not None:
        tail = None  # the loop runs whole, its tail included
    applier = recording or Applier(
        spec.ns, task, report, spec.filename, tail, spec.lazy,
        kernel_objects=backend.kernel_objects, show=spec.show,
    )  # fmt: skip
    run = _Run(backend, task, iterable, applier, report, spec.chunksize, length, spec.pace)
    run.next_index = run.first_index = spec.first_index
    run.until = spec.until
    with kept_as_it_was(random_state=task.seed is not None):
        try:
            yield from _drive(run, backend, task, report, spec.stop, spec.progress, length)
        except errors.HiddenChange as stop_there:
            report.stop_at(stop_there.first)
            if task.guard is not None:  # the kernel's own state, now that no item runs
                lost = task.guard.restore()
                kept = errors.HIDDEN_NOT_PUT_BACK.format(lost=", ".join(lost))
                stop_there.args = (stop_there.explained(kept if lost else errors.HIDDEN_PUT_BACK),)
            raise errors.shown_with_frames(stop_there, []) from None


def _drive(run: _Run, backend: Backend, task: Task, report: RunReport, stop, progress, length):
    began, process_cpu = time.monotonic(), time.process_time()
    backend.begin(task)
    report.stretch_began(backend, time.monotonic() - began)
    from ..summary.monitor import Monitor  # psutil: imported by the first run, not by %load_ext

    completed, monitor, consumer_stopped = False, None, False
    try:
        monitor = Monitor(pids=backend.worker_pids()).start()
        run.progress = progress_bar(length) if progress else None
        while True:
            mark, blocked = time.monotonic(), backend.send_blocked
            run.fill()
            waited = backend.send_blocked - blocked  # a busy worker's, not the sending's
            report.sent(time.monotonic() - mark, waited)
            if run.done:
                break
            mark = time.monotonic()
            run.collect()
            report.waited(time.monotonic() - mark)
            mark = time.thread_time()
            yield from run.apply_ready()
            report.applied(time.thread_time() - mark)
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt  # asked by the kernel thread (see Session)
        completed = True
        if run.iterable_error is not None and not run.failed:
            error = run.iterable_error
            raise errors.shown_with_frames(error, errors.user_frames(error.__traceback__))
    except GeneratorExit:  # a consumer that stopped early (any, next): items ran ahead
        consumer_stopped = True
        raise
    except KeyboardInterrupt as interrupt:
        report.interrupt(run.unfinished())
        applied = errors.first_applied(report.item_count)
        interrupt.add_note(errors.INTERRUPTED.format(applied=applied))
        raise errors.shown_with_frames(interrupt, []) from None
    finally:
        task.cancelled.set()  # pool threads start no further item of this run
        try:
            if run.progress is not None:
                close_progress(run.progress)
        finally:  # a widget that fails to close still leaves the run ended
            warnings = run.end(completed)
            if not consumer_stopped:  # else items still running are read-ahead nobody asked for
                report.warnings += warnings
            usage = None if monitor is None else monitor.stop()
            elapsed, process_cpu = time.monotonic() - began, time.process_time() - process_cpu
            report.stretch_ended(elapsed, process_cpu, backend.bytes_sent, usage)
