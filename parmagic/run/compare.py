"""``--compare``: the loop on each backend, each run recorded, one recording applied.

Every backend runs the same items with nothing applied to the kernel (dispatch.Recording); each
recording is set beside the serial one, item by item (same_results.py). Only the serial
recording is applied, so the kernel ends as after one serial run, whatever the other backends
did. A backend that would refuse the body on its own refuses it here too, in its row.

``--rounds N`` runs each backend N times, in alternating order, so that a machine's changing
load hits every backend alike (compare_table.py reads the rounds): asked for, never by default,
as running the loop again repeats whatever it does that no recording holds.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator

from .. import errors
from ..analysis.run_checks import hidden_effects_of, late_verdict
from ..analysis.same_results import first_difference
from ..analysis.scopes import called_name
from ..backends import load_backend
from ..errors import ParmagicUsageError
from ..machine import usable_cores
from ..summary.compare_table import AUTO, REFERENCE, Comparison, Row
from ..summary.report import RunReport
from .auto import auto_run
from .calibration import recording_costs
from .context import RunContext
from .dispatch import Applier, Recording, replay

EVERY_BACKEND = ("serial", "threads", "futures", "processes", "futures:processes", "asyncio")
RunOne = Callable[[str], tuple[RunReport, Recording]]


def backend_list(spec: str, awaits: bool) -> list[str]:
    """The backends ``--compare LIST`` names, serial first (the reference); ``all`` is every
    backend on this machine except dask (which would start a cluster)."""
    from ..backends import CHOICES

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


def unfit_for_the_body(name: str, awaits: bool) -> str | None:
    """Why ``name`` cannot run this body, before trying."""
    if name == AUTO:
        return None
    kind = load_backend(name)
    if awaits and not (kind.runs_coroutines or kind.is_the_plain_loop):
        return "the body awaits; only asyncio runs coroutines"
    if not awaits and kind.runs_coroutines:
        return "the body never awaits, so asyncio would run its items one after another"
    return None


def run_comparison(
    names: list[str], awaits: bool, run_one: RunOne,
    refused: Callable[[str], str | None] = lambda name: None,
    rounds: int = 1,
    unrepeatable: Callable[[Recording], str | None] = lambda serial: None,
    stays: Callable[[], str | None] = lambda: None,
) -> Comparison:  # fmt: skip
    """Run the loop on each backend, serial first; each other run is set beside serial's.

    ``run_one(name)`` runs the loop on a backend with a Recording and returns its report and
    recording; a ParmagicUsageError from it (e.g. data that cannot be pickled for processes)
    becomes that backend's row, as does ``refused(name)``. ``rounds`` over one run the
    backends again, in alternating order, unless ``unrepeatable(serial's recording)`` says
    why the loop must not run again. Auto, where ``stays()`` gives its reason to run in the
    kernel, is the serial run itself (a second run in the kernel would change the kernel's
    objects twice). A KeyboardInterrupt stops the whole comparison.
    """
    comparison = Comparison(rows=[Row(name) for name in names])
    for row in comparison.rows:
        row.refused = unfit_for_the_body(row.backend, awaits) or refused(row.backend)
        if row.backend == AUTO and not row.refused and not awaits:
            row.as_serial = stays()
    reference = _round(comparison.rows, run_one, None)
    why = unrepeatable(reference) if rounds > 1 else None
    if why:
        comparison.warnings.append(errors.ROUNDS_NOT_REPEATED.format(rounds=rounds, why=why))
    comparison.rounds = 1 if why else _more_rounds(comparison, run_one, reference, rounds)
    for row in comparison.rows:
        if row.as_serial:
            row.runs, row.walls = comparison.reference.runs, comparison.reference.walls
    return comparison


def _more_rounds(comparison: Comparison, run_one: RunOne, reference: Recording, rounds: int):
    """Rounds 2 to ``rounds``; stops after one in which serial's run differed from its first
    (the loop changed something its recording missed). Returns the rounds run."""
    for number in range(1, rounds):
        order = comparison.rows[::-1] if number % 2 else comparison.rows
        _round([row for row in order if row.same], run_one, reference)
        serial = comparison.reference
        if serial.difference is not None:
            comparison.warnings.append(errors.SERIAL_NOT_REPEATABLE.format(what=serial.difference))
            serial.difference = None  # the reference: the others are set beside its first run
            return number + 1
    return rounds


def _round(rows: list[Row], run_one: RunOne, reference: Recording | None) -> Recording:
    """One run of each row's backend; returns the serial recording (the first, if new)."""
    for row in rows:
        if row.refused or row.as_serial:
            continue
        try:
            report, recording = run_one(row.backend)
        except ParmagicUsageError as reason:
            row.refused = first_sentence(reason)
            if reference is None and row.backend == REFERENCE:
                raise  # the serial run itself cannot run: nothing to compare with
            continue
        row.runs.append(report)
        row.walls.append(_as_it_runs(report, row.backend))
        if reference is None:
            reference = recording
        elif recording.hidden:
            row.difference = errors.COMPARE_HIDDEN.format(what=recording.hidden)
        else:
            row.difference = first_difference(reference.transcript, recording.transcript)
    return reference


def _as_it_runs(report: RunReport, backend: str) -> float:
    """The run's wall time as the backend runs the loop on its own: serial's leaves out the
    recording that --compare adds and ``-b serial``, running the loop itself, does not do."""
    if backend != REFERENCE or report.backend != REFERENCE:
        return report.wall
    return max(report.wall - report.recording, report.wall / 2)


def compared_runs(run: RunContext, items: list, replayed) -> Iterator[list]:
    """The loop on each backend of ``--compare``, each run recorded; then serial's recording
    applied, so that the kernel ends as after one serial run whatever the others did. An
    interrupt applies what serial recorded before it, and says where it stopped."""
    awaits = run.plan.body.awaits
    recordings: list[Recording] = []

    def run_one(name: str) -> tuple[RunReport, Recording]:
        report = RunReport(name, 1, cores=usable_cores(), costs=recording_costs())
        recording = Recording(None, report)
        recordings.append(recording)
        for _ in _recorded(run, name, items, replayed, recording):
            pass
        if recording.hidden and recording.task.guard is not None:
            recording.task.guard.restore()  # the kernel's state, as serial's run left it
        return recording.report, recording

    def refused(name: str) -> str | None:
        verdict = late_verdict(run.plan, run.ns, run.options, name, replayed)
        return first_sentence(verdict.refused) if verdict.refused else None

    names = backend_list(run.options.compare, awaits)
    try:
        unrepeatable = _unrepeatable(run, lambda: refused("threads") is None)

        def stays() -> str | None:
            verdict = late_verdict(run.plan, run.ns, run.options, AUTO, replayed)
            return verdict.raise_refusal().in_the_kernel

        rounds = run.options.rounds
        comparison = run_comparison(names, awaits, run_one, refused, rounds, unrepeatable, stays)
    except KeyboardInterrupt:
        if not recordings:
            raise
        yield from _applied(run, recordings[0])
        interrupt = KeyboardInterrupt()
        interrupt.add_note(errors.COMPARE_INTERRUPTED.format(
            backend=recordings[-1].report.backend,
            applied=errors.first_applied(recordings[0].report.item_count),
        ))  # fmt: skip
        raise errors.shown_with_frames(interrupt, []) from None
    run.session.last_report = comparison
    yield from _applied(run, recordings[0])


def _unrepeatable(run: RunContext, in_kernel_ok: Callable[[], bool]) -> Callable:
    """Why running the loop again could change what its recording misses (None: nothing
    found): what parmagic can tell; ``--rounds`` is the user's word for the rest."""
    body, plan = run.plan.body.node, run.plan

    def unrepeatable(serial: Recording) -> str | None:
        report = serial.report
        if serial.hidden or report.failures or report.stopped_at is not None:
            return "the serial run failed or changed state it does not name"
        if run.options.unordered or any(result.changed for result, _ in serial.transcript):
            return "its items change kernel objects in place"
        if plan.body.item_advances:
            return "its items advance iterators, which a second run would advance further"
        opens = any(
            isinstance(node, ast.Call) and called_name(node) == "open" for node in ast.walk(body)
        )
        if opens or hidden_effects_of(plan, run.ns) or not in_kernel_ok():
            return "its items have effects that parmagic does not record"
        return None

    return unrepeatable


def first_sentence(refusal: ParmagicUsageError | str) -> str:
    """A refusal as a row says it: what stops the backend, without the advice that follows
    (serial has run, so "nothing has run" is no longer true either)."""
    text = str(refusal).split("\n")[0]
    first = text.split(". ")[0].rstrip(".")
    return first.replace(" (nothing has run)", "").replace(", so nothing has run", "")


def _recorded(run: RunContext, name: str, items: list, replayed, recording: Recording):
    """One backend's run of the items, kept in ``recording``. Serial's run of a body that
    awaits is asyncio with one coroutine at a time."""
    awaits, report = run.plan.body.awaits, recording.report
    if name == AUTO and not awaits:
        return auto_run(run, iter(items), len(items), replayed, report, recording)
    one_at_a_time = name == REFERENCE and awaits
    workers = 1 if one_at_a_time else run.options.workers
    name = "asyncio" if one_at_a_time or name == AUTO else name
    backend, recording.task = run.start(name, workers, report, replayed, recording=True)
    return run.run_on(backend, recording.task, iter(items), len(items), report, recording)


def _applied(run: RunContext, serial: Recording) -> Iterator[list]:
    """Serial's recording, applied to the kernel as a serial run would have applied it."""
    report = RunReport(REFERENCE, 1)
    applier = Applier(
        run.ns, serial.task, report, run.plan.filename, run.tail, run.lazy, show=run.session.show
    )
    return replay(serial.transcript, applier)
