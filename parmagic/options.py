"""Every option of ``%%parallel``, written once.

The magic's arguments (``%%parallel?``), the help of the ``%config ParallelMagics`` settings
and the README's options table (``tools/options_table.py``) are all made from
:data:`OPTIONS`, so their words cannot drift apart. :class:`Options` is what one run was asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .backends import CHOICES

START_METHODS = ("fork", "spawn", "forkserver")
ON_ERROR = ("raise", "continue")


@dataclass(frozen=True)
class Option:
    """One option: its flags, what it does, and (``config``) what ``%config`` sets for it."""

    name: str  # the attribute it sets (argparse's dest, the traitlet's name)
    flags: tuple[str, ...]  # empty: a %config setting only
    help: str
    argparse: dict = field(default_factory=dict)
    # None: no %config setting; else what a default of 0 or '' means ("" if nothing special)
    config: str | None = None

    def config_help(self) -> str:
        """The help of its ``%config ParallelMagics`` setting, which is the default of the
        option: "(default: ...)" would be wrong there."""
        text = re.sub(r" \(default: [^)]*\)", "", self.help)
        text = text[0].upper() + text[1:] + (f" ({self.flags[-1]})" if self.flags else "")
        return f"{text}; {self.config}." if self.config else f"{text}."


OPTIONS = (
    Option("backend", ("-b", "--backend"), "where the items run (default: auto)",
           {"choices": CHOICES}, config=""),
    Option("workers", ("-w", "--workers"), "how many threads or processes",
           {"type": int}, config="0 means the backend's own default"),
    Option("chunksize", ("--chunksize",), "items per message to a worker (default: adaptive)",
           {"type": int}, config="0 means adaptive"),
    Option("start_method", ("--start-method",), "how worker processes start",
           {"choices": START_METHODS}, config="'' means Python's default"),
    Option("on_error", ("--on-error",),
           "stop at the first failing item (raise, the default) or run every item and list "
           "failures (continue)", {"choices": ON_ERROR}, config=""),
    Option("timeout", ("--timeout",), "seconds allowed to one item (default: no limit)",
           {"type": float}, config="0 means no limit"),
    Option("quiet", ("-q", "--quiet"), "no summary, no progress bar",
           {"action": "store_true", "default": None}, config=""),
    Option("no_progress", ("--no-progress",),
           "no progress bar (it shows on runs over ~1 s)", {"action": "store_true"}),
    Option("compare", ("--compare",),
           "run the loop on each backend in LIST (e.g. serial,threads,processes, or all), "
           "compare their results with serial's, keep serial's", {"metavar": "LIST"}),
    Option("rounds", ("--rounds",),
           "with --compare: run each backend N times, in alternating order, and show the median "
           "and spread (the loop runs again: for loops whose only effects parmagic records)",
           {"type": int, "metavar": "N"}),
    Option("show_code", ("--show-code",),
           "print the plain Python program (threading, multiprocessing, concurrent.futures, "
           "asyncio) that this run is equivalent to", {"action": "store_true"}),
    Option("export", ("--export",), "write that program to FILE, runnable with python",
           {"metavar": "FILE"}),
    Option("seed", ("--seed",),
           "give every item its own random streams (random, numpy.random) made from N and the "
           "item's index: the same numbers on serial, processes, futures:processes and dask",
           {"type": int, "metavar": "N"}),
    Option("unordered", ("--unordered",),
           "run a body whose changes parmagic cannot replay in item order (attributes, other "
           "objects' methods, global), accepting them in any order (threads) or on copies "
           "(processes)", {"action": "store_true"}),
    Option("keep_native_threads", ("--keep-native-threads",),
           "let worker processes use as many BLAS/OpenMP threads as the kernel does, so that "
           "threaded native reductions add in the kernel's order and give its last bits "
           "(default: capped, so that workers x threads fit the cores)",
           {"action": "store_true"}),
    Option("plot", ("--plot",), "draw per-core use and a timeline (matplotlib)",
           {"action": "store_true"}),
    Option("output", ("-o", "--output"), "store the run's report in NAME", {"metavar": "NAME"}),
    Option("scheduler", ("--scheduler",),
           "dask: use the cluster of this scheduler (tcp://HOST:PORT) instead of a local one",
           {"metavar": "ADDRESS"}, config="'' means a local cluster"),
    Option("max_workers", (), "the most worker processes a run may start",
           config="0 means 4 per usable core (at least 8)"),
)  # fmt: skip
BY_NAME = {option.name: option for option in OPTIONS}


@dataclass
class Options:
    """What one run was asked for: the magic's line over the ``%config`` defaults."""

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
    rounds: int = 1  # runs per backend of --compare
    show_code: bool = False
    export: str | None = None  # a file to write the equivalent program to
    scheduler: str | None = None  # dask: an existing cluster's scheduler address
    unordered: bool = False  # accept changes parmagic cannot replay in item order
    seed: int | None = None  # every item its own random streams, from this and its index
    native_threads: int | None = None  # --keep-native-threads: the kernel's native threads


def options_table() -> str:
    """The README's table of options (``tools/options_table.py`` writes it there)."""
    rows = ["| Option | What it does | `%config ParallelMagics.` default |", "|---|---|---|"]
    for option in OPTIONS:
        choices = option.argparse.get("choices")
        value = option.argparse.get("metavar") or ("{" + ",".join(choices) + "}" if choices else "")
        if not value and option.argparse.get("type"):
            value = "SECONDS" if option.argparse["type"] is float else "N"
        *short, last = option.flags or ("",)
        with_value = f"{last} {value}" if value else last
        shown = ", ".join([*(f"`{flag}`" for flag in short), f"`{with_value}`"])
        shown = shown if option.flags else "(`%config` only)"
        setting = "" if option.config is None else f"`{option.name}`"
        if option.config:
            setting += f": {option.config}"
        rows.append(f"| {shown} | {option.help} | {setting} |")
    return "\n".join(rows) + "\n"
