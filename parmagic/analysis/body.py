"""Check a parallel loop's body and classify what it does to the kernel.

A serial loop runs its body in the kernel's namespace; a parallel item cannot, because items
run at the same time (threads) or in another process. So the body becomes a function of one
item (see ``itemcode.py``) whose bound names are locals, and whose effects on kernel objects
are recorded and replayed in the kernel in item order, so that the kernel ends as after a
serial run. This module finds those effects, and refuses before anything runs what would make
an item depend on an earlier one: no parallel order could give the serial result.

The module is pure: syntax trees in, facts out.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from .. import errors
from ..backends import load_backend
from ..errors import LoopRefused
from .dataflow import DefiniteAssignment
from .file_uses import shared_paths, sinks
from .scopes import (
    SCOPES,
    attribute_root,
    bound_names,
    called_name,
    receiver_root,
    scope_names,
    stored_names,
    walk_scope,
)

# Methods whose call, as a statement on a kernel container, is recorded and replayed.
MUTATORS = frozenset({
    "append", "appendleft", "extend", "extendleft", "insert", "add", "update", "discard",
    "remove", "pop", "popleft", "popitem", "clear", "setdefault", "subtract", "rotate", "sort",
    "reverse",
})  # fmt: skip


# Functions that change their first argument in place (``heapq.heappush(h, x)``,
# ``np.copyto(arr[i], v)``): on a kernel object, a change parmagic cannot replay.
CHANGING_FUNCTIONS = frozenset({
    "heappush", "heappop", "heapify", "heapreplace", "heappushpop", "insort", "insort_left",
    "insort_right", "shuffle", "copyto", "place", "putmask", "fill_diagonal", "put_along_axis",
    "setattr", "delattr",
})  # fmt: skip
# In-place methods that change the object they are called on, beyond the replayed MUTATORS.
IN_PLACE = MUTATORS | {"fill", "resize", "partition", "itemset"}
# Calls that hand on, rather than copy, the iterables they are given.
HOLDING_CALLS = frozenset({"iter", "enumerate", "zip", "reversed", "map", "filter", "islice"})
VIEWS = frozenset({"keys", "values", "items"})


@dataclass
class BodyInfo:
    """What the analysis learnt about one parallel loop."""

    kind: str  # "for", "list", "set", "dict" or "generator"
    node: ast.AST
    bound: frozenset[str] = frozenset()
    reductions: dict[str, int] = field(default_factory=dict)
    receivers: dict[str, int] = field(default_factory=dict)  # kernel names mutated in place
    copy_warnings: list[tuple[int, str, str]] = field(default_factory=list)  # line, what, name
    # iterators the loop hands its items that the body advances (``next(g)``), as (line,
    # what, name): a copy's position cannot be carried back, so only backends that share the
    # kernel's objects run them. (Other changes to the items' objects come back from copies by
    # comparison: kernel_objects.py.)
    item_advances: list[tuple[int, str, str]] = field(default_factory=list)
    # kernel objects whose methods the body calls dropping the result (``g.add_edge(...)``,
    # ``arr[i].fill(0)``): a change parmagic cannot replay, unless a module's or a logger's
    object_calls: dict[str, int] = field(default_factory=dict)
    sinks: dict[str, int] = field(default_factory=dict)  # kernel files it only writes to
    shared_files: list[tuple[int, str]] = field(default_factory=list)  # one path, every item
    awaits: bool = False  # the body uses await / async for / async with: it needs asyncio
    tail: list[ast.stmt] = field(default_factory=list)  # the ordered tail: runs in the kernel

    @property
    def head(self) -> list[ast.stmt]:
        """The part of a ``for`` body that runs where the items run (all of it, without a
        tail)."""
        body = self.node.body
        return body[: len(body) - len(self.tail)]

    @property
    def line(self) -> int:
        return self.node.lineno

    @property
    def one_value_per_item(self) -> bool:
        """A comprehension of one ``for`` and no ``if``: each item gives one value, or fails."""
        generators = getattr(self.node, "generators", ())
        return len(generators) == 1 and not generators[0].ifs

    @property
    def mapped_function(self) -> str | None:
        """The name ``f`` of ``[f(x) for x in items]``: each value is one call of a function
        named outside the comprehension on the item itself, so ``map(f, items)`` gives the
        same values, item after item, at C speed (as ``Pool.map`` calls its function)."""
        if self.kind not in ("list", "set", "generator") or not self.one_value_per_item:
            return None
        generator, call = self.node.generators[0], self.node.elt
        target = generator.target
        if generator.is_async or not isinstance(target, ast.Name):
            return None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)) or call.keywords:
            return None
        argument = call.args[0] if len(call.args) == 1 else None
        if not (isinstance(argument, ast.Name) and argument.id == target.id != call.func.id):
            return None
        return call.func.id


def _loop_level(stmts: list[ast.stmt]):
    """Statements of the body that belong to the parallel loop itself (not to an inner loop)."""
    for stmt in stmts:
        yield stmt
        if isinstance(stmt, SCOPES):
            continue
        for name, value in ast.iter_fields(stmt):
            inner_loop_body = name == "body" and isinstance(
                stmt, ast.For | ast.While | ast.AsyncFor
            )
            if inner_loop_body:
                continue
            if isinstance(value, list):
                yield from _loop_level([v for v in value if isinstance(v, ast.stmt)])
                for handler in value:
                    if isinstance(handler, ast.ExceptHandler | ast.match_case):
                        yield from _loop_level(handler.body)


def _check_target(target: ast.expr) -> None:
    for node in ast.walk(target):
        if not isinstance(node, ast.Name | ast.Tuple | ast.List | ast.Starred | ast.Store):
            raise LoopRefused(
                errors.BAD_TARGET.format(line=target.lineno, target=ast.unparse(target)),
                target.lineno,
            )


def _async_uses(nodes) -> list[tuple[int, str]]:
    """(line, construct) of every `await`, `async for`, `async with` in the item's scope."""
    found = []
    for top in nodes:
        for node in walk_scope(top):
            what = {
                ast.Await: "await", ast.AsyncFor: "async for", ast.AsyncWith: "async with"
            }.get(type(node))  # fmt: skip
            if what is None and isinstance(node, ast.comprehension) and node.is_async:
                what = "async for"
            if what:
                found.append((getattr(node, "lineno", None) or 0, what))
    return found


def _check_async(nodes, backend: str, info: BodyInfo) -> None:
    uses = _async_uses(nodes)
    info.awaits = bool(uses)
    if uses and backend != "auto" and not load_backend(backend).runs_coroutines:
        line, what = uses[0]
        raise LoopRefused(errors.AWAIT_REFUSED.format(line=line, what=what, backend=backend), line)


def analyse_for(loop: ast.For, backend: str = "threads") -> BodyInfo:
    """Check a ``for`` loop's body and classify what it does to the kernel.

    A body that reads state carried from item to item may still run, with an ordered tail:
    see :func:`_with_ordered_tail`."""
    _check_target(loop.target)
    for stmt in _loop_level(loop.body):
        if isinstance(stmt, ast.Break):
            raise LoopRefused(errors.BREAK_REFUSED.format(line=stmt.lineno), stmt.lineno)
    try:
        return _analyse_part(loop, loop.body, backend)
    except LoopRefused as refusal:
        if not refusal.carried:
            raise
        return _with_ordered_tail(loop, backend, refusal)


def _analyse_part(loop: ast.For, stmts: list[ast.stmt], backend: str) -> BodyInfo:
    """The checks and facts of the statements that run where the items run."""
    bound = bound_names(stmts) | stored_names(loop.target)
    info = BodyInfo(kind="for", node=loop)
    _check_async(stmts, backend, info)
    receiver_ids: set[int] = set()
    for stmt in stmts:
        for node in walk_scope(stmt):
            _classify(node, bound, info, receiver_ids)
    info.reductions = {n: line for n, line in info.reductions.items() if n not in bound}
    info.bound = frozenset(bound)
    _hidden_writes(stmts, bound, set(stored_names(loop.target)), info)
    targets = set(stored_names(loop.target))
    info.sinks, info.shared_files = sinks(stmts, bound), shared_paths(stmts, targets)
    _refuse_changing_the_iterable(loop, info)
    _refuse_late_binding(stmts, set(bound) | set(info.reductions) | set(info.receivers))
    _refuse_carried_reads(stmts, info, receiver_ids)
    DefiniteAssignment(info.bound).block(stmts, stored_names(loop.target))
    return info


def _with_ordered_tail(loop: ast.For, backend: str, refusal: LoopRefused) -> BodyInfo:
    """OpenMP's ``ordered``: the statements from the first one that reads carried state to the
    end of the body (a running maximum, ``d[w] = d.get(w, 0) + 1``, a running position) run
    in the kernel, in item order, as each item's results are applied; the statements before
    them run in parallel. Only when those run without reading carried state, do not read what
    the tail changes, and cannot skip the tail (``continue``); else the refusal stands."""
    body, reason, split = loop.body, refusal, len(loop.body)
    while True:
        split = next(
            i for i, s in enumerate(body[:split]) if s.lineno <= reason.line <= s.end_lineno
        )
        if split == 0:  # the carried reads come first: nothing left to run in parallel
            raise _nothing_parallel(refusal, loop.body)
        try:
            info = _analyse_part(loop, body[:split], backend)
            break
        except LoopRefused as again:
            if not again.carried:
                raise refusal from None
            reason = again
    head, tail = body[:split], body[split:]
    if _ends_early(head) or _ends_early(tail) or _async_uses(tail):
        raise refusal
    changed_by_tail = _names_changed(tail)
    read_by_head = {n.id for s in head for n in scope_names(s) if isinstance(n.ctx, ast.Load)}
    if (read_by_head - bound_names(head)) & changed_by_tail:
        raise refusal
    info.tail = tail
    return info


def _ends_early(stmts: list[ast.stmt]) -> bool:
    """A ``continue`` of the parallel loop (it would skip the tail), or return/yield."""
    kinds = ast.Continue | ast.Return | ast.Yield | ast.YieldFrom
    return any(isinstance(s, kinds) for s in _loop_level(stmts)) or any(
        isinstance(n, ast.Return | ast.Yield | ast.YieldFrom) for s in stmts for n in walk_scope(s)
    )


def _names_changed(stmts: list[ast.stmt]) -> set[str]:
    """Names the statements bind, and the roots of objects they change in place."""
    changed = bound_names(stmts)
    for stmt in stmts:
        for node in walk_scope(stmt):
            if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                changed.add(node.target.id)
            elif isinstance(node, ast.Subscript | ast.Attribute) and isinstance(
                node.ctx, ast.Store | ast.Del
            ):
                root = attribute_root(node)
                if root is not None:
                    changed.add(root.id)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                root = attribute_root(node.func.value)
                if root is not None and node.func.attr in MUTATORS:
                    changed.add(root.id)
    return changed


# pandas' row iterators read the frame once, at the start, and a frame's index and columns
# are objects that writes replace rather than change: writing to the frame leaves them be
SNAPSHOT_ITERATORS = frozenset({"iterrows", "itertuples"})
SNAPSHOT_ATTRIBUTES = frozenset({"index", "columns"})


def _refuse_changing_the_iterable(loop: ast.For, info: BodyInfo) -> None:
    iterable = loop.iter
    method = iterable.func if isinstance(iterable, ast.Call) else None
    if isinstance(method, ast.Attribute) and method.attr in SNAPSHOT_ITERATORS:
        return
    if isinstance(iterable, ast.Attribute) and iterable.attr in SNAPSHOT_ATTRIBUTES:
        return
    changed = {**info.receivers, **info.reductions}
    for name in _held_names(loop.iter):
        if name in changed:
            message = errors.ITERABLE_CHANGED.format(
                line=loop.lineno, name=name, write_line=changed[name]
            )
            raise LoopRefused(message, loop.lineno)


def _held_names(iterable: ast.expr) -> set[str]:
    """The kernel names whose objects the loop iterates over as it goes (``queue`` in
    ``iter(queue)``, ``enumerate(rows)``, ``d.keys()``), not those read once (``len(x)``)."""
    root = attribute_root(iterable)
    if root is not None:
        return {root.id}
    if not isinstance(iterable, ast.Call):
        return set()
    func = iterable.func
    if isinstance(func, ast.Attribute) and func.attr in VIEWS:
        return _held_names(func.value)
    if called_name(iterable) in HOLDING_CALLS:
        return set().union(*(_held_names(a) for a in iterable.args))
    return set()


def _refuse_late_binding(nodes, names: set[str]) -> None:
    """A nested function or lambda that reads a loop name sees, in a plain loop, the value the
    name has when it is *called*; in a parallel item it would see that item's own value."""
    for top in nodes:
        for scope in walk_scope(top):
            if not isinstance(scope, ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            arguments = scope.args
            own = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
            own |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
            body = scope.body if isinstance(scope.body, list) else [scope.body]
            own |= bound_names(body)
            for node in (n for part in body for n in ast.walk(part)):
                if isinstance(node, ast.Name) and node.id in names and node.id not in own:
                    what = "lambda" if isinstance(scope, ast.Lambda) else f"function `{scope.name}`"
                    message = errors.LATE_BINDING.format(line=node.lineno, what=what, name=node.id)
                    raise LoopRefused(message, node.lineno)


def _classify(node: ast.AST, bound: set[str], info: BodyInfo, receiver_ids: set[int]) -> None:
    """Record one statement's write-backs, reductions and copy warnings."""

    def receiver(expr: ast.expr) -> str | None:
        root = receiver_root(expr)
        if root is None or root[0].id in bound:
            return None
        receiver_ids.add(id(root[0]))
        info.receivers.setdefault(root[0].id, node.lineno)
        return root[0].id

    def warn_attribute(expr: ast.expr, what: str) -> None:
        root = attribute_root(expr)
        if root is not None and root.id not in bound:
            info.copy_warnings.append((node.lineno, what, root.id))

    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        if isinstance(func, ast.Attribute) and func.attr in MUTATORS and not receiver(func.value):
            warn_attribute(func.value, f"`{ast.unparse(func)}(...)`")
    elif isinstance(node, ast.Assign | ast.AnnAssign | ast.Delete):
        targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
        simple = len(targets) == 1 or isinstance(node, ast.Delete)
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Subscript) and isinstance(part.ctx, ast.Store | ast.Del):
                    name = receiver(part.value) if part is target else None
                    root = receiver_root(part.value)
                    if (part is not target or not simple) and root and root[0].id not in bound:
                        raise LoopRefused(
                            errors.CHAINED_STORE.format(line=node.lineno, name=root[0].id),
                            node.lineno,
                        )
                    if name is None:
                        warn_attribute(part.value, f"`{ast.unparse(part)} = ...`")
                elif isinstance(part, ast.Attribute) and isinstance(part.ctx, ast.Store):
                    warn_attribute(part.value, f"`{ast.unparse(part)} = ...`")
    elif isinstance(node, ast.AugAssign):
        target = node.target
        if isinstance(target, ast.Name):
            if target.id not in bound:
                info.reductions.setdefault(target.id, node.lineno)
        elif isinstance(target, ast.Subscript):
            if not receiver(target.value):
                warn_attribute(target.value, f"`{ast.unparse(target)} {_op_text(node)}= ...`")
        else:
            warn_attribute(target.value, f"`{ast.unparse(target)} {_op_text(node)}= ...`")
    elif isinstance(node, ast.Global):
        for name in node.names:
            info.copy_warnings.append((node.lineno, f"`global {name}`", name))


def _hidden_writes(stmts, bound: set[str], targets: set[str], info: BodyInfo) -> None:
    """Changes the body makes to objects the kernel holds that are not the replayed kinds:
    through a local alias (``bucket = groups[k]; bucket.append(x)``), through functions
    (``heapq.heappush(h, x)``, ``out=arr[i]``, ``setattr``, ``globals()``) and through a
    method's result (``d.setdefault(k, []).append(v)``); takings whose value the item uses
    (``x = stack.pop()``, ``next(it)``), which make each item depend on the ones before; and
    iterators the loop hands its items, advanced (``next(g)``). Other changes to the items'
    own objects need nothing here: they come back from copies by comparison."""
    rebound = (bound - targets) | (targets & _assigned_names(stmts))
    aliases = _aliases(stmts, bound, targets)
    dropped = {id(s.value) for stmt in stmts for s in walk_scope(stmt) if isinstance(s, ast.Expr)}

    def kernel_root(expr: ast.expr) -> str | None:
        root = attribute_root(expr)
        return root.id if root is not None and root.id not in bound else None

    def changed(expr: ast.expr, line: int, what: str, advances: bool = False) -> None:
        """A change through a local alias of a kernel object's (not replayed), or an
        iterator of the item's advanced (``advances``)."""
        root = attribute_root(expr)
        if root is None:
            return
        if root.id in aliases:
            source, origin, through_item = aliases[root.id]
            note = f"{what} (`{root.id}` is `{source}`)"
            if not through_item:
                info.copy_warnings.append((line, note, origin))
            elif advances:
                info.item_advances.append((line, note, origin))
        elif advances and root.id in targets and root.id not in rebound:
            info.item_advances.append((line, what, root.id))

    for stmt in stmts:
        for node in walk_scope(stmt):
            if isinstance(node, ast.Call):
                _hidden_call(node, id(node) in dropped, kernel_root, changed, info)
            elif isinstance(node, ast.Subscript | ast.Attribute) and isinstance(
                node.ctx, ast.Store | ast.Del
            ):
                verb = "deletes" if isinstance(node.ctx, ast.Del) else "sets"
                changed(node.value, node.lineno, f"`{ast.unparse(node)}` {verb}")
                globals_store = isinstance(node.value, ast.Call) and called_name(node.value) in (
                    "globals", "vars"
                )  # fmt: skip
                if globals_store:
                    what = f"`{ast.unparse(node)} = ...`"
                    info.copy_warnings.append((node.lineno, what, "globals()"))


def _hidden_call(node: ast.Call, discarded: bool, kernel_root, changed, info: BodyInfo) -> None:
    func, line = node.func, node.lineno
    called = called_name(node)
    text = f"`{ast.unparse(func)}(...)`"
    if isinstance(func, ast.Attribute):
        if func.attr in IN_PLACE:
            changed(func.value, line, text)
        inner = func.value
        if isinstance(inner, ast.Call) and func.attr in IN_PLACE:
            if called_name(inner) in ("globals", "vars"):
                info.copy_warnings.append((line, text, "globals()"))
            elif called_name(inner) in ("setdefault", "get") and isinstance(
                inner.func, ast.Attribute
            ):
                name = kernel_root(inner.func.value)
                if name:
                    info.copy_warnings.append((line, text, name))
        name = kernel_root(func.value)
        if name and discarded and func.attr not in MUTATORS:
            info.object_calls.setdefault(name, line)  # a module's function, or a change
        if name and not discarded and func.attr == "setdefault":
            info.copy_warnings.append((line, text, name))  # a change the kernel never sees
        elif name and not discarded and func.attr in MUTATORS - {"update", "sort", "reverse"}:
            _refuse_taking(line, text, name)
    if called == "next" and node.args and kernel_root(node.args[0]):
        _refuse_taking(line, "`next(...)`", kernel_root(node.args[0]))
    elif called == "next" and node.args:
        changed(node.args[0], line, f"`next({ast.unparse(node.args[0])})`", advances=True)

    def written(expr: ast.expr, what: str) -> None:
        """A function writes into ``expr``: a kernel object's, an alias's or the item's."""
        name = kernel_root(expr)
        if name:
            info.copy_warnings.append((line, what, name))
        else:
            changed(expr, line, what)

    if called in CHANGING_FUNCTIONS and node.args:
        written(node.args[0], f"{text} on `{ast.unparse(node.args[0])}`")
    for keyword in node.keywords:
        if keyword.arg == "out":
            written(keyword.value, f"{text} writes into `{ast.unparse(keyword.value)}`")


def _refuse_taking(line: int, what: str, name: str) -> None:
    message = errors.TAKES_CARRIED.format(line=line, what=what, name=name)
    raise LoopRefused(message, line, carried=True)


def _assigned_names(stmts) -> set[str]:
    """Names the statements assign (a loop target the body rebinds is no longer the item's)."""
    return {n.id for stmt in stmts for n in scope_names(stmt) if isinstance(n.ctx, ast.Store)}


def _aliases(stmts, bound: set[str], targets: set[str]) -> dict[str, tuple[str, str, bool]]:
    """Local names the body binds to an object the kernel or the item holds:
    ``bucket = groups[x % 3]`` -> {"bucket": ("groups[x % 3]", "groups", False)}. The flag
    says the object is reached through the item (the loop variable), not a kernel name."""
    found: dict[str, tuple[str, str, bool]] = {}
    for stmt in stmts:
        for node in walk_scope(stmt):
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
                continue
            target, value = node.targets[0], node.value
            if not isinstance(target, ast.Name) or not isinstance(
                value, ast.Name | ast.Subscript | ast.Attribute
            ):
                continue
            root = attribute_root(value)
            if root is None or root.id == target.id:
                continue
            if root.id in found:
                found[target.id] = (ast.unparse(value), *found[root.id][1:])
            elif root.id not in bound or root.id in targets:
                found[target.id] = (ast.unparse(value), root.id, root.id in targets)
    return found


def _op_text(node: ast.AugAssign) -> str:
    return ast.unparse(ast.BinOp(ast.Name("a"), node.op, ast.Name("b")))[2:-2]


def _nothing_parallel(refusal: LoopRefused, body: list[ast.stmt]) -> LoopRefused:
    """The refusal of a body whose first statement already needs the previous items: no
    advice to move reads after work that does not exist; the rewrite that helps, if known."""
    if errors.MOVE_THE_READS not in str(refusal):
        return refusal  # its own advice fits (`x = x + v`: write `x += v`)
    why = str(refusal).split(". ", 1)[0]
    rewrite = next(filter(None, (_counting_rewrite(s) for s in body)), "")
    message = errors.NOTHING_PARALLEL.format(why=why, rewrite=rewrite)
    return LoopRefused(message, refusal.line, carried=True)


def _counting_rewrite(stmt: ast.stmt) -> str | None:
    """``d[k] = d.get(k, 0) + v``: the same count as ``d[k] += v`` on a Counter, which is a
    reduction parmagic applies in item order."""
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
        return None
    target, value = stmt.targets[0], stmt.value
    if not (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)):
        return None
    if not (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add)):
        return None
    get = value.left
    name = target.value.id
    if not (
        isinstance(get, ast.Call)
        and isinstance(get.func, ast.Attribute)
        and get.func.attr == "get"
        and isinstance(get.func.value, ast.Name)
        and get.func.value.id == name
        and len(get.args) == 2
        and isinstance(get.args[1], ast.Constant)
        and get.args[1].value == 0
    ):
        return None
    key, amount = ast.unparse(target.slice), ast.unparse(value.right)
    return errors.COUNTING_REWRITE.format(name=name, key=key, amount=amount)


def _refuse_carried_reads(stmts, info: BodyInfo, receiver_ids: set[int]) -> None:
    """A name the body changes through write-back or a reduction must not be read too."""
    changed = {**info.receivers, **info.reductions}
    for stmt in stmts:
        for node in scope_names(stmt):
            if (
                isinstance(node.ctx, ast.Load)
                and node.id in changed
                and id(node) not in receiver_ids
            ):
                raise LoopRefused(
                    errors.CARRIED_READ.format(
                        line=node.lineno, name=node.id, write_line=changed[node.id]
                    ),
                    node.lineno,
                    carried=True,
                )


def analyse_comprehension(node: ast.expr, backend: str = "threads") -> BodyInfo:
    """Check a comprehension used as the parallel loop; its variables stay inside it."""
    kind = {ast.ListComp: "list", ast.SetComp: "set", ast.DictComp: "dict"}.get(
        type(node), "generator"
    )
    first = node.generators[0]
    if first.is_async:
        raise LoopRefused(errors.ASYNC_FOR_REFUSED.format(line=node.lineno), node.lineno)
    parts = [*first.ifs, *node.generators[1:]] + (
        [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
    )
    _check_target(first.target)
    info = BodyInfo(kind=kind, node=node)
    _check_async(parts, backend, info)
    local = set().union(*(stored_names(g.target) for g in node.generators))
    info.sinks = sinks([ast.Expr(part) for part in parts], local)  # not recorded: refused
    _refuse_late_binding(parts, local)
    for part in parts:
        for sub in walk_scope(part):
            if isinstance(sub, ast.NamedExpr):
                raise LoopRefused(
                    errors.WALRUS_IN_COMPREHENSION.format(line=sub.lineno), sub.lineno
                )
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
                root = attribute_root(sub.func.value)
                if sub.func.attr in MUTATORS and root is not None and root.id not in local:
                    what = f"`{ast.unparse(sub.func)}(...)`"
                    info.copy_warnings.append((sub.lineno, what, root.id))
    return info
