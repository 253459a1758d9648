"""Small facts about Python syntax trees that the loop analysis and the rewriter share."""

from __future__ import annotations

import ast

from ..worker.effects import INDEXER, INDEXERS

COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def receiver_root(expr: ast.expr) -> tuple[ast.Name, list[ast.expr]] | None:
    """``groups[k][j]`` -> (Name groups, [k, j]); None when the chain holds anything else.

    pandas' indexers are steps too: ``df.loc[i]`` -> (Name df, [(INDEXER, "loc"), i])."""
    keys: list[ast.expr] = []
    while True:
        if isinstance(expr, ast.Subscript):
            keys.insert(0, expr.slice)
        elif isinstance(expr, ast.Attribute) and expr.attr in INDEXERS:
            step = [ast.Constant(INDEXER), ast.Constant(expr.attr)]
            keys.insert(0, ast.copy_location(ast.Tuple(step, ast.Load()), expr))
        else:
            break
        expr = expr.value
    return (expr, keys) if isinstance(expr, ast.Name) else None


def attribute_root(expr: ast.expr) -> ast.Name | None:
    while isinstance(expr, ast.Attribute | ast.Subscript):
        expr = expr.value
    return expr if isinstance(expr, ast.Name) else None


def walk_scope(node: ast.AST):
    """Like ast.walk, but stays out of nested function, class and lambda bodies."""
    todo = [node]
    while todo:
        current = todo.pop()
        yield current
        if current is not node and isinstance(current, SCOPES):
            continue
        todo.extend(ast.iter_child_nodes(current))


def called_name(call: ast.Call) -> str:
    """The name a call calls by: ``f`` of ``f(x)``, ``append`` of ``out.append(x)``."""
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def stored_names(target: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


def bound_names(stmts: list[ast.stmt]) -> set[str]:
    """Names an item binds: they become the item function's locals."""
    bound: set[str] = set()
    for stmt in stmts:
        augmented = {id(n.target) for n in walk_scope(stmt) if isinstance(n, ast.AugAssign)}
        bound |= {
            node.id
            for node in scope_names(stmt)
            if isinstance(node.ctx, ast.Store) and id(node) not in augmented
        }  # `total += x` alone is a reduction, not a local
        for node in walk_scope(stmt):
            if isinstance(node, SCOPES[:3]):
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


def scope_names(node: ast.AST, hidden: frozenset[str] = frozenset()):
    """The Name nodes that belong to ``node``'s own scope.

    Leaves out nested function, class and lambda bodies, and the variables of comprehensions
    (their own scope since Python 3), while keeping a comprehension's first iterable and its
    other free names, which the enclosing scope evaluates.
    """
    if isinstance(node, ast.Name):
        if node.id not in hidden:
            yield node
        return
    if isinstance(node, SCOPES):
        return
    if isinstance(node, COMPREHENSIONS):
        yield from scope_names(node.generators[0].iter, hidden)
        inner = hidden | {n for g in node.generators for n in stored_names(g.target)}
        parts = [*node.generators[0].ifs]
        for generator in node.generators[1:]:
            parts += [generator.iter, *generator.ifs]
        parts += [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        for part in parts:
            yield from scope_names(part, inner)
        return
    for child in ast.iter_child_nodes(node):
        yield from scope_names(child, hidden)
