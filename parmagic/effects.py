"""What an item may do to the kernel, recorded where the item runs and replayed in the kernel.

The item function (see ``itemcode.py``) calls an :class:`EffectLog` instead of touching kernel
containers and reductions; the dispatcher replays each item's log on the real objects in item
order, which is what makes ``results.append(x)`` end in serial order on every backend.

Worker side and kernel side both import this module, so it imports nothing heavy.
"""

from __future__ import annotations

import collections
import operator
import sys
from typing import Any

CALL, SETITEM, DELITEM, AUGITEM, REDUCE, FORGET, SETATTR, AUGATTR = range(8)
# An op's target that is the item's own object, not a kernel name: (ITEM, place in the item)
ITEM = "parmagic:item"
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

    def bind(self, local_names: dict[str, Any]) -> None:
        self.names = local_names

    # Changes to the item's own object where items get copies: done here, on the copy, so the
    # item sees them, and recorded, to be done again on the kernel's object (``place``).

    def item_call(self, line, place, obj, path, method, /, *args, **kwargs) -> None:
        getattr(_walk(obj, path), method)(*args, **kwargs)
        self.ops.append((CALL, line, (ITEM, place), path, method, args, kwargs))

    def item_setitem(self, line, place, obj, path, key, value) -> None:
        _walk(obj, path)[key] = value
        self.ops.append((SETITEM, line, (ITEM, place), path, key, value))

    def item_delitem(self, line, place, obj, path, key) -> None:
        del _walk(obj, path)[key]
        self.ops.append((DELITEM, line, (ITEM, place), path, key))

    def item_augitem(self, line, place, obj, path, key, op, value) -> None:
        target = _walk(obj, path)
        target[key] = getattr(operator, op)(target[key], value)
        self.ops.append((AUGITEM, line, (ITEM, place), path, key, op, value))

    def item_setattr(self, line, place, obj, path, attr, value) -> None:
        setattr(_walk(obj, path), attr, value)
        self.ops.append((SETATTR, line, (ITEM, place), path, attr, value))

    def item_augattr(self, line, place, obj, path, attr, op, value) -> None:
        target = _walk(obj, path)
        setattr(target, attr, getattr(operator, op)(getattr(target, attr), value))
        self.ops.append((AUGATTR, line, (ITEM, place), path, attr, op, value))


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


def _resolve(ns: dict, name: str | tuple, path: tuple, item: Any = None) -> Any:
    if type(name) is tuple:  # (ITEM, place): the kernel's object of the item
        target = item
        for index in name[1]:
            target = (target if isinstance(target, tuple | list) else tuple(target))[index]
        return _walk(target, path)
    try:
        target = ns[name]
    except KeyError:
        raise NameError(f"name {name!r} is not defined", name=name) from None
    return _walk(target, path)


def apply_ops(ns: dict, ops: list[tuple], item: Any = None) -> None:
    """Replay one item's log on the kernel's objects (``item``: the item's own, as the kernel
    has it); the first failure stops the rest."""
    for op in ops:
        kind, line = op[0], op[1]
        try:
            if kind == CALL:
                _, _, name, path, method, args, kwargs = op
                getattr(_resolve(ns, name, path, item), method)(*args, **kwargs)
            elif kind == SETITEM:
                _, _, name, path, key, value = op
                _resolve(ns, name, path, item)[key] = value
            elif kind == DELITEM:
                _, _, name, path, key = op
                del _resolve(ns, name, path, item)[key]
            elif kind == AUGITEM:
                _, _, name, path, key, opname, value = op
                target = _resolve(ns, name, path, item)
                target[key] = getattr(operator, opname)(target[key], value)
            elif kind == SETATTR:
                _, _, name, path, attr, value = op
                setattr(_resolve(ns, name, path, item), attr, value)
            elif kind == AUGATTR:
                _, _, name, path, attr, opname, value = op
                target = _resolve(ns, name, path, item)
                setattr(target, attr, getattr(operator, opname)(getattr(target, attr), value))
            elif kind == REDUCE:
                _, _, name, opname, value = op
                ns[name] = getattr(operator, opname)(_resolve(ns, name, ()), value)
            else:
                ns.pop(op[2], None)  # `del name` in the body
        except Exception as error:
            raise ReplayError(error, line) from error
