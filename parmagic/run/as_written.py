"""The cell run as written, in the kernel: what ``serial`` and ``auto`` do with a cell whose loop
parmagic cannot run item by item (a ``break``, state carried from item to item, two loops).

The plain kernel runs such a cell, so these two backends run it too, exactly as written: the
only change is that the loop's iterable is handed out through an :class:`ItemClock`, which
times each item for the summary. Only a parallel backend the user names refuses a cell.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Iterable, Iterator
from types import CodeType

from ..analysis.cell import find_parallel_loop
from ..analysis.itemcode import as_plain_python_names, loop_over
from ..analysis.scopes import COMPREHENSIONS
from ..errors import ParmagicUsageError
from ..summary.report import RunReport
from ..worker.chunk import VALUES_NAME
from ..worker.task import ChunkResult

CLOCK_NAME = "__parmagic_items__"
LOOP_FUNCTION = "__parmagic_loop_as_written__"  # a loop that awaits, as a coroutine function
KERNEL = "kernel"  # the one worker of a run in the kernel's thread, as serial names it


class ItemClock:
    """Hands the loop its items as it asks for them. An item's span runs from handing it out
    to the loop's asking for the next one, or leaving the loop (``break``, an error: CPython
    closes the abandoned generator at once)."""

    def __init__(self) -> None:
        self.result = ChunkResult(0, 0, KERNEL, logged=False)

    def __call__(self, iterable: Iterable) -> Iterator:
        return self._timed(iter(iterable))

    def _timed(self, iterator: Iterator) -> Iterator:
        starts, ends, cpus = self.result.starts, self.result.ends, self.result.cpus
        for item in iterator:
            starts.append(time.monotonic())
            cpu = time.thread_time()
            try:
                yield item
            finally:
                ends.append(time.monotonic())
                cpus.append(time.thread_time() - cpu)


def with_clock(tree: ast.Module) -> ast.Module:
    """The cell with its loop's iterable handed out by the clock; a cell with no one loop
    (two loops, none) unchanged: it is timed whole."""
    try:
        loop = find_parallel_loop(tree)
    except ParmagicUsageError:
        return tree
    if isinstance(loop, ast.For):
        loop.iter = _clocked(loop.iter)
    elif isinstance(loop, COMPREHENSIONS):
        first = loop.generators[0]
        first.iter = _clocked(first.iter)
    return ast.fix_missing_locations(tree)


def loop_code(info, filename: str) -> CodeType:
    """The loop alone, as written, over the clock's items, to run in the kernel's namespace
    once the statements before it have run (``info``: body.BodyInfo). A ``for`` loop binds
    its names there; a comprehension leaves its values in VALUES_NAME, or, for a generator
    expression, is one (lazy, as written). A body that awaits is the coroutine function
    LOOP_FUNCTION, its names declared global."""
    if info.kind == "generator" and not info.awaits:
        expression = ast.Expression(loop_over(info, CLOCK_NAME, lazy=True))
        return compile(ast.fix_missing_locations(expression), filename, "eval")
    statement = loop_over(info, CLOCK_NAME)
    if info.awaits:
        body = [ast.Global(sorted(info.bound | {VALUES_NAME})), statement]
        arguments = ast.arguments([], [], None, [], [], None, [])
        coroutine = ast.AsyncFunctionDef(LOOP_FUNCTION, arguments, body, [], None)
        statement = ast.copy_location(coroutine, info.node)
    module = ast.fix_missing_locations(ast.Module([statement], []))
    code = compile(module, filename, "exec", dont_inherit=True)
    if info.kind == "for" or info.awaits:
        return code
    return as_plain_python_names(code, info.kind, "<listcomp>")


def _clocked(iterable: ast.expr) -> ast.expr:
    return ast.copy_location(ast.Call(ast.Name(CLOCK_NAME, ast.Load()), [iterable], []), iterable)


def short_reason(message: str) -> str:
    """A refusal's first sentence: why nothing could run in parallel, for the summary's line."""
    first = message.split(". ", 1)[0].split("; ", 1)[0]
    return first.rstrip(".")


def note(report: RunReport, backend: str, reason: str) -> None:
    """The summary's line on why the loop ran as written."""
    if backend == "auto":
        report.auto_reason = f"nothing here can run in parallel ({short_reason(reason)})"
    else:
        report.as_written = short_reason(reason)


class Timed:
    """Times a run as written into ``report``: its wall time, the items the clock handed
    out, the machine's cores."""

    def __init__(self, report: RunReport, clock: ItemClock) -> None:
        self.report, self.clock = report, clock
        report.ran_as_written()

    def __enter__(self) -> Timed:
        from ..summary.monitor import Monitor  # psutil: imported by the first run, not by %load_ext

        self.monitor, self.began = Monitor().start(), time.monotonic()
        return self

    def __exit__(self, *exc_info) -> None:
        report, result = self.report, self.clock.result
        elapsed = time.monotonic() - self.began
        report.waited(elapsed)  # the cell's own statements are its running time
        report.stretch_ended(elapsed, 0.0, 0, self.monitor.stop())
        count = min(len(result.starts), len(result.ends))
        if count:
            result.first = report.item_count
            report.add(result, count)
            report.chunk_applied()
