"""Objects from the kernel in worker processes: they come back as the kernel's own objects,
with every change an item made to them.

Pickle numbers each object it writes, in the order it writes them, and the unpickler numbers
what it rebuilds in the same order (the memo). The kernel keeps its pickler's memo for the
run's task and for each chunk of items until the chunk is applied (:class:`SentObjects`); a
worker keeps its unpickler's (:class:`HeldObjects`, :class:`ChunkObjects`). So both sides
agree on which copy stands for which kernel object, and on that rest three rules:

- **references**: whatever a worker sends back (values, recorded changes, names) that is one
  of its copies travels as a key, ``(0, n)`` the chunk's object n, ``(1, name)`` a name the body
  captured, ``(2, n)`` the task's object n, and the kernel loads the object it sent:
  ``by_id[k] = rec`` holds the kernel's ``rec``, as a plain loop's does;
- **changes**: a worker pickles each item before and after it runs, noting which of the
  chunk's objects it reaches, in which order; where anything differs, a shallow copy of every
  object it reached before or after travels back with the result (what the copy holds of the
  kernel's, as keys), and the kernel sets it on its own object, in place
  (``effects.set_in_place``), in item order, where it differs from the object as it was sent
  (the chunk's bytes, loaded again: the kernel's object may have changed since, by earlier
  items' recorded changes, which must stay);
- **one holder**: an object an item changed must not be in another chunk still out (its
  items saw the old state, where a plain loop shows them the new one): the run stops after
  the item (``errors.SharedObjectChanged``).

Worker side and kernel side both import this module; it imports nothing heavy.
"""

from __future__ import annotations

import copy
import datetime
import enum
import gc
import io
import itertools
import numbers
import pickle
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from .. import errors
from ..errors import short_repr
from .effects import ATOMS, SCALARS, STATE
from .files import closed_file_reducer
from .hidden_state import global_generators

PROTOCOL = pickle.HIGHEST_PROTOCOL
CHUNK, CAPTURED, TASK = 0, 1, 2  # numbers: a string tag could meet the user's own in a memo
# Values nobody can change and whose identity a loop never relies on: always sent by value
# (but NaN, which sets and dicts find by identity alone: by reference where it was captured).
# Kept as references (a class is the kernel's own), but no item changes them.
CODE = (type, types.FunctionType, types.ModuleType, types.BuiltinFunctionType, types.CodeType)

Key = tuple[int, Any]
_CONTAINERS = frozenset({list, dict, set})
# Values that cannot change, though not atoms (numpy's scalars count as numbers)
_FIXED = (
    numbers.Number,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    datetime.tzinfo,
    enum.Enum,
)
PLAIN, HELD = 0, 1  # a chunk's first byte: its items are plain data, or hold objects


class _ClosedFiles(cloudpickle.Pickler):
    """cloudpickle, except that a closed file travels as its like (files.py), as a name an
    item bound with ``with open(p) as f`` must."""

    def reducer_override(self, obj):
        if isinstance(obj, io.IOBase):
            like = closed_file_reducer(obj)
            if like is not None:
                return like
        return super().reducer_override(obj)


class Pickler(_ClosedFiles):
    """cloudpickle, except that the global generators of ``random`` and ``numpy.random``
    (reached through ``fns = {"r": random.random}``) travel by name: a worker draws from its
    own, which ``--seed`` reseeds and the guard watches, not from a copy of the kernel's that
    every worker would repeat. Not to dask, whose workers draw from ``random`` themselves
    (``dask.sizeof``): there a copy is a generator of the body's own, which the guard
    watches."""

    def __init__(self, *args, generators_by_name: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._by_name = global_generators() if generators_by_name else {}

    def reducer_override(self, obj):
        named = self._by_name.get(id(obj))
        if named is not None and named[0] is obj:
            return getattr, named[1:3]
        return super().reducer_override(obj)


def dumped(
    value: Any, buffer_callback=None, generators_by_name: bool = True
) -> tuple[bytes, Callable[[], dict]]:
    """``value`` pickled (cloudpickle), and how to get the memo, id -> (number, object),
    when it is needed (copying a large task's memo costs more than pickling it)."""
    file = io.BytesIO()
    pickler = Pickler(
        file, protocol=PROTOCOL, buffer_callback=buffer_callback,
        generators_by_name=generators_by_name,
    )  # fmt: skip
    pickler.dump(value)
    data = file.getvalue()
    file.close()  # the pickler, kept for its memo, keeps no second copy of the bytes
    return data, pickler.memo.copy


def loaded(data, buffers: Iterable | None = None) -> tuple[Any, Callable[[], dict]]:
    """``data`` unpickled, and how to get the memo, number -> object, when it is needed.
    The collector waits meanwhile: unpickling makes no garbage, and each of its passes over
    a large task would walk the memo too."""
    file = io.BytesIO(data)
    unpickler = pickle.Unpickler(file, buffers=buffers)
    collecting = gc.isenabled()
    gc.disable()
    try:
        value = unpickler.load()
    finally:
        if collecting:
            gc.enable()
    file.close()
    return value, unpickler.memo.copy


def _keys(numbered: Iterable[tuple[int, object]], where: int, skip_first=False) -> dict:
    """id -> key for the objects whose identity counts: what can change, and code (not
    atoms, numbers, dates, a dtype, nor the chunk's own list). Values that cannot change
    travel by value: both sides then pickle them alike, whatever unpickling made canonical."""
    return {
        id(obj): (where, number)
        for number, obj in numbered
        if type(obj) not in ATOMS
        and not (skip_first and number == 0)
        and (isinstance(obj, CODE) or _changeable(obj))
    }


def _changeable(obj: object) -> bool:
    """Whether an object may have state an item could change in place: anything but the
    values known to be fixed (numbers, numpy's scalars and dtypes, dates, enum members)."""
    if type(obj) in _CONTAINERS:  # the usual case, told at once
        return True
    if isinstance(obj, _FIXED):
        return False
    numpy = sys.modules.get("numpy")
    return numpy is None or not isinstance(obj, numpy.generic | numpy.dtype)


def _plain(items: list) -> bool:
    """Numbers and strings, alone or in tuples (``enumerate``'s, ``zip``'s): nothing in them
    is an object of the kernel's that an item could change or keep."""
    kinds = set(map(type, items))
    if kinds <= SCALARS:
        return True
    if not kinds <= ATOMS:
        return False
    tuples = (item for item in items if type(item) is tuple)
    return set(map(type, itertools.chain.from_iterable(tuples))) <= SCALARS


def _named(names: dict[str, Any]) -> dict[int, Key]:
    return {id(v): (CAPTURED, name) for name, v in names.items() if type(v) is not tuple}


def referenced_globals(function: types.FunctionType) -> list[str]:
    """Kernel names the function's code (nested code included) may read."""
    names: list[str] = []
    todo = [function.__code__]
    while todo:
        code = todo.pop()
        names += [n for n in code.co_names if n in function.__globals__ and n not in names]
        todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return names


def captured_names(function: types.FunctionType) -> dict[str, Any]:
    """The data the item function reads from its globals by name, on either side."""
    found = {n: function.__globals__[n] for n in referenced_globals(function)}
    return {n: v for n, v in found.items() if not isinstance(v, CODE)}


class _Writer(_ClosedFiles):
    """Pickles with keys in place of the objects ``key`` knows, except ``root`` (and its own
    ``__dict__``): the root's state by value, what it holds of the kernel's as references.
    ``compare``: for comparing two states only, a set's elements in a fixed order (a set
    rebuilt by unpickling may iterate in another order than the one pickled)."""

    def __init__(
        self, file, key: Callable[[object], Key | None], root: object = None, compare=False
    ) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self._key, self._root, self._compare = key, root, compare
        self._own = getattr(root, "__dict__", None) if root is not None else None

    def persistent_id(self, obj):
        kind = type(obj)
        if kind in ATOMS and not (kind is float and obj != obj) or obj is self._root:
            if self._compare and kind is frozenset and obj is not self._root:
                return _in_order(obj, self._key)
            return None
        if obj is self._own:
            return None
        found = self._key(obj)
        if found is None and self._compare and isinstance(obj, set):
            return _in_order(obj, self._key)
        return found


def _in_order(elements: set | frozenset, key) -> tuple:
    return ("set", tuple(sorted(_written(e, key, compare=True) for e in elements)))


def _written(
    value: object, key: Callable[[object], Key | None], root: object = None, compare=False
) -> bytes:
    file = io.BytesIO()
    _Writer(file, key, root, compare).dump(value)
    return file.getvalue()


def _same_code(identity: int) -> None:
    """Stands for a class, function or module in a fingerprint (never called)."""


class _Fingerprint(pickle.Pickler):
    """An item's content as bytes, to tell whether running it changed anything in it. Code by
    identity: it does not change, and pickling a notebook class by value costs. The C
    pickler with cloudpickle's reductions for the rest: a third of cloudpickle's time."""

    dispatch_table = cloudpickle.Pickler.dispatch_table

    def reducer_override(self, obj):
        if isinstance(obj, CODE) and obj is not _same_code:
            return _same_code, (id(obj),)
        return NotImplemented


class _Look(_Fingerprint):
    """An item's bytes, and which of ``watched`` (id -> object) it reaches, in which order: an
    object swapped for an equal one leaves the bytes alike but not the order. A pandas
    object's insides travel with it: its own fingerprint stands in for them. (Its fields are
    set after the C constructor: a Python ``__init__`` would cost as much as a small item.)"""

    watched: dict[int, object]
    reached: dict[int, object]
    wholes: list[bytes]

    def persistent_id(self, obj):
        if id(obj) in self.watched and not isinstance(obj, CODE):
            self.reached[id(obj)] = obj
            if _whole(obj):
                self.wholes.append(fingerprint(obj))
                return id(obj)
        return None


def _whole(obj: object) -> bool:
    """Objects whose insides only they know how to set (pandas' frames and series, whose
    block managers take no state in place): their whole state travels, insides by value."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(obj, pandas.DataFrame | pandas.Series)


def _state(obj: object, key: Callable[[object], Key | None]) -> bytes:
    """An object's own state, pickled shallowly: what it holds of the kernel's as keys."""
    if _whole(obj):
        return cloudpickle.dumps(obj, protocol=PROTOCOL)
    return _written(obj, key, root=obj, compare=True)


def fingerprint(item: object) -> bytes:
    """The item's bytes; something that cannot be pickled any more counts as a change."""
    file = io.BytesIO()
    try:
        _Fingerprint(file, PROTOCOL).dump(item)
    except Exception:
        return b""
    return file.getvalue()


class Look:
    """What an item is and reaches at one moment (see _Look)."""

    __slots__ = ("key", "reached")

    def __init__(self, item: object, watched: dict[int, object]) -> None:
        file = io.BytesIO()
        pickler = _Look(file, PROTOCOL)
        pickler.watched, pickler.reached, pickler.wholes = watched, {}, []
        try:
            pickler.dump(item)
            data = file.getvalue()
        except Exception:
            data = b""  # cannot be pickled (any more): a change, which its pickling explains
        self.key = (data, tuple(pickler.reached), tuple(pickler.wholes))
        self.reached = pickler.reached

    def same(self, other: Look) -> bool:
        return self.key == other.key and bool(self.key[0])


def _snapshot(obj: object) -> object:
    """A shallow copy of ``obj`` as it is now, made the way pickle sees it (its
    ``__reduce_ex__``), never by a ``__copy__`` of the class's, which may return the object
    itself or copy deep; a pandas object copies its data."""
    if type(obj) in (list, dict, set, bytearray):
        return type(obj)(obj)
    if _whole(obj):
        return obj.copy(deep=True)
    return copy._reconstruct(obj, None, *obj.__reduce_ex__(PROTOCOL))


def _captures_data(function: types.FunctionType) -> bool:
    """Whether the function, or a function its globals hold (its own globals may be another
    dict: the shell's stand-ins), reads data from its globals."""
    spaces = {id(function.__globals__): function.__globals__}
    for value in function.__globals__.values():
        if isinstance(value, types.FunctionType):
            spaces.setdefault(id(value.__globals__), value.__globals__)
    return any(
        type(value) not in SCALARS and not isinstance(value, CODE)
        for space in spaces.values()
        for name, value in space.items()
        if not name.startswith("__")
    )


class HeldObjects:
    """A worker's copies of the kernel objects in the run's task: the data the body captured
    by name (``named``), and every object of the task (``keys``, made when first needed).
    ``has_data``: whether the body or the notebook functions it calls captured any data at
    all (their globals, one dict in a worker); loops that captured none send their results
    at full speed."""

    def __init__(self, memo: Callable[[], dict], function: types.FunctionType) -> None:
        names = captured_names(function)
        self.named = _named(names)
        self.has_data = _captures_data(function)
        self._memo, self._keys, self._alive = memo, None, [names]  # ids stay theirs

    @classmethod
    def none(cls) -> HeldObjects:
        """For a task that holds nothing of the kernel's (one that failed to load)."""
        held = cls(dict, lambda item, log: None)
        held.has_data = False
        return held

    @property
    def keys(self) -> dict[int, Key]:
        if self._keys is None:
            memo = self._memo()
            self._alive.append(memo)
            self._keys = _keys(memo.items(), TASK)
            self._keys.update(self.named)
        return self._keys

    def load_chunk(self, data: bytes) -> tuple[list, ChunkObjects]:
        view = memoryview(data)
        if view[0] == PLAIN:  # numbers and strings: no object to keep
            return pickle.loads(view[1:]), ChunkObjects(self, {})
        items, memo = loaded(view[1:])
        return items, ChunkObjects(self, memo())


class ChunkObjects:
    """A worker's copies of one chunk's kernel objects: references back, and each item's
    changes to them found by comparing the item before and after it runs."""

    def __init__(self, held: HeldObjects, memo: dict) -> None:
        self.held = held
        self.keys = _keys(memo.items(), CHUNK, skip_first=True)
        self.watched = {i: obj for obj in memo.values() if (i := id(obj)) in self.keys}
        self._alive = memo

    def dumps(self, value: object, own: Callable[[], set[int]] = set) -> bytes:
        """``value`` pickled with references for the kernel's objects it holds. ``own()``:
        ids of the objects ``value`` is made of (a chunk result's lists), never the kernel's:
        the task's objects are looked up only for others, and only where the body captured
        data (a result of numbers costs nothing)."""
        held, keys = self.held, self.keys
        if not self.looks_up:
            file = io.BytesIO()
            _ClosedFiles(file, protocol=PROTOCOL).dump(value)
            return file.getvalue()
        named, deep = held.named, held.has_data
        own = own() if deep else set()

        def key(obj: object) -> Key | None:  # classes and functions: by value, as ever
            identity = id(obj)
            found = keys.get(identity) or named.get(identity)
            if found is None and deep and identity not in own and not isinstance(obj, CODE):
                found = held.keys.get(identity)
            return found

        return _written(value, key)

    @property
    def looks_up(self) -> bool:
        """Whether pickling looks up every object written (in Python): where items reach
        kernel objects, or the body captured data."""
        return bool(self.keys or self.held.named or self.held.has_data)

    def is_kernels(self, value: object) -> bool:
        """Whether ``value`` is this worker's copy of one of the kernel's objects."""
        identity, held = id(value), self.held
        if identity in self.keys or identity in held.named:
            return True
        return held.has_data and identity in held.keys

    def before(self, item: object) -> Look | None:
        """What the item is and reaches before it runs (None: nothing in it can change)."""
        if not self.watched or type(item) in SCALARS:
            return None
        if type(item) is tuple and all(type(part) in SCALARS for part in item):
            return None
        return Look(item, self.watched)

    def changes(self, item: object, before: Look | None, line: int) -> list[tuple]:
        """STATE ops, a shallow copy of each object the item reached before or after it ran,
        if it changed anything (the kernel keeps the copies that differ from what it sent)."""
        if before is None:
            return []
        after = Look(item, self.watched)
        if after.same(before):
            return []
        reached = {**before.reached, **after.reached}
        return [(STATE, line, obj, _snapshot(obj)) for obj in reached.values()]


class SentObjects:
    """The kernel's side: the objects it sent in this run's task and in each chunk still out,
    so that references load as those objects and changes are checked and made on them."""

    def __init__(self) -> None:
        self.names: dict[str, Any] = {}
        # seq -> (start, objects, keys, bytes): each chunk still out, as it was sent
        self.chunks: dict[int, tuple[int, dict, dict, bytes]] = {}
        self._memo: Callable[[], dict] = dict
        self._task: dict[int, object] | None = None
        self._bases: dict[int, tuple] = {}  # seq -> (key, the chunk as sent), once thawed

    def task_sent(self, memo: Callable[[], dict], names: dict[str, Any]) -> None:
        self._memo, self.names, self._task = memo, names, None
        self.chunks.clear()

    @property
    def task(self) -> dict[int, object]:
        """The task's objects by number (made when first needed: copying a memo costs)."""
        if self._task is None:
            self._task = {number: obj for number, obj in self._memo().values()}
        return self._task

    def chunk_bytes(self, seq: int, start: int, items: list) -> bytes:
        """The chunk's items pickled, after a byte that says whether they hold objects."""
        if type(items) is range or _plain(items):
            return bytes([PLAIN]) + pickle.dumps(items, protocol=PROTOCOL)
        data, memo = dumped(items)
        numbered = list(memo().values())
        keys = _keys(numbered, CHUNK, skip_first=True)
        self.chunks[seq] = (start, dict(numbered), keys, data)
        return bytes([HELD]) + data

    def applied(self, seq: int) -> None:
        self.chunks.pop(seq, None)
        self._bases.pop(seq, None)

    def clear(self) -> None:
        self._memo, self.names, self._task = dict, {}, None
        self.chunks.clear()
        self._bases.clear()

    def _object(self, seq: int, key: Key) -> object:
        where, which = key
        if where == CHUNK:
            return self.chunks[seq][1][which]
        return self.names[which] if where == CAPTURED else self.task[which]

    def load(self, data: bytes, seq: int) -> Any:
        """A worker's bytes, its references loaded as the kernel's own objects."""
        return _Reader(io.BytesIO(data), lambda key: self._object(seq, key)).load()

    def thaw(self, result) -> None:
        """Drop each STATE op whose copy equals its object as the item found it: as sent, or
        as an earlier item of the chunk left it (the item reached the object but did not
        change it). The others carry that state too, which the kernel's object must still
        have when the op is applied: else something else changed it meanwhile (a change
        recorded by name, a view of the same memory), which copies cannot merge."""
        chunk = self.chunks.get(result.seq)
        if chunk is None or not result.changed:
            return
        keys, (sent, sent_memo) = chunk[2], loaded(chunk[3])
        copies = sent_memo()
        copy_keys = _keys(copies.items(), CHUNK, skip_first=True)

        def key(obj: object) -> Key | None:
            return keys.get(id(obj)) or copy_keys.get(id(obj))

        found: dict[int, object] = {}  # id(kernel object) -> its state for the next item
        for offset in sorted(result.changed):
            kept = []
            for op in result.ops[offset]:
                if op[0] == STATE:
                    _, line, target, fresh = op
                    base = found.get(id(target))
                    if base is None:
                        base = copies.get(keys.get(id(target), (None, None))[1])
                    if _unchanged(fresh, base, key):
                        continue
                    found[id(target)] = fresh
                    op = (STATE, line, target, fresh, base)
                kept.append(op)
            result.ops[offset] = kept
        # kept until applied: the copies (the memo's temporaries too) keep their ids, which
        # ``key`` knows them by, from being reused by other objects meanwhile
        self._bases[result.seq] = (key, copies, sent)

    def holder(self, target: object, seq: int) -> str | None:
        """Who else holds ``target`` with its old state: a later chunk already sent. (The
        body's own captured copy is not looked at: items that read another item's changes
        through a captured container are not found here.)"""
        identity = id(target)
        for other, (start, _, keys, _) in self.chunks.items():
            if other > seq and identity in keys:
                return f"item {start}"
        return None

    def checks(self, seq: int) -> ChunkChecks:
        """What effects.apply_ops asks of this chunk's STATE ops."""
        return ChunkChecks(self, seq)


class ChunkChecks:
    """Whether a chunk's copy may be set on the kernel's object (see effects.apply_ops)."""

    def __init__(self, sent: SentObjects, seq: int) -> None:
        self.sent, self.seq = sent, seq
        self.key = sent._bases.get(seq, (None,))[0]

    def moved(self, target: object, base: object) -> Exception | None:
        """SharedObjectChanged where ``target`` is no longer as the item found it."""
        if self.key is None or _unchanged(target, base, self.key):
            return None
        message = errors.CHANGED_MEANWHILE.format(
            type=type(target).__name__, object=short_repr(target, 40)
        )
        return errors.SharedObjectChanged(message)

    def shared(self, target: object) -> Exception | None:
        """SharedObjectChanged where a later chunk already sent holds ``target``."""
        holder = self.sent.holder(target, self.seq)
        if holder is None:
            return None
        message = errors.SHARED_OBJECT_CHANGED.format(
            type=type(target).__name__, object=short_repr(target, 40), holder=holder
        )
        return errors.SharedObjectChanged(message)


def _unchanged(now: object, base: object, key) -> bool:
    """Whether two states of one object are the same (the kernel's objects and the copies
    sent are told apart by ``key``, which knows both)."""
    if base is None or type(now) is not type(base):
        return False
    if isinstance(now, set):  # its order may differ where string hashing does
        return now == base
    return _state(now, key) == _state(base, key)


class _Reader(pickle.Unpickler):
    def __init__(self, file, resolve: Callable[[Key], object]) -> None:
        super().__init__(file)
        self.persistent_load = resolve
