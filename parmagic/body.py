"""Check a parallel loop's body and rewrite it into a per-item function.

A serial loop runs its body in the kernel's namespace; a parallel item cannot, because items
run at the same time (threads) or in another process. So the body becomes a function of one
item whose bound names are locals, and whose effects on kernel objects are *recorded* through
a log (``__log__``) and replayed in the kernel in item order (spec §5). Anything that would
make an item depend on an earlier one is refused here, before the cell runs (spec §4).

The module is pure: source trees in, facts and code objects out.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field
from types import CodeType

from . import errors
from .errors import LoopRefused

ITEM_ARG = "__item__"
LOG_ARG = "__log__"

# Methods whose call, as a statement on a kernel container, is recorded and replayed.
MUTATORS = frozenset(
    [
        "append",
        "appendleft",
        "extend",
        "extendleft",
        "insert",
        "add",
        "update",
        "discard",
        "remove",
        "pop",
        "popleft",
        "popitem",
        "clear",
        "setdefault",
        "subtract",
        "rotate",
        "sort",
        "reverse",
    ]
)

COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_OPERATORS = {
    ast.Add: "iadd", ast.Sub: "isub", ast.Mult: "imul", ast.MatMult: "imatmul",
    ast.Div: "itruediv", ast.FloorDiv: "ifloordiv", ast.Mod: "imod", ast.Pow: "ipow",
    ast.LShift: "ilshift", ast.RShift: "irshift", ast.BitOr: "ior", ast.BitXor: "ixor",
    ast.BitAnd: "iand",
}  # fmt: skip


@dataclass
class BodyInfo:
    """What the analysis learnt about one parallel loop."""

    kind: str  # "for", "list", "set", "dict" or "generator"
    node: ast.AST
    bound: frozenset[str] = frozenset()
    reductions: dict[str, int] = field(default_factory=dict)
    receivers: dict[str, int] = field(default_factory=dict)  # kernel names mutated in place
    copy_warnings: list[tuple[int, str, str]] = field(default_factory=list)  # line, what, name

    @property
    def line(self) -> int:
        return self.node.lineno


def receiver_root(expr: ast.expr) -> tuple[ast.Name, list[ast.expr]] | None:
    """``groups[k][j]`` -> (Name groups, [k, j]); None when the chain holds anything else."""
    keys: list[ast.expr] = []
    while isinstance(expr, ast.Subscript):
        keys.insert(0, expr.slice)
        expr = expr.value
    return (expr, keys) if isinstance(expr, ast.Name) else None


def _attribute_root(expr: ast.expr) -> ast.Name | None:
    while isinstance(expr, ast.Attribute | ast.Subscript):
        expr = expr.value
    return expr if isinstance(expr, ast.Name) else None


def walk_scope(node: ast.AST):
    """Like ast.walk, but stays out of nested function, class and lambda bodies."""
    todo = [node]
    while todo:
        current = todo.pop()
        yield current
        if current is not node and isinstance(current, _SCOPES):
            continue
        todo.extend(ast.iter_child_nodes(current))


def _loop_level(stmts: list[ast.stmt]):
    """Statements of the body that belong to the parallel loop itself (not to an inner loop)."""
    for stmt in stmts:
        yield stmt
        if isinstance(stmt, _SCOPES):
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


def _stored_names(target: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def _bound_names(stmts: list[ast.stmt]) -> set[str]:
    """Names an item binds: they become the item function's locals."""
    bound: set[str] = set()
    for stmt in stmts:
        augmented = {id(n.target) for n in walk_scope(stmt) if isinstance(n, ast.AugAssign)}
        for node in walk_scope(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                if id(node) not in augmented:  # `total += x` alone is a reduction, not a local
                    bound.add(node.id)
            elif isinstance(node, _SCOPES[:3]):
                bound.add(node.name)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
            elif (
                isinstance(node, ast.ExceptHandler)
                and node.name
                or isinstance(node, ast.MatchAs | ast.MatchStar)
                and node.name
            ):
                bound.add(node.name)
    return bound


def _comprehension_targets(stmts) -> set[int]:
    """ids of Name nodes that are comprehension variables (local to the comprehension)."""
    ids: set[int] = set()
    for stmt in stmts:
        for node in ast.walk(stmt):
            if isinstance(node, COMPREHENSIONS):
                for gen in node.generators:
                    ids.update(id(n) for n in ast.walk(gen.target) if isinstance(n, ast.Name))
    return ids


def _check_target(target: ast.expr) -> None:
    for node in ast.walk(target):
        if not isinstance(node, ast.Name | ast.Tuple | ast.List | ast.Starred | ast.Store):
            raise LoopRefused(
                errors.BAD_TARGET.format(line=target.lineno, target=ast.unparse(target)),
                target.lineno,
            )


def _refuse_async(nodes, backend: str) -> None:
    for top in nodes:
        for node in walk_scope(top):
            what = {
                ast.Await: "await", ast.AsyncFor: "async for", ast.AsyncWith: "async with"
            }.get(type(node))  # fmt: skip
            if what is None and isinstance(node, ast.comprehension) and node.is_async:
                what = "async for"
            if what:
                raise LoopRefused(
                    errors.AWAIT_REFUSED.format(line=node.lineno, what=what, backend=backend),
                    getattr(node, "lineno", None),
                )


def analyse_for(loop: ast.For, backend: str = "threads") -> BodyInfo:
    """Check a ``for`` loop's body and classify what it does to the kernel."""
    _check_target(loop.target)
    _refuse_async(loop.body, backend)
    for stmt in _loop_level(loop.body):
        if isinstance(stmt, ast.Break):
            raise LoopRefused(errors.BREAK_REFUSED.format(line=stmt.lineno), stmt.lineno)

    bound = _bound_names(loop.body) | _stored_names(loop.target)
    info = BodyInfo(kind="for", node=loop)
    receiver_ids: set[int] = set()
    for stmt in loop.body:
        for node in walk_scope(stmt):
            _classify(node, bound, info, receiver_ids)
    info.reductions = {n: line for n, line in info.reductions.items() if n not in bound}
    info.bound = frozenset(bound)
    _refuse_carried_reads(loop.body, info, receiver_ids)
    _DefiniteAssignment(info.bound).block(loop.body, _stored_names(loop.target))
    return info


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
        root = _attribute_root(expr)
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


def _op_text(node: ast.AugAssign) -> str:
    return ast.unparse(ast.BinOp(ast.Name("a"), node.op, ast.Name("b")))[2:-2]


def _refuse_carried_reads(stmts, info: BodyInfo, receiver_ids: set[int]) -> None:
    """A name the body changes through write-back or a reduction must not be read too."""
    changed = {**info.receivers, **info.reductions}
    local_ids = _comprehension_targets(stmts)
    for stmt in stmts:
        for node in walk_scope(stmt):
            if (
                isinstance(node, ast.Name)
                and isinstance(node.ctx, ast.Load)
                and node.id in changed
                and id(node) not in receiver_ids
                and id(node) not in local_ids
            ):
                raise LoopRefused(
                    errors.CARRIED_READ.format(
                        line=node.lineno, name=node.id, write_line=changed[node.id]
                    ),
                    node.lineno,
                )


class _DefiniteAssignment:
    """Refuse reads of a body-bound name that an earlier item, not this one, would have set."""

    def __init__(self, bound: frozenset[str]) -> None:
        self.bound = bound

    def reads(self, nodes, assigned: set[str]) -> set[str]:
        nodes = [n for n in nodes if n is not None]
        local_ids = _comprehension_targets(nodes)
        walrus: set[str] = set()
        for top in nodes:
            for node in walk_scope(top):
                if isinstance(node, ast.NamedExpr):
                    walrus |= _stored_names(node.target)
                elif (
                    isinstance(node, ast.Name)
                    and isinstance(node.ctx, ast.Load)
                    and node.id in self.bound
                    and node.id not in assigned
                    and id(node) not in local_ids
                ):
                    raise LoopRefused(
                        errors.CARRIED_NAME.format(line=node.lineno, name=node.id), node.lineno
                    )
        return assigned | walrus

    def block(self, stmts: list[ast.stmt], assigned: set[str]) -> set[str]:
        for stmt in stmts:
            assigned = self.stmt(stmt, set(assigned))
        return assigned

    def stmt(self, s: ast.stmt, a: set[str]) -> set[str]:  # noqa: C901 - one case per statement
        if isinstance(s, ast.Assign):
            a = self.reads([s.value, *[_target_loads(t) for t in s.targets]], a)
            return a | set().union(*(_stored_names(t) for t in s.targets))
        if isinstance(s, ast.AnnAssign):
            a = self.reads([s.value, _target_loads(s.target)], a)
            return a | (_stored_names(s.target) if s.value is not None else set())
        if isinstance(s, ast.AugAssign):
            if isinstance(s.target, ast.Name) and s.target.id in self.bound:
                self.reads([ast.Name(s.target.id, ast.Load(), lineno=s.lineno)], a)
            return self.reads([s.value, _target_loads(s.target)], a)
        if isinstance(s, ast.If):
            a = self.reads([s.test], a)
            return self.block(s.body, set(a)) & self.block(s.orelse, set(a))
        if isinstance(s, ast.For | ast.AsyncFor):
            a = self.reads([s.iter], a)
            self.block(s.body, a | _stored_names(s.target))
            self.block(s.orelse, set(a))
            return a
        if isinstance(s, ast.While):
            a = self.reads([s.test], a)
            self.block(s.body, set(a))
            self.block(s.orelse, set(a))
            return a
        if isinstance(s, ast.With | ast.AsyncWith):
            for item in s.items:
                a = self.reads([item.context_expr], a)
                if item.optional_vars is not None:
                    a |= _stored_names(item.optional_vars)
            return self.block(s.body, a)
        if isinstance(s, ast.Try | ast.TryStar):
            after = self.block(s.orelse, self.block(s.body, set(a)))
            for handler in s.handlers:
                self.reads([handler.type], a)
                caught = a | ({handler.name} if handler.name else set())
                after &= self.block(handler.body, caught)
            return after | self.block(s.finalbody, set(a))
        if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            self.reads([*s.decorator_list, *_defaults(s)], a)
            return a | {s.name}
        if isinstance(s, ast.Import | ast.ImportFrom):
            return a | _bound_names([s])
        if isinstance(s, ast.Delete):
            self.reads([_target_loads(t) for t in s.targets], a)
            deleted = {
                n.id
                for t in s.targets
                for n in ast.walk(t)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Del)
            }
            return a - deleted
        if isinstance(s, ast.Match):
            a = self.reads([s.subject], a)
            outcomes = [self.block(case.body, a | _bound_names([case.pattern])) for case in s.cases]
            return set.intersection(*outcomes) if outcomes else a
        if isinstance(s, ast.Continue | ast.Break | ast.Return | ast.Raise):
            self.reads([getattr(s, "value", None), getattr(s, "exc", None)], a)
            return set(self.bound)  # nothing after it runs: every name counts as assigned
        return self.reads([s], a)


def _target_loads(target: ast.expr) -> ast.AST | None:
    """The parts of an assignment target that are read (``d[k]`` reads d and k)."""
    if isinstance(target, ast.Name):
        return None
    if isinstance(target, ast.Tuple | ast.List | ast.Starred):
        parts = [
            _target_loads(e)
            for e in ast.walk(target)
            if isinstance(e, ast.Subscript | ast.Attribute)
        ]
        return ast.Tuple([p for p in parts if p is not None], ast.Load())
    return target


def _defaults(s) -> list[ast.expr]:
    if isinstance(s, ast.ClassDef):
        return [*s.bases, *[k.value for k in s.keywords]]
    return [*s.args.defaults, *[d for d in s.args.kw_defaults if d is not None]]


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
    _refuse_async(parts, backend)
    _check_target(first.target)
    info = BodyInfo(kind=kind, node=node)
    local = set().union(*(_stored_names(g.target) for g in node.generators))
    for part in parts:
        for sub in walk_scope(part):
            if isinstance(sub, ast.NamedExpr):
                raise LoopRefused(
                    errors.WALRUS_IN_COMPREHENSION.format(line=sub.lineno), sub.lineno
                )
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
                root = _attribute_root(sub.func.value)
                if sub.func.attr in MUTATORS and root is not None and root.id not in local:
                    what = f"`{ast.unparse(sub.func)}(...)`"
                    info.copy_warnings.append((sub.lineno, what, root.id))
    return info


class _Recorder(ast.NodeTransformer):
    """Turns the body's write-backs into calls on ``__log__`` and ``continue`` into return."""

    def __init__(self, recorded: frozenset[str], reductions: dict[str, int]) -> None:
        self.recorded = recorded
        self.reductions = reductions
        self.depth = 0

    def _log(self, node: ast.stmt, method: str, *args: ast.expr, keywords=()) -> ast.Expr:
        func = ast.Attribute(ast.Name(LOG_ARG, ast.Load()), method, ast.Load())
        call = ast.Call(func, [ast.Constant(node.lineno), *args], list(keywords))
        return ast.copy_location(ast.Expr(call), node)

    def _root(self, expr: ast.expr):
        root = receiver_root(expr)
        if root is None or root[0].id not in self.recorded:
            return None
        name, keys = root
        return ast.Constant(name.id), ast.Tuple([_as_value(k) for k in keys], ast.Load())

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef

    def _block(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        visited = [self.visit(s) for s in stmts]
        return [s for part in visited for s in (part if isinstance(part, list) else [part])]

    def visit_For(self, node):
        self.depth += 1
        node.body = self._block(node.body)
        self.depth -= 1
        node.orelse = self._block(node.orelse)
        return node

    visit_While = visit_For

    def visit_Continue(self, node):
        return ast.copy_location(ast.Return(None), node) if self.depth == 0 else node

    def visit_Expr(self, node):
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            root = self._root(call.func.value)
            if root and call.func.attr in MUTATORS:
                method = ast.Constant(call.func.attr)
                return self._log(node, "call", *root, method, *call.args, keywords=call.keywords)
        return node

    def visit_Assign(self, node):
        target = node.targets[0]
        if len(node.targets) == 1 and isinstance(target, ast.Subscript):
            root = self._root(target.value)
            if root:
                return self._log(node, "setitem", *root, _as_value(target.slice), node.value)
        return node

    def visit_AnnAssign(self, node):
        if node.value is not None and isinstance(node.target, ast.Subscript):
            root = self._root(node.target.value)
            if root:
                return self._log(node, "setitem", *root, _as_value(node.target.slice), node.value)
        return node

    def visit_AugAssign(self, node):
        op = ast.Constant(_OPERATORS[type(node.op)])
        target = node.target
        if isinstance(target, ast.Name) and target.id in self.reductions:
            return self._log(node, "reduce", ast.Constant(target.id), op, node.value)
        if isinstance(target, ast.Subscript):
            root = self._root(target.value)
            if root:
                return self._log(node, "augitem", *root, _as_value(target.slice), op, node.value)
        return node

    def visit_Delete(self, node):
        statements = []
        for target in node.targets:
            root = self._root(target.value) if isinstance(target, ast.Subscript) else None
            if root is None:
                statements.append(ast.copy_location(ast.Delete([target]), node))
            else:
                statements.append(self._log(node, "delitem", *root, _as_value(target.slice)))
        return statements


def _as_value(key: ast.expr) -> ast.expr:
    """A subscript key as an ordinary expression (``a[1:2]`` -> ``slice(1, 2, None)``)."""
    if isinstance(key, ast.Slice):
        parts = [
            p if p is not None else ast.Constant(None) for p in (key.lower, key.upper, key.step)
        ]
        return ast.copy_location(ast.Call(ast.Name("slice", ast.Load()), parts, []), key)
    if isinstance(key, ast.Tuple):
        return ast.copy_location(ast.Tuple([_as_value(e) for e in key.elts], ast.Load()), key)
    return key


def build_item_code(info: BodyInfo, recorded: frozenset[str], filename: str) -> CodeType:
    """The code of ``__parmagic_item__(__item__, __log__)``, with the cell's line numbers."""
    node = copy.deepcopy(info.node)
    item = ast.Name(ITEM_ARG, ast.Load())
    if info.kind == "for":
        assign = ast.Assign([node.target], item)
        body = _Recorder(recorded, info.reductions)._block(node.body)
        bind = ast.Expr(
            ast.Call(
                ast.Attribute(ast.Name(LOG_ARG, ast.Load()), "bind", ast.Load()),
                [ast.Call(ast.Name("locals", ast.Load()), [], [])],
                [],
            )
        )
        statements = [ast.Try([assign, *body], [], [], [bind])]
    else:
        first = node.generators[0]
        first.iter = ast.Tuple([item], ast.Load())
        elt = ast.Tuple([node.key, node.value], ast.Load()) if info.kind == "dict" else node.elt
        statements = [ast.Return(ast.ListComp(elt, node.generators))]
    args = ast.arguments([], [ast.arg(ITEM_ARG), ast.arg(LOG_ARG)], None, [], [], None, [])
    function = ast.FunctionDef(errors.ITEM_FUNCTION_NAME, args, statements, [], None)
    for synthetic in ast.walk(function):
        if not hasattr(synthetic, "lineno") and "lineno" in synthetic._attributes:
            ast.copy_location(synthetic, info.node)
    module = ast.fix_missing_locations(ast.Module([function], []))
    code = compile(module, filename, "exec", dont_inherit=True)
    return next(c for c in code.co_consts if isinstance(c, CodeType))
