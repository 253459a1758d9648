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
import collections
import inspect
import sys
import textwrap
import types
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from ..worker.hidden_state import defaults, global_generators, is_user_code, unwrapped
from .body import MUTATORS
from .file_uses import kernel_file_written
from .scopes import attribute_root, bound_names, receiver_root, walk_scope

LOOP_NAME, UNORDERED, RANDOM = "loop-name", "unordered", "random"
CHANGED_READ = "changed-read"  # a notebook function reads what the loop changes
ARGUMENT_CHANGED = "argument-changed"  # a notebook function changes an object it is handed
TASK, COROUTINE = "task", "coroutine"  # asyncio tasks made by items; coroutines left unawaited
SHARED_FILE = "shared-file"  # every item writes to one path: lines in completion order
SHARED_GENERATOR = "shared-generator"  # --seed reseeds global state, not the user's generator
_TASK_MAKERS = ("create_task", "ensure_future")


@dataclass(frozen=True)
class HiddenEffect:
    kind: str  # LOOP_NAME, UNORDERED, RANDOM... (policy.py's rules say what each means)
    line: int  # the cell's line of the call that leads there
    where: str  # "" for the body itself, else "the notebook function `f` (line 3 of its cell)"
    what: str  # "changes `seen`", "reads `repo`", "draws from numpy's global random state"
    name: str = ""  # the kernel name involved, if any
    function: str = ""  # the notebook function involved, if any

    @property
    def place(self) -> str:
        return f"line {self.line}: " + (f"{self.where} " if self.where else "")

    def fields(self) -> dict[str, object]:
        """What a sentence about it may name (policy.py's templates)."""
        return {
            "place": self.place, "line": self.line, "what": self.what, "name": self.name,
            "function": self.function,
        }  # fmt: skip


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
                finder.file_write(node, None, loop_names, node.lineno, "")
                finder.coroutine(node, ns, loop_names, id(node) in consumed)
            elif isinstance(node, ast.Lambda):  # runs where the item runs, whoever calls it
                finder.body_lambda(node, loop_names)
    return sorted(set(finder.found), key=lambda e: (e.line, e.kind, e.what))


def global_random_state(value: object) -> str | None:
    """The global state ``value`` draws from (or seeds), if any: the module functions of
    ``random`` and ``numpy.random`` are bound methods of one hidden generator each."""
    owner = getattr(value, "__self__", None)
    named = global_generators().get(id(owner)) if owner is not None else None
    return named[3] if named is not None and named[0] is owner else None


class _Finder:
    def __init__(self, ns: dict, loop_names: set[str], changed: set[str]) -> None:
        self.ns, self.loop_names, self.changed = ns, loop_names, changed
        self.found: list[HiddenEffect] = []
        self.seen: set[tuple[types.CodeType, frozenset[str]]] = set()
        self.items: set[str] = set()
        self._methods: dict[str, list[tuple[type, types.FunctionType]]] | None = None

    def is_users(self, value: object) -> bool:
        """Code the analysis reads: the notebook's, or from the user's own modules."""
        if isinstance(value, types.FunctionType) and in_notebook(value, self.ns):
            return True
        return is_user_code(value)

    def methods_named(self, name: str) -> list[tuple[type, types.FunctionType]]:
        """The methods called ``name`` of the notebook's classes (a receiver the analysis
        cannot name, such as an item, may be an instance of any of them)."""
        if self._methods is None:
            self._methods = {}
            for value in list(self.ns.values()):
                if isinstance(value, type) and self.is_users(value):
                    for attr, member in vars(value).items():
                        function = _function_of(member)
                        if function is not None and self.is_users(function):
                            self._methods.setdefault(attr, []).append((value, function))
        return self._methods.get(name, [])

    def body_lambda(self, node: ast.Lambda, loop_names: set[str]) -> None:
        """A lambda in the body: read like the body, its parameters its own."""
        own = loop_names | {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        for inner in walk_scope(node.body):
            self._node(inner, None, own, getattr(inner, "lineno", node.lineno), "in a lambda,")

    def call(self, node: ast.Call, line: int, scope: dict, local: set[str], where: str) -> None:
        callee = _resolve(node.func, scope, local)
        source = global_random_state(callee)
        shared = _shared_generator(node.func, scope, local)
        if source or shared:
            what = f"`{ast.unparse(node.func)}(...)` draws from {source or shared}"
            kind = RANDOM if source else SHARED_GENERATOR
            self.found.append(HiddenEffect(kind, line, where, what))
        elif isinstance(callee, types.FunctionType) and self.is_users(callee):
            handed = _parameters_given(node, callee, self.items) if where == "" else frozenset()
            self.function(callee, line, handed)
        elif isinstance(callee, type) and self.is_users(callee):
            for method in filter(self.is_users, _constructors(callee)):  # a library's: trusted
                self.function(method, line, _instance(method, callee), owner=callee)
        elif callee is None and isinstance(node.func, ast.Attribute):
            for owner, method in self.methods_named(node.func.attr):  # ``obj.m()``, obj unknown
                self.function(method, line, _instance(method, owner), owner=owner)

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
        self,
        function: types.FunctionType,
        line: int,
        handed: frozenset[str] = frozenset(),
        owner: type | None = None,
    ) -> None:
        """Analyse a user's function once; ``line`` is the cell's line that reached it;
        ``handed``: its parameters that the body gives the item's objects; ``owner``: the
        class whose method it is."""
        code = function.__code__
        if (code, handed) in self.seen:
            return
        self.seen.add((code, handed))
        read = _read(function)
        if read is None:
            return  # no source (defined through exec, say): trusted, like a library's
        parameters = read.parameters - read.rebound - handed  # still the caller's objects
        kept = _kept_parameters(function, owner)  # defaults made once; a classmethod's class
        own, places = read.parameters | read.rebound, {}
        for node in read.nodes:
            own_line = code.co_firstlineno + getattr(node, "lineno", 1) - 1
            where = places.get(own_line)
            if where is None:
                where = places[own_line] = _place(function, self.ns, own_line)
            self._node(node, function, own - kept.keys(), line, where, parameters, kept)
            if isinstance(node, ast.Call):
                self.file_write(node, function, own, line, where, owner)

    def file_write(
        self, node: ast.Call, function, own: set[str], line: int, where: str, owner=None
    ) -> None:
        """A write to a kernel file that no Sink records (file_uses.kernel_file_written)."""
        if function is None:
            written = kernel_file_written(node, self.ns, own, names=False)
        else:
            scope = self.ns if in_notebook(function, self.ns) else function.__globals__
            names, cells = function.__code__.co_freevars, function.__closure__ or ()
            held = {n: c.cell_contents for n, c in zip(names, cells, strict=True) if _full(c)}
            code = function.__code__
            static = owner is not None and isinstance(vars(owner).get(code.co_name), staticmethod)
            if owner is not None and code.co_argcount and not static:  # self, cls: the class
                held[code.co_varnames[0]] = owner
            written = kernel_file_written(node, scope, own, held)
        if written is not None:
            what = f"writes to the kernel's file `{written}` (the loop's own writes are ordered)"
            self.found.append(HiddenEffect(UNORDERED, line, where, what, written))

    def _node(
        self, node, function, own: set[str], line: int, where: str, parameters=(), kept=None
    ) -> None:
        scope = function.__globals__ if function is not None else self.ns
        if function is not None and in_notebook(function, self.ns):
            scope = self.ns  # the kernel's namespace, or its preview (preview.py)
        name_of = function.__name__ if function is not None else ""
        closure = set(function.__code__.co_freevars) if function is not None else set()
        kept = kept or {}

        def changes(name: str) -> None:
            if name in kept:
                what = f"changes {kept[name]}"
            elif name in parameters:  # the caller's object: in a worker process, a copy
                what = f"changes its argument `{name}` in place"
                effect = HiddenEffect(ARGUMENT_CHANGED, line, where, what, name, name_of)
                self.found.append(effect)
                return
            elif name in closure:
                what = f"changes `{name}`, which it keeps in its closure"
            elif scope is not self.ns:
                what = f"changes `{name}` of the module `{scope.get('__name__')}`"
            else:
                what = f"changes the kernel's `{name}`"
            self.found.append(HiddenEffect(UNORDERED, line, where, what, name))

        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and scope is self.ns:
            if node.id in self.loop_names and node.id not in own and function is not None:
                what = f"reads `{node.id}`, which the loop sets, as a global"
                effect = HiddenEffect(LOOP_NAME, line, where, what, node.id, name_of)
                self.found.append(effect)
            elif node.id in self.changed and node.id not in own and function is not None:
                what = f"reads `{node.id}`, which the loop changes"
                effect = HiddenEffect(CHANGED_READ, line, where, what, node.id, name_of)
                self.found.append(effect)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            for name in node.names:
                changes(name)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in MUTATORS:
                root = _changed_root(func.value)
                library = isinstance(_resolve(func.value, scope, own), types.ModuleType)
                if root is not None and (root in parameters or root in kept):
                    changes(root)
                elif (
                    root is not None
                    and root not in own
                    and not library
                    and (root in scope or root in closure)
                ):
                    changes(root)  # np.sort(values) is a library's function, not a change
            self.call(node, line, scope, own, where)
        elif isinstance(node, ast.Subscript | ast.Attribute) and isinstance(
            node.ctx, ast.Store | ast.Del
        ):
            root = _changed_root(node.value, isinstance(node, ast.Subscript))
            if root is not None and (root not in own or root in parameters or root in kept):
                changes(root)


def _full(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # a cell not yet filled
        return False
    return True


def _changed_root(expr: ast.expr, subscript: bool = False) -> str | None:
    """The name whose object a change through ``expr`` reaches: ``seen`` in ``seen[k].x``;
    ``K`` in ``type(self)`` and ``self.__class__`` (a class's attribute, not the instance's)."""
    part = expr
    while isinstance(part, ast.Attribute | ast.Subscript):
        if isinstance(part, ast.Attribute) and part.attr == "__class__":
            return "type(...)"
        part = part.value
    if isinstance(part, ast.Call) and isinstance(part.func, ast.Name) and part.func.id == "type":
        return "type(...)"
    root = receiver_root(expr) if subscript else None
    name = root[0] if root else attribute_root(expr)
    return name.id if name is not None else None


def _kept_parameters(function: types.FunctionType, owner: type | None) -> dict[str, str]:
    """Parameters whose objects outlive a call, with what they are: a mutable default (made
    once, when the function was defined) and a classmethod's class."""
    code = function.__code__
    kept = {
        name: f"its default `{name}`, made once and kept between calls"
        for name, value in defaults(function)
        if isinstance(value, list | dict | set | bytearray | collections.deque)
    }
    if owner is not None and isinstance(vars(owner).get(function.__name__), classmethod):
        first = code.co_varnames[:1]
        kept.update({name: f"the class `{owner.__name__}`" for name in first})
    through_type = "a class's attribute, through `type(...)`"
    kept["type(...)"] = through_type if owner is None else f"the class `{owner.__name__}`"
    return kept


def _instance(method: types.FunctionType, owner: type) -> frozenset[str]:
    """A method's ``self``: a new instance, or one an item holds, whose changes come back by
    comparison (kernel_objects.py); not a class's or a static method's first parameter."""
    if not isinstance(vars(owner).get(method.__name__), staticmethod | classmethod):
        return frozenset(method.__code__.co_varnames[:1])
    return frozenset()


def _constructors(kind: type) -> list[types.FunctionType]:
    """What making an instance of ``kind`` runs, of its own code."""
    found = []
    for name in ("__new__", "__init__", "__post_init__"):
        for klass in kind.__mro__:
            function = _function_of(vars(klass).get(name))
            if function is not None:
                found.append(function)
                break
    return found


def in_notebook(function: types.FunctionType, ns: dict) -> bool:
    """Whether ``function`` was defined in the notebook: its globals are the kernel's
    namespace, or the preview of it that holds the cell's own definitions (preview.py)."""
    found = function.__globals__
    return found is ns or found is getattr(ns, "kernel", None)


def _function_of(member: object) -> types.FunctionType | None:
    function = unwrapped(member)
    return function if isinstance(function, types.FunctionType) else None


def _place(function: types.FunctionType, ns: dict, line: int) -> str:
    """How messages name a line of a function: in its cell, or in its module's file."""
    if in_notebook(function, ns) and function.__name__ == "<lambda>":
        return f"the notebook lambda on line {line} of its cell"
    if in_notebook(function, ns):
        return f"the notebook function `{function.__qualname__}` (line {line} of its cell)"
    module = function.__globals__.get("__name__")
    return f"the function `{function.__qualname__}` of your module `{module}` (line {line})"


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


@dataclass(frozen=True)
class _Read:
    """What a function's source says of its own scope, read once per code object (a loop
    run again reads the functions it calls again: their code is what changes, if anything)."""

    parameters: frozenset[str]
    rebound: frozenset[str]  # names it binds, but not those it declares ``global``
    nodes: tuple[ast.AST, ...]  # its own scope's, in order (walk_scope)


_read_functions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _read(function: types.FunctionType) -> _Read | None:
    code = function.__code__
    if code in _read_functions:
        return _read_functions[code]
    tree = _parsed(function)
    read = None
    if tree is not None:
        arguments = tree.args
        named = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        own = {a.arg for a in [*named, arguments.vararg, arguments.kwarg] if a is not None}
        declared = {n for s in ast.walk(tree) if isinstance(s, ast.Global) for n in s.names}
        nodes = tuple(node for statement in tree.body for node in walk_scope(statement))
        read = _Read(frozenset(own), frozenset(bound_names(tree.body) - declared), nodes)
    _read_functions[code] = read
    return read


def _parsed(function: types.FunctionType) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return None
    if function.__name__ == "<lambda>":
        return _lambda_parsed(function, source)
    try:
        tree = ast.parse(source)
    except (SyntaxError, IndentationError):
        return None
    first = tree.body[0] if tree.body else None
    return first if isinstance(first, ast.FunctionDef | ast.AsyncFunctionDef) else None


def _parameter_names(arguments: ast.arguments) -> list[str]:
    named = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    return [a.arg for a in named]


def _lambda_parsed(function: types.FunctionType, source: str) -> ast.FunctionDef | None:
    """A lambda as a function whose body returns its expression. Its source is the lines it
    is on, which may be part of a call (``key=lambda r: r[1],``): parsed as an argument then.
    Of the lambdas on those lines, the one with the same parameters (all of them, if several)."""
    for text in (source, f"_(\n{source}\n)"):
        try:
            tree = ast.parse(text)
        except (SyntaxError, IndentationError):
            continue
        shift = 0 if text is source else 1
        code = function.__code__
        wanted = list(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
        found = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda)]
        same = [n for n in found if _parameter_names(n.args) == wanted]
        chosen = same if len(same) == 1 else found
        if not chosen:
            return None
        body = [ast.Return(ast.Tuple([n.body for n in chosen], ast.Load()))]
        made = ast.FunctionDef("<lambda>", chosen[0].args, body, [], None)
        for node in ast.walk(made):
            if hasattr(node, "lineno"):
                node.lineno -= shift
        return ast.fix_missing_locations(made)
    return None
