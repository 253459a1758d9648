"""The magics: the only module that talks to IPython (options, running the cell, display).

A newcomer starts here, with the path of a cell drawn in the package's docstring (__init__.py).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import inspect
import io
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import Image, display
from traitlets import Bool, CaselessStrEnum, Float, Integer, Unicode

from . import errors
from .analysis.cell import HOOK_NAME, split_for_display, statements_before
from .analysis.policy import verdict_for
from .analysis.preview import Preview
from .analysis.run_checks import hidden_effects_of, late_verdict, replayed_names
from .analysis.verdict import RUN, Verdict
from .backends import CHOICES, REGISTRY, load_backend, may
from .errors import ParmagicUsageError
from .info import machine_info
from .machine import has_item_alarms, start_methods, usable_cores
from .options import BY_NAME, ON_ERROR, OPTIONS, START_METHODS, Options
from .run.loop_run import LoopRun, awaitable, resolve_backend
from .run.session import Session
from .summary.report import RunReport
from .worker.native_threads import kernel_native_threads

NO_LIMIT = 1e6  # seconds: a --timeout this long (or inf) is no limit


def _report_text(report: RunReport, printer, cycle: bool) -> None:
    from .summary.render import text_summary  # psutil: imported by a run, not by %load_ext

    printer.text(text_summary(report))


def _report_html(report: RunReport) -> str:
    from .summary.render import html_summary

    return html_summary(report)


REPORT_FORMATS = {"text/plain": _report_text, "text/html": _report_html}


def _help(name: str) -> str:
    return BY_NAME[name].config_help()


def with_options(options, statement: bool = True) -> Callable:
    """A magic's arguments, from the one list of options (options.py), as ``@argument``
    lines would add them, in the list's order; then the statement of the line magic."""

    def decorate(magic: Callable) -> Callable:
        if statement:
            magic = argument(
                "statement", nargs=argparse.REMAINDER, help="line magic only: the statement to run"
            )(magic)
        for option in reversed(options):
            if option.flags:
                magic = argument(
                    *option.flags, dest=option.name, help=option.help, **option.argparse
                )(magic)
        magic = magic_arguments()(magic)
        magic.parser.allow_abbrev = False  # `--worker 4` is refused, not read as --workers
        if statement:  # the cell magic's usage: %%parallel
            magic.parser.prog = f"%{magic.parser.prog}"
            magic.__doc__ = magic.parser.format_help()
        return magic

    return decorate


@magics_class
class ParallelMagics(Magics):
    """``%%parallel`` and ``%parallel``. Defaults are settable with ``%config ParallelMagics``."""

    backend = CaselessStrEnum(CHOICES, default_value="auto", help=_help("backend")).tag(config=True)
    workers = Integer(0, help=_help("workers")).tag(config=True)
    chunksize = Integer(0, help=_help("chunksize")).tag(config=True)
    max_workers = Integer(0, help=_help("max_workers")).tag(config=True)
    start_method = CaselessStrEnum(
        ("", *START_METHODS), default_value="", help=_help("start_method")
    ).tag(config=True)
    on_error = CaselessStrEnum(ON_ERROR, default_value="raise", help=_help("on_error")).tag(
        config=True
    )
    timeout = Float(0.0, help=_help("timeout")).tag(config=True)
    quiet = Bool(False, help=_help("quiet")).tag(config=True)
    scheduler = Unicode("", help=_help("scheduler")).tag(config=True)

    def __init__(self, shell=None, **kwargs) -> None:
        super().__init__(shell=shell, **kwargs)
        self.session = Session(show=display)
        self._formatters = shell.display_formatter.formatters
        for mime, format_report in REPORT_FORMATS.items():  # how a report shows: its summary
            self._formatters[mime].for_type(RunReport, format_report)
        self._plot_folder: str | None = None  # --plot's files outside a notebook
        self._plots = 0

    @with_options(OPTIONS)
    @line_cell_magic
    def parallel(self, line: str, cell: str | None = None):
        """Run the loop of a cell (or of one statement) in parallel, with serial results.

        The cell's one top-level ``for`` loop (or, failing that, its one comprehension) runs
        item by item on the chosen backend; everything else runs in the kernel as usual, and
        the kernel ends as if the cell had run without this line.
        """
        options, statement = self._options(line, "%%parallel" if cell is not None else "%parallel")
        if cell is None:
            if not statement:
                raise UsageError(
                    "%parallel needs a statement, e.g. %parallel sq = [f(x) for x in xs]"
                )
            source = self.shell.transform_cell(statement)
        else:
            if statement:
                raise UsageError(f"unexpected text after the options: {statement!r}")
            source = "\n" + self.session.transformed(cell, self.shell)  # lines as the cell shows
        filename = self.shell.compile.cache(source, running_cell_number(self.shell))
        plan, as_written, checked = None, None, RUN
        try:
            plan, checked = self._plan(source, filename, options)
        except ParmagicUsageError as exc:
            if not may(options.backend, "is_the_plain_loop") or options.compare:
                raise UsageError(str(exc)) from None
            as_written = str(exc)  # the plain kernel runs it: so do serial and auto
        except SyntaxError as exc:
            raise exc.with_traceback(None) from None  # the cell's line, not parmagic's frames
        try:
            if plan is None:
                return self._run_as_written(source, filename, options, as_written)
            return self._run(plan, options, checked)
        finally:
            if options.show_code or options.export:
                self._show_program(source, plan, options)

    def _plan(self, source: str, filename: str, options: Options):
        """The checked cell, and auto's reason to stay in the kernel; refused with
        ParmagicUsageError, before the cell's first statement runs: what the statements before
        the loop define is judged from their source (preview.py)."""
        plan = self.session.plan(source, filename, options.backend, self.shell)
        if plan.body.tail and (options.show_code or options.export):
            first, last = plan.body.tail[0].lineno, plan.body.tail[-1].end_lineno
            raise UsageError(errors.NO_PROGRAM_FOR_TAIL.format(first=first, last=last))
        before = statements_before(plan)
        preview = Preview(self.shell.user_ns, before, plan.body.node.lineno, filename)
        try:
            known = preview.ns
            backend = "serial" if options.compare else options.backend  # compare keeps serial's
            effects = hidden_effects_of(plan, known)
            verdict = verdict_for(effects, backend, options.unordered, options.seed).raise_refusal()
            if not options.compare and preview.complete:  # else names may have been rebound
                name = resolve_backend(backend, plan.body.awaits)
                replayed = replayed_names(plan, known)
                later = functools.partial(late_verdict, plan, known, options, name, replayed)
                verdict = verdict.then(later).raise_refusal()
        finally:
            preview.close()
        if verdict.in_the_kernel and plan.body.awaits and options.backend == "auto":
            raise ParmagicUsageError(verdict.in_the_kernel)  # asyncio, the one backend for it
        return plan, verdict

    def _show_program(self, source: str, plan, options) -> None:
        """--show-code and --export, for the backend that ran (auto's choice, if auto)."""
        from .summary.showcode import chunksize_of, program

        if plan is None:  # ran as written: the cell is its own program
            text = f"# ran as written in the kernel\n{source.lstrip()}"
            return self._show_text(text, text, options)
        ns = self.shell.user_ns  # after the run: the receivers the loop changed exist now
        replayed = replayed_names(plan, ns)
        report = self.session.last_report
        if report is None:
            return
        report = one_run(report)
        arguments = (source, plan.body, replayed, ns, report.backend, report.workers)
        chunking = chunksize_of(report, options.chunksize)
        shown = program(*arguments, report.start_method, export=False, chunking=chunking)
        exported = program(*arguments, report.start_method, export=True, chunking=chunking)
        self._show_text(shown, exported, options)

    def _show_text(self, shown: str, exported: str, options: Options) -> None:
        from .summary.showcode import highlighted

        if options.show_code:
            if self._in_notebook():
                display({"text/html": highlighted(shown), "text/plain": shown}, raw=True)
            else:
                print(shown)
        if options.export:
            with open(options.export, "w") as script:
                script.write(exported)
            where = os.path.abspath(options.export)
            print(f"parmagic: wrote {where}; run it with: python {options.export}")

    def _check_workers(self, workers: int, backend: str, compare: str | None) -> None:
        """Refuse more worker processes than the machine can hold (each is a Python)."""
        named = set(compare.split(",")) if compare else {backend}
        if not workers or not any(may(name, "starts_processes") for name in named):
            return
        limit = self.max_workers or max(8, 4 * usable_cores())
        if workers > limit:
            raise UsageError(errors.TOO_MANY_WORKERS.format(workers=workers, limit=limit))

    def _options(self, line: str, magic: str = "%%parallel") -> tuple[Options, str]:
        """The run's options: the line over the ``%config`` defaults, every one checked
        before anything in the cell runs; and the line magic's statement."""
        args = self._arguments(line, magic)
        backend = args.backend or self.backend
        self._check_workers(args.workers or self.workers, backend, args.compare)
        named = [backend, *(args.compare or "").split(",")]
        on_a_cluster = any(
            name in REGISTRY and load_backend(name).takes_scheduler for name in named
        )
        if args.scheduler and not on_a_cluster:
            raise UsageError(errors.SCHEDULER_ONLY_FOR_DASK.format(backend=backend))
        options = Options(
            backend=backend,
            workers=args.workers or self.workers or None,
            chunksize=args.chunksize or self.chunksize or None,
            start_method=args.start_method or self.start_method or None,
            on_error=args.on_error or self.on_error,
            timeout=args.timeout or self.timeout or None,
            quiet=bool(args.quiet) or self.quiet,
            progress=not args.no_progress and self._watched_live(),
            plot=args.plot,
            output=args.output,
            compare=args.compare,
            rounds=args.rounds or 1,
            show_code=args.show_code,
            export=args.export,
            scheduler=(args.scheduler or self.scheduler or None) if on_a_cluster else None,
            unordered=args.unordered,
            seed=args.seed,
            native_threads=kernel_native_threads() if args.keep_native_threads else None,
        )
        _check_together(options, args)
        return options, " ".join(args.statement).strip()

    def _arguments(self, line: str, magic: str) -> argparse.Namespace:
        """The line parsed, with the numbers in range; errors name the magic as written."""
        try:
            args = parse_argstring(self.parallel, line)
        except UsageError as exc:
            usage = self.parallel.parser.format_usage().replace("::", "").strip()
            usage = usage.replace("%%parallel", magic, 1)
            refusal = str(abbreviated(self.parallel.parser, line) or exc)
            raise UsageError(f"{refusal.replace('%%parallel', magic)}\n{usage}") from None
        for name in ("workers", "chunksize", "rounds"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be 1 or more, not {value}")
        if args.timeout is not None and not args.timeout > 0:
            raise UsageError(f"--timeout must be a number of seconds above 0, not {args.timeout}")
        if args.timeout is not None and args.timeout >= NO_LIMIT:
            args.timeout = None  # inf, or so long that it is no limit (and timers overflow)
        return args

    def _run(self, plan, options: Options, checked: Verdict):
        warn, ns = errors.print_warning, self.shell.user_ns
        hook = LoopRun(plan, ns, options, self.session, warn, checked)
        hooks = {HOOK_NAME: awaitable(hook) if plan.is_async else hook}
        ran = statements_before(plan)  # what a refusal at the loop comes after
        return self._execute(plan.split_for_display(), plan.filename, hooks, options, ran=ran)

    def _run_as_written(self, source: str, filename: str, options: Options, reason: str):
        """The cell as the plain kernel runs it, its loop's items timed for the summary."""
        from .run.as_written import CLOCK_NAME, ItemClock, Timed, note, with_clock

        module = with_clock(self.shell.transform_ast(ast.parse(source, filename)))
        report, clock = RunReport("serial", 1, cores=usable_cores()), ItemClock()
        note(report, options.backend, reason)
        parts = split_for_display(module)
        return self._execute(parts, filename, {CLOCK_NAME: clock}, options, Timed(report, clock))

    def _execute(
        self, parts, filename: str, hooks: dict, options: Options, around=None, ran=()
    ):  # fmt: skip
        """Run the cell's code (its statements, then its final expression, whose value is the
        cell's) with parmagic's names in the namespace; then the run's summary."""
        ns, (head, last) = self.shell.user_ns, parts
        flags = self.shell.compile.flags | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        before = self.session.last_report
        ns.update(hooks)
        try:
            with around or contextlib.nullcontext():
                if around is not None:
                    self.session.last_report = around.report
                self._evaluate(compile(head, filename, "exec", flags, True), ns)
                if last is not None:
                    return self._evaluate(compile(last, filename, "eval", flags, True), ns)
        except ParmagicUsageError as exc:  # refused at the loop, once statements before it ran
            report = self.session.last_report
            if report is before or getattr(report, "item_count", 0) == 0:
                exc = errors.ran_before(exc, filename, list(ran))
            raise UsageError(str(exc)) from None
        except Exception as exc:
            if not hasattr(exc, "_render_traceback_"):
                errors.shown_with_frames(exc, errors.user_frames(exc.__traceback__))
            raise
        finally:
            for name in hooks:
                ns.pop(name, None)
            report = self.session.last_report
            if report is not None and not getattr(report, "started", True):
                report = self.session.last_report = before  # refused: nothing ran to sum up
            if report is not None and report is not before:
                for message in counted(report.warnings):
                    errors.print_warning(message)
                if options.output:
                    ns[options.output] = report
                if not options.quiet:
                    self._tell_native_limit_once(report)
                    display(report)  # HTML in a notebook, text in a terminal
                if options.plot:
                    self._show_figure(draw(report))

    def _tell_native_limit_once(self, report) -> None:
        """The session's first summary of a run whose items used a library with native
        thread pools, capped in the workers, says so; later summaries do not repeat it."""
        if native_note(report) and not self.session.told_native_limit:
            report.tells_native_limit = self.session.told_native_limit = True

    def _evaluate(self, code, ns: dict):
        """Run cell code; code that awaits runs as a coroutine on parmagic's own event loop."""
        if not code.co_flags & inspect.CO_COROUTINE:
            return eval(code, ns)
        return self.session.run_coroutine(eval(code, ns))

    @with_options([BY_NAME["plot"], BY_NAME["output"]], statement=False)
    @line_magic
    def parallel_report(self, line: str):
        """Show the last run's summary again; the report object is the cell's value. With
        --plot, the figure only (-o NAME still stores the report)."""
        args = parse_argstring(self.parallel_report, line)
        report = self.session.last_report
        if report is None:
            raise UsageError("no %%parallel run yet in this session")
        if args.output:
            self.shell.user_ns[args.output] = report
        if args.plot:
            _check_plotting()
            self._show_figure(draw(report))
            return None
        return report

    def _watched_live(self) -> bool:
        """Whether someone watches the cell as it runs (JupyterLab, Notebook, VS Code, a
        terminal), rather than a program that executes the notebook and saves its outputs
        (nbclient, nbconvert, papermill), where a progress bar stays behind as frozen text.
        Such programs say so: they do not let the kernel ask for input()."""
        kernel = getattr(self.shell, "kernel", None)
        if not hasattr(kernel, "get_parent"):
            return True  # terminal IPython
        request = kernel.get_parent("shell") or {}
        return bool(request.get("content", {}).get("allow_stdin", True))

    def _in_notebook(self) -> bool:
        return type(self.shell).__name__ == "ZMQInteractiveShell"  # a Jupyter kernel

    def _show_figure(self, figure) -> None:
        """A PNG in a notebook; in a terminal, a temporary file, named: the working folder is
        the user's (the files go when the extension is unloaded or the kernel ends)."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        if self._in_notebook():
            display(Image(buffer.getvalue()))
            return
        if self._plot_folder is None:
            self._plot_folder = tempfile.mkdtemp(prefix="parmagic-plots-")
        self._plots += 1
        path = os.path.join(self._plot_folder, f"run-{self._plots}.png")
        with open(path, "wb") as png:
            png.write(buffer.getvalue())
        print(f"parmagic: plot written to {path}")

    @line_magic
    def parallel_info(self, line: str = ""):
        """Cores, start methods, the GIL, warm pools and the defaults in force."""
        defaults = {name: getattr(self, name) for name in self.trait_names(config=True)}
        return machine_info(self.session, defaults)

    def close(self) -> None:
        self.session.close()
        for mime in REPORT_FORMATS:
            self._formatters[mime].pop(RunReport, None)
        if self._plot_folder is not None:
            shutil.rmtree(self._plot_folder, ignore_errors=True)
            self._plot_folder = None


def running_cell_number(shell) -> int:
    """The number of the cell being run, ``In [N]``, which names it in tracebacks. IPython 9
    counts the next cell before running this one (``execution_count`` is one ahead); the
    cell's own ExecutionResult holds its number, as IPython used it to name the cell."""
    result = getattr(shell.displayhook, "exec_result", None)
    number = getattr(result, "execution_count", None)
    return shell.execution_count if number is None else number


def abbreviated(parser: argparse.ArgumentParser, line: str) -> str | None:
    """The refusal of an option given by the start of its name (``--worker`` for
    ``--workers``), which argparse would otherwise have taken for it."""
    from IPython.utils.process import arg_split

    try:
        _, unknown = parser.parse_known_args(arg_split(line))
    except UsageError:
        return None
    flags = [flag for action in parser._actions for flag in action.option_strings]
    for given in (word.split("=")[0] for word in unknown if word.startswith("--")):
        meant = [flag for flag in flags if flag.startswith(given)]
        if meant:
            return errors.ABBREVIATED_OPTION.format(given=given, meant=" or ".join(meant))
    return None


def counted(messages: list[str]) -> list[str]:
    """Each distinct message once, in first-seen order, with a count where it repeated."""
    counts = Counter(messages)
    return [m if counts[m] == 1 else f"{m} ({counts[m]} times)" for m in counts]


def _check_together(options: Options, args: argparse.Namespace) -> None:
    """Options that must hold together, or cannot be used as given: refused before the
    cell's statements run (a scheduler that cannot be reached, a file that cannot be
    written)."""
    if options.scheduler:  # before the statements before the loop run
        from .backends.dask_cluster import check_reachable

        try:
            check_reachable(options.scheduler)
        except ParmagicUsageError as unreachable:
            raise UsageError(str(unreachable)) from None
    if args.rounds and not args.compare:
        raise UsageError(errors.ROUNDS_NEED_COMPARE)
    if args.compare:
        from .run.compare import backend_list

        try:
            backend_list(args.compare, awaits=False)
        except ParmagicUsageError as exc:
            raise UsageError(str(exc)) from None
    _check_platform(options, args)
    if options.start_method and not may(options.backend, "takes_start_method") and not args.compare:
        raise UsageError(errors.START_METHOD_NOT_USED.format(backend=options.backend))
    if args.seed is not None and not may(options.backend, "seedable"):
        raise UsageError(errors.SEED_NEEDS_PROCESSES.format(backend=options.backend))
    if args.export:
        _check_writable(args.export)
    if args.output and not args.output.isidentifier():
        raise UsageError(f"-o needs a variable name, not {args.output!r}")
    if args.plot:
        _check_plotting()


def _check_platform(options: Options, args: argparse.Namespace) -> None:
    """What this platform cannot do (Windows: fork, SIGALRM), said before anything runs."""
    offered = start_methods()
    if options.start_method and options.start_method not in offered:
        missing = errors.START_METHOD_MISSING
        raise UsageError(missing.format(method=options.start_method, offered=", ".join(offered)))
    if not options.timeout or has_item_alarms():
        return
    from .backends import load_backend
    from .run.compare import backend_list

    names = backend_list(args.compare, awaits=False) if args.compare else [options.backend]
    alarmed = [n for n in names if n == "auto" or load_backend(n).times_out_by_alarm]
    if alarmed:
        raise UsageError(errors.TIMEOUT_NEEDS_ALARM.format(backends=", ".join(alarmed)))


def _check_writable(path: str) -> None:
    """--export's file, checked before anything runs: a run must not end in a lost script."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(errors.EXPORT_NOT_WRITABLE.format(path=path, folder=folder))


def _check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from .summary.plot import PLOT_MISSING

        raise UsageError(PLOT_MISSING) from None


def native_note(report) -> bool:
    """Whether the run's items used native thread pools that the workers capped."""
    return bool(getattr(report, "native_limit", None) and getattr(report, "native_code", False))


def one_run(report):
    """A run's report; for a comparison, its fastest run with serial's results."""
    return report.plot_report() if hasattr(report, "plot_report") else report


def draw(report):
    from .summary.plot import draw as draw_report

    return draw_report(one_run(report))
