"""The table ``--compare`` prints: one row per backend, the speedups, and which was fastest.

A figure the machine cannot give is never printed as a fact: a speedup above the ideal for the
row's workers and cores is marked, with the likely reason (the serial run was slowed). A
backend is named fastest only when its runs beat every other's by more than they varied.
"""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass, field

from .. import errors
from ..errors import plural
from .render import BAR_FILL, BAR_FILL_DIFFERENT, LOAD_SECONDS, html_bar, times
from .report import RunReport

REFERENCE = "serial"
AUTO = "auto"
BEYOND_IDEAL = 1.05  # a speedup this far over the ideal is not a measurement of the loop
ONE_RUN_MARGIN = 0.10  # with one run each, what a faster backend must beat the others by
BUSY_MACHINE = 25  # percent of the machine other programs used from which the table says so


@dataclass
class Row:
    """One backend's runs (one per round), or why it could not run."""

    backend: str
    runs: list[RunReport] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)  # per round (serial's without recording)
    difference: str | None = None  # what differed from the serial run (None: the same)
    refused: str | None = None  # why this backend could not run the loop
    as_serial: str | None = None  # auto's reason to run in the kernel: serial's run is its run

    @property
    def report(self) -> RunReport | None:
        """The run the table shows: the median one."""
        if not self.runs:
            return None
        middle = sorted(range(len(self.walls)), key=self.walls.__getitem__)[len(self.walls) // 2]
        return self.runs[middle]

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def spread(self) -> float:
        """Half the range of the rounds' times, over their median (0 with one round)."""
        return (max(self.walls) - min(self.walls)) / 2 / self.wall if self.wall else 0.0

    @property
    def same(self) -> bool:
        return bool(self.runs) and self.refused is None and self.difference is None


@dataclass
class Comparison:
    """The table ``--compare`` prints; ``-o NAME`` stores it."""

    rows: list[Row] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rounds: int = 1

    @property
    def reference(self) -> Row:
        return self.rows[0]

    def speedup(self, row: Row) -> float:
        return self.reference.wall / row.wall if row.wall > 0 else 0.0

    def ideal(self, row: Row) -> float:
        return 1.0 if row is self.reference else row.report.ideal

    def beyond_ideal(self, row: Row) -> bool:
        """A speedup more than the row's workers and this machine's cores allow."""
        return bool(row.runs) and self.speedup(row) > BEYOND_IDEAL * self.ideal(row)

    @property
    def fastest(self) -> Row | None:
        """The fastest backend that gave the serial run's results and effects, when it beat
        every other such backend by more than their runs varied; None if some were even."""
        leaders = self.leaders
        return leaders[0] if len(leaders) == 1 else None

    @property
    def leaders(self) -> list[Row]:
        """The fastest backend with the serial results, and those it did not clearly beat."""
        same = self._contenders
        if not same or self.failed_at is not None:
            return []
        best = min(same, key=lambda row: row.wall)
        return [best] + [row for row in same if row is not best and not self._beats(best, row)]

    @property
    def _contenders(self) -> list[Row]:
        return [row for row in self.rows if row.same and not row.as_serial]

    def _beats(self, best: Row, other: Row) -> bool:
        """Clearly faster: with one run each, by a margin; with rounds, its slowest run faster
        than the other's fastest (their ranges do not overlap)."""
        if len(best.walls) == 1 or len(other.walls) == 1:
            return best.wall * (1 + ONE_RUN_MARGIN) < other.wall
        return max(best.walls) < min(other.walls)

    @property
    def reports(self) -> dict[str, RunReport]:
        return {row.backend: row.report for row in self.rows if row.runs}

    @property
    def failed_at(self) -> int | None:
        """The item at which the serial run stopped with an error (None: it did not)."""
        reference = self.reference.report
        return reference.stopped_at if reference is not None else None

    @property
    def busy_machine(self) -> float:
        """The most of the machine other programs used during a row's runs, in percent."""
        shares = [
            run.usage.others_mean
            for row in self.rows
            for run in row.runs
            if run.usage is not None and run.wall > LOAD_SECONDS
        ]
        return max(shares, default=0.0)

    def verdict(self, row: Row) -> str:
        if row.refused:
            return f"did not run: {row.refused}"
        stopped = row.report.stopped_at
        failed = f"failed at item {stopped}" if stopped is not None else ""
        if row is self.reference:
            return failed or "(the reference)"
        if row.as_serial:
            return f"the serial run: auto stays in the kernel ({row.as_serial})"
        if row.difference is not None:
            return f"differs: {row.difference}"
        return failed or "✓"

    def cells(self, row: Row) -> list[str]:
        r = row.report
        if r is None:
            return [row.backend, "", "", "", "", ""]
        cores = " ".join(f"{max(m, 0):.0f}%" for m in r.usage.core_means()) if r.usage else ""
        ours = f"{max(r.usage.ours_mean, 0):.0f}%" if r.usage else ""
        wall = f"{row.wall:.3f} s" + (f" ±{row.spread:.0%}" if len(row.walls) > 1 else "")
        speed = times(self.speedup(row)) + ("*" if self.beyond_ideal(row) else "")
        name = row.backend
        if row.backend == AUTO:
            name = f"auto: {REFERENCE if row.as_serial else r.backend}"
        return [name, str(r.workers), wall, speed, ours, cores]

    def conclusion(self) -> str:
        if self.failed_at is not None:
            return f"the serial run failed at item {self.failed_at}: no backend is named fastest"
        leaders = self.leaders
        if not leaders:
            return "no backend gave the serial run's results"
        best = leaders[0]
        if len(leaders) > 1:
            names = ", ".join(row.backend for row in leaders)
            if len(leaders) == len(self._contenders):
                return errors.COMPARE_EVEN.format(names=names, margin=self._margin())
            return errors.COMPARE_LEADERS.format(
                names=names, speedup=self._speedup_text(best), margin=self._margin()
            )
        if best is self.reference:
            return "fastest with the serial results: serial itself; no backend beat it here"
        return f"fastest with the serial results: {best.backend}, {self._speedup_text(best)}"

    def _speedup_text(self, row: Row) -> str:
        """``1.71× serial (0.181 s)``; only the time where the speedup is not a figure of the
        loop (above the ideal)."""
        if self.beyond_ideal(row):
            return f"{row.wall:.3f} s"
        return f"{times(self.speedup(row))} serial ({row.wall:.3f} s)"

    def _margin(self) -> str:
        if self.rounds == 1:
            return (
                f"one run each: a difference under {ONE_RUN_MARGIN:.0%} says nothing "
                "(--rounds N repeats the runs)"
            )
        return f"their {self.rounds} runs each overlapped"

    def notes(self) -> list[str]:
        """What the figures need said beside them: marked speedups, a busy machine, rounds."""
        notes = [self._beyond_note(row) for row in self.rows if self.beyond_ideal(row)]
        if self.busy_machine > BUSY_MACHINE:
            notes.append(errors.COMPARE_BUSY.format(share=self.busy_machine))
        if self.rounds > 1:
            notes.append(errors.COMPARE_ROUNDS.format(rounds=self.rounds))
        return notes

    def _beyond_note(self, row: Row) -> str:
        serial = self.reference.report
        load = serial.usage.others_mean if serial.usage is not None else 0.0
        why = errors.SERIAL_SLOWED_BY_LOAD.format(share=load) if load > 5 else errors.NOISE
        return errors.BEYOND_IDEAL.format(
            backend=row.backend, speedup=self.speedup(row), ideal=self.ideal(row),
            workers=plural(row.report.workers, "worker"), cores=plural(row.report.cores, "core"),
            why=why,
        )  # fmt: skip

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
        return "\n".join([*lines, self.conclusion(), *self.notes()])

    __str__ = summary

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(self.summary())

    def _repr_html_(self) -> str:
        """The table with a bar per backend (its speedup; red where results differed)."""
        fastest = max((self.speedup(r) for r in self.rows if r.runs), default=1.0) or 1.0
        titles = ("backend", "workers", "wall", "speedup", "", "CPU", "per core", "same as serial")
        head = "".join(f"<th style='text-align:left'>{title}</th>" for title in titles)
        body = ""
        for row in self.rows:
            cells = [html.escape(cell) for cell in self.cells(row)]
            drawn = ""
            if row.runs:
                fill = BAR_FILL if row.difference is None else BAR_FILL_DIFFERENT
                drawn = html_bar(self.speedup(row) / fastest * 100, 120, fill)
            tds = [*cells[:4], drawn, *cells[4:], html.escape(self.verdict(row))]
            body += "<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in tds) + "</tr>"
        lines = [self.conclusion(), *self.notes()]
        after = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
        return f"<table class='parmagic-compare'><tr>{head}</tr>{body}</table>{after}"

    def plot_report(self) -> RunReport:
        """The run ``--plot`` draws: the fastest with the serial results."""
        return (self.fastest or self.reference).report
