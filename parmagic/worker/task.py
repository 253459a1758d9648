r"""What crosses between the kernel and where items run: a run's :class:`Task` (the item
function and how to run it), and each chunk's :class:`ChunkResult` with its
:class:`ItemError`\ s, kept in columns that pickle quickly. Worker processes import it, so it
imports nothing heavy.
"""

from __future__ import annotations

import array
import itertools
import operator
import pickle
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType
from typing import TYPE_CHECKING, Any

from ..errors import user_frames
from .effects import CALL, STATE, plain_data

if TYPE_CHECKING:  # cloudpickle: imported by the first run that needs it, not by %load_ext
    from .effects import EffectLog
    from .hidden_state import Guard
    from .kernel_objects import HeldObjects


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
    # A chunk's items give the names they bound in one dict, on its last item that left names,
    # rather than every item's own (every backend but the event loop's): the kernel keeps only
    # the last values of each name anyway (unless it needs every item's, to run an ordered
    # tail between items or to compare runs), and binds them once per chunk.
    merge_names: bool = False
    comprehension: bool = False  # ``function`` runs a chunk: (items, values), not (item, log)
    one_value: bool = False  # a comprehension whose items give a value each, or fail
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


def leaves_its_changes(error: BaseException | None, stop_on_error: bool) -> bool:
    """Whether an item's changes and names up to its error stay, as the plain loop leaves
    them: under raise, and for an interrupt, which stops the run with the item half applied;
    under ``--on-error continue`` a failed item leaves nothing."""
    return error is None or stop_on_error or isinstance(error, KeyboardInterrupt)


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
    # False: the items' own code ran them, their changes not logged (serial's loop, a comprehension)
    logged: bool = True
    flat_values: list | None = None
    value_bounds: list[int] | None = None
    spread: tuple[float, float] | None = None  # ends and CPU times follow from the starts
    # items timed a group at a time (chunk.TimedItems._groups): each group's first offset and
    # start, and the count of items; their starts follow (group_starts)
    groups: tuple[list[int], list[float], int] | None = None

    def __len__(self) -> int:
        return len(self.starts) if self.groups is None else self.groups[2]

    def __getattr__(self, name: str) -> list[float]:
        """A loaded result of items run in one call has only their starts, or only their
        groups: the rest is worked out when first read (a report of totals never reads it)."""
        if name not in _TIMES or self.__dict__.get("spread") is None:
            raise AttributeError(name)
        self.starts, self.ends, self.cpus = worked_out_times(*self.deferred_times())
        return self.__dict__[name]

    def deferred_times(self) -> tuple:
        """What its items' times are worked out from (worked_out_times): their starts, or
        their groups, and the chunk's end and CPU time. Small: kept by a report, not the
        result."""
        return self.__dict__.get("starts"), self.groups, self.spread

    @property
    def spread_only(self) -> bool:
        """Loaded with only its items' starts: the ends and CPU times not yet worked out."""
        return self.spread is not None and "ends" not in self.__dict__

    def busy_and_cpu(self, count: int) -> tuple[float, float]:
        """Seconds the first ``count`` items ran, and the CPU time they used."""
        if self.spread_only and count == len(self):
            ended, cpu = self.spread
            if not count:
                return 0.0, 0.0
            first = self.groups[1][0] if "starts" not in self.__dict__ else self.starts[0]
            return ended - first, cpu
        return sum(self.ends[:count]) - sum(self.starts[:count]), sum(self.cpus[:count])

    def __getstate__(self) -> dict:
        return self.packed(values_apart=True)

    def packed(self, values_apart: bool) -> dict:
        """Few objects to pickle, not several per item (a worker's pickler looks at every
        object it writes, in Python where the items held kernel objects): the timing columns
        as bytes of doubles; the per-item columns as their entries that hold something.
        ``values_apart``: a comprehension's values of numbers and strings pickled apart, at
        C speed, for a pickler that looks at every object (kernel_objects.ChunkObjects)."""
        state = self.__dict__.copy()
        if self.groups is not None:  # the starts follow from them
            firsts, began_at, count = self.groups
            state["groups"] = _bytes("q", firsts), _bytes("d", began_at), count
        for name in _TIMES if self.spread is None else _TIMES[: self.groups is None]:
            column = state[name]  # a worker's is an array already: no copy
            state[name] = column.tobytes() if type(column) is array.array else _bytes("d", column)
        if self.spread is not None:
            del state["ends"], state["cpus"]
        if self.groups is not None:
            del state["starts"]
        for name, empty in _SPARSE.items():
            state[name] = (len(state[name]), _held_entries(state[name], empty))
        if values_apart and self.flat_values is not None and plain_data(self.flat_values):
            state["flat_values"] = pickle.dumps(self.flat_values, pickle.HIGHEST_PROTOCOL)
        bounds = self.value_bounds
        if type(bounds) is range or (
            bounds is not None and bounds[-1] == len(bounds) - 1 and bounds == [*range(len(bounds))]
        ):
            state["value_bounds"] = len(bounds)  # one value per item (0, 1, 2, ...): the count
        elif bounds is not None:
            state["value_bounds"] = _bytes("q", bounds)
        return state

    def __setstate__(self, state: dict) -> None:
        if state.get("groups") is not None:
            firsts, began_at, count = state["groups"]
            state["groups"] = _numbers("q", firsts), _numbers("d", began_at), count
        for name in [name for name in _TIMES if name in state]:  # the rest: worked out
            state[name] = _numbers("d", state[name])
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
            state["value_bounds"] = _numbers("q", state["value_bounds"])
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

    def __init__(self, result: ChunkResult, values_apart: bool = True) -> None:
        self.state = result.packed(values_apart)

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


NO_OPS: list = []  # an item's ops when it has none: one list, shared, never grown
_SPARSE = {"ops": NO_OPS, "names": None, "values": None}  # per-item columns: most entries


def _bytes(kind: str, numbers: list) -> bytes:
    return array.array(kind, numbers).tobytes()


def _numbers(kind: str, data: bytes) -> list:
    column = array.array(kind)
    column.frombytes(data)
    return column.tolist()


def worked_out_times(starts: list[float] | None, groups: tuple | None, spread: tuple) -> tuple:
    """Items' starts, ends and CPU times, from their starts (or their groups) and the chunk's
    end and CPU time (``spread``): see ChunkResult.deferred_times."""
    if starts is None:
        starts = group_starts(*groups, spread[0])
    return (starts, *spread_times(starts, *spread))


def group_starts(firsts: list[int], began_at: list[float], count: int, ended: float) -> list:
    """The starts of items timed a group at a time (TimedItems._groups): a group's items
    share its span evenly, up to the next group's start, or ``ended`` for the last."""
    starts: list[float] = []
    ends, afters = [*firsts[1:], count], [*began_at[1:], ended]
    for first, end, began, after in zip(firsts, ends, began_at, afters, strict=True):
        end = min(end, count)
        step = (after - began) / (end - first) if end > first else 0.0
        starts += [began + k * step for k in range(end - first)]
    return starts


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
