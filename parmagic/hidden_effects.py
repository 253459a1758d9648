"""What the body does to the kernel that its own lines do not show: the notebook functions it
calls (followed transitively) and global random state.

A notebook function (one whose ``__globals__`` is the kernel's namespace) counts as the body:
what it changes in the kernel cannot be replayed in item order from inside it, and a name it
reads as a global that the loop binds is, in a parallel item, the kernel's value, not the
item's (the item's names are the item function's locals). Functions of libraries are trusted.
Random draws from the ``random`` module's or NumPy's global state depend on the order of the
draws, which parallel items do not keep (and forked workers would continue one stream each).

Pure analysis: the kernel's namespace and syntax trees in, facts out; nothing is called.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import types
from collections.abc import Iterable
from dataclasses import dataclass

from . import errors
from .body import MUTATORS
from .scopes import attribute_root, bound_names, receiver_root, walk_scope

LOOP_NAME, UNORDERED, RANDOM = "loop-name", "unordered", "random"
CHANGED_READ = "changed-read"  # a notebook function reads what the loop changes
ARGUMENT_CHANGED = "argument-changed"  # a notebook function changes an object it is handed
TASK, COROUTINE = "task", "coroutine"  # asyncio tasks made by items; coroutines left unawaited
SHARED_GENERATOR = "shared-generator"  # --seed reseeds global state, not the user's generator
_TASK_MAKERS = ("create_task", "ensure_future")


@dataclass(frozen=True)
class HiddenEffect:
    kind: str  # LOOP_NAME, UNORDERED or RANDOM
    line: int  # the cell's line of the call that leads there
    where: str  # "" for the body itself, else "the notebook function `f` (line 3 of its cell)"
    what: str  # "changes `seen`", "reads `repo`", "draws from numpy's global random state"
    name: str = ""  # the kernel name involved, if any
    function: str = ""  # the notebook function involved, if any

    @property
    def place(self) -> str:
        return f"line {self.line}: " + (f"{self.where} " if self.where else "")


def find_hidden_effects(
    nodes: Iterable[ast.AST],
    ns: dict,
    loop_names: set[str],
    changed: Iterable[str] = (),
    items: Iterable[str] = (),
) -> list[HiddenEffect]:
    """Every hidden effect reachable from the body's calls, once each, in line order.
    ``changed``: kernel names the body itself changes (reductions, containers). ``items``:
    the loop's variables; a notebook function the body hands them to may change them, since
    what an item changes in its own objects comes back from copies too (kernel_objects.py)."""
    finder = _Finder(ns, loop_names, set(changed) - loop_names)
    finder.items = set(items)
    for top in nodes:
        consumed = _consumed_calls(top)
        for node in walk_scope(top):
            if isinstance(node, ast.Call):
                finder.call(node, node.lineno, ns, local=loop_names, where="")
                finder.coroutine(node, ns, loop_names, id(node) in consumed)
    return sorted(set(finder.found), key=lambda e: (e.line, e.kind, e.what))


def global_random_state(value: object) -> str | None:
    """The global state ``value`` draws from (or seeds), if any: the module functions of
    ``random`` and ``numpy.random`` are bound methods of one hidden generator each."""
    owner = getattr(value, "__self__", None)
    if owner is None:
        return None
    random = sys.modules.get("random")
    if random is not None and owner is getattr(random, "_inst", None):
        return "the `random` module's global random state"
    numpy_random = sys.modules.get("numpy.random")
    mtrand = getattr(numpy_random, "mtrand", None)
    if mtrand is not None and owner is getattr(mtrand, "_rand", None):
        return "numpy's global random state"
    return None


class _Finder:
    def __init__(self, ns: dict, loop_names: set[str], changed: set[str]) -> None:
        self.ns, self.loop_names, self.changed = ns, loop_names, changed
        self.found: list[HiddenEffect] = []
        self.seen: set[tuple[types.CodeType, frozenset[str]]] = set()
        self.items: set[str] = set()

    def call(self, node: ast.Call, line: int, scope: dict, local: set[str], where: str) -> None:
        callee = _resolve(node.func, scope, local)
        source = global_random_state(callee)
        shared = _shared_generator(node.func, scope, local)
        if source or shared:
            what = f"`{ast.unparse(node.func)}(...)` draws from {source or shared}"
            kind = RANDOM if source else SHARED_GENERATOR
            self.found.append(HiddenEffect(kind, line, where, what))
        elif isinstance(callee, types.FunctionType) and callee.__globals__ is self.ns:
            handed = _parameters_given(node, callee, self.items) if where == "" else frozenset()
            self.function(callee, line, handed)

    def coroutine(self, node: ast.Call, scope: dict, local: set[str], consumed: bool) -> None:
        """Tasks an item makes outlive it, on a loop it does not own; a coroutine object an
        item makes and leaves unawaited cannot travel back from a worker process."""
        callee = _resolve(node.func, scope, local)
        asyncio = sys.modules.get("asyncio")
        if asyncio is not None and callee in [getattr(asyncio, n, None) for n in _TASK_MAKERS]:
            what = f"`{ast.unparse(node.func)}(...)` makes a task that outlives its item"
            self.found.append(HiddenEffect(TASK, node.lineno, "", what))
        elif not consumed and inspect.iscoroutinefunction(callee):
            what = f"`{ast.unparse(node)}` makes a coroutine that is never awaited"
            self.found.append(HiddenEffect(COROUTINE, node.lineno, "", what))

    def function(
        self, function: types.FunctionType, line: int, handed: frozenset[str] = frozenset()
    ) -> None:
        """Analyse a notebook function once; ``line`` is the cell's line that reached it;
        ``handed``: its parameters that the body gives the item's objects."""
        code = function.__code__
        if (code, handed) in self.seen:
            return
        self.seen.add((code, handed))
        tree = _parsed(function)
        if tree is None:
            return  # no source (defined through exec, say): trusted, like a library's
        arguments = tree.args
        own = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
        own |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
        declared = {n for s in ast.walk(tree) if isinstance(s, ast.Global) for n in s.names}
        rebound = bound_names(tree.body) - declared
        parameters = own - rebound - handed  # still the kernel objects the caller handed over
        own |= rebound
        for statement in tree.body:
            for node in walk_scope(statement):
                own_line = code.co_firstlineno + getattr(node, "lineno", 1) - 1
                where = f"the notebook function `{function.__name__}` (line {own_line} of its cell)"
                self._node(node, function, own, line, where, parameters)

    def _node(self, node, function, own: set[str], line: int, where: str, parameters=()) -> None:
        def changes(name: str) -> None:
            if name in parameters:  # the caller's object: in a worker process, a copy
                what = f"changes its argument `{name}` in place"
                effect = HiddenEffect(ARGUMENT_CHANGED, line, where, what, name, function.__name__)
                self.found.append(effect)
                return
            what = f"changes the kernel's `{name}`"
            self.found.append(HiddenEffect(UNORDERED, line, where, what, name))

        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in self.loop_names and node.id not in own:
                what = f"reads `{node.id}`, which the loop sets, as a global"
                effect = HiddenEffect(LOOP_NAME, line, where, what, node.id, function.__name__)
                self.found.append(effect)
            elif node.id in self.changed and node.id not in own:
                what = f"reads `{node.id}`, which the loop changes"
                effect = HiddenEffect(CHANGED_READ, line, where, what, node.id, function.__name__)
                self.found.append(effect)
        elif isinstance(node, ast.Global):
            for name in node.names:
                changes(name)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in MUTATORS:
                root = attribute_root(func.value)
                scope = function.__globals__
                library = isinstance(_resolve(func.value, scope, own), types.ModuleType)
                if root is not None and root.id in parameters:
                    changes(root.id)
                elif root is not None and root.id not in own and root.id in scope and not library:
                    changes(root.id)  # np.sort(values) is a library's function, not a change
            self.call(node, line, function.__globals__, own, where)
        elif isinstance(node, ast.Subscript | ast.Attribute) and isinstance(
            node.ctx, ast.Store | ast.Del
        ):
            root = receiver_root(node.value) if isinstance(node, ast.Subscript) else None
            root_name = root[0] if root else attribute_root(node.value)
            if root_name is not None and (root_name.id not in own or root_name.id in parameters):
                changes(root_name.id)


def _parameters_given(node: ast.Call, callee: types.FunctionType, items: set[str]) -> frozenset:
    """The callee's parameters that this call gives objects reached from the loop's items."""
    code = callee.__code__
    positional = code.co_varnames[: code.co_argcount]
    given = [(positional[i], arg) for i, arg in enumerate(node.args[: len(positional)])]
    given += [(k.arg, k.value) for k in node.keywords if k.arg is not None]
    if any(isinstance(arg, ast.Starred) for arg in node.args):
        return frozenset()
    return frozenset(
        name
        for name, arg in given
        if (root := attribute_root(arg)) is not None and root.id in items
    )


def _shared_generator(func: ast.expr, scope: dict, local: set[str]) -> str | None:
    """What the call draws from, when it is a method of a random generator the kernel holds
    (``rng = np.random.default_rng(0)``; ``random.Random(1)``): items would share its stream,
    and forked workers would each continue a copy of it."""
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
        return None
    name = func.value.id
    if name in local or name not in scope:
        return None
    value, kinds = scope[name], []
    random = sys.modules.get("random")
    if random is not None:
        kinds.append(random.Random)
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        kinds += [numpy_random.Generator, numpy_random.RandomState]
    shared = f"`{name}`, a random generator every item would share"
    return shared if kinds and isinstance(value, tuple(kinds)) else None


def _consumed_calls(top: ast.AST) -> set[int]:
    """Calls whose value the item itself uses up: awaited, or handed to another call (such as
    ``asyncio.run(main())``) other than a container's ``append``."""
    consumed = set()
    for node in walk_scope(top):
        if isinstance(node, ast.Await):
            consumed.add(id(node.value))
        elif isinstance(node, ast.Call):
            func = node.func
            if not (isinstance(func, ast.Attribute) and func.attr in MUTATORS):
                consumed |= {id(a) for a in node.args} | {id(k.value) for k in node.keywords}
    return consumed


def _resolve(func: ast.expr, scope: dict, local: set[str]) -> object:
    """What a call's callee names in ``scope``, through module attributes only (nothing that
    could run code, such as a property, is touched); None when unknown."""
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.insert(0, func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id in local:
        return None
    value = scope.get(func.id, getattr(scope.get("__builtins__"), func.id, None))
    for part in parts:
        if not isinstance(value, types.ModuleType):
            return None
        value = getattr(value, part, None)
    return value


def _parsed(function: types.FunctionType) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        source = textwrap.dedent(inspect.getsource(function))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    first = tree.body[0] if tree.body else None
    return first if isinstance(first, ast.FunctionDef | ast.AsyncFunctionDef) else None


PARALLEL_SEEDABLE = ("processes", "futures:processes", "dask")  # one process per running item


def refusal(
    effects: list[HiddenEffect], backend: str, unordered: bool, seed: int | None
) -> tuple[str | None, str | None]:
    """(why the run is refused, or None; why ``auto`` must run serially, or None).

    What cannot give the plain loop's result is refused before anything runs: a loop name
    read as a global (wrong on every backend), changes that cannot be replayed in item order
    (unless ``--unordered`` accepts them), and global random draws (unless ``--seed`` gives
    each item its own stream, which only items in processes of their own can have).
    """
    for effect in effects:
        if effect.kind == LOOP_NAME:
            message = errors.LOOP_NAME_AS_GLOBAL.format(
                place=effect.place, what=effect.what, name=effect.name, function=effect.function
            )
            return message, None
        if effect.kind == CHANGED_READ:
            message = errors.CHANGED_READ_IN_FUNCTION.format(
                place=effect.place, what=effect.what, name=effect.name
            )
            return message, None
    for effect in effects:
        if effect.kind == TASK:
            return errors.TASK_IN_ITEM.format(place=effect.place, what=effect.what), None
        if effect.kind == COROUTINE and backend in PARALLEL_SEEDABLE:
            return errors.COROUTINE_NOT_AWAITED.format(place=effect.place, what=effect.what), None
    serial_reason = None
    for effect in effects:
        place = effect.place
        if effect.kind == ARGUMENT_CHANGED and not unordered and backend in PARALLEL_SEEDABLE:
            return errors.ARGUMENT_CHANGED_IN_WORKER.format(place=place, what=effect.what), None
        if effect.kind == ARGUMENT_CHANGED and not unordered and backend == "auto":
            serial_reason = serial_reason or f"{place}{effect.what}: copies in workers would not"
        elif effect.kind == COROUTINE and backend == "auto":
            serial_reason = serial_reason or f"{place}{effect.what}: it stays in the kernel"
        elif effect.kind == SHARED_GENERATOR and backend != "serial":
            if backend != "auto":
                return errors.SHARED_GENERATOR.format(place=place, what=effect.what), None
            serial_reason = serial_reason or f"{place}{effect.what}: serial keeps its stream"
        elif effect.kind == UNORDERED and not unordered:
            message = errors.UNREPLAYABLE.format(place=place, what=effect.what)
            reason = f"{place}{effect.what}, which only a serial run keeps in item order"
        elif effect.kind == RANDOM and seed is None:
            message = errors.GLOBAL_RANDOM.format(place=place, what=effect.what)
            reason = f"{place}{effect.what}: a serial run keeps the plain loop's numbers"
        elif effect.kind == RANDOM and backend not in (*PARALLEL_SEEDABLE, "serial", "auto"):
            return errors.SEED_NEEDS_PROCESSES.format(backend=backend), None
        else:
            continue
        if backend == "auto":
            serial_reason = serial_reason or reason
        elif backend != "serial":
            return message, None
    return None, serial_reason
