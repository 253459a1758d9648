"""What the hidden-state guard costs (``parmagic/hidden_state.py``).

Two parts, written to ``bench/hidden_state.md`` (``bench/run.py`` copies it into
``results.md``):

1. Before and after: bench/run.py's CPU-bound loops (``n**n``, a pure-Python function,
   Collatz), its I/O-bound one (200 URLs from the slow local server, bench/urls.py), 10,000
   no-op items and 20,000 tiny items, on warm ``-b threads`` and ``-b processes`` (fork) pools,
   run by parmagic as it was before the guard (``--before``, a git revision), as it is now
   (the working tree, copied at the start), and as it is now with ``Guard.around`` patched to
   watch nothing (the rest of the change alone); each arm in a fresh IPython of its own, the
   arms in turn, several rounds. Then the ``n**n`` and short loops again in kernels that have
   loaded ``numpy.random`` (``import pandas`` does), whose global random state the guard
   compares after every chunk.
2. Scaling: a user module (a file outside the standard library and site-packages) holding a
   100 MB NumPy array, a list of 1,000,000 ints, a dict of 1,000,000 entries, 10,000 small
   globals, or 1,000 lists of 10,000 ints (each small enough to be copied, so that the state
   can be put back), and a function ``square`` the loop calls, so that the guard reaches the
   module. For each: ``Guard.around`` (once per run, in the kernel for threads, in every
   worker for processes) and ``guard.changed()`` (after every chunk) timed directly, what the
   guard keeps (tracemalloc), and the wall time of ``out.append(square(i))`` over 200 items on
   ``-b threads --chunksize 1`` (200 chunks, so 200 checks) with ``square`` from the module
   and with a notebook ``square``, the module not imported.

Usage: python bench/hidden_state.py [--before REV] [--rounds N] [--repeats N] [--scaling-only]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import run  # bench/run.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEFORE = "36d8c83"  # main just before the guard (issue 28)

THREADS = "-b threads"
PROCESSES = "-b processes --start-method fork"
# bench/run.py's workloads, as cells define them
SETUP = (
    "import time\nimport numpy as np\nimport requests\n"
    + "".join(inspect.getsource(function) for function in (run.digits, run.spin, run.collatz))
    + "session = requests.Session()\n"
)
NUMPY_RANDOM = "import numpy.random  # as pandas, scipy and scikit-learn do on import\n"
URLS = "sizes = []\nfor url in urls:\n    sizes.append(len(session.get(url, timeout=10).content))"
TINY = "out = []\nfor i in range(20_000):\n    out.append(i * i)"
NOOP = "for i in range(10_000):\n    pass"
CPU = [
    ("n**n, 5000 items", THREADS, "s = [digits(n) for n in range(5000)]"),
    ("n**n, 5000 items", PROCESSES, "s = [digits(n) for n in range(5000)]"),
    ("pure-Python function, 200 items", PROCESSES, "out = [spin(i) for i in range(200)]"),
    ("Collatz steps, 300k items", PROCESSES, "steps = [collatz(n) for n in range(1, 300_001)]"),
]
SMALL = [
    ("10,000 no-op items", THREADS, NOOP),
    ("10,000 no-op items", PROCESSES, NOOP),
    ("20,000 items of out.append(i * i)", THREADS, TINY),
    ("20,000 items of out.append(i * i)", PROCESSES, TINY),
]
IO = [
    ("200 URLs × 50 ms", f"{THREADS} -w 32", URLS),
    ("200 URLs × 50 ms", f"{PROCESSES} -w 8", URLS),
]
KERNELS = {  # what the kernel has loaded -> the cells run in it
    "": CPU + IO + SMALL,
    "numpy.random loaded": CPU[:2] + SMALL,  # the checks per chunk show most on short items
}

MEASURE = """
import json, sys, time
sys.path.insert(0, {path!r})
from IPython.testing.globalipapp import start_ipython
import parmagic
assert parmagic.__file__.startswith({path!r}), parmagic.__file__
{prelude}
ip = start_ipython()
ip.run_line_magic("load_ext", "parmagic")
ip.run_cell({setup!r})
ip.user_ns["urls"] = [{base!r} + str(n) for n in range(200)]
times = {{}}
for name, options, body in {cells!r}:
    ip.run_cell(f"%%parallel -q {{options}}\\nfor _ in range(4):\\n    pass")  # a warm pool
    cell = f"%%parallel -q {{options}}\\n{{body}}"
    small = name in {small!r}  # its first run, the cell's analysis and all, is left out
    for run in range({repeats} + small):
        began = time.perf_counter()
        result = ip.run_cell(cell)
        seconds = time.perf_counter() - began
        assert result.error_in_exec is None, (cell, result.error_in_exec)
        if run or not small:
            times.setdefault(name + "|" + options, []).append(seconds)
print(json.dumps(times))
"""


def source_of(revision: str, into: Path) -> Path:
    """The package as it was at ``revision``, unpacked into ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "parmagic"], capture_output=True, check=True
    ).stdout
    into.mkdir(exist_ok=True)
    path = into / "archive.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    return into


def snapshot(into: Path) -> Path:
    """The package as the working tree has it now, copied: edits made while this runs
    change no round."""
    shutil.copytree(
        ROOT / "parmagic", into / "parmagic", ignore=shutil.ignore_patterns("__pycache__")
    )
    return into


def python(code: str, cwd: Path, timeout: int = 900) -> str:
    """The last line ``code`` prints, run in a fresh interpreter (in ``cwd``: nothing of
    this repository on its path but what ``code`` puts there)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return done.stdout.strip().splitlines()[-1]


def spread(values: list[float]) -> str:
    """Median (min-max), in milliseconds."""
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):.1f} ({min(ms):.1f}-{max(ms):.1f})"


def backend_of(options: str) -> str:
    return options.replace("-b ", "").replace(" --start-method fork", ", fork")


Samples = dict[tuple[str, str, str], dict[str, list[float]]]  # (kernel, cell, options) -> arm


GUARD_OFF = "now, guard off"  # the working tree with Guard.around returning a guard of nothing
NO_GUARD = """
from parmagic.worker import hidden_state
hidden_state.Guard.around = classmethod(lambda cls, *args, **kwargs: cls([]))
"""  # patched before the pool forks: its workers have it too


def before_and_after(arms: dict[str, Path], rounds: int, repeats: int, scratch: Path) -> Samples:
    """Seconds per run of every cell, per arm."""
    sys.path.insert(0, str(HERE))
    from urls import LATENCY, slow_server_process  # bench/urls.py's server, in its own process

    samples: Samples = {}
    with slow_server_process(LATENCY) as base:
        for number in range(rounds):  # alternating, and which arm goes first: drifts hit both
            order = ["before", "now", GUARD_OFF]
            order = order[number % 3 :] + order[: number % 3]  # each arm goes first in turn
            for loaded, cells in KERNELS.items():
                for arm in order:
                    code = MEASURE.format(
                        path=str(arms["now" if arm == GUARD_OFF else arm]),
                        prelude=NO_GUARD if arm == GUARD_OFF else "",
                        setup=SETUP + (NUMPY_RANDOM if loaded else ""),
                        base=base,
                        cells=cells,
                        small=[name for name, _, _ in SMALL],
                        repeats=repeats,
                    )
                    for key, seconds in json.loads(python(code, scratch)).items():
                        name, options = key.split("|")
                        runs = samples.setdefault((loaded, name, options), {})
                        runs.setdefault(arm, []).extend(seconds)
            print(f"round {number + 1} of {rounds} done", flush=True)
    return samples


def ratio(runs: dict[str, list[float]], to: str = "before") -> float:
    return statistics.median(runs["now"]) / statistics.median(runs[to])


def within_noise(runs: dict[str, list[float]]) -> bool:
    """Each arm's median inside the other arm's min-max."""
    old, new = runs["before"], runs["now"]
    return min(old) <= statistics.median(new) <= max(old) and (
        min(new) <= statistics.median(old) <= max(new)
    )


def before_and_after_table(samples: Samples, revision: str, rounds: int, repeats: int) -> list:
    lines = [
        f"Wall time of the cell in milliseconds: median (min-max) of {rounds} rounds × "
        f"{repeats} runs, each round a fresh IPython per arm, the arms in turn (each going "
        f"first in turn); before: `{revision}`; guard off: now, with `Guard.around` patched to "
        "watch nothing (what the rest of the change costs); ratios of the medians; within "
        "noise: the medians of now and before each lie inside the other's min-max. The kernel "
        "has numpy imported (as bench/run.py's has) or, below, `numpy.random` loaded too.",
        "",
        "| cell, warm pool | backend | kernel has | before ms | now ms | guard off ms | "
        "now / before | now / guard off | within noise |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (loaded, name, options), runs in samples.items():
        lines.append(
            f"| {name} | {backend_of(options)} | {loaded or 'numpy'} | "
            f"{spread(runs['before'])} | {spread(runs['now'])} | {spread(runs[GUARD_OFF])} | "
            f"{ratio(runs):.2f} | {ratio(runs, GUARD_OFF):.2f} | "
            f"{'yes' if within_noise(runs) else '**no**'} |"
        )
    return lines


SQUARE = "\n\ndef square(i):\n    return i * i\n"  # what the loop calls: its module is reached
MODULES = {  # label -> the module's source; each module is a file of its own, on sys.path
    "100 MB NumPy array": "import numpy\n\nbig = numpy.arange(12_500_000, dtype=float)\n",
    "list of 1,000,000 ints": "data = list(range(1_000_000))\n",
    "dict of 1,000,000 entries": "data = {i: i for i in range(1_000_000)}\n",
    "10,000 small globals": "".join(f"g{i} = {i}\n" for i in range(10_000)),
    "1,000 lists of 10,000 ints": "".join(
        ["_base = list(range(10_000))\n", *(f"l{i} = list(_base)\n" for i in range(1_000))]
    ),
}

DIRECT = """
import gc, importlib, json, sys, timeit, tracemalloc
sys.path.insert(0, {root!r})
sys.path.insert(0, {modules!r})
import numpy
from parmagic.worker.hidden_state import Guard, Space

def item_function(square):
    # the shape of parmagic's item function for `out.append(square(i))`: it reaches
    # `square`, whose module (its globals) is the user's module
    ns = {{"__name__": "__main__", "square": square}}
    exec("def __parmagic_item__(__item__, __log__):\\n    square(__item__)\\n", ns)
    return ns["__parmagic_item__"]

def per_call(call):
    number, _ = timeit.Timer(call).autorange()  # calls in at least 0.2 s
    return [seconds / number for seconds in timeit.repeat(call, number=number, repeat=5)]

def measure(square):
    function = item_function(square)
    guard = Guard.around(function)
    assert guard.changed() is None
    names = sum(len(part.values) for part in guard.parts if isinstance(part, Space))
    around = per_call(lambda: Guard.around(function))
    changed = per_call(guard.changed)
    del guard
    gc.collect()
    tracemalloc.start()
    began = tracemalloc.get_traced_memory()[0]
    guard = Guard.around(function)
    kept = tracemalloc.get_traced_memory()[0] - began
    tracemalloc.stop()
    return {{"names": names, "around": around, "changed": changed, "kept": kept}}

notebook = {{"__name__": "__main__"}}
exec("def square(i):\\n    return i * i\\n", notebook)
found = {{"no user module": measure(notebook["square"])}}
for label, name in {names!r}.items():
    module = importlib.import_module(name)
    found[label] = measure(module.square)
    del sys.modules[name], module
    gc.collect()
import numpy.random
found["no user module, numpy.random loaded"] = measure(notebook["square"])
print(json.dumps(found))
"""

WALL = """
import gc, json, sys, time
sys.path.insert(0, {path!r})
sys.path.insert(0, {modules!r})
from IPython.testing.globalipapp import start_ipython
import parmagic
assert parmagic.__file__.startswith({path!r}), parmagic.__file__
ip = start_ipython()
ip.run_line_magic("load_ext", "parmagic")
notebook_square = "def square(i):\\n    return i * i"
ip.run_cell(notebook_square)
cell = "%%parallel -q -b threads --chunksize 1\\nout = []\\nfor i in range(200):\\n    out.append(square(i))"
ip.run_cell(cell)  # warm
times = {{}}
for number in range({rounds}):
    for label, name in {names!r}.items():
        for loaded in ((False, True) if number % 2 == 0 else (True, False)):
            if loaded:
                ip.run_cell(f"from {{name}} import square")
            gc.collect()  # the collector's work on what was made or freed: not in the time
            began = time.perf_counter()
            result = ip.run_cell(cell)
            times.setdefault(label, {{}}).setdefault(str(loaded), []).append(
                time.perf_counter() - began
            )
            assert result.error_in_exec is None, result.error_in_exec
            if loaded:
                ip.run_cell(f"import sys\\ndel sys.modules[{{name!r}}]\\n" + notebook_square)
print(json.dumps(times))
"""


def scaling(arms: dict[str, Path], rounds: int, scratch: Path) -> tuple[dict, dict]:
    """The guard's own costs per module, in one process; the 200-item runs, per arm."""
    modules = scratch / "modules"
    modules.mkdir()
    names = {}
    for number, (label, source) in enumerate(MODULES.items()):
        names[label] = f"guarded_{number}"
        (modules / f"guarded_{number}.py").write_text(source + SQUARE)
    code = DIRECT.format(root=str(arms["now"]), modules=str(modules), names=names)
    direct = json.loads(python(code, scratch))
    walls: dict[str, dict] = {}
    for arm in ("now", "before"):
        code = WALL.format(path=str(arms[arm]), modules=str(modules), names=names, rounds=rounds)
        walls[arm] = json.loads(python(code, scratch))
    return direct, walls


def scaling_table(direct: dict, walls: dict, revision: str, rounds: int) -> list[str]:
    lines = [
        "In one process: `Guard.around(item function)` (once per run: in the kernel for "
        "threads, in every worker for processes) and `guard.changed()` (after every chunk; a "
        "worker process runs it before every chunk too, in `Guard.settle`), milliseconds per "
        "call, median (min-max) of 5 timeit repeats; kept: the memory the guard holds "
        "(tracemalloc); names: the names it fingerprints (module globals, `os.environ`). In "
        "IPython: `out.append(square(i))` over 200 items on `-b threads --chunksize 1` (200 "
        "chunks), `square` taken from the module (with) or defined in the notebook, the module "
        f"not imported (without), median (min-max) of {rounds} runs each, alternating; extra "
        "per chunk = (with - without) / 200, what is done once per run included; before (`"
        f"{revision}`, no guard): the same difference.",
        "",
        "| user module | names | `Guard.around` ms | `changed()` ms | kept MB | "
        "without ms | with ms | extra per chunk ms | before: extra per chunk ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, found in direct.items():
        cells = [label, str(found["names"]), _ms(found["around"]), _ms(found["changed"])]
        cells.append(f"{found['kept'] / 1e6:.2f}")
        if label in walls["now"]:
            now, old = walls["now"][label], walls["before"][label]
            cells += [spread(now["False"]), spread(now["True"]), f"{extra(now) * 1000:.3f}"]
            cells.append(f"{extra(old) * 1000:.3f}")
        else:
            cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _ms(values: list[float]) -> str:
    """Median (min-max) in milliseconds, to three significant figures or so."""
    ms = [v * 1000 for v in values]
    places = 3 if statistics.median(ms) < 1 else 2 if statistics.median(ms) < 100 else 0
    return f"{statistics.median(ms):.{places}f} ({min(ms):.{places}f}-{max(ms):.{places}f})"


def extra(times: dict) -> float:
    """Seconds per chunk that the module adds to the 200-chunk run."""
    return (statistics.median(times["True"]) - statistics.median(times["False"])) / 200


def conclusions(samples: Samples, direct: dict, walls: dict) -> list[str]:
    plain = {key: runs for key, runs in samples.items() if not key[0]}
    loaded = {key: runs for key, runs in samples.items() if key[0]}
    outside = [
        f"{name} on {backend_of(options)} ({ratio(runs):.2f})"
        for (_, name, options), runs in plain.items()
        if not within_noise(runs)
    ]
    ratios = sorted(ratio(runs) for runs in plain.values())
    loaded_ratios = sorted(ratio(runs) for runs in loaded.values())
    off = sorted(ratio(runs, GUARD_OFF) for runs in plain.values())
    loaded_off = sorted(ratio(runs, GUARD_OFF) for runs in loaded.values())
    check = {label: statistics.median(found["changed"]) * 1000 for label, found in direct.items()}
    around = {label: statistics.median(found["around"]) * 1000 for label, found in direct.items()}
    now = walls["now"]
    many, lists = "10,000 small globals", "1,000 lists of 10,000 ints"

    def slower(label: str) -> str:
        times = now[label]
        times_as_long = statistics.median(times["True"]) / statistics.median(times["False"])
        return f"{times_as_long:.2f}×" if times_as_long < 10 else f"{times_as_long:.0f}×"

    random_check = check["no user module, numpy.random loaded"] - check["no user module"]
    loaded_inside = sum(within_noise(runs) for runs in loaded.values())
    big = ("100 MB NumPy array", "list of 1,000,000 ints", "dict of 1,000,000 entries")
    big_extra = [check[label] - check["no user module"] for label in big]
    return [
        f"In a kernel with numpy imported, the guard's cost is within noise on "
        f"{len(plain) - len(outside)} of {len(plain)} cells (ratios {ratios[0]:.2f} to "
        f"{ratios[-1]:.2f})"
        + (f"; outside it: {', '.join(outside)}" if outside else "")
        + f"; against the same tree with the guard off, {off[0]:.2f} to {off[-1]:.2f}. With "
        f"`numpy.random` loaded, within noise on {loaded_inside} of {len(loaded)} (ratios "
        f"{loaded_ratios[0]:.2f} to {loaded_ratios[-1]:.2f}; to the guard off "
        f"{loaded_off[0]:.2f} to {loaded_off[-1]:.2f}): the guard reads and compares "
        f"numpy's global random state after every chunk (and, in a worker process, before it "
        f"too) at {random_check:.3f} ms a check, against {check['no user module']:.3f} ms for "
        f"the rest of the process's state; chunks are sized to about 20 ms of items.",
        "",
        "A module the loop reaches adds to each check: "
        + ", ".join(f"{label} {ms:.3f} ms" for label, ms in zip(big, big_extra, strict=True))
        + (
            " (identity and a bounded sample: the size of a value does not count); "
            if max(big_extra) < 0.1
            else "; "
        )
        + f"{many} {check[many] - check['no user module']:.2f} ms "
        f"({(check[many] - check['no user module']) / 10:.2f} µs a name); {lists} "
        f"{check[lists] - check['no user module']:.2f} ms. `Guard.around` takes "
        f"{around[many]:.1f} and {around[lists]:.1f} ms for these two and keeps "
        f"{direct[many]['kept'] / 1e6:.1f} and {direct[lists]['kept'] / 1e6:.1f} MB. On 200 "
        f"one-item chunks on threads they add {extra(now[many]) * 1000:.2f} and "
        f"{extra(now[lists]) * 1000:.2f} ms a chunk: the run takes {slower(many)} and "
        f"{slower(lists)} as long as without the module (the 100 MB array: "
        f"{slower('100 MB NumPy array')}).",
    ]


def measured_tree() -> str:
    """What "now" is: HEAD, and whether the package had changes not committed."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "parmagic"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"`{head}`" + (" with changes not committed in parmagic/" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scaling-only", action="store_true", help="part 2 alone, not written")
    args = parser.parse_args()
    began, load = time.perf_counter(), os.getloadavg()[0]
    tree = measured_tree()
    with tempfile.TemporaryDirectory() as scratch:
        arms = {
            "before": source_of(args.before, Path(scratch) / "before"),
            "now": snapshot(Path(scratch) / "now"),
        }
        if args.scaling_only:
            direct, walls = scaling(arms, args.rounds, Path(scratch))
            print("\n".join(scaling_table(direct, walls, args.before, args.rounds)))
            return
        samples = before_and_after(arms, args.rounds, args.repeats, Path(scratch))
        direct, walls = scaling(arms, args.rounds, Path(scratch))
    lines = [
        "## The hidden-state guard: the cost",
        "",
        f"Now: the working tree at {tree}, copied at the start. {os.cpu_count()} cores; load average "
        f"{load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end; "
        f"{(time.perf_counter() - began) / 60:.1f} minutes in all.",
        "",
        "### Before and after",
        "",
        *before_and_after_table(samples, args.before, args.rounds, args.repeats),
        "",
        "### Scaling with the state fingerprinted",
        "",
        *scaling_table(direct, walls, args.before, args.rounds),
        "",
        "### Conclusions",
        "",
        *conclusions(samples, direct, walls),
    ]
    (HERE / "hidden_state.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
