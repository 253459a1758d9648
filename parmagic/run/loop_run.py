"""One run of the cell's loop: the object the rewritten cell calls in place of its loop.

It picks the backend (or hands the choice to auto.py, or runs every backend for
compare.py), builds the item function's task for it, lets dispatch.py run the items, and
gives back what the loop's statement gives: nothing for a ``for``, the comprehension's value
otherwise. Plain Python: the magics front is the only module that talks to IPython.
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import itertools
import operator
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import CodeType, FunctionType
from typing import Any

from .. import errors
from ..analysis.cell import CellPlan
from ..analysis.itemcode import build_in_place_code, build_item_code
from ..analysis.run_checks import hidden_nodes, late_verdict, replayed_names, unordered_warnings
from ..analysis.verdict import RUN, Verdict
from ..backends import Backend, may
from ..machine import usable_cores
from ..options import Options
from ..summary.report import RunReport
from ..worker import imported_code
from ..worker.hidden_state import Guard
from ..worker.native_threads import of_native_library
from ..worker.task import Task
from .as_written import loop_code
from .auto import auto_run
from .calibration import recording_costs
from .dispatch import Recording, RunSpec, execute, unwrap_stop_iteration
from .session import RunInterrupted, Session


def resolve_backend(name: str, awaits: bool = False) -> str:
    """``auto`` is asyncio for a body that awaits; otherwise the lead-in decides (auto.py)."""
    return "asyncio" if name == "auto" and awaits else name


class LoopRun:
    """The function the rewritten cell calls with the loop's iterable, for one cell.

    What the plan settles is worked out once: the ordered tail, whether values go out one at a
    time (a generator expression), and whether serial may run the loop itself, unrecorded. A
    run records each item instead when it needs what only recording gives: a failed item
    that leaves nothing behind, a deadline per item, values one at a time.
    """

    def __init__(
        self, plan: CellPlan, ns: dict, options: Options, session: Session,
        warn: Callable[[str], None], checked: Verdict = RUN,
    ) -> None:  # fmt: skip
        """``checked``: what the checks said before the cell ran (auto: stay in the kernel)."""
        self.checked = checked
        self.plan = plan
        self.ns = ns
        self.options = options
        self.session = session
        self.warn = warn
        self.tail = ordered_tail_code(plan)
        self.written = False  # the last call ran the loop as written (as_written)
        self.lazy = plan.body.kind == "generator"
        self.runs_in_place = not (self.lazy or plan.body.awaits or options.timeout) and (
            options.on_error == "raise"
        )
        # a for loop's chunk runs in one call (in worker processes and threads), giving the
        # names its items left last, unless a run needs each item's (an ordered tail, the
        # runs compared item by item, a failed item that leaves none) or each item's alarm
        self.whole_chunks = not (self.tail or options.compare or options.timeout) and (
            options.on_error == "raise" and plan.body.kind == "for"
        )
        self._in_place_code = functools.cache(lambda: build_in_place_code(plan.body, plan.filename))
        self._as_written_code = functools.cache(lambda: loop_code(plan.body, plan.filename))

    def __call__(self, iterable: Iterable) -> Any:
        self.session.close_open_run()
        if not self.plan.is_async:
            self.session.stop_requested.clear()
        replayed = replayed_names(self.plan, self.ns)
        if self.options.compare:
            from .compare import compared_runs

            # compare keeps serial's result: refused only for what serial cannot run either
            late_verdict(self.plan, self.ns, self.options, "serial", replayed).raise_refusal()
            return self.loop_value(compared_runs(self, list(iterable), replayed))
        self.written = False
        values = self._run_on_chosen_backend(iterable, replayed)
        if not self.written:  # a loop run as written holds no workers: nothing to close
            self.session.open_run = weakref.ref(values)
        return self.loop_value(values)

    def _run_on_chosen_backend(self, iterable: Iterable, replayed) -> Iterator[list]:
        length, iterator = operator.length_hint(iterable), iter(iterable)
        report = RunReport("auto", 1, cores=usable_cores(), costs=recording_costs())
        self.session.last_report = report
        name = resolve_backend(self.options.backend, self.plan.body.awaits)
        # auto's reason to stay in the kernel, found before the cell ran (not for a body that
        # awaits: only asyncio runs it, which refuses what it cannot run as the plain loop)
        early = self.checked if name == "auto" else RUN
        verdict = early.then(lambda: late_verdict(self.plan, self.ns, self.options, name, replayed))
        if verdict.refused:
            if not may(self.options.backend, "is_the_plain_loop"):
                verdict.raise_refusal()
            self.written = True
            return self.as_written(iterator, report, verdict.refused)
        if name == "auto" and verdict.in_the_kernel:
            name, report.auto_reason = "serial", verdict.in_the_kernel
        if name == "auto":
            return auto_run(self, iterator, length, replayed, report)
        backend, task = self.start(name, self.options.workers, report, replayed)
        if backend.runs_coroutines and not self.plan.body.awaits:
            self.warn(errors.NO_AWAIT)
            report.one_at_a_time = True
        items = iterable if type(iterable) is range else iterator  # a range: sent as slices
        return self.run_on(backend, task, items, length, report)

    def as_written(self, iterator: Iterator, report: RunReport, reason: str) -> Iterator[list]:
        """The loop as the plain kernel runs it, in the kernel's namespace: what serial and
        auto do once the statements before the loop show why no backend can run it item by
        item. A comprehension's values come as one list; a generator expression's, one by
        one, as it is consumed."""
        from .as_written import CLOCK_NAME, LOOP_FUNCTION, VALUES_NAME, ItemClock, Timed, note

        clock, ns = ItemClock(), self.ns
        note(report, self.options.backend, reason)
        code = self._as_written_code()
        ns[CLOCK_NAME] = clock(iterator)
        try:
            with Timed(report, clock):
                if self.lazy and not self.plan.body.awaits:  # loop_code's generator expression
                    generator = eval(code, ns)
                    del ns[CLOCK_NAME]
                    yield from ([value] for value in generator)
                    return
                exec(code, ns)
                if self.plan.body.awaits:
                    self.session.run_coroutine(ns.pop(LOOP_FUNCTION)())
        finally:
            ns.pop(CLOCK_NAME, None)
        yield ns.pop(VALUES_NAME, None) or []

    def task_for(self, backend: Backend, replayed: frozenset[str], recording: bool) -> Task:
        """The item function, built for where it runs, and what travels with it, whole. A
        recording (--compare) keeps every item's own names, and runs no loop in place."""
        plan, options = self.plan, self.options
        stop_on_error = options.on_error == "raise"
        # not on serial (auto's lead-in too), whose items run on the kernel's thread, where a
        # Ctrl-C can land between an item's records: each item's own names keep a prefix
        # whole; nor on the event loop, whose items are coroutines, awaited one by one; nor
        # on threads with --timeout (a chunk of one item, which a deadline may freeze as it
        # ends, before its names are placed)
        item_by_item = backend.is_the_plain_loop or backend.runs_coroutines
        frozen = options.timeout and not backend.copies_kernel_objects
        merge_names = not (self.tail or recording or item_by_item or frozen)
        whole = self.whole_chunks and not item_by_item
        code = build_item_code(
            plan.body, replayed, plan.filename, backend.runs_coroutines, whole_chunk=whole,
            mapped=self._maps(plan.body.mapped_function),
        )  # fmt: skip
        globals_ = item_globals(self.ns, code, backend)
        function = FunctionType(code, globals_, errors.ITEM_FUNCTION_NAME)
        task = Task(function, plan.body.bound, stop_on_error, options.timeout, seed=options.seed)
        task.comprehension = plan.body.kind != "for" and not backend.runs_coroutines
        task.one_value = task.comprehension and plan.body.one_value_per_item
        task.kind, task.merge_names, task.whole_chunks = plan.body.kind, merge_names, whole
        task.hold_names = merge_names and backend.holds_names
        if backend.copies_kernel_objects:
            task.module_values = imported_code.values_read(hidden_nodes(plan), self.ns)
        if backend.is_the_plain_loop and self.runs_in_place and not recording:
            task.in_place, task.namespace = self._in_place_code(), self.ns
        if not backend.is_the_plain_loop and not options.unordered:
            task.guarded = backend.copies_kernel_objects  # the worker watches its own state
            task.guard = None if task.guarded else self.guard(function)
        return task

    def _maps(self, function: str | None) -> bool:
        """Whether ``[f(x) for x in ...]`` can run as ``map(f, items)``: ``map`` is Python's
        own, and ``f`` is bound now (``map`` looks it up once, before the first item: a
        name bound nowhere fails each item, as in the plain loop, only looked up per item)."""
        if function is None or "map" in self.ns:
            return False
        return function in self.ns or hasattr(builtins, function)

    def guard(self, function: FunctionType) -> Guard:
        """The watch on the kernel's state that items could change without naming it."""
        return Guard.around(function, random=self.options.seed is None)

    def start(
        self, name: str, workers: int | None, report: RunReport, replayed, recording: bool = False
    ) -> tuple[Backend, Task]:
        """The warm backend and the run's task; the report learns which backend runs. A pool
        or cluster started here counts in the run's start-up and wall time."""
        session, options = self.session, self.options
        began = time.monotonic()
        read = imported_code.modules_read(hidden_nodes(self.plan), self.ns)
        backend = session.backend(
            name, workers, options.start_method, options.scheduler, read, options.native_threads
        )
        report.ran_on(backend, time.monotonic() - began, session.pool_started)
        report.warnings += session.restart_notes
        session.restart_notes.clear()
        if options.unordered:
            for message in unordered_warnings(self.plan, self.ns, replayed, backend):
                self.warn(message)
        task = self.task_for(backend, replayed, recording)
        from ..worker.shipping import (
            reached_values,  # cloudpickle: imported by a run, not %load_ext
        )

        report.native_code = report.native_code or (
            backend.copies_kernel_objects
            and any(map(of_native_library, reached_values(task.function)))
        )
        return backend, task

    def run_on(
        self, backend: Backend, task: Task, iterator: Iterable, length: int, report: RunReport,
        recording: Recording | None = None, until: Callable[[], bool] | None = None,
    ) -> Iterator[list]:  # fmt: skip
        """The loop's items from ``report.item_count`` on, run on ``backend`` (until
        ``until()`` says the rest goes elsewhere), applied, or kept in ``recording``."""
        start, options = report.item_count, self.options
        return execute(backend, task, iterator, RunSpec(
            self.ns, report, self.plan.filename, options.chunksize,
            stop=self.session.stop_requested, first_index=start,
            length=max(length - start, 0), tail=self.tail, recording=recording,
            lazy=self.lazy, until=until,
            progress=options.progress and not options.quiet and recording is None,
            pace=self.session.pace(self.plan.source, backend.name, backend.workers),
            show=self.session.show,
        ))  # fmt: skip

    def loop_value(self, item_values: Iterator[list]) -> Any:
        """What the loop's statement gives: nothing for a ``for``, else the comprehension."""
        # each item's values are a list: a comprehension's inner clauses may give 0 or more
        values = itertools.chain.from_iterable(item_values)
        kind = self.plan.body.kind
        if kind == "generator":
            return values  # lazy, like the generator expression it replaces
        try:
            if kind == "for":
                for _ in item_values:
                    pass
                return None
            return {"list": list, "set": set, "dict": dict}[kind](values)
        except RuntimeError as error:
            unwrapped = unwrap_stop_iteration(error)
            if unwrapped is error:
                raise
            raise unwrapped from None


def item_globals(ns: dict, code: CodeType, backend: Backend) -> dict:
    """The item function's globals: the kernel's namespace, except that items in worker
    processes call stand-ins for the shell (``!cmd``) and IPython's ``display``, which cannot
    travel (worker/shell.py)."""
    from ..worker import shell as worker_shell

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
