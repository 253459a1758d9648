"""Rewrite a checked loop into the function that runs one item.

``__parmagic_item__(__item__, __log__)``: the loop variable and the body's names are its
locals; write-backs and reductions become calls on ``__log__`` (replayed in the kernel in
item order); ``continue`` ends the item. The code keeps the cell's file name and line numbers,
so tracebacks point at the user's lines.
"""

from __future__ import annotations

import ast
import copy
import functools
import sys
from collections.abc import Callable
from types import CodeType

from .. import errors
from ..worker.chunk import CHUNK_NAME, VALUES_NAME
from ..worker.effects import ITEM_ARG, LOG_ARG
from .body import MUTATORS, BodyInfo
from .scopes import receiver_root

PLAIN_FRAME_NAMES = {
    "list": "<listcomp>", "set": "<setcomp>", "dict": "<dictcomp>", "generator": "<genexpr>"
}  # fmt: skip
INLINED = sys.version_info >= (3, 12)  # PEP 709: list, set and dict comprehensions have no frame
AUGMENTED_OPERATORS = {
    ast.Add: "iadd", ast.Sub: "isub", ast.Mult: "imul", ast.MatMult: "imatmul",
    ast.Div: "itruediv", ast.FloorDiv: "ifloordiv", ast.Mod: "imod", ast.Pow: "ipow",
    ast.LShift: "ilshift", ast.RShift: "irshift", ast.BitOr: "ior", ast.BitXor: "ixor",
    ast.BitAnd: "iand",
}  # fmt: skip


class WriteBackRewriter(ast.NodeTransformer):
    """Turns the body's write-backs into calls on ``__log__`` and ``continue`` into return."""

    def __init__(self, replayed: frozenset[str], reductions: dict[str, int]) -> None:
        self.replayed = replayed
        self.reductions = reductions
        self.depth = 0

    def log(self, node: ast.stmt, method: str, *args: ast.expr, keywords=()) -> ast.Expr:
        """The statement that records a change: a call on ``__log__`` here; --show-code
        overrides it with the statement that applies the change."""
        func = ast.Attribute(ast.Name(LOG_ARG, ast.Load()), method, ast.Load())
        call = ast.Call(func, [ast.Constant(node.lineno), *args], list(keywords))
        return ast.copy_location(ast.Expr(call), node)

    def _root(self, expr: ast.expr):
        root = receiver_root(expr)
        if root is None or root[0].id not in self.replayed:
            return None
        name, keys = root
        return ast.Constant(name.id), ast.Tuple([_as_value(k) for k in keys], ast.Load())

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef

    def rewrite_block(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        visited = [self.visit(s) for s in stmts]
        return [s for part in visited for s in (part if isinstance(part, list) else [part])]

    def visit_For(self, node):
        self.depth += 1
        node.body = self.rewrite_block(node.body)
        self.depth -= 1
        node.orelse = self.rewrite_block(node.orelse)
        return node

    visit_While = visit_For

    def visit_Continue(self, node):
        return ast.copy_location(ast.Return(None), node) if self.depth == 0 else node

    def visit_Expr(self, node):
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            root = self._root(call.func.value)
            method = ast.Constant(call.func.attr)
            if root and call.func.attr in MUTATORS:
                return self.log(node, "call", *root, method, *call.args, keywords=call.keywords)
        return node

    def visit_Assign(self, node):
        target = node.targets[0]
        if len(node.targets) == 1 and isinstance(target, ast.Subscript):
            root = self._root(target.value)
            if root:
                return self.log(node, "setitem", *root, _as_value(target.slice), node.value)
        return node

    def visit_AnnAssign(self, node):
        if node.value is not None and isinstance(node.target, ast.Subscript):
            root = self._root(node.target.value)
            if root:
                return self.log(node, "setitem", *root, _as_value(node.target.slice), node.value)
        return node

    def visit_AugAssign(self, node):
        op = ast.Constant(AUGMENTED_OPERATORS[type(node.op)])
        target = node.target
        if isinstance(target, ast.Name) and target.id in self.reductions:
            return self.log(node, "reduce", ast.Constant(target.id), op, node.value)
        if isinstance(target, ast.Subscript):
            root = self._root(target.value)
            if root:
                return self.log(node, "augitem", *root, _as_value(target.slice), op, node.value)
        return node

    def visit_Delete(self, node):
        statements = []
        for target in node.targets:
            root = self._root(target.value) if isinstance(target, ast.Subscript) else None
            if root is None:
                statements.append(ast.copy_location(ast.Delete([target]), node))
            else:
                statements.append(self.log(node, "delitem", *root, _as_value(target.slice)))
            if isinstance(target, ast.Name):  # serial leaves the name unbound in the kernel
                statements.append(self.log(node, "forget", ast.Constant(target.id)))
        return statements


class ToSinks(ast.NodeTransformer):
    """The kernel's files that the body writes to (file_uses.sinks) become, in the item, the
    item's :class:`files.Sink` for each: ``__log__.sink(line, "f")``."""

    def __init__(self, sinks: frozenset[str]) -> None:
        self.sinks = sinks

    def visit_Name(self, node):
        if node.id not in self.sinks or not isinstance(node.ctx, ast.Load):
            return node
        sink = ast.Attribute(ast.Name(LOG_ARG, ast.Load()), "sink", ast.Load())
        call = ast.Call(sink, [ast.Constant(node.lineno), ast.Constant(node.id)], [])
        return ast.copy_location(call, node)


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


BUILT_KEPT = 64  # item functions' code kept for the cells run again (build_item_code)


def _made_once(make: Callable[..., CodeType]) -> Callable[..., CodeType]:
    """``make``'s code, made once for a loop run again as it was: the same code object, which
    cloudpickle also analyses once (its cache is by code object)."""
    built: dict[tuple, CodeType] = {}
    latest: list = [None, None, None]  # the loop's node, what else it was made of, the code

    @functools.wraps(make)
    def build(info: BodyInfo, *args, **kwargs) -> CodeType:
        made_of = (len(info.tail), info.kind, tuple(info.reductions.items()), tuple(info.sinks))
        made_of += (args, tuple(sorted(kwargs.items())))
        if latest[0] is info.node and latest[1] == made_of:  # a cell run again: its own plan
            return latest[2]
        key = (ast.dump(info.node, include_attributes=True), made_of)
        code = built.pop(key, None) or make(info, *args, **kwargs)
        built[key] = code  # the most recent last: the oldest go first
        while len(built) > BUILT_KEPT:
            del built[next(iter(built))]
        latest[:] = info.node, made_of, code
        return code

    return build


@_made_once
def build_item_code(
    info: BodyInfo,
    replayed: frozenset[str],
    filename: str,
    coroutine: bool = False,
    whole_chunk: bool = False,
    mapped: bool = False,
) -> CodeType:
    """The code of ``__parmagic_item__(__item__, __log__)``, with the cell's line numbers;
    ``async def`` for the asyncio backend, so that the body may ``await``. (Where items get
    copies of the kernel's objects, what they change in them is found by comparing, not here:
    kernel_objects.py.)

    A comprehension's function instead takes items and a list, and extends the list with the
    values of all the items, one item after another: a chunk costs one call, not one per
    item (worker.run_values times each item and finds which values are whose). So does a
    ``for`` loop's with ``whole_chunk``: it loops over the chunk's items itself, all of them
    recording into one log, and binds the names its items left last (chunk.run_values).
    ``mapped``: ``[f(x) for x in ...]`` as ``map(f, items)`` (BodyInfo.mapped_function; the
    caller checks that ``map`` is Python's own)."""
    node = copy.deepcopy(info.node)
    item = ast.Name(ITEM_ARG, ast.Load())
    if info.kind == "for":
        statements = _item_statements(info, node, replayed, whole_chunk)
    elif coroutine:  # ``await`` in a comprehension: one coroutine per item
        first = node.generators[0]
        first.iter = ast.Tuple([item], ast.Load())
        elt = ast.Tuple([node.key, node.value], ast.Load()) if info.kind == "dict" else node.elt
        statements = [ast.Return(ast.ListComp(elt, node.generators))]
    else:  # a comprehension records nothing: one call runs a chunk (worker.run_values)
        node.generators[0].iter = item  # the chunk's items
        elt = ast.Tuple([node.key, node.value], ast.Load()) if info.kind == "dict" else node.elt
        extend = ast.Attribute(ast.Name(LOG_ARG, ast.Load()), "extend", ast.Load())
        if mapped:
            values = ast.Call(ast.Name("map", ast.Load()), [node.elt.func, item], [])
        else:
            values = ast.GeneratorExp(elt, node.generators)
        statements = [ast.Expr(ast.Call(extend, [values], []))]
    args = ast.arguments([], [ast.arg(ITEM_ARG), ast.arg(LOG_ARG)], None, [], [], None, [])
    kind = ast.AsyncFunctionDef if coroutine else ast.FunctionDef
    function = kind(errors.ITEM_FUNCTION_NAME, args, statements, [], None)
    for synthetic in ast.walk(function):
        if not hasattr(synthetic, "lineno") and "lineno" in synthetic._attributes:
            ast.copy_location(synthetic, info.node)
    module = ast.fix_missing_locations(ast.Module([function], []))
    code = compile(module, filename, "exec", dont_inherit=True)
    code = next(c for c in code.co_consts if isinstance(c, CodeType))
    if info.kind == "for":
        return code
    return as_plain_python_names(code, info.kind, "<listcomp>" if coroutine else "<genexpr>")


def _item_statements(
    info: BodyInfo, node: ast.For, replayed: frozenset[str], whole_chunk: bool
) -> list[ast.stmt]:
    """A for loop's item (or, ``whole_chunk``, its loop over the chunk's items), its changes
    recorded, its names bound on every way out."""
    item = ast.Name(ITEM_ARG, ast.Load())
    head = node.body[: len(node.body) - len(info.tail)]  # the tail runs in the kernel
    rewriter = WriteBackRewriter(replayed, info.reductions)
    rewriter.depth = int(whole_chunk)  # ``continue`` stays where the loop is the code's
    body = rewriter.rewrite_block(head)
    sinks = replayed & set(info.sinks)
    body = [ToSinks(sinks).visit(stmt) for stmt in body] if sinks else body
    bind = ast.Expr(
        ast.Call(
            ast.Attribute(ast.Name(LOG_ARG, ast.Load()), "bind", ast.Load()),
            [ast.Call(ast.Name("locals", ast.Load()), [], [])],
            [],
        )
    )
    if whole_chunk:
        loop = ast.copy_location(ast.For(node.target, item, body, []), info.node)
        return [ast.Try([loop], [], [], [bind])]
    return [ast.Try([ast.Assign([node.target], item), *body], [], [], [bind])]


def as_plain_python_names(code: CodeType, kind: str, made: str) -> CodeType:
    """``code`` with the frame of the comprehension parmagic made for the loop (``made``, the
    one code object among its constants) named as plain Python names the cell's own: an item's
    traceback says ``<dictcomp>`` for a dict comprehension, as Python does (parmagic runs a
    chunk's items in one generator expression); on Python 3.12 and later, whose list, set and
    dict comprehensions run in their enclosing frame, tracebacks leave that frame out."""
    if made == "<listcomp>" and INLINED:
        return code  # no frame of its own, as in plain Python
    name = PLAIN_FRAME_NAMES[kind]
    if INLINED and kind != "generator":
        name = errors.INLINED_FRAME_NAME
    consts = list(code.co_consts)
    found = [i for i, c in enumerate(consts) if isinstance(c, CodeType) and c.co_name == made]
    if len(found) != 1:
        return code
    made_code = consts[found[0]]
    qualname = made_code.co_qualname.removesuffix(made) + name
    consts[found[0]] = made_code.replace(co_name=name, co_qualname=qualname)
    return code.replace(co_consts=tuple(consts))


def build_in_place_code(info: BodyInfo, filename: str) -> CodeType:
    """The loop itself over one chunk of items, to run in the kernel's namespace: what the
    serial backend runs. Nothing is recorded or replayed, so the loop's own statements make
    their changes, bind their names and print, exactly as the plain loop does, at its speed.
    A comprehension's values go to ``__parmagic_values__``."""
    module = ast.fix_missing_locations(ast.Module([loop_over(info, CHUNK_NAME)], []))
    code = compile(module, filename, "exec", dont_inherit=True)
    if info.kind != "for":
        code = as_plain_python_names(code, info.kind, "<listcomp>")
    return code.replace(co_name=errors.ITEM_FUNCTION_NAME)  # shown as the loop body


def loop_over(info: BodyInfo, items: str, lazy: bool = False):
    """The loop as written, over the items in the name ``items``, at the loop's lines: a
    ``for`` statement, or ``__parmagic_values__ = [...]`` for a comprehension (``lazy``: the
    generator expression itself)."""
    node = copy.deepcopy(info.node)
    source = ast.Name(items, ast.Load())
    if info.kind == "for":
        return ast.copy_location(ast.For(node.target, source, node.body, []), info.node)
    node.generators[0].iter = source
    elt = ast.Tuple([node.key, node.value], ast.Load()) if info.kind == "dict" else node.elt
    if lazy:
        return ast.copy_location(ast.GeneratorExp(elt, node.generators), info.node)
    values = ast.ListComp(elt, node.generators)
    statement = ast.Assign([ast.Name(VALUES_NAME, ast.Store())], values)
    return ast.copy_location(statement, info.node)
