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
from .hidden_effects import SHARED_FILE, UNORDERED, HiddenEffect, find_hidden_effects, in_notebook
from .policy import ITEM_ADVANCES, THREAD_BOUND, verdict_for
from .scopes import scope_names, stored_names
from .verdict import Verdict


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


def item_object_refusal(plan: CellPlan, backend: str) -> str | None:
    """Why items in worker processes cannot run this body, for auto's look at processes: it
    advances iterators the loop hands its items, and theirs would be copies."""
    if not plan.body.item_advances or not load_backend(backend).copies_kernel_objects:
        return None
    line, what, name = plan.body.item_advances[0]
    return errors.ITEM_OBJECT_CHANGED_SHORT.format(line=line, what=what, name=name)


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


def hash_order_refusal(plan: CellPlan, ns: dict, options, name: str, short=False) -> str | None:
    """Why items in other interpreters would end otherwise than the plain loop: the body
    walks a set or takes a string hash, and those interpreters salt string hashes otherwise
    than the kernel (hash_seeds.py). ``short``: the reason alone, for auto."""
    from .hash_order import hash_order_uses, items_that_are_sets

    if name == "auto":
        return None  # auto asks of processes, when it looks at them
    backend = load_backend(name)
    workers = backend.hashes_otherwise(options.start_method, options.scheduler)
    if workers is None:
        return None
    uses = hash_order_uses(hidden_nodes(plan), ns, items_that_are_sets(plan.body.node, ns))
    if not uses:
        return None
    use = uses[0]
    if short:
        return errors.HASH_ORDER_SHORT.format(place=use.place, what=use.what, workers=workers)
    hashes = use.what.endswith("string hash")
    return errors.HASH_ORDER.format(
        place=use.place, what=use.what, workers=workers,
        consequence=errors.HASH_ORDER_HASHES if hashes else errors.HASH_ORDER_SETS,
        advice=backend.hash_order_advice,
    )  # fmt: skip


def late_verdict(plan: CellPlan, ns: dict, options, name: str, replayed) -> Verdict:
    """What the statements before the loop made knowable: notebook functions and modules the
    cell itself defined or imported, an alias of an object the body changes, a loop that
    advances its items' iterators where items get copies, changes in place parmagic cannot
    replay, objects only the kernel's thread may use, hashes other interpreters salt
    otherwise. Under auto, a reason to run serially instead of a refusal (policy.py)."""
    facts = hidden_effects_of(plan, ns) + kernel_object_facts(plan, ns, options, replayed)
    verdict = verdict_for(facts, name, options.unordered, options.seed)
    if verdict.refused:
        return verdict
    refused = alias_refusal(plan, ns) or hash_order_refusal(plan, ns, options, name)
    return Verdict(refused) if refused else verdict


def kernel_object_facts(plan: CellPlan, ns: dict, options, replayed) -> list[HiddenEffect]:
    """What the kernel's objects show of the body: iterators it advances on its items,
    objects it changes in place that no recording replays, an object only the kernel's
    thread may use."""
    advances = plan.body.item_advances
    facts = [HiddenEffect(ITEM_ADVANCES, line, "", what, name) for line, what, name in advances]
    if not options.unordered:
        found = unreplayed_receivers(plan, ns, replayed)
        facts += [HiddenEffect(UNORDERED, line, "", what, name) for line, what, name in found]
    bound = thread_bound(plan, ns)
    if bound:
        facts.append(HiddenEffect(THREAD_BOUND, 0, "", what=bound[1], name=bound[0]))
    return facts
