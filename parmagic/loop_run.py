"""One run of a planned cell: pick the backend, build the item function, run it, keep the report.

Plain Python: the magics front is the only module that talks to IPython.
"""

from __future__ import annotations

import ast
import copy
import functools
import itertools
import multiprocessing
import operator
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import CodeType, FunctionType
from typing import Any

from . import errors, imported_code
from .auto import COLD_START, TRY_THREADS, WARM_START, Lead, Outlook
from .backends import Backend, load_backend
from .cell import CellPlan
from .chunk import Task
from .dispatch import Applier, Recording, execute, replay, unwrap_stop_iteration
from .effects import is_recordable
from .errors import NotPicklable, ParmagicUsageError
from .hidden_effects import UNORDERED, HiddenEffect, find_hidden_effects, refusal
from .itemcode import build_in_place_code, build_item_code
from .machine import usable_cores
from .report import RunReport
from .scopes import scope_names, stored_names
from .session import RunInterrupted, Session


@dataclass
class Options:
    backend: str = "auto"
    workers: int | None = None
    chunksize: int | None = None
    start_method: str | None = None
    on_error: str = "raise"
    timeout: float | None = None
    quiet: bool = False
    progress: bool = True
    plot: bool = False
    output: str | None = None  # a name to store the report under (like %timeit -o)
    compare: str | None = None  # backends to compare (--compare)
    show_code: bool = False
    export: str | None = None  # a file to write the equivalent program to
    scheduler: str | None = None  # dask: an existing cluster's scheduler address
    unordered: bool = False  # accept changes parmagic cannot replay in item order
    seed: int | None = None  # every item its own random streams, from this and its index
    serial_reason: str | None = None  # why auto must run serially (found before the run)


def resolve_backend(name: str, awaits: bool = False) -> str:
    """``auto`` is asyncio for a body that awaits; otherwise the probe decides (auto.py)."""
    return "asyncio" if name == "auto" and awaits else name


def hidden_nodes(plan: CellPlan) -> list[ast.AST]:
    """The parts of the loop that run where the items run."""
    info = plan.body
    if info.kind == "for":
        return info.head
    first, *inner = info.node.generators
    parts = [info.node.key, info.node.value] if info.kind == "dict" else [info.node.elt]
    return [*first.ifs, *inner, *parts]


def hidden_effects(plan: CellPlan, ns: dict) -> list[HiddenEffect]:
    """What the body does beyond what parmagic replays, found before anything runs: changes
    of its own it cannot replay (attributes, methods of other objects, ``global``), and what
    the notebook functions it calls do and global random state (hidden_effects.py)."""
    info = plan.body
    nodes = hidden_nodes(plan)  # a loop's ordered tail runs in order, in the kernel
    if info.kind == "for":
        names = set(info.bound)
    else:
        names = {n for g in info.node.generators for n in stored_names(g.target)}
    effects = [
        HiddenEffect(UNORDERED, line, "", what, name) for line, what, name in info.copy_warnings
    ]
    changed = set(info.reductions) | set(info.receivers)
    return effects + find_hidden_effects(nodes, ns, names, changed)


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


def unreplayed_receivers(plan: CellPlan, ns: dict, recorded: frozenset[str]) -> list[tuple]:
    """Kernel objects the body changes in place that are not of a kind parmagic replays (a
    custom class's ``append``, ``g.add_edge(...)``): known only once the statements before
    the loop have run. Modules and loggers are not changed by calling them."""
    calls = {**plan.body.object_calls, **plan.body.receivers}
    return sorted(
        (line, f"`{name}` (a {type(ns[name]).__name__}) is changed in place", name)
        for name, line in calls.items()
        if (name not in recorded or name in plan.body.object_calls)
        and name in ns
        and not _not_changed_by_calls(ns[name])
    )


def _not_changed_by_calls(value: object) -> bool:
    import logging

    if isinstance(value, types.ModuleType | type | logging.Logger | logging.LoggerAdapter):
        return True
    return type(value).__module__.split(".")[0] == "tqdm"  # a progress bar's update()


def item_object_refusal(plan: CellPlan, backend: str, short: bool = False) -> str | None:
    """Why items in worker processes cannot run this body: it changes the objects the loop
    hands its items, and theirs would be copies. ``short``: the reason alone, for auto."""
    if not plan.body.item_changes or not load_backend(backend).copies_kernel_objects:
        return None
    line, what, name = plan.body.item_changes[0]
    template = errors.ITEM_OBJECT_CHANGED_SHORT if short else errors.ITEM_OBJECT_CHANGED
    return template.format(line=line, what=what, name=name)


def unordered_warnings(plan: CellPlan, ns: dict, recorded, backend: Backend) -> list[str]:
    """With --unordered: what the run does in any order (threads) or to copies (processes)."""
    if backend.name == "serial":
        return []
    found = [*plan.body.copy_warnings, *unreplayed_receivers(plan, ns, recorded)]
    template = errors.COPY_WARNING if backend.copies_kernel_objects else errors.UNORDERED_WARNING
    return [template.format(line=ln, what=w, name=n) for ln, w, n in sorted(found)]


def item_globals(ns: dict, code: CodeType, backend: Backend) -> dict:
    """The item function's globals: the kernel's namespace, except that items in worker
    processes call stand-ins for the shell (``!cmd``) and IPython's ``display``, which cannot
    travel (worker_shell.py)."""
    from . import worker_shell

    if not backend.copies_kernel_objects:
        return ns
    stand_ins = {}
    if "get_ipython" in code.co_names:
        stand_ins["get_ipython"] = worker_shell.get_ipython
    shown = ns.get("display")
    if "display" in code.co_names and getattr(shown, "__module__", "").startswith("IPython"):
        stand_ins["display"] = worker_shell.display
    return {**ns, **stand_ins} if stand_ins else ns


def ordered_tail_code(plan: CellPlan) -> CodeType | None:
    """The loop's ordered tail, compiled to run in the kernel's namespace with the cell's
    file name and line numbers (None: the whole body runs where the items run)."""
    if not plan.body.tail:
        return None
    module = ast.Module(copy.deepcopy(plan.body.tail), [])
    return compile(module, plan.filename, "exec", dont_inherit=True)


def loop_hook(
    plan: CellPlan, ns: dict, options: Options, session: Session, warn: Callable[[str], None]
) -> Callable[[Iterable], Any]:
    """The function the rewritten cell calls in place of its loop, with the loop's iterable."""

    tail = ordered_tail_code(plan)
    lazy = plan.body.kind == "generator"  # values go to the user's code as they come
    # serial runs the loop itself (nothing recorded) unless a run needs what only recording
    # gives: a failed item that leaves nothing, a deadline per item, values one at a time
    runs_in_place = not (lazy or plan.body.awaits or options.timeout) and (
        options.on_error == "raise"
    )
    in_place_code = functools.cache(lambda: build_in_place_code(plan.body, plan.filename))

    def make_task(backend: Backend, recorded: frozenset[str]) -> Task:
        code = build_item_code(
            plan.body, recorded, plan.filename, backend.runs_coroutines,
            copies=backend.copies_kernel_objects,
        )  # fmt: skip
        function = FunctionType(code, item_globals(ns, code, backend), errors.ITEM_FUNCTION_NAME)
        stop_on_error = options.on_error == "raise"
        task = Task(function, plan.body.bound, stop_on_error, options.timeout, seed=options.seed)
        task.comprehension = plan.body.kind != "for" and not backend.runs_coroutines
        if backend.copies_kernel_objects:
            task.module_values = imported_code.values_read(hidden_nodes(plan), ns)
            task.merge_names = tail is None  # names travel: only their last values
        if backend.name == "serial" and runs_in_place:
            task.in_place, task.namespace = in_place_code(), ns
        return task

    def late_refusal(name: str, recorded) -> str | None:
        """What the statements before the loop made knowable, refused before any item runs
        (or, under auto, the reason to run serially): notebook functions and modules the cell
        itself defined or imported, and changes in place of kernel objects parmagic does not
        replay."""
        refused, reason = refusal(hidden_effects(plan, ns), name, options.unordered, options.seed)
        refused = refused or alias_refusal(plan, ns)
        refused = refused or (name != "auto" and item_object_refusal(plan, name))
        if refused:
            raise ParmagicUsageError(refused)
        if reason:
            return reason
        found = [] if options.unordered else unreplayed_receivers(plan, ns, recorded)
        if not found or name == "serial":
            return None
        line, what, _ = found[0]
        place = f"line {line}: "
        if name != "auto":
            raise ParmagicUsageError(errors.UNREPLAYABLE.format(place=place, what=what))
        return f"{place}{what}, which only a serial run keeps in item order"

    def prepare(name: str, workers: int | None, report: RunReport, recorded) -> tuple:
        """The warm backend and the run's task; the report learns which backend runs. A pool
        or cluster started here counts in the run's start-up and wall time."""
        began = time.monotonic()
        read = imported_code.modules_read(hidden_nodes(plan), ns)
        backend = session.backend(name, workers, options.start_method, options.scheduler, read)
        started = time.monotonic() - began
        report.startup += started
        report.pool_start += session.pool_started
        report.wall += started
        report.backend, report.workers = backend.name, backend.workers
        report.copies_objects = backend.copies_kernel_objects
        report.start_method = backend.start_method
        report.dashboard = backend.dashboard
        report.warnings += session.restart_notes
        session.restart_notes.clear()
        if options.unordered:
            for message in unordered_warnings(plan, ns, recorded, backend):
                warn(message)
        return backend, make_task(backend, recorded)

    def run(iterable: Iterable) -> Any:
        session.close_open_run()
        if not plan.is_async:
            session.stop_requested.clear()
        recorded = frozenset(n for n in plan.body.receivers if is_recordable(ns.get(n)))
        if options.compare:
            late_refusal("serial", recorded)  # the loop's names read as globals, say
            return finish(compare(list(iterable), recorded))
        length, iterator = operator.length_hint(iterable), iter(iterable)
        report = RunReport("auto", 1, cores=usable_cores())
        session.last_report = report
        name = resolve_backend(options.backend, plan.body.awaits)
        serial_reason = options.serial_reason or late_refusal(name, recorded)
        if name == "auto" and serial_reason:
            name, report.auto_reason = "serial", serial_reason
        if name == "auto":
            records = led_records(iterator, length, recorded, report)
        else:
            backend, task = prepare(name, options.workers, report, recorded)
            if backend.runs_coroutines and not plan.body.awaits:
                warn(errors.NO_AWAIT)
            records = records_of(backend, task, iterator, length, report)
        session.open_run = weakref.ref(records)
        return finish(records)

    def records_of(
        backend, task, iterator, length, report, recorder=None, until=None
    ) -> Iterator[list]:
        """The run of the loop's items from ``report.item_count`` on, on ``backend`` (until
        ``until()`` says the rest goes elsewhere)."""
        start = report.item_count
        return execute(
            backend, task, iterator, ns, report, filename=plan.filename,
            chunksize=options.chunksize, stop=session.stop_requested, first_index=start,
            length=max(length - start, 0), tail=tail, recorder=recorder,
            lazy=lazy, until=until,
            progress=options.progress and not options.quiet and recorder is None,
        )  # fmt: skip

    def led_records(iterator, length: int, recorded, report: RunReport, recorder=None):
        """auto: the first items in the kernel until the rest should go elsewhere (auto.py),
        then the rest there; lazy throughout, like the loop it replaces."""

        def phase(backend: Backend, task: Task, items, until=None) -> Iterator[list]:
            if recorder is not None:
                recorder.task = task
            return records_of(backend, task, items, length, report, recorder, until)

        serial, task = prepare("serial", 1, report, recorded)
        leader = Lead(report, length, outlook(task))
        yield from phase(serial, task, iterator, until=leader.moves)
        name, report.auto_reason = leader.choice, leader.reason
        if name is None:
            return
        if name == "threads" and options.seed is not None:
            name = "serial"  # threads share one global random state
            report.auto_reason += "; serial, as --seed needs items in processes of their own"
        workers, items = options.workers, iterator
        if name == TRY_THREADS:  # as many threads as cores: the items compute
            name, workers, items = "threads", workers or usable_cores(), leader.trial(iterator)
        yield from phase(*prepare(name, workers, report, recorded), items)
        report.auto_reason = leader.reason
        if items is not iterator and not leader.kept:  # the trial: the rest in the kernel
            yield from phase(*prepare("serial", 1, report, recorded), iterator)

    def finish(records: Iterator[list]) -> Any:
        """What the loop's statement gives: nothing for a ``for``, else the comprehension."""
        # each item's values are a list: a comprehension's inner clauses may give 0 or more
        values = itertools.chain.from_iterable(records)
        if plan.body.kind == "generator":
            return values  # lazy, like the generator expression it replaces
        try:
            if plan.body.kind == "for":
                for _ in records:
                    pass
                return None
            return {"list": list, "set": set, "dict": dict}[plan.body.kind](values)
        except RuntimeError as error:
            unwrapped = unwrap_stop_iteration(error)
            if unwrapped is error:
                raise
            raise unwrapped from None

    def compare(items: list, recorded) -> Iterator[list]:
        """--compare: each backend's run recorded; the serial recording applied (compare.py)."""
        from .compare import backend_list, run_comparison

        awaits, recorders = plan.body.awaits, []

        def run_one(name: str) -> tuple[RunReport, Recording]:
            report = RunReport(name, 1, cores=usable_cores())
            reference_coroutines = name == "serial" and awaits  # one coroutine at a time
            workers = 1 if reference_coroutines else options.workers
            recorder = Recording(None, report)
            recorders.append(recorder)
            if name == "auto" and not awaits:
                records = led_records(iter(items), len(items), recorded, report, recorder)
            else:
                name = "asyncio" if reference_coroutines or name == "auto" else name
                backend, recorder.task = prepare(name, workers, report, recorded)
                task = recorder.task
                records = records_of(backend, task, iter(items), len(items), report, recorder)
            for _ in records:
                pass
            return report, recorder

        def apply_serial() -> Iterator[list]:
            serial = recorders[0]
            applier = Applier(ns, serial.task, RunReport("serial", 1), plan.filename, tail, lazy)
            return replay(serial.transcript, applier)

        try:
            comparison = run_comparison(backend_list(options.compare, awaits), awaits, run_one)
        except KeyboardInterrupt:
            if not recorders:
                raise
            yield from apply_serial()
            interrupt = KeyboardInterrupt()
            interrupt.add_note(errors.COMPARE_INTERRUPTED.format(
                backend=recorders[-1].report.backend, applied=recorders[0].report.item_count
            ))  # fmt: skip
            raise errors.shown_with_frames(interrupt, []) from None
        session.last_report = comparison
        yield from apply_serial()

    def outlook(task: Task) -> Outlook:
        """What the rest of an auto run could have: cores, pools, warm or not."""
        from .backends.threads import ThreadBackend

        def processes_refused() -> str | None:
            from .shipping import pack_task  # cloudpickle: only when processes are in view

            refused = item_object_refusal(plan, "processes", short=True)
            if refused:
                return refused
            try:
                pack_task(task)
            except NotPicklable as refused:
                return str(refused).split(" (")[0]
            return None

        def captured_bytes() -> int:
            from .shipping import captured_bytes

            return captured_bytes(task.function)

        method = options.start_method or multiprocessing.get_start_method()
        warm = session.is_warm("processes", options.workers, options.start_method)
        return Outlook(
            cores=usable_cores(),
            threads=options.workers or ThreadBackend.default_workers(),
            processes=options.workers or usable_cores(),
            process_start=WARM_START if warm else COLD_START.get(method, 0.5),
            captured_bytes=captured_bytes,
            processes_refused=processes_refused,
            threads_allowed=options.seed is None,
        )

    return run


def awaitable(run: Callable[[Iterable], Any]) -> Callable[[Iterable], Any]:
    """The hook for a cell that awaits: the run goes to a thread, so that the event loop
    stays free for the cell's own awaits and for asyncio items."""

    async def run_off_the_loop(iterable: Iterable) -> Any:
        import asyncio

        def whole_run():
            value = run(iterable)
            return iter(list(value)) if isinstance(value, Iterator) else value

        try:
            return await asyncio.to_thread(whole_run)
        except KeyboardInterrupt as interrupt:
            raise RunInterrupted(interrupt) from None

    return run_off_the_loop
