"""One run of a planned cell: pick the backend, build the item function, run it, keep the report.

Plain Python: the magics front is the only module that talks to IPython.
"""

from __future__ import annotations

import itertools
import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FunctionType
from typing import Any

from . import errors
from .backends import Backend, load_backend
from .cell import CellPlan
from .effects import is_recordable
from .itemcode import build_item_code
from .report import RunReport
from .runner import execute
from .worker import Task


@dataclass
class Options:
    backend: str = "auto"
    workers: int | None = None
    chunksize: int | None = None
    start_method: str | None = None
    on_error: str = "raise"
    timeout: float | None = None
    quiet: bool = False


def resolve_backend(name: str, awaits: bool = False) -> str:
    """``auto``: asyncio for a body that awaits; otherwise threads (until probing lands)."""
    if name != "auto":
        return name
    return "asyncio" if awaits else "threads"


class Session:
    """What outlives a cell: warm backends, and the last run's report."""

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self.last_report: RunReport | None = None
        self.open_run = None  # a run a half-consumed generator expression still holds
        self._event_loop = None
        self.stop_requested = threading.Event()  # an interrupt for a run off the kernel thread

    def event_loop(self):
        """parmagic's own event loop thread (started on first use)."""
        if self._event_loop is None:
            from .backends.coroutines import EventLoopThread

            self._event_loop = EventLoopThread()
        return self._event_loop

    def run_coroutine(self, coroutine) -> Any:
        """Run cell code that awaits on parmagic's loop, while the kernel thread waits.

        An interrupt reaches the kernel thread only: it asks the run (on another thread) to
        stop, waits for it to apply its completed prefix, then raises its KeyboardInterrupt.
        """
        future = self.event_loop().submit(coroutine)
        self.stop_requested.clear()
        try:
            return future.result()
        except KeyboardInterrupt:
            self.stop_requested.set()
            try:
                future.result(timeout=5)
            except RunInterrupted as stopped:
                raise stopped.interrupt from None
            except BaseException:  # the cell was awaiting something of its own: stop it
                future.cancel()
            raise
        except RunInterrupted as stopped:
            raise stopped.interrupt from None

    def backend(self, name: str, workers: int | None, start_method: str | None) -> Backend:
        """A warm backend; a new one only when the worker count or start method changes."""
        cls = load_backend(name)
        workers = workers or cls.default_workers()
        wanted_method = None
        if cls.copies_kernel_objects:
            wanted_method = start_method or multiprocessing.get_start_method()
        current = self._backends.get(name)
        if current is not None and (
            current.workers != workers or current.start_method != wanted_method
        ):
            current.close()
            current = None
        if current is None:
            if cls.runs_coroutines:
                current = cls(workers, self.event_loop())
            else:
                current = cls(workers, wanted_method) if wanted_method else cls(workers)
            self._backends[name] = current
        return current

    def close_open_run(self) -> None:
        """Finish a run that a generator expression left half-consumed, so that its workers
        are free (and its late results cannot be mistaken for the next run's)."""
        if self.open_run is not None:
            self.open_run.close()
            self.open_run = None

    def close(self) -> None:
        self.close_open_run()
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
        if self._event_loop is not None:
            self._event_loop.close()
            self._event_loop = None


def copy_warnings(
    plan: CellPlan, ns: dict, recorded: frozenset[str], backend: Backend
) -> list[str]:
    """What the body does to kernel objects that parmagic does not replay in item order (§5.6):
    a worker process does it to a copy; pool threads do it to the real object, in any order."""
    if backend.name == "serial":
        return []
    found = [(line, what, name) for line, what, name in plan.body.copy_warnings]
    for name, line in plan.body.receivers.items():
        if name not in recorded and name in ns:
            found.append((line, f"changing `{name}` (a {type(ns[name]).__name__})", name))
    template = errors.COPY_WARNING if backend.copies_kernel_objects else errors.UNORDERED_WARNING
    return [template.format(line=ln, what=w, name=n) for ln, w, n in sorted(found)]


def loop_hook(
    plan: CellPlan, ns: dict, options: Options, session: Session, warn: Callable[[str], None]
) -> Callable[[Iterable], Any]:
    """The function the rewritten cell calls in place of its loop, with the loop's iterable."""

    def run(iterable: Iterable) -> Any:
        session.close_open_run()
        if not plan.is_async:
            session.stop_requested.clear()
        recorded = frozenset(n for n in plan.body.receivers if is_recordable(ns.get(n)))
        name = resolve_backend(options.backend, plan.body.awaits)
        backend = session.backend(name, options.workers, options.start_method)
        code = build_item_code(plan.body, recorded, plan.filename, backend.runs_coroutines)
        function = FunctionType(code, ns, errors.ITEM_FUNCTION_NAME)
        task = Task(function, plan.body.bound, options.on_error == "raise", timeout=options.timeout)
        if backend.runs_coroutines and not plan.body.awaits:
            warn(errors.NO_AWAIT)
        for message in copy_warnings(plan, ns, recorded, backend):
            warn(message)
        report = RunReport(backend.name, backend.workers, backend.start_method)
        session.last_report = report
        records = execute(
            backend, task, iterable, ns, report,
            filename=plan.filename, chunksize=options.chunksize, stop=session.stop_requested,
        )  # fmt: skip
        session.open_run = records
        kind = plan.body.kind
        if kind == "for":
            for _ in records:
                pass
            return None
        per_item = itertools.chain.from_iterable(records)  # each item's list of values
        values = itertools.chain.from_iterable(per_item)
        if kind == "generator":
            return values  # lazy, like the generator expression it replaces
        return {"list": list, "set": set, "dict": dict}[kind](values)

    return run


class RunInterrupted(Exception):
    """Carries a run's KeyboardInterrupt out of an event loop (which must not see one)."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__("interrupted")
        self.interrupt = interrupt


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


def print_warning(message: str) -> None:
    print(f"parmagic warning: {message}", file=sys.stderr)
