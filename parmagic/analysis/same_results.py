"""Whether a backend's run gave the serial run's results: ``--compare``'s "same as serial".

The promise is the plain loop's results, so "the same" is exact: ``-0.0`` is not ``0.0``, a
dict's key order counts, and a NaN is the same result as a NaN. An object of the user's own
classes that defines no ``==`` is compared by its attributes; a library's (a response, a
client) counts as the same when its type is: each run makes its own.
"""

from __future__ import annotations

import math
import pickle
import sys
from collections.abc import Iterator

from ..errors import plural, short_repr
from ..worker.effects import CALL, REDUCE, STATE
from ..worker.imported_code import is_users

DEEPEST = 60  # levels of containers and objects followed; each costs Python a few frames


def same(a: object, b: object, _pairs: set | None = None, _depth: int = 0) -> bool:
    """Equal as results, exactly (see the module's docstring). A pair met again inside
    itself (a cycle) counts as the same: nothing along the way differed. What lies past
    ``DEEPEST`` levels (a linked list of 2000 nodes) is not looked at: Python's own recursion
    would end the comparison, and with it the run."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return _same_float(a, b)
    if isinstance(a, complex):
        return _same_float(a.real, b.real) and _same_float(a.imag, b.imag)
    if _depth > DEEPEST:
        return True  # nothing found to differ in the levels looked at
    plain = type(a).__eq__ is object.__eq__
    if not isinstance(a, tuple | list | dict) and not (plain and _users_class(type(a))):
        return plain or _equal(a, b)
    pairs = set() if _pairs is None else _pairs
    if (id(a), id(b)) in pairs:
        return True
    pairs.add((id(a), id(b)))
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(
            same(x, y, pairs, _depth + 1) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k], pairs, _depth + 1) for k in a)
    mine, yours = _state(a), _state(b)  # new dicts: compared here, never remembered
    return list(mine) == list(yours) and all(
        same(mine[k], yours[k], pairs, _depth + 1) for k in mine
    )


def _same_float(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _equal(a: object, b: object) -> bool:
    try:
        return bool(a == b)
    except RecursionError:
        return True  # nested past what Python compares: nothing found to differ
    except Exception:  # e.g. NumPy arrays: equality is elementwise; their bytes are exact
        try:
            return pickle.dumps(a) == pickle.dumps(b)
        except Exception:
            return repr(a) == repr(b)


def _users_class(kind: type) -> bool:
    module = kind.__module__
    return module in ("__main__", "__mp_main__") or is_users(sys.modules.get(module))


def _state(value: object) -> dict:
    state = dict(getattr(value, "__dict__", {}))
    for kind in type(value).__mro__:
        for slot in kind.__dict__.get("__slots__", ()):
            if hasattr(value, slot):
                state[slot] = getattr(value, slot)
    return state


def _flatten(transcript: list) -> Iterator[tuple]:
    for result, _items in transcript:
        for offset in range(len(result)):
            error = result.errors.get(offset)
            failure = (type(error.exception).__name__, str(error.exception)) if error else None
            yield (
                result.first + offset,
                result.outputs.get(offset, []),
                [op for op in result.ops[offset] if op[0] != STATE],  # see first_difference
                result.names[offset] or {},
                result.item_values(offset),
                failure,
            )


def first_difference(reference: list, other: list) -> str | None:
    """What the first item that differs did differently, in a few words; None if none. The
    kernel objects a run's items changed (STATE ops, from copies) are not compared: serial,
    which runs first, changed the kernel's objects themselves, and later runs start from them."""
    theirs = list(_flatten(other))
    ours = list(_flatten(reference))
    for mine, yours in zip(ours, theirs, strict=False):
        found = _item_difference(mine, yours)
        if found:
            return f"item {mine[0]}{found}"
    if len(ours) != len(theirs):
        return f"{plural(len(theirs), 'item')} ran, not {len(ours)}"
    return None


def _item_difference(mine: tuple, yours: tuple) -> str | None:
    if mine[5] != yours[5]:
        return " ended with " + (f"{yours[5][0]}: {yours[5][1]}" if yours[5] else "no error")
    if "".join(t for _, t in mine[1]) != "".join(t for _, t in yours[1]):
        return " printed other output"
    for op_serial, op_other in zip(mine[2], yours[2], strict=False):
        if not same(op_serial, op_other):
            return f": {describe(op_other)}"
    if len(mine[2]) != len(yours[2]):
        return f" made {plural(len(yours[2]), 'change')}, not {len(mine[2])}"
    for name, value in mine[3].items():
        if not same(value, yours[3].get(name)):
            return f" set {name} = {short_repr(yours[3].get(name), 30)}"
    if not same(mine[4], yours[4]):
        return f" gave {short_repr(yours[4], 30)}"
    return None


def describe(op: tuple) -> str:
    """A recorded change as the user wrote it, roughly: ``out.append(0.52)``."""
    if op[0] == CALL:
        args = ", ".join(short_repr(a, 20) for a in op[5])
        return f"{op[2]}.{op[4]}({args})"
    if op[0] == REDUCE:
        return f"{op[2]} reduced with {short_repr(op[4], 20)}"
    return f"a change to {op[2]} with other values"
