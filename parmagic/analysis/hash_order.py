"""Where a body's result depends on how this interpreter hashes strings: ``hash(...)``, and the
order of a set (another interpreter, salted otherwise, walks a set of strings in another
order). Found from the source alone, so a set whose members are numbers (ordered the same
everywhere) is reported too: member types are not known before the items run."""

from __future__ import annotations

import ast
import types
from collections.abc import Iterable
from dataclasses import dataclass

from .hidden_effects import _parsed, _place, in_notebook

SET_MAKERS = {"set", "frozenset"}
SET_OPERATORS = (ast.BitOr, ast.BitAnd, ast.Sub, ast.BitXor)
SET_RESULTS = {"union", "intersection", "difference", "symmetric_difference", "copy"}
ORDER_FREE_METHODS = {
    "issubset", "issuperset", "isdisjoint", "add", "discard", "remove", "update", "clear",
    "intersection_update", "difference_update", "symmetric_difference_update", "__contains__",
}  # fmt: skip
ORDER_FREE_CALLS = {"len", "sorted", "min", "max", "any", "all", "bool", "set", "frozenset"}
ITERATING_CALLS = {"list", "tuple", "sum", "enumerate", "zip", "iter", "next", "map", "filter"}
SHOWING_CALLS = {"print", "str", "repr", "format"}
SAMPLED_ITEMS = 8  # items looked at to tell a list of sets
ORDER_FREE_COMPARISONS = (ast.In, ast.NotIn, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


@dataclass(frozen=True)
class HashUse:
    """One place whose result hangs on string hashing: ``place`` is ``line N`` of the cell or
    a notebook function's line; ``what`` says what happens there."""

    line: int
    place: str
    what: str


def hash_order_uses(
    nodes: Iterable[ast.AST], ns: dict, item_sets: frozenset[str] = frozenset()
) -> list[HashUse]:
    """The uses in the body, then in the notebook functions it calls (and theirs), by line.
    ``item_sets``: the loop's names that hold sets (see items_that_are_sets)."""
    nodes = list(nodes)
    uses = _scope_uses(nodes, ns, item_sets=item_sets)
    found = [HashUse(line, f"line {line}", what) for line, what in uses]
    seen: set[int] = set()
    pending = _notebook_callees(nodes, ns)
    while pending:
        function = pending.pop()
        if id(function) in seen:
            continue
        seen.add(id(function))
        tree = _parsed(function)
        if tree is None:
            continue
        offset = function.__code__.co_firstlineno - 1
        for line, what in _scope_uses(tree.body, _globals_read(function), function.__globals__):
            found.append(HashUse(line + offset, _place(function, ns, line + offset), what))
        pending += _notebook_callees(tree.body, function.__globals__, ns)
    return sorted(set(found), key=lambda use: (use.line, use.what))


def items_that_are_sets(loop: ast.AST, ns: dict) -> frozenset[str]:
    """The loop's variable, where the kernel list or tuple it walks holds sets (``for s in
    groups``, ``groups`` a list of sets): each travels to a worker and is rebuilt there."""
    first = loop if isinstance(loop, ast.For) else loop.generators[0]
    iterable, target = first.iter, first.target
    values = ns.get(iterable.id) if isinstance(iterable, ast.Name) else None
    if not isinstance(target, ast.Name) or type(values) not in (list, tuple):
        return frozenset()
    holds_sets = any(isinstance(value, set | frozenset) for value in values[:SAMPLED_ITEMS])
    return frozenset({target.id}) if holds_sets else frozenset()


def _globals_read(function: types.FunctionType) -> dict:
    """The function's globals that it reads and does not bind itself (its parameters and
    locals are its own): a global set travels with the function and is rebuilt there."""
    own = set(function.__code__.co_varnames) | set(function.__code__.co_cellvars)
    read = set(function.__code__.co_names) - own
    return {name: value for name, value in function.__globals__.items() if name in read}


def _notebook_callees(nodes: list, scope: dict, ns: dict | None = None) -> list:
    kernel = scope if ns is None else ns
    names = {
        n.func.id
        for top in nodes
        for n in ast.walk(top)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    found = [scope.get(name) for name in sorted(names)]
    return [f for f in found if isinstance(f, types.FunctionType) and in_notebook(f, kernel)]


def _scope_uses(
    nodes: list, ns: dict, scope: dict | None = None, item_sets: frozenset[str] = frozenset()
) -> list[tuple[int, str]]:
    """``ns``: the kernel's names, whose sets travel to a worker and are rebuilt there;
    ``scope``: where the code's names are read (the kernel's, or a function's globals)."""
    scope = ns if scope is None else scope
    parents = {id(child): node for top in nodes for node in ast.walk(top)
               for child in ast.iter_child_nodes(node)}  # fmt: skip
    set_names = _set_names(nodes, ns) | item_sets
    found = []
    for top in nodes:
        for node in ast.walk(top):
            if _is_hash_call(node):
                found.append((node.lineno, f"`{ast.unparse(node)}` is a string hash"))
            elif _makes_set(node, set_names) and not _is_store(node) and not _unsalted(node, scope):
                how = _order_consumed(node, parents, set_names)
                if how and not _inside_set_expression(node, parents, set_names):
                    found.append((node.lineno, f"`{ast.unparse(node)}` {how}"))
    return found


def _unsalted(node: ast.AST, scope: dict) -> bool:
    """A set whose members are known to be numbers (``{signal.SIGALRM}``, ``set(range(n))``),
    which every interpreter orders alike: their hashes are their values."""
    if isinstance(node, ast.Set):
        return all(_unsalted_value(element, scope) for element in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1:
        made = node.func.id in SET_MAKERS and not node.keywords
        argument = node.args[0]
        if made and isinstance(argument, ast.Call) and isinstance(argument.func, ast.Name):
            return argument.func.id == "range" and scope.get("range", range) is range
        if made and isinstance(argument, ast.List | ast.Tuple):
            return all(_unsalted_value(element, scope) for element in argument.elts)
    return False


def _unsalted_value(expr: ast.AST, scope: dict) -> bool:
    """A constant, or a module's attribute read now, that is a number (not a plain name: the
    loop may bind it to anything)."""
    if isinstance(expr, ast.Constant):
        value = expr.value
    elif isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        module = scope.get(expr.value.id)
        if not isinstance(module, types.ModuleType):
            return False
        value = vars(module).get(expr.attr, "")  # not getattr: no lazy import, no property
    else:
        return False
    return isinstance(value, int | float | complex) or value is None


def _is_hash_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hash"


def _is_store(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)


def _set_names(nodes: list, ns: dict) -> set[str]:
    """Names every assignment of which gives a set; kernel names holding a set that the body
    reads and does not assign."""
    assigned: dict[str, list[ast.AST | None]] = {}
    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    value = node.value if isinstance(target, ast.Name) else None
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            assigned.setdefault(name.id, []).append(value)
            elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For | ast.comprehension):
                for name in ast.walk(node.target):
                    if isinstance(name, ast.Name):
                        augmented = isinstance(node, ast.AugAssign)
                        assigned.setdefault(name.id, []).append(node if augmented else None)
            elif isinstance(node, ast.NamedExpr):
                assigned.setdefault(node.target.id, []).append(node.value)
    names = {n for n, v in ns.items() if isinstance(v, set | frozenset) and n not in assigned}
    while True:
        more = {
            name
            for name, values in assigned.items()
            if name not in names and all(_gives_set(value, names) for value in values)
        }
        if not more:
            return names
        names |= more


def _gives_set(value: ast.AST | None, names: set[str]) -> bool:
    if isinstance(value, ast.AugAssign):
        return isinstance(value.op, SET_OPERATORS) and _makes_set(value.value, names)
    return value is not None and _makes_set(value, names)


def _makes_set(node: ast.AST, names: set[str]) -> bool:
    if isinstance(node, ast.Set | ast.SetComp):
        return True
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, ast.BinOp) and isinstance(node.op, SET_OPERATORS):
        return _makes_set(node.left, names) or _makes_set(node.right, names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id in SET_MAKERS
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in SET_RESULTS and _makes_set(node.func.value, names)
    return False


def _inside_set_expression(node: ast.AST, parents: dict, names: set[str]) -> bool:
    """Reported once, as the outermost set expression (``a | b`` rather than ``a`` too)."""
    parent = parents.get(id(node))
    if isinstance(parent, ast.BinOp) and isinstance(parent.op, SET_OPERATORS):
        return _makes_set(parent, names)
    return isinstance(parent, ast.Attribute) and parent.attr in SET_RESULTS


def _order_consumed(node: ast.AST, parents: dict, names: set[str]) -> str | None:
    """How the set's order reaches the result, or None when nothing depends on it. What
    parmagic cannot follow (returned, stored, handed to another function) counts as used."""
    parent = parents.get(id(node))
    if isinstance(parent, ast.BinOp) and _makes_set(parent, names):
        return _order_consumed(parent, parents, names)
    if isinstance(parent, ast.Attribute) and parent.value is node:
        call = parents.get(id(parent))
        if parent.attr in SET_RESULTS and isinstance(call, ast.Call):
            return _order_consumed(call, parents, names)
        if parent.attr == "pop":
            return "gives up an arbitrary member with `.pop()`"
        return None if parent.attr in ORDER_FREE_METHODS else "is used in its order"
    return _consumed_by(node, parent, parents, names)


def _consumed_by(node: ast.AST, parent: ast.AST | None, parents: dict, names: set) -> str | None:
    if parent is None or isinstance(parent, ast.Expr | ast.AugAssign):
        return None
    if isinstance(parent, ast.Compare):
        free = all(isinstance(op, ORDER_FREE_COMPARISONS) for op in parent.ops)
        return None if free else "is used in its order"
    if isinstance(parent, ast.For | ast.AsyncFor | ast.comprehension) and parent.iter is node:
        return "is iterated"
    if isinstance(parent, ast.Assign | ast.AnnAssign | ast.NamedExpr):
        targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
        if all(isinstance(t, ast.Name) and t.id in names for t in targets):
            return None  # the name's own uses are checked
        if all(isinstance(t, ast.Name) for t in targets):
            return "goes to a name assigned otherwise too, whose uses are not followed"
        return "is unpacked in its order"
    if isinstance(parent, ast.Call) and node in parent.args:
        return _call_use(parent, names)
    if isinstance(parent, ast.FormattedValue):
        return "is printed"
    return "is used in its order"


def _call_use(call: ast.Call, names: set[str]) -> str | None:
    func = call.func
    name = func.id if isinstance(func, ast.Name) else None
    if name in ORDER_FREE_CALLS:
        return None
    if name in SHOWING_CALLS:
        return "is printed"
    if name in ITERATING_CALLS or (isinstance(func, ast.Attribute) and func.attr == "join"):
        return "is iterated"
    if isinstance(func, ast.Attribute) and _makes_set(func.value, names):
        return None if func.attr in ORDER_FREE_METHODS | SET_RESULTS else "is used in its order"
    return "is handed on in its order"
