"""Where items run: one chunk of items through the item function, on any backend.

Every backend calls :func:`run_chunk` (the kernel's own thread, pool threads, worker processes),
so every backend records output, effects, names, timings and errors the same way. Worker
processes import it (worker_process.py is their main loop), so it imports nothing heavy:
never IPython.
"""

from __future__ import annotations

import array
import contextvars
import io
import itertools
import operator
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType
from typing import TYPE_CHECKING, Any

from .effects import CALL, ITEM_ARG, LOG_ARG, STATE, EffectLog, merge_item_names, plain_data
from .errors import ITEM_TIMEOUT, short_repr, user_frames
from .machine import has_item_alarms

if TYPE_CHECKING:  # cloudpickle: imported by the first run that needs it, not by %load_ext
    from .hidden_state import Guard
    from .kernel_objects import ChunkObjects, HeldObjects

CPU_SPAN = 0.001  # seconds between readings of a thread's CPU clock (see _CpuSpans)
SCHEDSTAT = "/proc/thread-self/schedstat"  # Linux: this thread's time on a CPU, and queued
# the serial backend's chunk, and a comprehension's values, in the kernel's namespace
CHUNK_NAME, VALUES_NAME = "__parmagic_chunk__", "__parmagic_values__"


class ChunkOutput:
    """Where the items of the chunk running in this thread (or asyncio task) write: under the
    running item's offset. Set once per chunk, so an item that prints nothing costs nothing."""

    __slots__ = ("outputs", "offset")

    def __init__(self, outputs: dict[int, list]) -> None:
        self.outputs, self.offset = outputs, 0

    def add(self, entry: tuple) -> None:
        self.outputs.setdefault(self.offset, []).append(entry)


# The output of the chunk running in this thread (or asyncio task): each thread, and each
# task, has its own context, so concurrent chunks never share a buffer.
current_output: contextvars.ContextVar[ChunkOutput | None] = contextvars.ContextVar(
    "parmagic_item_output", default=None
)


@dataclass
class Task:
    """What every item of one run needs: shipped once per worker per run."""

    function: Callable[[Any, EffectLog], Any]
    bound: frozenset[str]
    stop_on_error: bool
    timeout: float | None = None
    origins: dict[tuple[str, int], str] = field(default_factory=dict)  # see user_frames
    cancelled: threading.Event = field(default_factory=threading.Event)  # for pool threads
    seed: int | None = None  # --seed: each item's random streams come from it and its index
    # values the body reads from the user's own modules, as the kernel has them (a worker
    # that imported the module from its file would not see ``mod.SETTING = ...``)
    module_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Items whose names travel back (from worker processes) send the names of their chunk in
    # one dict, on its last item that left names, rather than every item's own: the kernel
    # keeps only the last values of each name anyway (unless it needs every item's, to run an
    # ordered tail between items or to compare runs).
    merge_names: bool = False
    comprehension: bool = False  # ``function`` runs a chunk: (items, values), not (item, log)
    whole_chunks: bool = False  # ``function`` runs a for loop's chunk: (items, log)
    hold_names: bool = False  # large values of names stay in the worker (held_names.py)
    kind: str = "for"  # the loop's kind (BodyInfo.kind), which a failed item's note names
    # the serial backend's: the loop itself over a chunk, run in the kernel's namespace
    # (itemcode.build_in_place_code), instead of ``function`` with its recording
    in_place: CodeType | None = None
    namespace: dict | None = None
    held: HeldObjects | None = None  # in a worker: its copies of the kernel's objects
    guarded: bool = False  # a worker watches the state items can change unnamed (hidden_state)
    guard: Guard | None = None  # that watch, where the items run (never travels)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["cancelled"]  # a process worker is stopped, not asked to stop
        state["in_place"] = state["namespace"] = state["held"] = state["guard"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.cancelled = threading.Event()
        for module_name, values in self.module_values.items():
            module = sys.modules.get(module_name)
            for name, value in values.items() if module is not None else ():
                setattr(module, name, value)


# What a worker process was handling when it started: a forked worker made while an error
# went up in the kernel (a pool replaced in a `finally`) runs its whole life inside that
# handler, so Python would chain every error its items raise to the kernel's error. The link
# is cut from the exception itself, not only left out of its ItemError: the exception may
# travel with its chain (tblib's reducers, which importing dask or distributed installs for
# every exception class, pickle ``__context__`` and ``__cause__`` with it).
_INHERITED_ERRORS: list[BaseException] = []


def forget_inherited_error() -> None:
    """Called as a worker process starts, so that its items' errors chain only to their own."""
    _INHERITED_ERRORS[:] = [sys.exception()] if sys.exception() is not None else []


@dataclass
class ItemError:
    exception: BaseException
    frames: list[tuple[str, int, str]]
    item: str
    cause: ItemError | None = None  # ``raise ... from e``, or an error while handling one
    explicit: bool = True  # the cause came from ``from`` (else it is the context)

    @classmethod
    def of(
        cls, error: BaseException, item: str, origins: dict | None = None, depth: int = 0
    ) -> ItemError:
        """The error with its frames, and the chain of errors it came from (pickling keeps
        neither a traceback nor ``__cause__``, unless tblib is installed)."""
        made = cls(error, user_frames(error.__traceback__, origins), item)
        for link in ("__cause__", "__context__"):
            if any(getattr(error, link) is inherited for inherited in _INHERITED_ERRORS):
                setattr(error, link, None)
        cause = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if cause is not None and cause is not error and depth < 8:
            made.cause = cls.of(cause, item, origins, depth + 1)
            made.explicit = error.__cause__ is not None
        return made

    def chained(self) -> BaseException:
        """The exception with its chain put back (it came from another process)."""
        error, cause = self.exception, self.cause
        if cause is not None:
            cause.chained()
        if cause is not None and error.__cause__ is None and error.__context__ is None:
            if self.explicit:
                error.__cause__ = cause.exception
            else:
                error.__context__ = cause.exception
        error.parmagic_frames = self.frames  # type: ignore[attr-defined]  # see errors.py
        return error


@dataclass
class ChunkResult:
    """What a chunk of consecutive items did, kept in columns so that it pickles quickly.

    Per item (by offset from ``first``): start and end (``time.monotonic()``, one clock for
    every process on the machine), CPU time, the recorded changes (``ops``) and the names the
    item bound. Sparse, by offset: printed output, errors. ``values``: a comprehension's
    values, per item; or, from a chunk that ran in one call, all its values in one list
    (``flat_values``), item k's from ``value_bounds[k]`` to ``value_bounds[k + 1]``: one list
    pickles and applies in a fraction of the time of one list per item.
    """

    seq: int
    first: int
    worker: str
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    ops: list[list[tuple]] = field(default_factory=list)
    names: list[dict[str, Any] | None] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    outputs: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # (1|2, text)
    errors: dict[int, ItemError] = field(default_factory=dict)
    dropped_names: dict[str, str] = field(default_factory=dict)  # name -> type, not sendable
    native_limit: int | None = None  # set when this worker capped BLAS/OpenMP threads
    queued: float = 0.0  # seconds the items' thread was ready to run but waited for a core
    interrupted: bool = False  # Ctrl-C on the kernel's thread between items: stop after these
    names_merged: bool = False  # the chunk's names are in one dict (see Task.merge_names)
    changed: list[int] = field(default_factory=list)  # offsets whose ops hold STATE ops
    hidden: str | None = None  # state the items changed without naming it (hidden_state.py)
    still_running: int | None = None  # the item frozen at its deadline, running on (LiveChunk)
    held_names: list[str] = field(default_factory=list)  # kept by the worker (held_names.py)
    watched: bool = False  # the worker watches captured values for changes (asked at the end)
    # False: the items' own code ran them, nothing recorded (serial's loop, a comprehension)
    recorded: bool = True
    flat_values: list | None = None
    value_bounds: list[int] | None = None
    spread: tuple[float, float] | None = None  # ends and CPU times follow from the starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getattr__(self, name: str) -> list[float]:
        """A loaded result of items run in one call has only their starts: the ends and CPU
        times are worked out when first read (a report of totals never reads them)."""
        if name not in _TIMES[1:] or self.__dict__.get("spread") is None:
            raise AttributeError(name)
        self.ends, self.cpus = spread_times(self.starts, *self.spread)
        return self.__dict__[name]

    def busy_and_cpu(self, count: int) -> tuple[float, float]:
        """Seconds the first ``count`` items ran, and the CPU time they used."""
        if self.spread is not None and count == len(self.starts) and "ends" not in self.__dict__:
            ended, cpu = self.spread
            return (ended - self.starts[0] if count else 0.0), (cpu if count else 0.0)
        return sum(self.ends[:count]) - sum(self.starts[:count]), sum(self.cpus[:count])

    def __getstate__(self) -> dict:
        """Few objects to pickle, not several per item (a worker's pickler looks at every
        object it writes, in Python where the items held kernel objects): the timing columns
        as bytes of doubles; the per-item columns as their entries that hold something; a
        comprehension's values of numbers and strings pickled apart, at C speed."""
        state = self.__dict__.copy()
        for name in _TIMES if self.spread is None else _TIMES[:1]:  # the rest: spread_times
            state[name] = array.array("d", state[name]).tobytes()
        if self.spread is not None:
            del state["ends"], state["cpus"]
        for name, empty in _SPARSE.items():
            state[name] = (len(state[name]), _held_entries(state[name], empty))
        if self.flat_values is not None and plain_data(self.flat_values):
            state["flat_values"] = pickle.dumps(self.flat_values, pickle.HIGHEST_PROTOCOL)
        bounds = self.value_bounds
        if bounds is not None and bounds[-1] == len(bounds) - 1 and bounds == [*range(len(bounds))]:
            state["value_bounds"] = len(bounds)  # one value per item (0, 1, 2, ...): the count
        elif bounds is not None:
            state["value_bounds"] = array.array("q", bounds).tobytes()
        return state

    def __setstate__(self, state: dict) -> None:
        for name in _TIMES if state["spread"] is None else _TIMES[:1]:
            column = array.array("d")
            column.frombytes(state[name])
            state[name] = column.tolist()
        for name, empty in _SPARSE.items():
            count, held = state[name]
            state[name] = column = [empty] * count  # ops: one empty list, shared, never grown
            for offset, value in held.items():
                column[offset] = value
        if isinstance(state["flat_values"], bytes):
            state["flat_values"] = pickle.loads(state["flat_values"])
        if isinstance(state["value_bounds"], int):
            state["value_bounds"] = list(range(state["value_bounds"]))
        elif state["value_bounds"] is not None:
            bounds = array.array("q")
            bounds.frombytes(state["value_bounds"])
            state["value_bounds"] = bounds.tolist()
        self.__dict__.update(state)

    def item_values(self, offset: int) -> Any:
        if self.flat_values is None:
            return self.values[offset]
        bounds = self.value_bounds
        return self.flat_values[bounds[offset] : bounds[offset + 1]]

    def all_values(self) -> list:
        if self.flat_values is not None:
            return self.flat_values
        if self.values.count(None) == len(self.values):  # a for loop's: at C speed
            return []
        return [value for values in self.values if values for value in values]

    def unflatten(self) -> None:
        """One list of values per item (to drop one item's values that cannot travel)."""
        if self.flat_values is not None:
            self.values = [self.item_values(offset) for offset in range(len(self))]
            self.flat_values = self.value_bounds = None

    def trim(self) -> None:
        """Drop a half-recorded last item (an interrupt while it was being recorded)."""
        count = min(map(len, (self.starts, self.ends, self.cpus, self.ops, self.names)))
        count = min(count, len(self.values))
        for column in (self.starts, self.ends, self.cpus, self.ops, self.names, self.values):
            del column[count:]
        for offset in [o for o in (*self.outputs, *self.errors) if o >= count]:
            self.outputs.pop(offset, None)
            self.errors.pop(offset, None)

    def add(self, began: float, ended: float, cpu: float, ops, names, value) -> None:
        self.starts.append(began)
        self.ends.append(ended)
        self.cpus.append(cpu)
        self.ops.append(ops)
        self.names.append(names)
        self.values.append(value)


_TIMES = ("starts", "ends", "cpus")


def _held_entries(column: list, empty: list | None) -> dict[int, Any]:
    """The entries that hold something (a non-empty list; not None), by offset, found at C
    speed: they are the true ones, unless some false entry is not None (0, "", {})."""
    holding = len(column) - column.count(empty)
    if not holding:
        return {}
    last = column[-1]
    if holding == 1 and (bool(last) if empty == [] else last is not None):  # e.g. names
        return {len(column) - 1: last}
    offsets = list(itertools.compress(range(len(column)), column))
    if len(offsets) != holding:
        offsets = [offset for offset, entry in enumerate(column) if entry is not None]
    return {offset: column[offset] for offset in offsets}


def _unpacked(state: dict) -> ChunkResult:
    result = ChunkResult.__new__(ChunkResult)
    result.__setstate__(state)
    return result


class PackedResult:
    """A chunk result as it is pickled (ChunkResult.__getstate__), loaded as the result. For
    a worker that pickles it with references for the kernel's objects (kernel_objects.py):
    ``own()`` tells the containers it is made of, which are never the kernel's, so that they
    are not looked up (the values in them may be)."""

    def __init__(self, result: ChunkResult) -> None:
        self.state = result.__getstate__()

    def __reduce__(self):
        return _unpacked, (self.state,)

    def own(self) -> set[int]:
        state = self.state
        held = [state[name][1] for name in _SPARSE]
        parts: list = [self, state, *state.values(), *held]
        parts += [entry for column in held for entry in column.values()]
        ops = state["ops"][1].values()
        parts += [op[6] for item in ops for op in item if op[0] == CALL]  # calls' kwargs
        parts += [op[3] for item in ops for op in item if op[0] == STATE]  # items' copies
        parts += [entry for entries in state["outputs"].values() for entry in entries]
        for error in state["errors"].values():
            while error is not None:
                parts += [error, vars(error), error.frames]
                error = error.cause
        return {id(part) for part in parts}


_SPARSE = {"ops": [], "names": None, "values": None}  # per-item columns: what most entries hold


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


class ItemOutput(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: text written while an item runs goes to that item."""

    def __init__(self, original, stream: int) -> None:
        self.original = original
        self.stream = stream

    def write(self, text: str) -> int:
        sink = current_output.get()
        if sink is None:
            return self.original.write(text)
        sink.add((self.stream, text))
        return len(text)

    def flush(self) -> None:
        if current_output.get() is None and not self.original.closed:
            self.original.flush()

    def __getattr__(self, name: str):
        return getattr(self.original, name)


class OutputCapture:
    """Route item output to the item's record for items run in this process's threads.

    Installs the stand-ins once; :meth:`release` puts the process's own streams back. An item
    abandoned on a pool thread that prints after its run has ended prints to the cell then
    running: the kernel's streams must never be left replaced.
    """

    def __init__(self) -> None:
        self.saved = sys.stdout, sys.stderr
        self.installed = not isinstance(sys.stdout, ItemOutput)
        if self.installed:
            sys.stdout, sys.stderr = ItemOutput(self.saved[0], 1), ItemOutput(self.saved[1], 2)

    def release(self) -> None:
        if self.installed and isinstance(sys.stdout, ItemOutput):
            sys.stdout, sys.stderr = self.saved


def seed_item(seed: int, index: int) -> None:
    """--seed: the item's own streams for ``random`` and NumPy's global state, made from the
    seed and the item's index alone, so that an item draws the same numbers on every backend
    whatever the worker count and chunking."""
    import random

    random.seed(f"parmagic:{seed}:{index}")
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(numpy.random.SeedSequence([seed, index]).generate_state(4))


def run_queue_wait() -> float:
    """Seconds this thread has spent ready to run but waiting for a core (Linux's scheduler
    accounting; 0 elsewhere): the time a busy machine adds to an item that only computes,
    which must not be mistaken for the item waiting on I/O."""
    try:
        fd = os.open(SCHEDSTAT, os.O_RDONLY)  # a bare descriptor: no file object to leak
        try:
            return int(os.read(fd, 256).split()[1]) / 1e9
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return 0.0


class ItemTimedOut(BaseException):
    """Raised by the --timeout alarm; a BaseException so the body's ``except Exception``
    cannot swallow it and carry on as if the item had succeeded."""


class _CpuSpans:
    """Items' CPU time, read per span of at least ``CPU_SPAN`` seconds rather than per item.

    Reading a thread's CPU clock is a system call (about 0.5 µs), as dear as a cheap item
    itself; a span's CPU time is shared among its items in proportion to their wall time.
    """

    def __init__(self, result: ChunkResult) -> None:
        self.result, self.first = result, len(result)
        self.since, self.cpu = time.monotonic(), time.thread_time()

    def after_item(self, ended: float) -> None:
        if ended - self.since >= CPU_SPAN:
            self.close()

    def close(self) -> None:
        result, first = self.result, self.first
        if first == len(result):
            return
        cpu = time.thread_time()
        spans = zip(result.starts[first:], result.ends[first:], strict=True)
        walls = [end - start for start, end in spans]
        total = sum(walls)
        for offset, wall in enumerate(walls, first):
            share = wall / total if total else 1 / len(walls)
            result.cpus[offset] = (cpu - self.cpu) * share
        self.first, self.since, self.cpu = len(result), result.ends[-1], cpu


class MergedNames:
    """A chunk's names in one dict (Task.merge_names), and the last item that left some."""

    __slots__ = ("names", "holder")

    def __init__(self) -> None:
        self.names: dict[str, Any] = {}
        self.holder = -1


def _record(
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
            if error is None or task.stop_on_error:  # a failed item that leaves nothing
                merge_item_names(merged.names, names, log.ops)  # leaves no names either
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


@contextmanager
def _alarms(task: Task):
    """--timeout on a main thread (the kernel's, or a worker process's): SIGALRM per item."""
    if not task.timeout or not _on_main() or not has_item_alarms():  # refused before the run
        yield None
        return
    previous = signal.signal(signal.SIGALRM, _expire)
    try:
        yield task.timeout
    finally:
        signal.signal(signal.SIGALRM, previous)


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
    cpu = _CpuSpans(result)
    began, function, cancelled, seed = cpu.since, task.function, task.cancelled.is_set, task.seed
    sink, merged = ChunkOutput(result.outputs), MergedNames() if task.merge_names else None
    token = current_output.set(sink)
    try:
        with _alarms(task) as alarm:
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
                    _armed.set()
                    signal.setitimer(signal.ITIMER_REAL, alarm)
                try:
                    value = function(item, log)
                except BaseException as exc:  # an interrupt too: the dispatcher stops the run there
                    error = exc
                finally:
                    if alarm:
                        _armed.clear()  # an alarm that fires from here on finds no item to stop
                        signal.setitimer(signal.ITIMER_REAL, 0)
                if before is not None:
                    error = _add_changes(
                        result, offset, log.ops, objects, item, before, line, error
                    )
                began = _record(task, result, offset, item, began, log, value, error, merged)
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


def spread_times(starts: list[float], ended: float, cpu: float) -> tuple[list, list]:
    """Ends and CPU times of items run one after another from their starts: each ends where
    the next starts, the last at ``ended``, and the CPU time ``cpu`` is shared by wall time."""
    if not starts:
        return [], []
    ends = starts[1:]
    ends.append(ended)
    wall = ended - starts[0]
    if not wall:
        return ends, [cpu / len(starts)] * len(starts)
    share = cpu / wall
    return ends, [share * span for span in map(operator.sub, ends, starts)]


class TimedItems:
    """A chunk's items for code that runs them all in one call (the loop itself, in place; a
    comprehension's values; a for loop's recorded chunk), each item's start read as that
    code takes the item: an item ends where the next one starts, and the chunk's CPU time is
    shared by wall time, as :class:`_CpuSpans` shares it. ``done``: items taken and finished
    (the code asked for the next one, or ended). With ``marks``, where each item's part of
    ``values`` begins: a comprehension's values, or a for loop's changes (``log``)."""

    def __init__(self, task: Task, result: ChunkResult, items: list) -> None:
        self.task, self.result, self.items = task, result, items
        self.done = 0
        self.sink: ChunkOutput | None = None  # output goes under the running item's offset
        self.marks: list[int] | None = None  # with ``values``: its length as each item began
        self.values: list = []
        self.alarm: float | None = None  # --timeout, on a main thread (see _alarms)
        self.ops: dict[int, list] = {}  # by offset: STATE ops, where items were compared
        self.log: ChunkLog | None = None
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
        """The same with nothing to do between items but time them: the tightest loop."""
        starts, clock, marks, sink = self.result.starts, time.monotonic, self.marks, self.sink
        values, items = self.values, self.items
        for offset in range(first, stop):  # ``done`` is left alone: no interrupt comes here
            sink.offset = offset
            marks.append(len(values))
            starts.append(clock())
            yield items[offset]

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
                _armed.set()
                signal.setitimer(signal.ITIMER_REAL, alarm)
            yield self.items[offset]
            if alarm:
                _armed.clear()
                signal.setitimer(signal.ITIMER_REAL, 0)
            self.done = offset + 1

    def failed(self, error: BaseException) -> bool:
        """Record the error of the item that was running; False when it came between two
        items (an interrupt on the kernel's thread): the chunk then stops after them."""
        result, count = self.result, len(self.result.starts)
        if isinstance(error, KeyboardInterrupt) and self.done == count:
            result.interrupted = True
            return False
        result.errors[count - 1] = _item_error(self.task, error, self.items[count - 1])
        if self.marks is not None and self.log is None:
            del self.values[self.marks[-1] :]  # a failed item leaves no values (its changes
        return True  # up to its failure stay, as the plain loop leaves them)

    def close(self, ended: float) -> None:
        """Fill the result's columns for the items that ran."""
        if self.alarm:
            _armed.clear()
            signal.setitimer(signal.ITIMER_REAL, 0)
        result, cpu = self.result, time.thread_time() - self.cpu
        count = len(result.starts)
        result.spread = (ended, cpu)
        if self.task.held is None:  # else made where the result is loaded, in the kernel
            result.ends, result.cpus = spread_times(result.starts, ended, cpu)
        result.ops = [[]] * count  # one list, shared: it pickles once
        result.names = [None] * count
        if self.log is not None:
            self._cut_changes(count)
        for offset, ops in self.ops.items():
            result.ops[offset] = ops + result.ops[offset]
        if self.marks is None or self.log is not None:
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


def _on_main() -> bool:
    return threading.current_thread() is threading.main_thread()


def run_values(
    task: Task, seq: int, start: int, items: list, worker: str, objects: ChunkObjects | None = None
) -> ChunkResult:
    """A comprehension's chunk: one call of its function gives every item's values (see
    itemcode.build_item_code); a failed item's values are dropped, and under ``--on-error
    continue`` the call resumes after it. A for loop's chunk (Task.whole_chunks) likewise,
    recording its items' changes. With ``objects``, one call per item instead, each
    compared before and after (see run_chunk)."""
    result = ChunkResult(seq, start, worker, recorded=task.whole_chunks)
    if task.held is not None:  # a worker's: pickled as they are, bytes of doubles
        result.starts = array.array("d")
    timed = TimedItems(task, result, items)
    timed.sink, timed.marks = ChunkOutput(result.outputs), []
    if task.whole_chunks:
        timed.recording()
    queued, token = run_queue_wait(), current_output.set(timed.sink)
    try:
        with _alarms(task) as timed.alarm:
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
            recorded = timed.failed(error)
            if not recorded or task.stop_on_error or isinstance(error, KeyboardInterrupt):
                return
            first = len(timed.result.starts)


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
            recorded = timed.failed(error)
            if not recorded or task.stop_on_error or isinstance(error, KeyboardInterrupt):
                return


def run_chunk_in_place(task: Task, seq: int, start: int, items: list, held) -> ChunkResult:
    """Run a chunk as the plain loop runs it, in the kernel's namespace (the serial backend):
    nothing is recorded but each item's start (:class:`TimedItems`)."""
    result = ChunkResult(seq, start, "kernel", recorded=False)
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


class CpuCounted:
    """Awaits a coroutine, adding up the loop thread's CPU time over that coroutine's own
    steps (the coroutines of a run interleave on one thread, so the thread's CPU time over
    one item's span would count the others' too), and counting the times it woke up."""

    def __init__(self, coroutine) -> None:
        self.coroutine, self.cpu, self.wakeups = coroutine, 0.0, 0

    def __await__(self):
        coroutine, sent, thrown = self.coroutine, None, None
        while True:
            self.wakeups += 1
            began = time.thread_time()
            try:
                step = coroutine.send(sent) if thrown is None else coroutine.throw(thrown)
            except StopIteration as done:
                return done.value
            finally:
                self.cpu += time.thread_time() - began
            try:
                sent, thrown = (yield step), None
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # cancellation, a timeout: to the coroutine
                sent, thrown = None, error


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
            _record(task, result, offset, item, began, log, value, error)
            if counted is not None:
                result.cpus[-1] = counted.cpu
                result.queued += (counted.wakeups - 1) * lateness()
            if error is not None and (task.stop_on_error or isinstance(error, KeyboardInterrupt)):
                break
    finally:
        current_output.reset(token)
    return look_for_hidden_changes(task, result)


_armed = threading.Event()


def _expire(signum, frame) -> None:
    """SIGALRM during an item on a main thread (the kernel's, or a worker process's)."""
    if _armed.is_set():
        raise ItemTimedOut
