"""What outlives a cell: warm backends (started once, kept while their settings fit), the
event loop for cells that await, and the last run's report."""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .. import errors
from ..analysis.cell import CellPlan, plan_cell
from ..backends import Backend, load_backend
from ..errors import print_warning
from ..summary.report import RunReport
from ..worker import imported_code
from .dispatch import Pace

KEPT_PACES = 100  # cells whose latest pace is remembered
KEPT_PLANS = 32  # cells whose plan is remembered
PLANNED = "<cell>"  # a kept plan's file name: each run gets its own cell's


def _plan(source: str, backend: str, transform_ast, transformers: tuple) -> CellPlan:
    return plan_cell(source, PLANNED, backend, transform_ast)


class RunInterrupted(Exception):
    """Carries a run's KeyboardInterrupt out of an event loop (which must not see one)."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__("interrupted")
        self.interrupt = interrupt


class Session:
    """What outlives a cell: warm backends, and the last run's report."""

    def __init__(self, show: Callable[..., None] = print) -> None:
        """``show``: IPython's ``display`` (the magics give it: nothing else imports IPython)."""
        self.show = show
        self._backends: dict[str, Backend] = {}
        self.last_report: RunReport | None = None
        self.open_run = None  # weakref: a run a half-consumed generator expression holds
        self._event_loop = None
        self.stop_requested = threading.Event()  # an interrupt for a run off the kernel thread
        self.restart_notes: list[str] = []  # warm pools restarted for changed code: for the report
        self.pool_started = 0.0  # seconds the last backend() call took to start a pool
        self.told_native_limit = False  # a summary said that native threads were capped
        # what the latest run of a cell on a backend measured, by cell, backend and workers
        # (see ChunkSizer): the same Pace for the same key, the least recent forgotten first
        self.pace = functools.lru_cache(maxsize=KEPT_PACES)(lambda source, backend, workers: Pace())
        # a cell run again, as written, with the shell's AST transformers as they were: its
        # plan as checked then (refusals raise, and are not kept)
        self._plans = functools.lru_cache(maxsize=KEPT_PLANS)(_plan)
        self._transformed: dict[tuple, str] = {}  # a cell's text as IPython transforms it

    def plan(self, source: str, filename: str, backend: str, shell) -> CellPlan:
        """The cell's checked plan, under this run's file name (the cell's number)."""
        transformers = tuple(map(id, shell.ast_transformers))
        try:
            plan = self._plans(source, backend, shell.transform_ast, transformers)
        except SyntaxError as error:
            error.filename = filename
            raise
        return replace(plan, filename=filename)

    def transformed(self, cell: str, shell) -> str:
        """IPython's ``transform_cell``, remembered for a cell run again (its tokenizing takes
        a tenth of a warm run of cheap items). A cell of several lines goes through text
        transformations that depend on the text and the transformers alone; one line (whose
        transformation depends on the shell's state), or a shell with transformers of the
        last stage, goes through IPython every time."""
        if shell.input_transformers_post:
            return shell.transform_cell(cell)
        manager = shell.input_transformer_manager
        stages = (manager.cleanup_transforms, manager.line_transforms, manager.token_transformers)
        key = (cell, *(tuple(map(id, stage)) for stage in stages))
        source = self._transformed.pop(key, None) or shell.transform_cell(cell)
        if len(source.splitlines()) > 1:
            self._transformed[key] = source  # the most recent last: the oldest go first
            while len(self._transformed) > KEPT_PLANS:
                del self._transformed[next(iter(self._transformed))]
        return source

    def event_loop(self):
        """parmagic's own event loop thread (started on first use)."""
        if self._event_loop is None:
            from ..backends.coroutines import EventLoopThread

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

    def backend(
        self,
        name: str,
        workers: int | None,
        start_method: str | None,
        scheduler: str | None = None,
        modules_read: frozenset[str] = frozenset(),
        native_threads: int | None = None,
    ) -> Backend:
        """A warm backend; a new one only when the worker count, start method, native
        threads or (dask) scheduler changes."""
        cls = load_backend(name)
        settings = cls.settings_for(workers, start_method, scheduler, native_threads)
        current = self._backends.get(name)
        if current is not None and not current.fits(settings):
            current.close()
            current = None
        if current is not None and current.started_with is not None:
            now = imported_code.fingerprint(modules_read)
            changed = imported_code.changes_since(current.started_with, now, modules_read)
            if changed:
                current.close()
                current = None
                self.restart_notes.append(errors.WORKERS_RESTARTED.format(changed=changed))
        self.pool_started = 0.0
        if current is None:
            began = time.monotonic()
            if cls.runs_coroutines:  # started here, if first: it counts as the pool's start
                settings = replace(settings, event_loop=self.event_loop())
            current = cls(settings)
            self._backends[name] = current
            self.pool_started = time.monotonic() - began
        return current

    def is_warm(
        self, name: str, workers: int | None, start_method: str | None,
        native_threads: int | None = None,
    ) -> bool:  # fmt: skip
        """Whether a run on this backend would find its pool already started."""
        current = self._backends.get(name)
        if current is None:
            return False
        settings = type(current).settings_for(workers, start_method, None, native_threads)
        return current.fits(settings)

    def warm_pools(self) -> list[str]:
        return [b.description for b in self._backends.values()]

    def close_open_run(self) -> None:
        """Finish a run that a generator expression left half-consumed, so that its workers
        are free (and its late results cannot be mistaken for the next run's); say so."""
        run = self.open_run() if self.open_run is not None else None
        self.open_run = None
        if run is not None and inspect.getgeneratorstate(run) != inspect.GEN_CLOSED:
            print_warning(errors.GENERATOR_CLOSED)
            run.close()

    def close(self) -> None:
        self.close_open_run()
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
        if self._event_loop is not None:
            self._event_loop.close()
            self._event_loop = None
        from ..summary.monitor import stop_samplers  # psutil: loaded by then, if anything ran

        stop_samplers()
