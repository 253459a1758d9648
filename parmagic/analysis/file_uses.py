"""What a loop body does with files, read from its lines: the kernel's files it only writes to
(made in item order through files.Sink), and files every item opens for writing at one path
(whose lines would land in the order items finish)."""

from __future__ import annotations

import ast
import sys
import types

from ..worker.files import CSV_WRITERS, SINK_METHODS
from .scopes import called_name, walk_scope

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
        return isinstance(call, ast.Call) and called_name(call) == "print"
    if isinstance(parent, ast.Call) and parent.args and parent.args[0] is name:
        func = parent.func  # csv.writer(f): csv's own, not any function named `writer`
        return (
            isinstance(func, ast.Attribute)
            and func.attr in CSV_WRITERS
            and isinstance(func.value, ast.Name)
            and func.value.id == "csv"
        )
    return False


def kernel_file_written(
    call: ast.Call, scope: dict, local: set[str], held: dict | None = None, names: bool = True
) -> str | None:
    """The kernel file (or csv writer) a call writes to, as written in the code, where code
    that is not the body's own does it (a notebook function, a method, a lambda), or the
    body through an object (``L.sink.write(s)``, ``cfg["log"].write(s)``): writes that no
    Sink records, and that would land in the order items run. ``names``: also a bare name
    (``fh.write(s)`` in a function; in the body, a Sink records those). ``held``: names whose
    objects are known beyond ``scope`` (a closure's cells, a method's class)."""
    from ..worker.files import is_sink

    streams = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    for written in _written_objects(call):
        if not names and isinstance(written, ast.Name):
            continue
        target = _held(written, scope, local, held or {})
        if is_sink(target) and id(target) not in streams:  # printed output: kept per item
            return ast.unparse(written)
    return None


def _written_objects(call: ast.Call) -> list[ast.expr]:
    func, found = call.func, []
    if isinstance(func, ast.Attribute) and func.attr in SINK_METHODS:
        found.append(func.value)
    if called_name(call) == "print":
        found += [k.value for k in call.keywords if k.arg == "file"]
    if called_name(call) in CSV_WRITERS and call.args:
        found.append(call.args[0])
    return found


_MISSING = object()


def _held(expr: ast.expr, scope: dict, local: set[str], held: dict) -> object:
    """What ``expr`` holds, read without running code: a name (``held``, else a global),
    then attributes from ``__dict__``s (a module's, a class's through its bases, an
    instance's) and constant keys of plain dicts and lists."""
    steps: list[tuple[bool, object]] = []
    while isinstance(expr, ast.Attribute | ast.Subscript):
        if isinstance(expr, ast.Attribute):
            steps.insert(0, (True, expr.attr))
        elif isinstance(expr.slice, ast.Constant):
            steps.insert(0, (False, expr.slice.value))
        else:
            return None
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return None
    if expr.id in held:
        value = held[expr.id]
    elif expr.id in local:
        return None
    else:
        value = scope.get(expr.id, _MISSING)
    for attribute, key in steps:
        value = _attribute(value, key) if attribute else _item(value, key)
        if value is _MISSING:
            return None
    return value


def _attribute(value: object, name) -> object:
    holders = [value] if not isinstance(value, type) else list(value.__mro__)
    if not isinstance(value, type | types.ModuleType):
        holders += list(type(value).__mro__)
    for holder in holders:
        found = getattr(holder, "__dict__", {}).get(name, _MISSING)
        if found is not _MISSING:
            return found
    return _MISSING


def _item(value: object, key) -> object:
    if type(value) is dict:
        return value.get(key, _MISSING)
    if type(value) in (list, tuple) and isinstance(key, int) and -len(value) <= key < len(value):
        return value[key]
    return _MISSING


def shared_paths(stmts: list[ast.stmt], targets: set[str]) -> list[tuple[int, str]]:
    """(line, call) of each file the body opens for writing at a path that does not depend on
    the item (``targets``: the loop's names): ``open(path, "a")``, ``df.to_csv(path,
    mode="a")``. Every item writes to the same file, so its lines land in the order the items
    finish."""
    found = []
    dependent = item_dependent(stmts, targets)
    for stmt in stmts:
        for node in walk_scope(stmt):
            if not isinstance(node, ast.Call):
                continue
            target = _written_path(node)
            if target is None or _discarded(target):
                continue
            names = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
            if not names & dependent:
                found.append((node.lineno, f"`{ast.unparse(node)}`"))
    return found


def item_dependent(stmts: list[ast.stmt], targets: set[str]) -> set[str]:
    """The names the body binds from the item (its loop names), directly or through other
    such names: ``path = f"out/{i}.csv"`` depends on ``i``; ``path = "log.txt"`` does not."""
    dependent = set(targets)
    bindings = []
    for stmt in stmts:
        for node in walk_scope(stmt):
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.NamedExpr):
                sources = [node.value] if node.value is not None else []
                bound = node.targets if isinstance(node, ast.Assign) else [node.target]
            elif isinstance(node, ast.For | ast.AsyncFor):
                sources, bound = [node.iter], [node.target]
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                sources, bound = [node.context_expr], [node.optional_vars]
            else:
                continue
            read = {n.id for part in sources for n in ast.walk(part) if isinstance(n, ast.Name)}
            stored = {n.id for part in bound for n in ast.walk(part) if isinstance(n, ast.Name)}
            bindings.append((read, stored))
    while True:
        grown = {name for read, stored in bindings if read & dependent for name in stored}
        if grown <= dependent:
            return dependent
        dependent |= grown


def _discarded(path: ast.expr) -> bool:
    """A path that writes nowhere: ``os.devnull``, "/dev/null"."""
    if isinstance(path, ast.Constant):
        return path.value in ("/dev/null", "nul", "NUL")
    return isinstance(path, ast.Attribute) and path.attr == "devnull"


def _written_path(call: ast.Call) -> ast.expr | None:
    """The path a call opens for writing, if it does: ``open``, a module's ``open``
    (``gzip.open``), ``Path(...).open`` with a writing mode, or a table writer appending."""
    called = called_name(call)
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


# Modules whose ``open(path, mode)`` takes the path first, as the built-in does
OPENING_MODULES = frozenset({
    "io", "codecs", "gzip", "bz2", "lzma", "tarfile", "zipfile", "fsspec", "smart_open",
    "h5py", "shelve", "dbm", "aiofiles",
})  # fmt: skip


def _is_io_module(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Name) and expr.id in OPENING_MODULES
