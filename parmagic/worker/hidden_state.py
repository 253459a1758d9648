"""The guard: state an item can change without naming it, watched while the loop runs.

Reading the code (hidden_effects.py) sees what the body and the code it follows name; Python
reaches state in more ways than any reading follows (``type(self).made += 1``, a library that
draws from ``numpy.random``, ``os.chdir``). So before a parallel run the guard fingerprints
that state where the items run: the global random states, ``os.environ``, ``sys.path``, the
working directory, the closure cells, defaults and attributes of the notebook's functions the
body reaches, the dictionaries of the notebook's classes, and the globals of the user's own
modules. After each chunk it looks again (chunk.py); a chunk that changed any of it is not
applied, and the run stops there (dispatch.py), with the state put back where it can be.

A fingerprint is identity plus a cheap digest: a container's length and the identity of a
bounded sample of what it holds, an array's buffer and a sample of its bytes. A change in the
middle of a very large container can go unseen; nothing large is copied or pickled per chunk.
Worker processes import this module: it imports nothing heavy.
"""

from __future__ import annotations

import collections
import copy
import functools
import itertools
import os
import random as _random
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Mapping

from .imported_code import is_users

SAMPLE = 32  # members compared by identity at each end of a long container
COPIED = 10_000  # containers up to this length are copied before the run, to be put back...
COPY_BUDGET = 200_000  # ... until the run's copies hold this many members in all
DIGESTED = 64  # containers of one namespace whose contents are digested (the rest: identity)
REACHED = 2_000  # objects looked at when finding what the body reaches
_SEQUENCES = (list, tuple, collections.deque)
_MAPPINGS = (dict, collections.OrderedDict, collections.defaultdict, collections.Counter)
_SETS = (set, frozenset)
_SCALARS = (int, float, str, bytes, bool, type(None), complex)
_MISSING = object()  # an empty closure cell, a name not bound yet
_OWN_MODULES = ("__main__", "__mp_main__")


def digest(value: object, depth: int = 1) -> object:
    """What an in-place change to ``value`` alters, cheaply (its identity is compared apart):
    the identities of (a sample of) its members, and ``depth`` levels of the containers among
    them."""
    kind = type(value)
    if kind in _SCALARS:
        return None
    if kind in _SEQUENCES:
        length = len(value)
        members = value if length <= 2 * SAMPLE else _ends(value)
        return length, tuple(map(id, members)), _inner(members, depth)
    if kind in _MAPPINGS:
        length = len(value)
        keys = list(value) if length <= 2 * SAMPLE else _ends(value)
        members = [value[key] for key in keys]
        return length, tuple(map(id, keys)), tuple(map(id, members)), _inner(members, depth)
    if kind in _SETS:
        return len(value), frozenset(map(id, itertools.islice(value, 4 * SAMPLE)))
    if kind is bytearray:
        return len(value), bytes(value[:SAMPLE]), bytes(value[-SAMPLE:])
    numpy = sys.modules.get("numpy")
    if numpy is not None and kind is numpy.ndarray:
        return _array_digest(value, numpy)
    return None


def _inner(members: Iterable, depth: int) -> tuple:
    if depth <= 0:
        return ()
    return tuple(digest(m, depth - 1) for m in [m for m in members if type(m) in _CONTAINERS])


def _ends(members: Iterable) -> list:
    """The first and last SAMPLE members (a deque, a dict's items: no slicing)."""
    head = list(itertools.islice(members, SAMPLE))
    tail = list(itertools.islice(reversed(members), SAMPLE))  # type: ignore[call-overload]
    return head + tail


def _array_digest(array, numpy) -> object:
    """An array's buffer and up to 4 KB of its values: spread over the array, not all of it."""
    base = (array.shape, array.dtype.str, array.__array_interface__["data"][0])
    if array.nbytes <= 4096:
        return (*base, array.tobytes())
    picks = numpy.linspace(0, array.size - 1, num=max(4096 // array.itemsize, 1), dtype=numpy.intp)
    return (*base, array.flat[picks].tobytes())


def _kept_copies(value: object, budget: list[int]) -> list[tuple[object, object]] | None:
    """(object, copy) pairs to put ``value``'s contents back from, the containers it holds
    too (as deep as the digest looks); None for what is too big to copy, or once the run's
    copies have used up ``budget`` (members left, shared by the guard's namespaces)."""
    numpy = sys.modules.get("numpy")
    if _is_array(value, numpy) and value.nbytes <= 8 * COPIED <= 8 * budget[0]:  # type: ignore[attr-defined]
        budget[0] -= value.nbytes // 8  # type: ignore[attr-defined]
        return [(value, value.copy())]  # type: ignore[attr-defined]
    if type(value) not in _COPIED or not len(value) <= min(COPIED, budget[0]):  # type: ignore[arg-type]
        return None
    members = value.values() if isinstance(value, dict) else value  # type: ignore[attr-defined]
    inner = [m for m in members if type(m) in _COPIED and len(m) <= SAMPLE]
    budget[0] -= len(value) + SAMPLE * len(inner)  # type: ignore[arg-type]
    return [(value, copy.copy(value)), *((m, copy.copy(m)) for m in inner)]


def _is_array(value: object, numpy) -> bool:
    return numpy is not None and type(value) is numpy.ndarray


def _has_contents(value: object) -> bool:
    return type(value) in _CONTAINERS or _is_array(value, sys.modules.get("numpy"))


_COPIED = (list, collections.deque, *_MAPPINGS, set, bytearray)
_CONTAINERS = (*_SEQUENCES, *_MAPPINGS, *_SETS, bytearray)


class Space:
    """Names bound to values (a module's globals, a class's dictionary, a closure's cells,
    ``os.environ``): which object each name holds, and that object's digest."""

    def __init__(
        self,
        label: str,
        read: Callable[[], Iterable[tuple[str, object]]],
        bind: Callable[[str, object], None],
        unbind: Callable[[str], None] | None = None,
        budget: list[int] | None = None,
        whole: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        self.label, self.read, self.bind, self.unbind = label, read, bind, unbind
        self.budget = budget if budget is not None else [COPY_BUDGET]
        self.whole = whole  # the namespace ``read`` filters, unfiltered: compared first, fast
        self.spent = 0  # of the budget, by this namespace's copies
        self.take()

    def _identities(self, keep: bool = False) -> tuple[int, ...] | None:
        """The ids of the namespace's values; ``keep``: they are the ones compared with from
        now on, held so that no new value can take the id of one that is gone."""
        if self.whole is None:
            return None
        values = tuple(self.whole().values())
        if keep:
            self._compared = values
        return tuple(map(id, values))

    def take(self) -> None:
        self.budget[0] += self.spent  # taken again: the old copies are dropped
        left = self.budget[0]
        self.quick = self._identities(keep=True)
        self.values = dict(self.read())
        held = (name for name, value in self.values.items() if _has_contents(value))
        self.deep = set(itertools.islice(held, DIGESTED))  # the rest: by identity
        self.prints = {name: self._print(name, value) for name, value in self.values.items()}
        self.copies = {
            name: _kept_copies(value, self.budget) if name in self.deep else None
            for name, value in self.values.items()
        }
        self.spent = left - self.budget[0]

    def _print(self, name: str, value: object) -> object:
        return id(value), digest(value) if name in self.deep else None

    def changed(self) -> str | None:
        """The first name whose value changed, added or removed, in words; None if none."""
        if self.quick is not None and self._identities() == self.quick:
            whole = self.whole()  # type: ignore[misc]
            deep = ((name, whole.get(name, _MISSING)) for name in self.deep)
            if all(self._print(name, value) == self.prints[name] for name, value in deep):
                return None
        now = dict(self.read())
        for name in self.prints.keys() | now.keys():
            value = now.get(name, _MISSING)
            if value is _MISSING or name not in self.prints:
                return self.label.format(name=name)
            if self._print(name, value) != self.prints[name]:
                return self.label.format(name=name)
        self.quick = self._identities(keep=True)  # a change ``read`` leaves out (``__slotnames__``)
        return None

    def restore(self) -> list[str]:
        """Puts back what changed; returns what could not be."""
        lost, now = [], dict(self.read())
        for name in now.keys() - self.values.keys():
            if self.unbind is not None:
                self.unbind(name)
        for name, value in self.values.items():
            current = now.get(name, _MISSING)
            if current is not value:
                self.bind(name, value)
            elif self._print(name, value) != self.prints[name]:
                kept = self.copies[name]
                if kept is None or not _put_back(kept):
                    lost.append(self.label.format(name=name))
        return lost


def _put_back(kept: list[tuple[object, object]]) -> bool:
    from .effects import set_in_place

    try:
        for target, saved in kept:  # the container first, then the containers it holds
            set_in_place(target, copy.copy(saved))
    except Exception:
        return False
    return True


class Value:
    """One piece of state read whole (a random state, ``sys.path``, the working directory)."""

    def __init__(
        self, label: str, read: Callable[[], object], put: Callable[[object], None]
    ) -> None:
        self.label, self.read, self.put = label, read, put
        self.take()

    def take(self) -> None:
        self.seen = self.read()

    def changed(self) -> str | None:
        return None if _same(self.read(), self.seen) else self.label

    def restore(self) -> list[str]:
        if not _same(self.read(), self.seen):
            self.put(self.seen)
        return []


class Environment:
    """``os.environ``, compared as CPython keeps it: a dict of encoded bytes, copied and
    compared at C speed (decoding its 30-odd entries at every run's start cost more than the
    rest of the guard). Only a change is decoded, to name it and to put it back."""

    label = "`os.environ['{name}']`"

    def __init__(self) -> None:
        self.take()

    @staticmethod
    def _now() -> dict:
        raw = getattr(os.environ, "_data", None)  # elsewhere than CPython: decoded each time
        return dict(os.environ) if raw is None else raw

    def take(self) -> None:
        self.seen = dict(self._now())

    def changed(self) -> str | None:
        now = self._now()
        if now == self.seen:
            return None
        keys = sorted(now.keys() | self.seen.keys())
        name = next((key for key in keys if now.get(key) != self.seen.get(key)), None)
        if name is None:  # put back meanwhile (a thread's item, as ``mock.patch.dict`` does)
            return None
        return self.label.format(name=os.fsdecode(name))

    def restore(self) -> list[str]:
        now = dict(self._now())
        for key in now.keys() - self.seen.keys():
            del os.environ[os.fsdecode(key)]
        for key, value in self.seen.items():
            if now.get(key) != value:
                os.environ[os.fsdecode(key)] = os.fsdecode(value)
        return []


Part = Space | Value | Environment  # what a Guard watches: take, changed, restore


def _same(a: object, b: object) -> bool:
    return _comparable(a) == _comparable(b)


def _comparable(state: object) -> object:
    """NumPy's random states are dicts holding arrays, which ``==`` cannot tell apart."""
    if isinstance(state, dict):
        return tuple((key, _comparable(value)) for key, value in state.items())
    to_bytes = getattr(state, "tobytes", None)
    return to_bytes() if to_bytes is not None else state


class Guard:
    """The fingerprints taken before a run; ``changed()`` after each chunk (cheap: identities
    and digests), ``restore()`` once, when a change stopped the run."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts

    @classmethod
    def around(
        cls, function: types.FunctionType, random: bool = True, random_module: bool = True
    ) -> Guard:
        """The state the item function can reach without naming it (``random``: the global
        random states too; not under ``--seed``, which reseeds them per item; not the
        ``random`` module's where the process's own threads draw from it, as dask's do)."""
        parts: list[Part] = [*_process_state(random, random_module)]
        found, budget = Reached(function), [COPY_BUDGET]
        for reached_function in found.functions:
            parts += _function_state(reached_function, budget)
        parts += [_class_state(kind, budget) for kind in found.classes]
        parts += [_module_state(module, budget) for module in found.modules]
        for via, generator in found.generators:
            reached = f"the random generator reached through `{via}`"
            parts.append(_generator_state(reached if via else "a random generator", generator))
        return cls(parts)

    def changed(self) -> str | None:
        for part in self.parts:
            try:
                what = part.changed()
            except RuntimeError:  # "changed size during iteration": an item changing it now
                what = part.label.format(name="…")
            if what is not None:
                return what
        return None

    def restore(self) -> list[str]:
        return [lost for part in self.parts for lost in part.restore()]

    def settle(self) -> None:
        """Takes again what changed before the items ran: in a worker, loading a chunk's
        objects may run their classes' code, which is not the items' doing."""
        for part in self.parts:
            if part.changed() is not None:
                part.take()


def _process_state(random: bool, random_module: bool) -> Iterator[Part]:
    yield Value("the working directory", _working_directory, os.chdir)
    yield Value("`sys.path`", lambda: list(sys.path), _set_path)
    yield Environment()
    if not random:
        return
    for generator, module, _, label in global_generators().values():
        if random_module or module is not _random:
            yield _generator_state(label, generator)


def _working_directory() -> str:
    try:
        return os.getcwd()
    except OSError:  # removed under the process
        return ""


def _set_path(saved: object) -> None:
    sys.path[:] = saved  # type: ignore[index]


class Reached:
    """The user's functions and classes the item function reaches, and random generators:
    through the names its code reads, closure cells, defaults, methods, and small containers
    (a dict of lambdas). A generator reached in a worker is a copy of the kernel's, which
    draws the same numbers in every worker."""

    def __init__(self, function: types.FunctionType) -> None:
        self.functions: list[types.FunctionType] = []
        self.classes: list[type] = []
        self.generators: list[tuple[str, object]] = []  # (the global name it was reached by, it)
        self.modules: list[types.ModuleType] = []  # the user's own, named or whose code runs
        self._names: set[str] = set()  # every name the code reached reads (``pkg.sub.f``)
        self._walk(function)

    def _walk(self, function: types.FunctionType) -> None:
        todo: list[tuple[object, str]] = [(function, "")]
        seen: set[int] = set()
        kinds, watched_apart = _generator_types(), global_generators()
        while todo and len(seen) < REACHED:
            value, via = todo.pop()
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, kinds) and id(value) not in watched_apart:
                self.generators.append((via, value))
            found = self._inside(value, function)
            todo += [(found_value, via or name) for name, found_value in found]

    def _inside(self, value: object, function: types.FunctionType) -> list[tuple[str, object]]:
        """What the walk goes on to from ``value``, with the global names it is reached by."""
        if isinstance(value, types.FunctionType):
            if value is function or is_user_code(value):
                self.functions += [value] if value is not function else []
                return [*self._module_of(value), *self._function_reaches(value)]
            return []
        if isinstance(value, type):
            if not is_user_code(value):
                return []
            self.classes.append(value)
            members = (*value.__bases__, *map(unwrapped, vars(value).values()))
            return [*self._module_of(value), *(("", member) for member in members)]
        if isinstance(value, types.ModuleType):
            if not is_users(value):
                return []
            self.modules.append(value)  # and what the code reads of it (``mod.f``, ``pkg.sub``)
            inside = vars(value)
            return [(name, inside[name]) for name in self._names if name in inside]
        return [("", inner) for inner in _held_by(value)]

    def _function_reaches(self, function: types.FunctionType) -> list[tuple[str, object]]:
        """Its cells, defaults and the globals its code names; modules it imports inside."""
        found = [("", cell.cell_contents) for cell in function.__closure__ or () if _filled(cell)]
        defaults = [*(function.__defaults__ or ()), *(function.__kwdefaults__ or {}).values()]
        found += [("", value) for value in defaults]
        scope = function.__globals__
        codes = [function.__code__]
        while codes:
            code = codes.pop()
            self._names.update(code.co_names)
            for name in code.co_names:
                value = scope[name] if name in scope else sys.modules.get(name)
                found += [(name, value)] if value is not None else []
            codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        return found

    @staticmethod
    def _module_of(value: object) -> list[tuple[str, object]]:
        """The module code of the user's own was defined in, for the walk to reach."""
        module = sys.modules.get(getattr(value, "__module__", None) or "")
        return [("", module)] if module is not None else []


def _held_by(value: object) -> list[object]:
    if isinstance(value, types.MethodType):
        return [value.__func__, value.__self__]
    if isinstance(value, types.BuiltinMethodType):  # ``random.random``: its generator
        owner = value.__self__
        return [] if isinstance(owner, types.ModuleType) else [owner]
    if isinstance(value, functools.partial):
        return [value.func, *value.args, *value.keywords.values()]
    if type(value) in (list, tuple, set, frozenset) and len(value) <= SAMPLE:  # type: ignore[arg-type]
        return list(value)  # type: ignore[call-overload]
    if type(value) is dict and len(value) <= SAMPLE:
        return list(value.values())
    if is_user_code(type(value)):
        return [type(value)]
    return []


def _generator_types() -> tuple[type, ...]:
    kinds: list[type] = []
    for module, names in (("random", ("Random",)), ("numpy.random", _NUMPY_GENERATORS)):
        loaded = sys.modules.get(module)
        kinds += [getattr(loaded, name) for name in names if loaded is not None]
    return tuple(kinds)


_NUMPY_GENERATORS = ("Generator", "RandomState")


def global_generators() -> dict[int, tuple[object, types.ModuleType, str, str]]:
    """The module-level generators of ``random`` and ``numpy.random`` (id -> the generator,
    its module, its name there, what messages call it): the global random states, watched on
    their own, found behind the modules' functions, and sent to workers by name."""
    found = {}
    for module, name, label in (
        (_random, "_inst", "the `random` module's global random state"),
        (sys.modules.get("numpy.random.mtrand"), "_rand", "numpy's global random state"),
    ):
        generator = getattr(module, name, None)
        if generator is not None:
            found[id(generator)] = (generator, module, name, label)
    return found


def _generator_state(label: str, generator: object) -> Value:
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None and isinstance(generator, numpy_random.Generator):
        bits = generator.bit_generator
        return Value(label, lambda: bits.state, lambda state: setattr(bits, "state", state))
    if numpy_random is not None and isinstance(generator, numpy_random.RandomState):
        return Value(label, lambda: generator.get_state(legacy=False), generator.set_state)
    return Value(label, generator.getstate, generator.setstate)  # type: ignore[attr-defined]


def is_user_code(value: object) -> bool:
    """Defined in the notebook or in one of the user's own modules."""
    module = getattr(value, "__module__", None)
    return isinstance(module, str) and (module in _OWN_MODULES or is_users(sys.modules.get(module)))


def unwrapped(member: object) -> object:
    """The function behind a class's member: a static or class method's, a property's getter."""
    if isinstance(member, staticmethod | classmethod):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    return member


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def _own(names: Iterable[tuple[str, object]]) -> list[tuple[str, object]]:
    """Leaves out dunder names (``__slotnames__``, ``__warningregistry__``: Python's own
    caches) and modules (``import pkg.sub`` binds ``sub`` on ``pkg``)."""
    return [
        (name, value)
        for name, value in names
        if not (name.startswith("__") and name.endswith("__"))
        and not isinstance(value, types.ModuleType)
    ]


def _function_state(function: types.FunctionType, budget: list[int]) -> list[Space]:
    name = f"`{function.__qualname__}`"
    cells = dict(zip(function.__code__.co_freevars, function.__closure__ or (), strict=True))
    parts = [
        Space(
            f"`{{name}}` in the closure of {name}",
            lambda: [(n, c.cell_contents) for n, c in cells.items() if _filled(c)],
            lambda n, value: setattr(cells[n], "cell_contents", value),
            lambda n: delattr(cells[n], "cell_contents"),
            budget=budget,
        ),
        Space(
            f"{name[:-1]}.{{name}}`",
            lambda: _own(vars(function).items()),
            vars(function).__setitem__,
            vars(function).__delitem__,
            budget=budget,
            whole=lambda: vars(function),
        ),
    ]
    if function.__defaults__ or function.__kwdefaults__:
        label = f"the default `{{name}}` of {name}"
        bind = functools.partial(_set_default, function)
        parts.append(Space(label, lambda: defaults(function), bind, budget=budget))
    return parts


def defaults(function: types.FunctionType) -> list[tuple[str, object]]:
    """A function's parameters that have defaults, with them."""
    code, positional = function.__code__, function.__defaults__ or ()
    names = code.co_varnames[code.co_argcount - len(positional) : code.co_argcount]
    return [*zip(names, positional, strict=True), *(function.__kwdefaults__ or {}).items()]


def _set_default(function: types.FunctionType, name: str, value: object) -> None:
    if name in (function.__kwdefaults__ or {}):
        function.__kwdefaults__[name] = value  # type: ignore[index]
        return
    code, positional = function.__code__, list(function.__defaults__ or ())
    names = code.co_varnames[code.co_argcount - len(positional) : code.co_argcount]
    positional[names.index(name)] = value
    function.__defaults__ = tuple(positional)


def _class_state(kind: type, budget: list[int]) -> Space:
    return Space(
        f"`{kind.__qualname__}.{{name}}`",
        lambda: _own(vars(kind).items()),
        lambda name, value: setattr(kind, name, value),
        lambda name: delattr(kind, name),
        budget=budget,
        whole=lambda: vars(kind),
    )


def _module_state(module: types.ModuleType, budget: list[int]) -> Space:
    return Space(
        f"`{module.__name__}.{{name}}`",
        lambda: _own(list(vars(module).items())),
        lambda name, value: setattr(module, name, value),
        lambda name: delattr(module, name),
        budget=budget,
        whole=lambda: vars(module),
    )
