"""One run of a planned cell: pick the backend, build the item function, run it, keep the report.

Plain Python: the magics front is the only module that talks to IPython.
"""

from __future__ import annotations

import itertools
import multiprocessing
import sys
from collections.abc import Callable, Iterable
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


def resolve_backend(name: str) -> str:
    """``auto`` until probing lands: threads, which every loop body can run on."""
    return "threads" if name == "auto" else name


class Session:
    """What outlives a cell: warm backends, and the last run's report."""

    def __init__(self) -> None:
        self._backends: dict[str, Backend] = {}
        self.last_report: RunReport | None = None
        self.open_run = None  # a run a half-consumed generator expression still holds

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
        recorded = frozenset(n for n in plan.body.receivers if is_recordable(ns.get(n)))
        code = build_item_code(plan.body, recorded, plan.filename)
        function = FunctionType(code, ns, errors.ITEM_FUNCTION_NAME)
        task = Task(function, plan.body.bound, options.on_error == "raise", timeout=options.timeout)
        backend = session.backend(
            resolve_backend(options.backend), options.workers, options.start_method
        )
        for message in copy_warnings(plan, ns, recorded, backend):
            warn(message)
        report = RunReport(backend.name, backend.workers, backend.start_method)
        session.last_report = report
        records = execute(
            backend, task, iterable, ns, report,
            filename=plan.filename, chunksize=options.chunksize,
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


def print_warning(message: str) -> None:
    print(f"parmagic warning: {message}", file=sys.stderr)
