"""``--compare``: the loop once per backend, each run recorded, one recording applied.

Every backend runs the same items with nothing applied to the kernel (dispatch.Recording); each
recording is set beside the serial one, item by item: printed output, recorded changes, names
bound, values, errors. Only the serial recording is applied, so the kernel ends as after one
serial run, whatever the other backends did.
"""

from __future__ import annotations

import html
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import errors
from .auto import auto_records
from .dispatch import Applier, Recording, replay
from .effects import CALL, REDUCE, STATE
from .errors import ParmagicUsageError, short_repr
from .machine import usable_cores
from .render import BAR_FILL, BAR_FILL_DIFFERENT, html_bar
from .report import RunReport

if TYPE_CHECKING:
    from .loop_run import LoopRun

REFERENCE = "serial"
EVERY_BACKEND = ("serial", "threads", "futures", "processes", "futures:processes", "asyncio")
AUTO = "auto"


@dataclass
class Row:
    """One backend's run, or why it could not run."""

    backend: str
    report: RunReport | None = None
    difference: str | None = None  # what differed from the serial run (None: the same)
    refused: str | None = None  # why this backend could not run the loop

    @property
    def same(self) -> bool:
        return self.report is not None and self.refused is None and self.difference is None


@dataclass
class Comparison:
    """The table ``--compare`` prints; ``-o NAME`` stores it."""

    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def reference(self) -> Row:
        return self.rows[0]

    def speedup(self, row: Row) -> float:
        ours, serial = row.report.wall, self.reference.report.wall
        return serial / ours if ours > 0 else 0.0

    @property
    def fastest(self) -> Row | None:
        """The fastest backend that gave the serial run's results and effects."""
        same = [row for row in self.rows if row.same]
        if not same or self.failed_at is not None:
            return None
        return min(same, key=lambda row: row.report.wall)

    @property
    def reports(self) -> dict[str, RunReport]:
        return {row.backend: row.report for row in self.rows if row.report is not None}

    @property
    def failed_at(self) -> int | None:
        """The item at which the serial run stopped with an error (None: it did not)."""
        reference = self.reference.report
        return reference.stopped_at if reference is not None else None

    def verdict(self, row: Row) -> str:
        if row.refused:
            return f"did not run: {row.refused}"
        stopped = row.report.stopped_at
        failed = f"failed at item {stopped}" if stopped is not None else ""
        if row is self.reference:
            return failed or "(the reference)"
        if row.difference is not None:
            return f"differs: {row.difference}"
        return failed or "✓"

    def cells(self, row: Row) -> list[str]:
        r = row.report
        if r is None:
            return [row.backend, "", "", "", "", ""]
        cores = " ".join(f"{max(m, 0):.0f}%" for m in r.usage.core_means()) if r.usage else ""
        ours = f"{max(r.usage.ours_mean, 0):.0f}%" if r.usage else ""
        speed = f"{self.speedup(row):.2f}×"
        name = f"auto: {r.backend}" if row.backend == AUTO else row.backend
        return [name, str(r.workers), f"{r.wall:.3f} s", speed, ours, cores]

    def conclusion(self) -> str:
        if self.failed_at is not None:
            return f"the serial run failed at item {self.failed_at}: no backend is named fastest"
        best = self.fastest
        if best is None:
            return "no backend gave the serial run's results"
        if best is self.reference:
            return "fastest with the serial results: serial itself; no backend beat it here"
        return (
            f"fastest with the serial results: {best.backend}, "
            f"{self.speedup(best):.2f}× serial ({best.report.wall:.3f} s)"
        )

    def summary(self) -> str:
        head = ["backend", "workers", "wall", "speedup", "CPU", "per core"]
        table = [head] + [self.cells(row) for row in self.rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(head))]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
            + "  "
            + (verdict if n else "same as serial")
            for n, (line, verdict) in enumerate(
                zip(table, ["", *map(self.verdict, self.rows)], strict=True)
            )
        ]
        return "\n".join([*lines, self.conclusion()])

    __str__ = summary

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(self.summary())

    def _repr_html_(self) -> str:
        """The table with a bar per backend (its speedup; red where results differed)."""
        fastest = max((self.speedup(r) for r in self.rows if r.report), default=1.0) or 1.0
        titles = ("backend", "workers", "wall", "speedup", "", "CPU", "per core", "same as serial")
        head = "".join(f"<th style='text-align:left'>{title}</th>" for title in titles)
        body = ""
        for row in self.rows:
            cells = [html.escape(cell) for cell in self.cells(row)]
            drawn = ""
            if row.report:
                fill = BAR_FILL if row.difference is None else BAR_FILL_DIFFERENT
                drawn = html_bar(self.speedup(row) / fastest * 100, 120, fill)
            tds = [*cells[:4], drawn, *cells[4:], html.escape(self.verdict(row))]
            body += "<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in tds) + "</tr>"
        conclusion = f"<p>{html.escape(self.conclusion())}</p>"
        return f"<table class='parmagic-compare'><tr>{head}</tr>{body}</table>{conclusion}"

    def plot_report(self) -> RunReport:
        """The run ``--plot`` draws: the fastest with the serial results."""
        return (self.fastest or self.reference).report


def backend_list(spec: str, awaits: bool) -> list[str]:
    """The backends ``--compare LIST`` names, serial first (the reference); ``all`` is every
    backend on this machine except dask (which would start a cluster)."""
    from .backends import CHOICES

    if spec.strip() == "all":
        return [REFERENCE, "asyncio"] if awaits else [*EVERY_BACKEND, AUTO]
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHOICES]
    if unknown:
        choices = ", ".join(CHOICES)
        raise ParmagicUsageError(
            f"--compare: unknown backend {unknown[0]!r}; choose from {choices}, or all"
        )
    return list(dict.fromkeys([REFERENCE, *names]))  # serial always runs, first


def refusal(name: str, awaits: bool) -> str | None:
    """Why ``name`` cannot run this body, before trying."""
    if awaits and name not in ("asyncio", REFERENCE, AUTO):
        return "the body awaits; only asyncio runs coroutines"
    if not awaits and name == "asyncio":
        return "the body never awaits, so asyncio would run its items one after another"
    return None


def run_comparison(
    names: list[str], awaits: bool, run_one: Callable[[str], tuple[RunReport, Recording]]
) -> Comparison:
    """Run the loop on each backend, serial first; each other run is set beside serial's.

    ``run_one(name)`` runs the loop on a backend with a Recording and returns its report and
    recording; a ParmagicUsageError from it (e.g. data that cannot be pickled for processes)
    becomes that backend's row. A KeyboardInterrupt stops the whole comparison.
    """
    comparison = Comparison()
    reference: Recording | None = None
    for name in names:
        row = Row(name)
        comparison.rows.append(row)
        row.refused = refusal(name, awaits)
        if row.refused:
            continue
        try:
            row.report, recording = run_one(name)
        except ParmagicUsageError as reason:
            row.refused = str(reason).split("\n")[0]
            if reference is None:
                raise  # the serial run itself cannot run: nothing to compare with
            continue
        if reference is None:
            reference = recording
        elif recording.hidden:
            row.difference = errors.COMPARE_HIDDEN.format(what=recording.hidden)
        else:
            row.difference = first_difference(reference.transcript, recording.transcript)
    return comparison


def _flatten(transcript: list) -> Iterator[tuple]:
    for result, _items in transcript:
        for offset in range(len(result)):
            error = result.errors.get(offset)
            failure = (type(error.exception).__name__, str(error.exception)) if error else None
            yield (
                result.first + offset,
                result.outputs.get(offset, []),
                [op for op in result.ops[offset] if op[0] != STATE],  # see below
                result.names[offset] or {},
                result.item_values(offset),
                failure,
            )


def first_difference(reference: list, other: list) -> str | None:
    """What the first item that differs did differently, in a few words; None if none. The
    kernel objects a run's items changed (STATE ops, from copies) are not compared: serial,
    which runs first, changed the kernel's objects themselves, and later runs start from them."""
    theirs = list(_flatten(other))
    ours = list(_flatten(reference))
    for mine, yours in zip(ours, theirs, strict=False):
        index = mine[0]
        if mine[5] != yours[5]:
            what = f"{yours[5][0]}: {yours[5][1]}" if yours[5] else "no error"
            return f"item {index} ended with {what}"
        if "".join(t for _, t in mine[1]) != "".join(t for _, t in yours[1]):
            return f"item {index} printed other output"
        for op_serial, op_other in zip(mine[2], yours[2], strict=False):
            if not same(op_serial, op_other):
                return f"item {index}: {describe(op_other)}"
        if len(mine[2]) != len(yours[2]):
            return f"item {index} made {len(yours[2])} change(s), not {len(mine[2])}"
        for name, value in mine[3].items():
            if not same(value, yours[3].get(name)):
                return f"item {index} set {name} = {short_repr(yours[3].get(name), 30)}"
        if not same(mine[4], yours[4]):
            return f"item {index} gave {short_repr(yours[4], 30)}"
    if len(ours) != len(theirs):
        return f"{len(theirs)} item(s) ran, not {len(ours)}"
    return None


def describe(op: tuple) -> str:
    """A recorded change as the user wrote it, roughly: ``out.append(0.52)``."""
    if op[0] == CALL:
        args = ", ".join(short_repr(a, 20) for a in op[5])
        return f"{op[2]}.{op[4]}({args})"
    if op[0] == REDUCE:
        return f"{op[2]} reduced with {short_repr(op[4], 20)}"
    return f"a change to {op[2]} with other values"


def same(a: object, b: object) -> bool:
    """Equal as values. Objects that define no equality (open responses, clients) count as
    the same when their types are: each run makes its own."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a).__eq__ is object.__eq__:
        return True
    try:
        return bool(a == b)
    except Exception:  # e.g. NumPy arrays: equality is elementwise
        try:
            return pickle.dumps(a) == pickle.dumps(b)
        except Exception:
            return repr(a) == repr(b)


def compared_records(run: LoopRun, items: list, recorded) -> Iterator[list]:
    """The loop on each backend of ``--compare``, each run recorded; then serial's recording
    applied, so that the kernel ends as after one serial run whatever the others did. An
    interrupt applies what serial recorded before it, and says where it stopped."""
    awaits = run.plan.body.awaits
    recordings: list[Recording] = []

    def run_one(name: str) -> tuple[RunReport, Recording]:
        recording = Recording(None, RunReport(name, 1, cores=usable_cores()))
        recordings.append(recording)
        for _ in _recorded(run, name, items, recorded, recording):
            pass
        if recording.hidden and recording.task.guard is not None:
            recording.task.guard.restore()  # the kernel's state, as serial's run left it
        return recording.report, recording

    try:
        comparison = run_comparison(backend_list(run.options.compare, awaits), awaits, run_one)
    except KeyboardInterrupt:
        if not recordings:
            raise
        yield from _applied(run, recordings[0])
        interrupt = KeyboardInterrupt()
        interrupt.add_note(errors.COMPARE_INTERRUPTED.format(
            backend=recordings[-1].report.backend, applied=recordings[0].report.item_count
        ))  # fmt: skip
        raise errors.shown_with_frames(interrupt, []) from None
    run.session.last_report = comparison
    yield from _applied(run, recordings[0])


def _recorded(run: LoopRun, name: str, items: list, recorded, recording: Recording):
    """One backend's run of the items, kept in ``recording``. Serial's run of a body that
    awaits is asyncio with one coroutine at a time."""
    awaits, report = run.plan.body.awaits, recording.report
    if name == AUTO and not awaits:
        return auto_records(run, iter(items), len(items), recorded, report, recording)
    one_at_a_time = name == REFERENCE and awaits
    workers = 1 if one_at_a_time else run.options.workers
    name = "asyncio" if one_at_a_time or name == AUTO else name
    backend, recording.task = run.start(name, workers, report, recorded)
    return run.records(backend, recording.task, iter(items), len(items), report, recording)


def _applied(run: LoopRun, serial: Recording) -> Iterator[list]:
    """Serial's recording, applied to the kernel as a serial run would have applied it."""
    report = RunReport(REFERENCE, 1)
    applier = Applier(run.ns, serial.task, report, run.plan.filename, run.tail, run.lazy)
    return replay(serial.transcript, applier)
