"""What an item may do to the kernel, recorded where the item runs and replayed in the kernel.

The item function (see ``itemcode.py``) calls an :class:`EffectLog` instead of touching kernel
containers and reductions; the dispatcher replays each item's log on the real objects in item
order, which is what makes ``results.append(x)`` end in serial order on every backend. Where
items run on copies (worker processes), the log also carries the new state of the kernel's
objects an item changed (STATE, found by kernel_objects.py), made here in place.

Worker side and kernel side both import this module, so it imports nothing heavy.
"""

from __future__ import annotations

import array
import collections
import collections.abc
import copyreg
import itertools
import operator
import pickle
import sys
from typing import Any

from .. import errors

CALL, SETITEM, DELITEM, AUGITEM, REDUCE, FORGET, STATE = range(7)
# How ordinary class instances are rebuilt: their state can be set on the kernel's object.
_ORDINARY = (copyreg.__newobj__, copyreg.__newobj_ex__, copyreg._reconstructor)
# A path step that is an attribute rather than a key: pandas' indexers (``df.loc[i, "x"] = v``)
INDEXER, INDEXERS = "parmagic:indexer", frozenset({"loc", "iloc", "at", "iat"})
ITEM_ARG, LOG_ARG = "__item__", "__log__"  # the item function's parameters


class EffectLog:
    """Collects one item's write-backs, reductions and final local names."""

    __slots__ = ("ops", "names")

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self.names: dict[str, Any] | None = None

    def call(self, line, name, path, method, /, *args, **kwargs) -> None:
        self.ops.append((CALL, line, name, path, method, args, kwargs))

    def setitem(self, line, name, path, key, value) -> None:
        self.ops.append((SETITEM, line, name, path, key, value))

    def delitem(self, line, name, path, key) -> None:
        self.ops.append((DELITEM, line, name, path, key))

    def augitem(self, line, name, path, key, op, value) -> None:
        self.ops.append((AUGITEM, line, name, path, key, op, value))

    def reduce(self, line, name, op, value) -> None:
        self.ops.append((REDUCE, line, name, op, value))

    def forget(self, line, name) -> None:
        self.ops.append((FORGET, line, name))

    def sink(self, line, name):
        """What the item writes to in place of the kernel's file ``name`` (files.py)."""
        from .files import Sink

        return Sink(self.call, name, line)

    def bind(self, local_names: dict[str, Any]) -> None:
        self.names = local_names


def merge_item_names(merged: dict[str, Any], names: dict[str, Any], ops: list[tuple]) -> None:
    """One item's names over those of the items before it in its chunk, as the loop leaves
    them: a name the item deleted (its FORGET op, ``del x``) is gone unless it bound it again."""
    merged.update(names)
    for op in ops:
        if op[0] == FORGET and op[2] not in names:
            merged.pop(op[2], None)


SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None), range, slice})
ATOMS = SCALARS | {tuple, frozenset}


def plain_data(values: list) -> bool:
    """Numbers and strings, alone or in tuples (``enumerate``'s, ``zip``'s, a dict
    comprehension's pairs), and no NaN (a float whose identity the kernel keeps): nothing in
    them is an object of the kernel's that an item could change or keep, so they travel by
    value, at the plain pickler's speed."""
    kinds = set(map(type, values))
    if tuple in kinds:
        if not kinds <= SCALARS | {tuple}:
            return False
        parts = itertools.chain.from_iterable(v for v in values if type(v) is tuple)
        values = [*(v for v in values if type(v) is not tuple), *parts]
        kinds = set(map(type, values))
    if not kinds <= SCALARS:
        return False
    return float not in kinds or all(v == v for v in values if type(v) is float)


def is_recordable(value: object) -> bool:
    """Kernel objects whose in-place changes are replayed rather than done where items run."""
    if isinstance(value, list | dict | set | collections.deque | bytearray):
        return True
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return True
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame | pandas.Series)


class ReplayError(Exception):
    """Wraps an exception raised while replaying an op, with the cell line it came from."""

    def __init__(self, error: Exception, line: int) -> None:
        super().__init__(error)
        self.error = error
        self.line = line


def _walk(target: Any, path: tuple) -> Any:
    for key in path:
        if type(key) is tuple and len(key) == 2 and key[0] == INDEXER:
            target = getattr(target, key[1])
        else:
            target = target[key]
    return target


def _resolve(ns: dict, name: str, path: tuple) -> Any:
    try:
        target = ns[name]
    except KeyError:
        raise NameError(f"name {name!r} is not defined", name=name) from None
    return _walk(target, path)


def apply_ops(ns: dict, ops: list[tuple], checks: Any = None) -> None:
    """Replay one item's log on the kernel's objects; the first failure stops the rest.
    ``checks`` (kernel_objects.ChunkChecks) for STATE ops: ``moved(target, base)``, the
    error for an object no longer as the item found it (raised at once); ``shared(target)``,
    for one that another item still holds a copy of (raised once the item is applied whole:
    the run stops after it)."""
    shared: tuple[Exception, int] | None = None
    for op in ops:
        kind, line = op[0], op[1]
        try:
            if kind == CALL:
                _, _, name, path, method, args, kwargs = op
                getattr(_resolve(ns, name, path), method)(*args, **kwargs)
            elif kind == SETITEM:
                _, _, name, path, key, value = op
                _resolve(ns, name, path)[key] = value
            elif kind == DELITEM:
                _, _, name, path, key = op
                del _resolve(ns, name, path)[key]
            elif kind == AUGITEM:
                _, _, name, path, key, opname, value = op
                target = _resolve(ns, name, path)
                target[key] = getattr(operator, opname)(target[key], value)
            elif kind == STATE:
                target, fresh, base = op[2], op[3], op[4] if len(op) > 4 else None
                moved = checks.moved(target, base) if checks and base is not None else None
                if moved is not None:  # not as the item found it: nothing of the item is made
                    raise moved
                set_in_place(target, fresh)
                found = checks.shared(target) if checks and shared is None else None
                shared = (found, line) if found is not None else shared
            elif kind == REDUCE:
                _, _, name, opname, value = op
                ns[name] = getattr(operator, opname)(_resolve(ns, name, ()), value)
            else:
                ns.pop(op[2], None)  # `del name` in the body
        except Exception as error:
            raise ReplayError(error, line) from error
    if shared is not None:
        raise ReplayError(*shared)


def set_in_place(target: object, fresh: object) -> None:
    """Make ``fresh``'s state ``target``'s, keeping ``target`` itself (a NumPy view writes
    through to its base). TypeError for what cannot take a state in place."""
    if type(target) is not type(fresh):
        raise _not_carried(target, "its type changed")
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(target, numpy.ndarray):
        if target.shape != fresh.shape:
            raise _not_carried(target, f"its shape changed from {target.shape} to {fresh.shape}")
        target[...] = fresh
        return
    if isinstance(target, list | bytearray | array.array):
        target[:] = fresh
    elif isinstance(target, dict | set):
        target.clear()
        target.update(fresh)
        if isinstance(target, collections.defaultdict):
            target.default_factory = fresh.default_factory
    elif isinstance(target, collections.deque):
        target.clear()
        target.extend(fresh)
    elif isinstance(target, collections.abc.Iterator):
        raise _not_carried(target, "where an iterator stopped cannot be set on another")
    elif not _ordinary(target, fresh):
        raise _not_carried(target, "it has no state that parmagic can set on the kernel's object")
    _set_attributes(target, fresh)


def _not_carried(target: object, why: str) -> TypeError:
    return TypeError(errors.NOT_CARRIED_BACK.format(type=type(target).__name__, why=why))


def _ordinary(obj: object, fresh: object) -> bool:
    """Whether ``obj`` takes ``fresh``'s attributes in place: an ordinary instance, or one
    whose own ``__reduce__`` rebuilds it from its class with arguments the item left alone
    (then the attributes are all that changed)."""
    try:
        rebuild = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        if rebuild[0] in _ORDINARY:
            return True
        other = fresh.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return isinstance(rebuild[0], type) and bool(rebuild[:2] == other[:2])
    except Exception:
        return False


def _set_attributes(target: object, fresh: object) -> None:
    """Attributes, the way the class takes them from pickle (``__setstate__``, as pandas and
    scikit-learn objects define it), or its ``__dict__`` and slots."""
    if getattr(type(target), "__setstate__", None) is not None:
        state, old = fresh.__getstate__(), target.__getstate__()
        target.__setstate__(state)
        # a merging __setstate__ (scikit-learn's) would keep what the item deleted; what the
        # class leaves out of its state (a lock) stays
        if isinstance(state, dict) and isinstance(old, dict) and hasattr(target, "__dict__"):
            for gone in old.keys() - state.keys():
                vars(target).pop(gone, None)
        return
    if hasattr(fresh, "__dict__"):
        vars(target).clear()
        vars(target).update(vars(fresh))
    for cls in type(target).__mro__:
        for slot in getattr(cls, "__slots__", ()) if cls is not object else ():
            if slot in ("__dict__", "__weakref__"):
                continue
            if hasattr(fresh, slot):
                setattr(target, slot, getattr(fresh, slot))
            elif hasattr(target, slot):
                delattr(target, slot)
