"""The names ``--show-code`` and ``--export`` give their program's own parts, none of the cell's.

The program keeps the cell's code as written around its own (``loop_body``, ``changes``, the
pool, the imports): a cell that also uses ``changes``, or loops over ``number``, must keep its
meaning, so each of the program's names that the cell or the notebook functions it calls use
gets a ``_`` more, until it is free.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import types

# The program's names at the module level (or in ``main`` and ``loop_body``), which the cell's
# names could meet. Names inside the program's comprehensions and helper functions are their
# own scopes' and meet nothing.
GENERATED = (
    "loop_body", "changes", "item", "items", "handed", "in_order", "pool", "names", "number",
    "value", "returned", "executor", "futures", "finished", "future", "semaphore", "limited",
    "cluster", "client", "loop_values", "take_back", "own", "share", "main",
)  # fmt: skip
# Names the program imports: (module, attribute or None for the module itself).
IMPORTED = {
    "multiprocessing": ("multiprocessing", None),
    "ThreadPool": ("multiprocessing.pool", "ThreadPool"),
    "ThreadPoolExecutor": ("concurrent.futures", "ThreadPoolExecutor"),
    "ProcessPoolExecutor": ("concurrent.futures", "ProcessPoolExecutor"),
    "as_completed": ("concurrent.futures", "as_completed"),
    "asyncio": ("asyncio", None),
    "Client": ("dask.distributed", "Client"),
    "LocalCluster": ("dask.distributed", "LocalCluster"),
}


class Names(types.SimpleNamespace):
    """``names.changes``: what the program calls its changes list, and so on."""

    def __init__(self, taken: set[str], ns: dict) -> None:
        used = set(taken)
        chosen = {}
        for name in (*GENERATED, *IMPORTED):
            free = name
            while free in used and not (name in IMPORTED and _same_import(name, ns)):
                free += "_"
            used.add(free)
            chosen[name] = free
        super().__init__(**chosen)

    def imported(self, *names: str) -> str:
        """The import line of ``names`` (all from one module), renamed where taken."""
        module, attribute = IMPORTED[names[0]]
        parts = [name if self[name] == name else f"{name} as {self[name]}" for name in names]
        if attribute is None:
            return f"import {', '.join(parts)}"
        return f"from {module} import {', '.join(parts)}"

    def __getitem__(self, name: str) -> str:
        return getattr(self, name)


def taken_names(cell: ast.Module, ns: dict, notebook: list[str]) -> set[str]:
    """Every name the cell uses or binds, the notebook's names it reads, and the globals that
    the notebook functions it calls read (the program's own module-level names would hide
    them), and the names of the notebook's classes of its values (``--export`` defines them)."""
    taken: set[str] = set(notebook)
    for node in ast.walk(cell):
        if isinstance(node, ast.Name):
            taken.add(node.id)
        elif isinstance(node, ast.arg):
            taken.add(node.arg)
        elif isinstance(node, ast.alias):
            taken.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            taken.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            taken.update(node.names)
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            taken.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            taken.add(node.rest)
    for name in notebook:
        value = ns.get(name)
        if isinstance(value, types.FunctionType):
            taken.update(inspect.getclosurevars(value).globals)
        elif type(value).__module__ == "__main__":
            taken.add(type(value).__name__)
    return taken


def _same_import(name: str, ns: dict) -> bool:
    """Whether the notebook's ``name`` is what the program imports under it (the cell's own
    ``import asyncio``): then the two can share it."""
    module, attribute = IMPORTED[name]
    if name not in ns:
        return False
    try:
        imported = importlib.import_module(module)
    except ImportError:
        return False
    return ns[name] is (imported if attribute is None else getattr(imported, attribute, None))
