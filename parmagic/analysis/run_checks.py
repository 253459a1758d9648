"""Checks on what the body's names hold in the kernel: what can run where. The magic asks
before the cell runs (what the notebook already holds); the loop run asks again when the loop
is reached (what the statements before it defined or imported). Each finding is a refusal
before any item runs, or (under auto) the reason to keep the loop in the kernel."""

from __future__ import annotations

import ast
import sys
import threading
import types

from .. import errors
from ..backends import Backend, load_backend
from ..worker.effects import is_recordable
from .cell import CellPlan
from .hidden_effects import (
    SHARED_FILE,
    UNORDERED,
    HiddenEffect,
    find_hidden_effects,
    in_notebook,
    refusal,
)
from .scopes import scope_names, stored_names
from .verdict import RUN, Verdict


def hidden_nodes(plan: CellPlan) -> list[ast.AST]:
    """The parts of the loop that run where the items run."""
    info = plan.body
    if info.kind == "for":
        return info.head
    first, *inner = info.node.generators
    parts = [info.node.key, info.node.value] if info.kind == "dict" else [info.node.elt]
    return [*first.ifs, *inner, *parts]


def hidden_effects_of(plan: CellPlan, ns: dict) -> list[HiddenEffect]:
    """What the body does beyond what parmagic replays, found before anything runs: changes
    of its own it cannot replay (attributes, methods of other objects, ``global``), and what
    the notebook functions it calls do and global random state (hidden_effects.py)."""
    info = plan.body
    nodes = hidden_nodes(plan)  # a loop's ordered tail runs in order, in the kernel
    if info.kind == "for":
        names, items = set(info.bound), set(stored_names(info.node.target))
    else:
        names = items = {n for g in info.node.generators for n in stored_names(g.target)}
    effects = [
        HiddenEffect(UNORDERED, line, "", what, name) for line, what, name in info.copy_warnings
    ] + [HiddenEffect(SHARED_FILE, line, "", what) for line, what in info.shared_files]
    changed = set(info.reductions) | set(info.receivers)
    return effects + find_hidden_effects(nodes, ns, names, changed, items)


def alias_refusal(plan: CellPlan, ns: dict) -> str | None:
    """A name the body reads that holds, in the kernel, an object the body changes
    (``s = seen`` before the loop): a carried read the body's own names do not show."""
    info = plan.body
    changed = {id(ns[n]): n for n in info.receivers if n in ns}
    nodes = info.head if info.kind == "for" else []
    for stmt in nodes:
        for node in scope_names(stmt):
            name = node.id
            if not isinstance(node.ctx, ast.Load) or name in info.bound or name in info.receivers:
                continue
            other = changed.get(id(ns[name])) if name in ns else None
            if other is not None:
                return errors.CARRIED_ALIAS.format(
                    line=node.lineno, name=name, other=other, write_line=info.receivers[other]
                )
    return None


def unreplayed_receivers(plan: CellPlan, ns: dict, replayed: frozenset[str]) -> list[tuple]:
    """Kernel objects the body changes in place that are not of a kind parmagic replays (a
    custom class's ``append``, ``g.add_edge(...)``): known only once the statements before
    the loop have run. Modules and loggers are not changed by calling them."""
    from ..worker.files import is_sink

    calls = {**plan.body.object_calls, **plan.body.receivers}
    changed = [
        (line, f"`{name}` (a {type(ns[name]).__name__}) is changed in place", name)
        for name, line in calls.items()
        if (name not in replayed or name in plan.body.object_calls)
        and not (name in replayed and name in plan.body.sinks)
        and name in ns
        and not _not_changed_by_calls(ns[name])
    ]
    if plan.body.kind != "for":  # a comprehension's items record nothing: a `for` loop's do
        changed += [
            (line, errors.WRITTEN_BY_COMPREHENSION.format(name=name), name)
            for name, line in plan.body.sinks.items()
            if is_sink(ns.get(name)) and (line, name) not in {(c[0], c[2]) for c in changed}
        ]
    return sorted(changed)


def replayed_names(plan: CellPlan, ns: dict) -> frozenset[str]:
    """The kernel names whose changes items record for the kernel to make in item order:
    containers the body changes, files it writes to."""
    from ..worker.files import is_sink

    info = plan.body
    files = [n for n in info.sinks if is_sink(ns.get(n))] if info.kind == "for" else []
    return frozenset([n for n in info.receivers if is_recordable(ns.get(n))] + files)


def _not_changed_by_calls(value: object) -> bool:
    import logging

    if isinstance(value, types.ModuleType | type | logging.Logger | logging.LoggerAdapter):
        return True
    return type(value).__module__.split(".")[0] == "tqdm"  # a progress bar's update()


def item_object_refusal(plan: CellPlan, backend: str, short: bool = False) -> str | None:
    """Why items in worker processes cannot run this body: it advances iterators the loop
    hands its items, and theirs would be copies. ``short``: the reason alone, for auto."""
    if not plan.body.item_advances or not load_backend(backend).copies_kernel_objects:
        return None
    line, what, name = plan.body.item_advances[0]
    template = errors.ITEM_OBJECT_CHANGED_SHORT if short else errors.ITEM_OBJECT_CHANGED
    return template.format(line=line, what=what, name=name)


def unordered_warnings(plan: CellPlan, ns: dict, replayed, backend: Backend) -> list[str]:
    """With --unordered: what the run does in any order (threads) or to copies (processes)."""
    if backend.name == "serial":
        return []
    files = plan.body.shared_files
    shared = [errors.SHARED_FILE_UNORDERED.format(line=ln, what=w) for ln, w in files]
    found = [*plan.body.copy_warnings, *unreplayed_receivers(plan, ns, replayed)]
    template = errors.COPY_WARNING if backend.copies_kernel_objects else errors.UNORDERED_WARNING
    return shared + [template.format(line=ln, what=w, name=n) for ln, w, n in sorted(found)]


def thread_bound(plan: CellPlan, ns: dict) -> tuple[str, str] | None:
    """(name, type) of an object the body or the notebook functions it calls use that only
    the kernel's thread may use: a sqlite3 connection or cursor made with the default
    ``check_same_thread``, tried from another thread."""
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is None:
        return None
    names = {n.id for top in hidden_nodes(plan) for n in ast.walk(top) if isinstance(n, ast.Name)}
    for function in [ns.get(name) for name in sorted(names)]:
        if isinstance(function, types.FunctionType) and in_notebook(function, ns):
            names |= set(function.__code__.co_names)
    for name in sorted(names):
        value = ns.get(name)
        if isinstance(value, sqlite3.Cursor):
            value = value.connection
        if isinstance(value, sqlite3.Connection) and not _usable_elsewhere(value, sqlite3):
            return name, type(ns[name]).__name__
    return None


def _usable_elsewhere(connection, sqlite3) -> bool:
    refused: list[bool] = []

    def touch() -> None:
        try:
            connection.cursor().close()  # touches no table; refused in another thread
        except sqlite3.ProgrammingError:
            refused.append(True)

    other = threading.Thread(target=touch, name="parmagic-thread-check")
    other.start()
    other.join()
    return not refused


WORKER_INTERPRETERS = ("processes", "futures:processes", "dask")


def hash_order_refusal(plan: CellPlan, ns: dict, options, name: str, short=False) -> str | None:
    """Why items in other interpreters would end otherwise than the plain loop: the body
    walks a set or takes a string hash, and those interpreters salt string hashes otherwise
    than the kernel (hash_seeds.py). ``short``: the reason alone, for auto."""
    import multiprocessing

    from ..worker.hash_seeds import keeps_kernel_hashing
    from .hash_order import hash_order_uses, items_that_are_sets

    if name not in WORKER_INTERPRETERS:
        return None
    method = options.start_method or multiprocessing.get_start_method()
    if name != "dask" and keeps_kernel_hashing(method):
        return None
    uses = hash_order_uses(hidden_nodes(plan), ns, items_that_are_sets(plan.body.node, ns))
    if not uses:
        return None
    if name == "dask":
        from ..backends.dask_cluster import keeps_kernel_hashing as cluster_keeps

        if cluster_keeps(options.scheduler):
            return None
    workers = "dask's workers" if name == "dask" else f"worker processes started by {method}"
    use = uses[0]
    hashes = use.what.endswith("string hash")
    if short:
        return errors.HASH_ORDER_SHORT.format(place=use.place, what=use.what, workers=workers)
    return errors.HASH_ORDER.format(
        place=use.place, what=use.what, workers=workers,
        consequence=errors.HASH_ORDER_HASHES if hashes else errors.HASH_ORDER_SETS,
        advice=errors.HASH_ORDER_DASK if name == "dask" else errors.HASH_ORDER_PROCESSES,
    )  # fmt: skip


def late_verdict(plan: CellPlan, ns: dict, options, name: str, replayed) -> Verdict:
    """What the statements before the loop made knowable: notebook functions and modules the
    cell itself defined or imported, an alias of an object the body changes, a loop that
    advances its items' iterators where items get copies, changes in place parmagic cannot
    replay. Under auto, a reason to run serially instead of a refusal."""
    auto = name == "auto"
    plain = not auto and load_backend(name).is_the_plain_loop
    verdict = refusal(hidden_effects_of(plan, ns), name, options.unordered, options.seed)
    refused = (
        verdict.refused
        or alias_refusal(plan, ns)
        or (not auto and item_object_refusal(plan, name))
        or hash_order_refusal(plan, ns, options, name)
    )
    if refused or verdict:
        return Verdict(refused) if refused else verdict
    bound = None if plain else thread_bound(plan, ns)
    if bound and auto:
        return Verdict(in_the_kernel=errors.THREAD_BOUND_SHORT.format(name=bound[0], type=bound[1]))
    if bound and not load_backend(name).copies_kernel_objects:
        return Verdict(errors.THREAD_BOUND.format(name=bound[0], type=bound[1], backend=name))
    found = [] if options.unordered else unreplayed_receivers(plan, ns, replayed)
    if not found or plain:
        return RUN
    line, what, _ = found[0]
    if auto:
        return Verdict(
            in_the_kernel=f"line {line}: {what}, which only a serial run keeps in item order"
        )
    return Verdict(errors.UNREPLAYABLE.format(place=f"line {line}: ", what=what))
