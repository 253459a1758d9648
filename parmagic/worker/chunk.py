"""Where items run: one chunk of items through the item function, on any backend.

Every backend calls :func:`run_chunk` (the kernel's own thread, pool threads, worker processes),
so every backend records output, effects, names, timings and errors the same way. Worker
processes import it (worker/process.py is their main loop), so it imports nothing heavy:
never IPython.
"""

from __future__ import annotations

import array
import itertools
import operator
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ITEM_TIMEOUT, short_repr
from .effects import ITEM_ARG, LOG_ARG, EffectLog, merge_item_names
from .item_clock import (
    CpuCounted,
    CpuSpans,
    ItemTimedOut,
    alarms,
    arm,
    disarm,
    group_size,
    run_queue_wait,
)
from .item_output import ChunkOutput, current_output
from .task import NO_OPS, ChunkResult, ItemError, Task, leaves_its_changes, spread_times

if TYPE_CHECKING:  # cloudpickle: imported by the first run that needs it, not by %load_ext
    from .kernel_objects import ChunkObjects

# the serial backend's chunk, and a comprehension's values, in the kernel's namespace
CHUNK_NAME, VALUES_NAME = "__parmagic_chunk__", "__parmagic_values__"
_FIRST = operator.itemgetter(0)


class LiveChunk:
    """A chunk as it runs, for the kernel to freeze at its deadline where nothing stops the
    item in time (a thread, an event loop another item blocks, a cancellation the item
    swallows): the timed-out item then keeps what it did before its limit, its recorded
    changes and output so far, as an item that raised at that moment would; whatever it does
    afterwards is never seen. Written by the chunk's thread, read by the one that freezes it."""

    def __init__(self) -> None:
        self.result: ChunkResult | None = None
        self.item: tuple | None = None  # the running item's offset, log and comparison
        self.frozen: ChunkResult | None = None
        self._lock = threading.Lock()

    def watch(self, offset: int, log: EffectLog, objects=None, item=None, before=None, line=0):
        """The item now running; ``objects``/``before``: it is a copy of the kernel's, so at
        the deadline it is compared with how it began, as run_chunk compares a finished one."""
        compare = None if before is None else (objects, item, before, line)
        self.item = (offset, log, compare)  # one assignment: the freezing thread sees it whole

    def freeze(self, seq: int, start: int, items: list, error: BaseException, worker: str):
        """The chunk as it stands now, its running item (and any after it) failed with
        ``error``; the first freeze is the chunk's, later calls return it again."""
        with self._lock:
            if self.frozen is None:
                self.frozen = self._snapshot(seq, start, items, error, worker)
            return self.frozen

    def _snapshot(self, seq: int, start: int, items: list, error, worker: str) -> ChunkResult:
        live, running = self.result, self.item
        frozen = ChunkResult(seq, start, worker)
        done = 0 if live is None else len(live.values)  # the column a record fills last
        frozen.still_running = done
        for offset in range(done):
            frozen.add(live.starts[offset], live.ends[offset], live.cpus[offset],
                       live.ops[offset], live.names[offset], live.values[offset])  # fmt: skip
            if offset in live.errors:
                frozen.errors[offset] = live.errors[offset]
        now = time.monotonic()
        for offset in range(done, len(items)):
            ops = []
            if running and running[0] == offset == done:
                ops = list(running[1].ops)
                if running[2] is not None:  # read as it stands (a failed read keeps none)
                    _add_changes(frozen, offset, ops, *running[2], None)
            frozen.add(now, now, 0.0, ops, None, None)
            frozen.errors[offset] = ItemError(error, [], short_repr(items[offset]))
        for offset, entries in list(live.outputs.items()) if live is not None else ():
            if offset <= done:
                frozen.outputs[offset] = list(entries)
        return frozen


def seed_item(seed: int, index: int) -> None:
    """--seed: the item's own streams for ``random`` and NumPy's global state, made from the
    seed and the item's index alone, so that an item draws the same numbers on every backend
    whatever the worker count and chunking."""
    import random

    random.seed(f"parmagic:{seed}:{index}")
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(numpy.random.SeedSequence([seed, index]).generate_state(4))


class MergedNames:
    """A chunk's names in one dict (Task.merge_names), and the last item that left some."""

    __slots__ = ("names", "holder")

    def __init__(self) -> None:
        self.names: dict[str, Any] = {}
        self.holder = -1


def _add_item(
    task: Task,
    result: ChunkResult,
    offset: int,
    item,
    began: float,
    log: EffectLog,
    value,
    error: BaseException | None,
    merged: MergedNames | None = None,
) -> float:
    """Put what one item did into ``result``; returns when it ended (the next item's start).

    The plain and the asyncio chunk runners share it; they differ only in calling or
    awaiting the item function. ``merged``: the chunk's names so far (Task.merge_names).
    """
    names = log.names
    if names is not None:
        names.pop(ITEM_ARG, None)  # the item function's own parameters
        names.pop(LOG_ARG, None)
        if merged is not None:
            if leaves_its_changes(error, task.stop_on_error):
                merge_item_names(merged.names, names, log.ops)
                merged.holder = len(result)
            names = None
    ended = time.monotonic()
    result.add(began, ended, 0.0, log.ops, names, value)
    if error is not None:
        result.errors[offset] = _item_error(task, error, item)
    return ended


def _item_error(task: Task, error: BaseException, item) -> ItemError:
    if isinstance(error, ItemTimedOut | TimeoutError) and task.timeout:
        error = TimeoutError(ITEM_TIMEOUT.format(seconds=task.timeout, fate=""))
    return ItemError.of(error, short_repr(item), task.origins)


def run_chunk(
    task: Task,
    seq: int,
    start: int,
    items: list,
    worker: str | None = None,
    objects: ChunkObjects | None = None,
    live: LiveChunk | None = None,
) -> ChunkResult:
    """Run consecutive items and record what each did (a tight loop: items may be cheap).
    ``objects``: the items are copies of the kernel's (in a worker process), so what each
    item changes in them is found by comparison and recorded as its STATE ops. ``live``:
    where another thread can freeze the chunk at its deadline (see LiveChunk)."""
    worker = worker or threading.current_thread().name
    watched = objects if objects is not None and objects.watched else None
    if task.comprehension or task.whole_chunks:
        return look_for_hidden_changes(task, run_values(task, seq, start, items, worker, watched))
    result = ChunkResult(seq, start, worker)
    if live is not None:
        live.result = result
    try:
        _run_items(task, result, start, items, watched, live)
    except KeyboardInterrupt:  # Ctrl-C on the kernel's thread between items
        result.trim()
        result.interrupted = True
    return look_for_hidden_changes(task, result)


def look_for_hidden_changes(task: Task, result: ChunkResult) -> ChunkResult:
    """Marks a chunk after which the guarded state differs (the dispatcher stops the run
    there). A worker puts its own state back at once, for its next chunk and run; the kernel
    waits until the run has stopped (other items may still be running in its threads)."""
    guard = task.guard
    if guard is not None and (hidden := guard.changed()) is not None:
        result.hidden = hidden
        if task.held is not None:
            guard.restore()
    return result


def _run_items(
    task: Task,
    result: ChunkResult,
    start: int,
    items: list,
    objects: ChunkObjects | None,
    live: LiveChunk | None,
) -> None:
    queued = run_queue_wait()
    line = task.function.__code__.co_firstlineno
    cpu = CpuSpans(result)
    began, function, cancelled, seed = cpu.since, task.function, task.cancelled.is_set, task.seed
    sink, merged = ChunkOutput(result.outputs), MergedNames() if task.merge_names else None
    token = current_output.set(sink)
    try:
        with alarms(task) as alarm:
            for offset, item in enumerate(items):
                if cancelled():
                    break
                if seed is not None:
                    seed_item(seed, start + offset)
                log, value, error, sink.offset = EffectLog(), None, None, offset
                before = objects.before(item) if objects is not None else None
                if live is not None:
                    live.watch(offset, log, objects, item, before, line)
                if alarm:
                    arm(alarm)
                try:
                    value = function(item, log)
                except BaseException as exc:  # an interrupt too: the dispatcher stops the run there
                    error = exc
                finally:
                    if alarm:
                        disarm()
                if before is not None:
                    error = _add_changes(
                        result, offset, log.ops, objects, item, before, line, error
                    )
                began = _add_item(task, result, offset, item, began, log, value, error, merged)
                cpu.after_item(began)
                if error is not None and (
                    task.stop_on_error or isinstance(error, KeyboardInterrupt)
                ):
                    break
    finally:
        current_output.reset(token)
        if merged is not None and 0 <= merged.holder < len(result):
            result.names[merged.holder] = merged.names  # the Applier binds them there
            result.names_merged = True
    cpu.close()
    result.queued = run_queue_wait() - queued


def _add_changes(
    result: ChunkResult,
    offset: int,
    ops: list,
    objects: ChunkObjects,
    item,
    before: bytes,
    line: int,
    error: BaseException | None,
) -> BaseException | None:
    """The item's changes to the kernel's objects, as STATE ops; the item's error, or the
    error of an item that made its objects unpicklable."""
    try:
        changes = objects.changes(item, before, line)
    except Exception as unpicklable:
        return error or unpicklable
    if changes:  # first: a change that cannot be made stops the item before its other changes
        ops[:0] = changes
        result.changed.append(offset)
    return error


class ChunkLog(EffectLog):
    """The one log of a for loop's chunk run in one call (Task.whole_chunks): its items'
    changes one after another, and the names they left, the last value of each. Where each
    item runs in a call of its own (compared: see run_values), each call's names are merged
    over the earlier ones'."""

    __slots__ = ("bound",)

    def __init__(self) -> None:
        super().__init__()
        self.names, self.bound = {}, 0  # bound: the ops recorded when names were last bound

    def bind(self, local_names: dict[str, Any]) -> None:
        merge_item_names(self.names, local_names, self.ops[self.bound :])
        self.bound = len(self.ops)


class TimedItems:
    """A chunk's items for code that runs them all in one call (the loop itself, in place; a
    comprehension's values; a for loop's recorded chunk), each item's start read as that
    code takes the item: an item ends where the next one starts, and the chunk's CPU time is
    shared by wall time, as :class:`CpuSpans` shares it. ``done``: items taken and finished
    (the code asked for the next one, or ended). With ``marks``, where each item's part of
    ``values`` begins: a comprehension's values, or a for loop's changes (``log``)."""

    def __init__(self, task: Task, result: ChunkResult, items: list) -> None:
        self.task, self.result, self.items = task, result, items
        self.done = 0
        self.sink: ChunkOutput | None = None  # output goes under the running item's offset
        self.marks: list[int] | None = None  # with ``values``: its length as each item began
        self.values: list = []
        self.alarm: float | None = None  # --timeout, on a main thread (see alarms)
        self.ops: dict[int, list] = {}  # by offset: STATE ops, where items were compared
        self.log: ChunkLog | None = None
        self.groups: tuple[list[int], list[float]] = ([], [])  # first offsets, starts (_groups)
        self.one_each = False  # items counted by what they left: a value each, or an error
        self.compared = False  # each item compared after it ran: its check can fail it too
        self.cpu = time.thread_time()

    @property
    def handed(self):
        """What the chunk's function records into: its log, or its list of values."""
        return self.values if self.log is None else self.log

    def recording(self) -> ChunkLog:
        """Record a for loop's items in one log; ``values`` are its changes, item after item."""
        self.log = ChunkLog()
        self.values = self.log.ops
        return self.log

    def from_offset(self, first: int, stop: int | None = None) -> Iterator:
        """The items from ``first`` (to ``stop``), each timed as the code takes it."""
        stop = len(self.items) if stop is None else stop
        in_worker = self.task.held is not None  # nothing there cancels a run's items
        if in_worker and self.task.seed is None and not self.alarm and self.sink is not None:
            return self._plainly(first, stop)
        return self._carefully(first, stop)

    def _plainly(self, first: int, stop: int) -> Iterator:
        """The same with nothing to do between items but count them: the items are handed
        over at C speed (a generator's frame per item cost more than a cheap item), each
        counted in ``marks`` as it is taken, or, where each item gives one value or fails
        (Task.one_value), not at all: what they left counts them. The clock is read once per
        group of items (``_groups``). ``done`` is left alone: no interrupt comes here."""
        self.sink.running = self._running
        self.one_each = self.task.one_value and not self.compared
        taken = itertools.chain.from_iterable(self._groups(first, stop))
        if self.one_each:
            return taken
        counted = map(self.marks.append, map(len, itertools.repeat(self.values)))
        return map(_FIRST, zip(taken, counted, strict=False))  # counted: endless

    def _running(self) -> int:
        """The offset of the item running now (handed over by ``_plainly``)."""
        return self.taken if self.one_each else self.taken - 1

    def _groups(self, first: int, stop: int) -> Iterator[list]:
        """The items a group at a time (``group_size``), each group's first offset and start
        noted as its first item is taken (its end: when the code asks for the group after).
        The result carries the groups, not a start per item: its items' starts are worked
        out from them where they are read, each group's items sharing its span evenly
        (task.group_starts)."""
        clock, items, firsts, began_at = time.monotonic, self.items, *self.groups
        group, size, began = first, 1, clock()
        while group < stop:
            end = min(group + size, stop)
            firsts.append(group)
            began_at.append(began)
            yield items[group:end]
            now = clock()
            group, size, began = end, group_size((now - began) / (end - group)), now

    @property
    def taken(self) -> int:
        """How many items the code has taken: the running one too, except where they are
        counted by what they left (``one_each``): then those that ended."""
        if self.one_each:
            return len(self.values) + len(self.result.errors)
        return len(self.result.starts) if self.marks is None else len(self.marks)

    def _carefully(self, first: int, stop: int) -> Iterator:
        starts, clock, marks, sink = self.result.starts, time.monotonic, self.marks, self.sink
        seed, cancelled, start = self.task.seed, self.task.cancelled.is_set, self.result.first
        alarm = self.alarm
        for offset in range(first, stop):
            if cancelled():
                return
            if seed is not None:
                seed_item(seed, start + offset)
            if sink is not None:
                sink.offset = offset
                marks.append(len(self.values))
            starts.append(clock())
            if alarm:
                arm(alarm)
            yield self.items[offset]
            if alarm:
                disarm()
            self.done = offset + 1

    def failed(self, error: BaseException) -> bool:
        """Record the error of the item that was running; False when it came between two
        items (an interrupt on the kernel's thread): the chunk then stops after them."""
        result, count = self.result, self.taken + self.one_each
        if isinstance(error, KeyboardInterrupt) and self.done == count:
            result.interrupted = True
            return False
        result.errors[count - 1] = _item_error(self.task, error, self.items[count - 1])
        if self.marks is not None and self.log is None and not self.one_each:
            del self.values[self.marks[-1] :]  # a failed item leaves no values (its changes
        return True  # up to its failure stay, as the plain loop leaves them)

    def close(self, ended: float) -> None:
        """Fill the result's columns for the items that ran."""
        if self.alarm:
            disarm()
        if self.sink is not None:
            self.sink.running = None  # no cycle: the chunk's objects go with it
        result, cpu, count = self.result, time.thread_time() - self.cpu, self.taken
        if self.groups[0]:  # the starts follow from them, where they are read
            result.groups = (*self.groups, count)
        result.spread = (ended, cpu)
        if self.task.held is None:  # else made where the result is loaded, in the kernel
            result.ends, result.cpus = spread_times(result.starts, ended, cpu)
        result.ops = [NO_OPS] * count  # one list, shared: pickles once, counted at C speed
        result.names = [None] * count
        if self.log is not None:
            self._cut_changes(count)
        for offset, ops in self.ops.items():
            result.ops[offset] = ops + result.ops[offset]
        if self.one_each:
            result.flat_values, result.value_bounds = self.values, _one_each(count, result.errors)
        elif self.marks is None or self.log is not None:
            result.values = [None] * count
        else:
            result.flat_values, result.value_bounds = self.values, [*self.marks, len(self.values)]

    def _cut_changes(self, count: int) -> None:
        """A for loop's changes, per item; its names on its last item (Task.merge_names)."""
        result, changes = self.result, self.values
        bounds = [*self.marks[:count], len(changes)]
        for offset in range(count) if changes else ():
            if bounds[offset + 1] > bounds[offset]:
                result.ops[offset] = changes[bounds[offset] : bounds[offset + 1]]
        if count:
            self.log.names.pop(ITEM_ARG, None)
            self.log.names.pop(LOG_ARG, None)
            result.names[count - 1], result.names_merged = self.log.names, True


def _one_each(count: int, failed: dict) -> range | list[int]:
    """Where each item's values begin, items giving one value each, failed ones none."""
    if not failed:
        return range(count + 1)
    return [*itertools.accumulate((offset not in failed for offset in range(count)), initial=0)]


def run_values(
    task: Task, seq: int, start: int, items: list, worker: str, objects: ChunkObjects | None = None
) -> ChunkResult:
    """A comprehension's chunk: one call of its function gives every item's values (see
    itemcode.build_item_code); a failed item's values are dropped, and under ``--on-error
    continue`` the call resumes after it. A for loop's chunk (Task.whole_chunks) likewise,
    recording its items' changes. With ``objects``, one call per item instead, each
    compared before and after (see run_chunk)."""
    result = ChunkResult(seq, start, worker, logged=task.whole_chunks)
    if task.held is not None:  # a worker's: pickled as they are, bytes of doubles
        result.starts = array.array("d")
    timed = TimedItems(task, result, items)
    timed.sink, timed.marks, timed.compared = ChunkOutput(result.outputs), [], objects is not None
    if task.whole_chunks:
        timed.recording()
    queued, token = run_queue_wait(), current_output.set(timed.sink)
    try:
        with alarms(task) as timed.alarm:
            if objects is None:
                _run_values(task, timed)
            else:
                _run_values_compared(task, timed, objects)
    finally:
        timed.close(time.monotonic())
        current_output.reset(token)
    result.queued = run_queue_wait() - queued
    return result


def _run_values(task: Task, timed: TimedItems) -> None:
    first, items = 0, timed.items
    while first < len(items) and not task.cancelled.is_set():
        try:
            task.function(timed.from_offset(first), timed.handed)
            return
        except BaseException as error:  # an interrupt too: the dispatcher stops the run there
            an_item_failed = timed.failed(error)
            if not an_item_failed or task.stop_on_error or isinstance(error, KeyboardInterrupt):
                return
            first = timed.taken


def _run_values_compared(task: Task, timed: TimedItems, objects: ChunkObjects) -> None:
    line = task.function.__code__.co_firstlineno
    for offset, item in enumerate(timed.items):
        if task.cancelled.is_set():
            return
        before, error = objects.before(item), None
        try:
            task.function(timed.from_offset(offset, offset + 1), timed.handed)
        except BaseException as raised:  # an interrupt too: the dispatcher stops the run there
            error = raised
        if before is not None:
            ops = timed.ops.setdefault(offset, [])
            error = _add_changes(timed.result, offset, ops, objects, item, before, line, error)
        if error is not None:
            an_item_failed = timed.failed(error)
            if not an_item_failed or task.stop_on_error or isinstance(error, KeyboardInterrupt):
                return


def run_chunk_in_place(task: Task, seq: int, start: int, items: list, held) -> ChunkResult:
    """Run a chunk as the plain loop runs it, in the kernel's namespace (the serial backend):
    nothing is recorded but each item's start (:class:`TimedItems`)."""
    result = ChunkResult(seq, start, "kernel", logged=False)
    timed = TimedItems(task, result, items)
    ns, queued = task.namespace, run_queue_wait()
    ns[CHUNK_NAME] = timed.from_offset(0)
    try:
        held.passing = True  # ``held``: kernel_state.HeldInterrupt
        held.raise_if_pressed()
        exec(task.in_place, ns)
    except BaseException as error:  # Ctrl-C too: it stops the run at this item
        timed.failed(error)
    finally:
        held.passing = False
        timed.close(time.monotonic())
        del ns[CHUNK_NAME]
        values = ns.pop(VALUES_NAME, None)
    if values is not None:  # the chunk's values in order, whichever items gave them
        result.flat_values = values
        result.value_bounds = [0] + [len(values)] * len(result)
    result.queued = run_queue_wait() - queued
    return result


async def run_chunk_async(
    task: Task,
    seq: int,
    start: int,
    items: list,
    lateness: Callable[[], float],
    live: LiveChunk | None = None,
) -> ChunkResult:
    """The same for a coroutine item function, on an event loop. ``lateness()``: how late
    the loop runs what is due, lately (see coroutines.LoopLateness): every time an item
    wakes up it waits about that long for the other items' steps, which is not its own
    time, and counts as queued. --timeout is the backend's to enforce, from outside the
    loop (``live``): an item can swallow its cancellation, or block the loop."""
    result = ChunkResult(seq, start, "event loop")
    if live is not None:
        live.result = result
    sink = ChunkOutput(result.outputs)
    token = current_output.set(sink)  # this task's own context: its chunk's alone
    try:
        for offset, item in enumerate(items):
            log, value, error, sink.offset = EffectLog(), None, None, offset
            if live is not None:
                live.watch(offset, log)
            began, counted = time.monotonic(), None
            try:
                counted = CpuCounted(task.function(item, log))
                value = await counted
            except BaseException as exc:  # an item's KeyboardInterrupt stops the run only
                # PEP 479 turns an item's StopIteration into a RuntimeError in a coroutine
                cause = exc.__cause__
                stopped = isinstance(exc, RuntimeError) and isinstance(cause, StopIteration)
                error = cause if stopped else exc
            _add_item(task, result, offset, item, began, log, value, error)
            if counted is not None:
                result.cpus[-1] = counted.cpu
                result.queued += (counted.wakeups - 1) * lateness()
            if error is not None and (task.stop_on_error or isinstance(error, KeyboardInterrupt)):
                break
    finally:
        current_output.reset(token)
    return look_for_hidden_changes(task, result)
