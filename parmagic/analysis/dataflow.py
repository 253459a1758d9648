"""Which names an item reads before it assigns them itself.

In a serial loop such a read sees the value the previous item left; a parallel item cannot,
so those reads (loop-carried dependencies) are refused before anything runs.
"""

from __future__ import annotations

import ast

from .. import errors
from ..errors import LoopRefused
from .scopes import bound_names, scope_names, stored_names, walk_scope


class DefiniteAssignment:
    """Refuse reads of a body-bound name that an earlier item, not this one, would have set."""

    def __init__(self, bound: frozenset[str]) -> None:
        self.bound = bound

    def reads(self, nodes, assigned: set[str]) -> set[str]:
        walrus: set[str] = set()
        for top in (n for n in nodes if n is not None):
            for node in scope_names(top):
                if (
                    isinstance(node.ctx, ast.Load)
                    and node.id in self.bound
                    and node.id not in assigned
                ):
                    raise LoopRefused(
                        errors.CARRIED_NAME.format(line=node.lineno, name=node.id),
                        node.lineno,
                        carried=True,
                    )
            walrus |= _certain_walrus_targets(top)
        return assigned | walrus

    def _refuse_spelled_out_reduction(self, s: ast.Assign, assigned: set[str]) -> None:
        """``total = total + x`` reads the previous item's ``total``; ``total += x`` says the
        same as a reduction, which parmagic applies in item order."""
        target, value = s.targets[0], s.value
        if not (
            len(s.targets) == 1
            and isinstance(target, ast.Name)
            and target.id in self.bound
            and target.id not in assigned
            and isinstance(value, ast.BinOp)
            and isinstance(value.left, ast.Name)
            and value.left.id == target.id
            and target.id not in {n.id for n in ast.walk(value.right) if isinstance(n, ast.Name)}
        ):
            return
        op = ast.unparse(ast.BinOp(ast.Name("a"), value.op, ast.Name("b")))[2:-2]
        message = errors.SPELLED_OUT_REDUCTION.format(
            line=s.lineno, name=target.id, op=op, right=ast.unparse(value.right)
        )
        raise LoopRefused(message, s.lineno, carried=True)

    def block(self, stmts: list[ast.stmt], assigned: set[str]) -> set[str]:
        for stmt in stmts:
            assigned = self.stmt(stmt, set(assigned))
        return assigned

    def _try(self, s: ast.Try | ast.TryStar, a: set[str]) -> set[str]:
        """Names surely assigned after a ``try``: the body's (or every handler's), then the
        ``finally`` block's."""
        after = self.block(s.orelse, self.block(s.body, set(a)))
        for handler in s.handlers:
            self.reads([handler.type], a)
            caught = a | ({handler.name} if handler.name else set())
            after &= self.block(handler.body, caught)
        return after | self.block(s.finalbody, set(a))

    def _match(self, s: ast.Match, a: set[str]) -> set[str]:
        """Names every case assigns (and, when no case must match, those before it)."""
        a = self.reads([s.subject], a)
        outcomes = [self.block(case.body, a | bound_names([case.pattern])) for case in s.cases]
        if not any(_irrefutable(case) for case in s.cases):
            outcomes.append(a)  # no case may match
        return set.intersection(*outcomes)

    def stmt(self, s: ast.stmt, a: set[str]) -> set[str]:  # noqa: C901 - one case per statement
        """The names surely assigned after statement ``s``, given ``a`` before it; reads of
        the body's own names that nothing assigned yet are refused (``reads``)."""
        if isinstance(s, ast.Assign):
            self._refuse_spelled_out_reduction(s, a)
            a = self.reads([s.value, *[_target_loads(t) for t in s.targets]], a)
            return a | set().union(*(stored_names(t) for t in s.targets))
        if isinstance(s, ast.AnnAssign):
            a = self.reads([s.value, _target_loads(s.target)], a)
            return a | (stored_names(s.target) if s.value is not None else set())
        if isinstance(s, ast.AugAssign):
            if isinstance(s.target, ast.Name) and s.target.id in self.bound:
                self.reads([ast.Name(s.target.id, ast.Load(), lineno=s.lineno)], a)
            return self.reads([s.value, _target_loads(s.target)], a)
        if isinstance(s, ast.If):
            a = self.reads([s.test], a)
            return self.block(s.body, set(a)) & self.block(s.orelse, set(a))
        if isinstance(s, ast.For | ast.AsyncFor):
            a = self.reads([s.iter], a)
            self.block(s.body, a | stored_names(s.target))
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
                    a |= stored_names(item.optional_vars)
            after = self.block(s.body, set(a))
            return a if any(_may_suppress(i.context_expr) for i in s.items) else after
        if isinstance(s, ast.Try | ast.TryStar):
            return self._try(s, a)
        if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            self.reads([*s.decorator_list, *_defaults(s)], a)
            return a | {s.name}
        if isinstance(s, ast.Import | ast.ImportFrom):
            return a | bound_names([s])
        if isinstance(s, ast.Delete):
            self.reads([_target_loads(t) for t in s.targets], a)
            return a - {n.id for t in s.targets for n in ast.walk(t) if _deleted_name(n)}
        if isinstance(s, ast.Match):
            return self._match(s, a)
        if isinstance(s, ast.Continue | ast.Break | ast.Return | ast.Raise):
            self.reads([getattr(s, "value", None), getattr(s, "exc", None)], a)
            return set(self.bound)  # nothing after it runs: every name counts as assigned
        return self.reads([s], a)


def _deleted_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and isinstance(node.ctx, ast.Del)


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


def _certain_walrus_targets(node: ast.AST) -> set[str]:
    """Names a `:=` surely binds: not under `and`/`or`, a conditional expression or a
    comprehension, which may skip it."""
    maybe: set[int] = set()
    for sub in walk_scope(node):
        if isinstance(sub, ast.BoolOp):
            maybe |= {id(n) for value in sub.values[1:] for n in ast.walk(value)}
        elif isinstance(sub, ast.IfExp):
            maybe |= {id(n) for part in (sub.body, sub.orelse) for n in ast.walk(part)}
        elif isinstance(sub, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            maybe |= {id(n) for n in ast.walk(sub)}
    return {
        n.target.id for n in walk_scope(node) if isinstance(n, ast.NamedExpr) and id(n) not in maybe
    }


def _may_suppress(context: ast.expr) -> bool:
    """`with suppress(...)` may skip the rest of its block without an exception."""
    func = context.func if isinstance(context, ast.Call) else None
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return name == "suppress"


def _irrefutable(case: ast.match_case) -> bool:
    return (
        case.guard is None
        and isinstance(case.pattern, ast.MatchAs)
        and case.pattern.pattern is None
    )
