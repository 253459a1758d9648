"""What a loop body does with files, read from its lines: the kernel's files it only writes to
(made in item order through files.Sink), and files every item opens for writing at one path
(whose lines would land in the order items finish)."""

from __future__ import annotations

import ast

from .files import CSV_WRITERS, SINK_METHODS
from .scopes import walk_scope

WRITE_MODES = frozenset("wax+")
# Methods that write a table to a path, whose ``mode="a"`` appends (pandas' and the like)
TABLE_WRITERS = frozenset({"to_csv", "to_json", "to_hdf", "to_excel", "to_string"})


def sinks(stmts: list[ast.stmt], bound: set[str]) -> dict[str, int]:
    """Kernel names the body only writes to, as a file or csv writer: each use is a call of
    one of SINK_METHODS on it, ``print(..., file=name)`` or ``csv.writer(name)``. A name used
    in any other way (``f.tell()``, a nested function's use) is not one."""
    uses: dict[str, list[bool]] = {}
    lines: dict[str, int] = {}
    for stmt in stmts:
        parents = {
            id(child): node for node in ast.walk(stmt) for child in ast.iter_child_nodes(node)
        }
        in_scope = {id(n) for n in walk_scope(stmt)}
        for node in ast.walk(stmt):
            if not isinstance(node, ast.Name) or node.id in bound:
                continue
            if not isinstance(node.ctx, ast.Load):
                continue
            writes = id(node) in in_scope and _writes_to(node, parents)
            uses.setdefault(node.id, []).append(writes)
            lines.setdefault(node.id, node.lineno)
    return {name: lines[name] for name, seen in uses.items() if all(seen) and seen}


def _writes_to(name: ast.Name, parents: dict[int, ast.AST]) -> bool:
    parent = parents.get(id(name))
    if isinstance(parent, ast.Attribute) and parent.attr in SINK_METHODS:
        call = parents.get(id(parent))
        return isinstance(call, ast.Call) and call.func is parent
    if isinstance(parent, ast.keyword) and parent.arg == "file":
        call = parents.get(id(parent))
        return isinstance(call, ast.Call) and _called(call) == "print"
    if isinstance(parent, ast.Call) and parent.args and parent.args[0] is name:
        return _called(parent) in CSV_WRITERS
    return False


def _called(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def shared_paths(stmts: list[ast.stmt], bound: set[str]) -> list[tuple[int, str]]:
    """(line, call) of each file the body opens for writing at a path that does not depend on
    the item: ``open(path, "a")``, ``df.to_csv(path, mode="a")``. Every item writes to the
    same file, so its lines land in the order the items finish."""
    found = []
    for stmt in stmts:
        for node in walk_scope(stmt):
            if not isinstance(node, ast.Call):
                continue
            target = _written_path(node)
            if target is None:
                continue
            names = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
            if not names & bound:
                found.append((node.lineno, f"`{ast.unparse(node)}`"))
    return found


def _written_path(call: ast.Call) -> ast.expr | None:
    """The path a call opens for writing, if it does: ``open``, ``Path(...).open`` with a
    writing mode, or a table writer appending."""
    called = _called(call)
    mode = next((k.value for k in call.keywords if k.arg == "mode"), None)
    if called == "open":
        if isinstance(call.func, ast.Attribute) and not _is_io_module(call.func.value):
            mode = mode or (call.args[0] if call.args else None)  # Path(p).open("a")
            path = call.func.value
        else:
            mode = mode or (call.args[1] if len(call.args) > 1 else None)
            path = call.args[0] if call.args else None
    elif called in TABLE_WRITERS:
        path = (
            call.args[0]
            if call.args
            else next(
                (k.value for k in call.keywords if k.arg in ("path_or_buf", "excel_writer")), None
            )
        )
        if not (isinstance(mode, ast.Constant) and mode.value == "a"):
            return None
    else:
        return None
    writes = isinstance(mode, ast.Constant) and isinstance(mode.value, str)
    if path is None or not writes or not WRITE_MODES & set(mode.value):
        return None
    return path


def _is_io_module(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Name) and expr.id in ("io", "os", "codecs", "gzip", "bz2")
