"""Cell source -> plan: find the one parallel loop and put a call to the loop run in its place.

The rest of the cell stays ordinary Python that runs in the kernel, in its place: the
statements before the loop, the loop (now one call that runs the items and applies their
effects), its ``else:`` block, then the statements after it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from .. import errors
from ..errors import LoopRefused
from .body import BodyInfo, analyse_comprehension, analyse_for
from .scopes import COMPREHENSIONS, walk_scope

HOOK_NAME = "__parmagic_loop__"


@dataclass
class CellPlan:
    """A checked cell: its rewritten tree and what the parallel loop does."""

    module: ast.Module  # the cell with the loop replaced by ``__parmagic_loop__(iterable)``
    body: BodyInfo
    filename: str
    ends_with_expression: bool
    is_async: bool = False  # top-level await / async with around the loop: runs as a coroutine
    source: str = ""  # the cell as written: the key to what its earlier runs measured

    def split_for_display(self) -> tuple[ast.Module, ast.Expression | None]:
        return split_for_display(self.module) if self.ends_with_expression else (self.module, None)


def split_for_display(module: ast.Module) -> tuple[ast.Module, ast.Expression | None]:
    """The cell without its final expression, and that expression (its value is Out[])."""
    if not module.body or not isinstance(module.body[-1], ast.Expr):
        return module, None
    *head, last = module.body
    return ast.Module(head, []), ast.Expression(last.value)


def statements_before(plan: CellPlan) -> list[ast.stmt]:
    """The cell's statements that run before its loop, in order; a block around the loop
    (``with open(...) as f:``) is among them, its statements before the loop after it."""
    line, found = plan.body.node.lineno, []
    statements = list(plan.module.body)
    while statements:
        stmt = statements.pop(0)
        if stmt.lineno >= line:
            break
        found.append(stmt)
        if stmt.end_lineno is not None and stmt.end_lineno >= line:  # the block around the loop
            statements = [s for s in ast.iter_child_nodes(stmt) if isinstance(s, ast.stmt)]
    return found


def _is_main_guard(stmt: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` with no ``else``: always true in a kernel (cells pasted
    from scripts often keep it), so its body is the cell's own."""
    if not isinstance(stmt, ast.If) or stmt.orelse:
        return False
    test = stmt.test
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _top_level(stmts: list[ast.stmt]):
    """The cell's own statements, looking inside top-level ``with`` and ``try`` blocks and an
    ``if __name__ == "__main__":`` guard."""
    for stmt in stmts:
        if isinstance(stmt, ast.With | ast.AsyncWith) or _is_main_guard(stmt):
            yield from _top_level(stmt.body)
        elif isinstance(stmt, ast.Try | ast.TryStar):
            yield from _top_level(stmt.body)
            for handler in stmt.handlers:
                yield from _top_level(handler.body)
            yield from _top_level(stmt.orelse)
            yield from _top_level(stmt.finalbody)
        else:
            yield stmt


def _outermost_comprehensions(stmt: ast.stmt) -> list[ast.expr]:
    found: list[ast.expr] = []
    todo: list[ast.AST] = [stmt]
    while todo:
        node = todo.pop()
        if isinstance(node, COMPREHENSIONS):
            found.append(node)
            continue
        if isinstance(node, ast.Lambda | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def find_parallel_loop(tree: ast.Module) -> ast.AST:
    """The ``for`` statement or comprehension that runs in parallel: the one top-level ``for``
    (not ``async for``), or else the one outermost comprehension of one statement; more than
    one, or none, is refused, as parmagic would have to guess."""
    statements = list(_top_level(tree.body))
    loops = [s for s in statements if isinstance(s, ast.For | ast.AsyncFor)]
    if len(loops) > 1:
        lines = ", ".join(str(s.lineno) for s in loops)
        raise LoopRefused(errors.SEVERAL_LOOPS.format(count=len(loops), lines=lines))
    if loops:
        if isinstance(loops[0], ast.AsyncFor):
            raise LoopRefused(
                errors.ASYNC_FOR_REFUSED.format(line=loops[0].lineno), loops[0].lineno
            )
        return loops[0]
    holders = [(s, c) for s in statements if (c := _outermost_comprehensions(s))]
    if not holders:
        raise LoopRefused(errors.NO_LOOP)
    if len(holders) > 1:
        lines = ", ".join(str(s.lineno) for s, _ in holders)
        raise LoopRefused(errors.SEVERAL_COMPREHENSIONS.format(lines=lines))
    statement, comprehensions = holders[0]
    if len(comprehensions) > 1:
        message = errors.SEVERAL_IN_STATEMENT.format(
            line=statement.lineno, count=len(comprehensions)
        )
        raise LoopRefused(message, statement.lineno)
    return comprehensions[0]


class _PutHook(ast.NodeTransformer):
    def __init__(self, loop: ast.AST, is_async: bool) -> None:
        self.loop = loop
        self.is_async = is_async

    def _hook(self, iterable: ast.expr, where: ast.AST) -> ast.expr:
        call = ast.Call(ast.Name(HOOK_NAME, ast.Load()), [iterable], [])
        return ast.copy_location(ast.Await(call) if self.is_async else call, where)

    def visit_For(self, node):
        if node is not self.loop:
            return self.generic_visit(node)
        call = ast.copy_location(ast.Expr(self._hook(node.iter, node)), node)
        return [call, *node.orelse]  # without `break`, `else:` always runs once after the loop

    def generic_visit(self, node):
        if node is self.loop and isinstance(node, COMPREHENSIONS):
            return self._hook(node.generators[0].iter, node)
        return super().generic_visit(node)


def plan_cell(source: str, filename: str, backend: str = "threads", transform_ast=None) -> CellPlan:
    """Parse, check and rewrite a cell. Raises SyntaxError or LoopRefused before anything runs."""
    tree = ast.parse(source, filename)
    compile(tree, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    if transform_ast is not None:
        tree = transform_ast(tree)
    loop = find_parallel_loop(tree)
    info = (
        analyse_for(loop, backend)
        if isinstance(loop, ast.For)
        else analyse_comprehension(loop, backend)
    )
    for node in walk_scope(tree):
        if isinstance(node, ast.Name) and node.id == HOOK_NAME:
            raise LoopRefused(f"`{HOOK_NAME}` is reserved for parmagic; rename it")
    ends_with_expression = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    is_async = _awaits_outside(tree, loop)
    module = ast.fix_missing_locations(_PutHook(loop, is_async).visit(tree))
    return CellPlan(module, info, filename, ends_with_expression, is_async, source)


def _awaits_outside(tree: ast.Module, loop: ast.AST) -> bool:
    """Whether the cell itself, not the loop's body, awaits (e.g. `async with` around it)."""
    skip = {id(n) for n in ast.walk(loop)}
    if isinstance(loop, ast.For):
        skip -= {id(n) for n in ast.walk(loop.iter)}
        skip -= {id(n) for stmt in loop.orelse for n in ast.walk(stmt)}
    else:
        skip -= {id(n) for n in ast.walk(loop.generators[0].iter)}
    return any(
        isinstance(n, ast.Await | ast.AsyncWith | ast.AsyncFor)
        or (isinstance(n, ast.comprehension) and n.is_async)
        for n in walk_scope(tree)
        if id(n) not in skip
    )
