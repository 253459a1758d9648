"""What a new user reads: cells named as IPython names them, the equivalent program's names,
usage and counts in words, and a failed comprehension item told truthfully."""

from __future__ import annotations

import copyreg
import math
import os
import re
import subprocess
import sys
import traceback

import IPython
import psutil
import pytest
from conftest import BACKENDS, report
from IPython.core.error import UsageError

from parmagic import errors
from parmagic.analysis.cell import plan_cell
from parmagic.summary.program_names import GENERATED, IMPORTED
from parmagic.summary.showcode import program

ITEM_BACKENDS = ["-b serial", "-b threads -w 2", BACKENDS["fork"]]


def rendered(error: BaseException) -> str:
    return "\n".join(error._render_traceback_())


def frame_names(text: str) -> list[str]:
    return re.findall(r"^  .*, line \d+, in (.+)$", text, flags=re.MULTILINE)


# IPython 8.7 and later name a cell "Cell In[N]" in tracebacks; IPython 7 names it by its file.
NAMED_BY_FILE = IPython.version_info < (8,)


def cell_frame(number: int, line: int, name: str) -> str:
    """A pattern for one frame of a cell, as the running IPython names the cell."""
    cell = (
        rf'File "<ipython-input-{number}-[0-9a-f]+>"' if NAMED_BY_FILE else rf"Cell In\[{number}\]"
    )
    return rf"^  {cell}, line {line}, in {re.escape(name)}$"


def as_a_cell(ip, source: str):
    """A cell run as a notebook runs it: numbered, kept in the history."""
    return ip.run_cell(source, store_history=True)


@pytest.mark.parametrize("options", ITEM_BACKENDS)
def test_a_failed_items_traceback_names_its_cells_as_ipython_does(ip, capsys, options):
    defined = as_a_cell(ip, "def f(x):\n    return 1 / x\n")
    failed = as_a_cell(ip, "1 / 0")
    shown_by_ipython = capsys.readouterr().out  # IPython's own traceback of a plain cell
    named = (
        f"<ipython-input-{failed.execution_count}-"
        if NAMED_BY_FILE
        else f"Cell In[{failed.execution_count}], line 1"
    )
    assert named in shown_by_ipython
    outcome = as_a_cell(
        ip, f"%%parallel -q {options}\nout = []\nfor i in range(5):\n    out.append(f(i - 2))\n"
    )
    assert outcome.execution_count == failed.execution_count + 1
    text = rendered(outcome.error_in_exec)
    assert re.search(cell_frame(outcome.execution_count, 4, "<loop body>"), text, re.M), text
    assert re.search(cell_frame(defined.execution_count, 2, "f"), text, re.M), text
    assert NAMED_BY_FILE or "ipython-input" not in text


def test_a_cell_run_without_history_has_the_number_ipython_gives_it(ip):
    outcome = ip.run_cell("%%parallel -q -b threads -w 2\nfor i in range(3):\n    1 / (i - 1)\n")
    number = outcome.execution_count  # IPython 7 keeps none for such a cell, names it by the next
    number = ip.execution_count if number is None else number
    assert re.search(cell_frame(number, 3, "<loop body>"), rendered(outcome.error_in_exec), re.M)


COMPREHENSIONS = ["[f(i - 2) for i in range(5)]", "{i: f(i - 2) for i in range(5)}",
                  "{f(i - 2) for i in range(5) if i}", "list(f(i - 2) for i in range(5))"]  # fmt: skip


@pytest.mark.parametrize("options", ITEM_BACKENDS)
@pytest.mark.parametrize("expression", COMPREHENSIONS)
def test_the_line_magics_failed_item_shows_python_s_frames_and_what_was_assigned(
    ip, options, expression
):
    ip.run_cell("def f(x):\n    return 1 / x\n")
    plain = ip.run_cell(f"out = {expression}").error_in_exec
    frames = [frame.f_code for frame, _ in traceback.walk_tb(plain.__traceback__)]
    ipython = os.path.dirname(IPython.__file__)  # IPython's own frames out
    python_names = [code.co_name for code in frames if not code.co_filename.startswith(ipython)]
    outcome = ip.run_cell(f"%parallel -q {options} out = {expression}")
    text = rendered(outcome.error_in_exec)
    assert frame_names(text) == ["<loop body>", *python_names[1:]], text
    assert text.count(f"out = {expression}") == len(python_names) - 1  # each cell frame's line
    assert "out" not in ip.user_ns
    if expression.startswith("list("):
        assert text.endswith(f"raised by item 2 of the parallel loop (2); {errors.VALUES_READ}")
    else:
        assert text.endswith(f"; {errors.NOTHING_ASSIGNED}")
        assert "the items before it were applied" not in text


def test_a_worker_started_while_an_error_went_up_chains_nothing_to_the_next_error(ip):
    """A failed run replaces its ProcessPoolExecutor while the error goes up (its later items
    still run): the new forked workers start inside the kernel's handler of it, which is no
    later item's context, not even where exceptions travel with their chain (tblib's
    reducers, which importing dask or distributed installs for every exception class)."""
    pickling_support = pytest.importorskip("tblib.pickling_support")
    ip.run_cell("import time\ndef f(x):\n    time.sleep(10 if x > 0 else 0)\n    return 1 / x\n")
    kept = dict(copyreg.dispatch_table)
    pickling_support.install()
    try:
        for _ in range(3):
            before = {child.pid for child in psutil.Process().children()}
            outcome = ip.run_cell(
                "%parallel -q -b futures:processes -w 2 --start-method fork --chunksize 1 "
                "out = [f(i - 2) for i in range(5)]"
            )
            error = outcome.error_in_exec
            assert isinstance(error, ZeroDivisionError)
            assert error.__context__ is None and error.__cause__ is None, rendered(error)
            assert "During handling" not in rendered(error)
            started = {child.pid for child in psutil.Process().children()} - before
            assert len(started) >= 2  # the pool was replaced while the error went up
    finally:
        copyreg.dispatch_table.clear()
        copyreg.dispatch_table.update(kept)


# The backend whose program uses each of the program's own names (dask's are left out: a
# cluster per name would be slow, and its names are chosen by the same code).
PROGRAM_OF = {
    **dict.fromkeys(GENERATED, "-b threads -w 2"),
    **dict.fromkeys(["ThreadPool"], "-b threads -w 2"),
    **dict.fromkeys(
        ["executor", "futures", "finished", "future", "ThreadPoolExecutor", "as_completed"],
        "-b futures -w 2",
    ),
    **dict.fromkeys(
        ["items", "item", "handed", "returned", "take_back", "own", "share", "multiprocessing"],
        BACKENDS["fork"],
    ),
    "ProcessPoolExecutor": "-b futures:processes -w 2 --start-method fork",
    **dict.fromkeys(["semaphore", "limited", "main", "asyncio"], "-b asyncio -w 2"),
}
DASK_NAMES = {"cluster", "client", "Client", "LocalCluster"}
PROGRAM_OF = {name: options for name, options in PROGRAM_OF.items() if name not in DASK_NAMES}
assert set(PROGRAM_OF) | DASK_NAMES == {*GENERATED, *IMPORTED}  # every name of the program
CELLS = {
    "loop variable": "base = 1\nout = []\nfor {name} in range(6):\n    out.append({name} + base)\n"
    "print(out, {name})\n",
    "name kept": "{name} = 'kept'\nout = []\nfor i in range(6):\n    out.append(i + len({name}))\n"
    "print(out, {name})\n",
    "comprehension": "{name} = 'kept'\nout = [i + len({name}) for i in range(6)]\nprint(out, {name})\n",
}


IN_A_COMPREHENSIONS_PROGRAM = ("loop_values", "in_order", "loop_body")
NAME_AND_CELL = [
    *((name, cell) for name in PROGRAM_OF if name != "loop_values" for cell in list(CELLS)[:2]),
    *((name, "comprehension") for name in IN_A_COMPREHENSIONS_PROGRAM),
]


@pytest.mark.parametrize("name, cell", NAME_AND_CELL)
def test_the_programs_own_names_never_meet_the_cells(ip, run, tmp_path, name, cell):
    options = "-b threads -w 2" if cell == "comprehension" else PROGRAM_OF[name]
    script = tmp_path / "program.py"
    outcome = run(f"%%parallel -q {options} --export {script}\n{CELLS[cell].format(name=name)}")
    assert outcome.error is None, outcome.err
    text = script.read_text()
    assert f"{name}_" in text, text  # the program's own part, renamed
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr + text
    assert done.stdout == outcome.out.splitlines()[0] + "\n", text


def test_the_dask_programs_own_names_never_meet_the_cells():
    """Its program, made without a cluster: the names are checked in its text and its syntax."""
    source = "\ncluster = client = Client = LocalCluster = 1\nfor i in range(3):\n    print(i)\n"
    plan = plan_cell(source, "<cell>", "dask")
    text = program(source, plan.body, frozenset(), {}, "dask", 2, None, export=False)
    assert "from dask.distributed import Client as Client_, LocalCluster as LocalCluster_" in text
    assert "with cluster_, Client_(cluster_) as client_:" in text
    compile(text, "program.py", "exec")


def test_a_cell_that_imports_what_the_program_imports_shares_the_import(ip, run):
    outcome = run(
        "%%parallel -q -b asyncio -w 2 --show-code\nimport asyncio\nout = []\n"
        "for i in range(3):\n    await asyncio.sleep(0)\n    out.append(i)\n"
    )
    assert outcome.error is None, outcome.err
    assert "import asyncio\n" in outcome.out and "asyncio_" not in outcome.out


@pytest.mark.parametrize("options", ["-b threads -w 2", "-b processes -w 2 --start-method fork"])
def test_show_code_prints_the_chunk_size_the_run_used(ip, run, options):
    outcome = run(
        f"%%parallel -q {options} --show-code\nout = []\nfor i in range(300):\n"
        "    out.append(sum(range(i * 50)))\n"
    )
    assert outcome.error is None, outcome.err
    r = report()
    assert r.item_count == 300 and r.chunks > 1
    size = math.ceil(300 / r.chunks)
    assert f"chunksize={size})  # as the run: 300 items in {r.chunks} chunks" in outcome.out
    assert len(re.findall(r"chunksize=", outcome.out)) == 1


def test_show_code_prints_the_chunksize_asked_for(ip, run):
    outcome = run(
        "%%parallel -q -b threads -w 2 --chunksize 7 --show-code\nout = []\n"
        "for i in range(30):\n    out.append(i)\n"
    )
    assert outcome.error is None, outcome.err
    assert report().chunks == 5
    assert "chunksize=7)  # as the run: 30 items in 5 chunks" in outcome.out


def test_the_cell_magics_usage_says_double_percent(ip, run):
    outcome = run("%%parallel --no-such-option\nfor i in range(3):\n    pass\n")
    assert isinstance(outcome.error, UsageError)
    assert re.search(r"^%%parallel\s*\n?\s*\[-b", str(outcome.error), flags=re.MULTILINE)
    assert "%%parallel" in ip.find_cell_magic("parallel").__doc__.split("\n\n")[1]


@pytest.mark.parametrize("given, meant", [("--worker 4", "--workers"), ("--back threads",
                         "--backend"), ("--show", "--show-code"), ("--work=4", "--workers")])  # fmt: skip
def test_an_option_given_by_its_start_is_refused_naming_it_in_full(ip, run, given, meant):
    outcome = run(f"%%parallel -q {given}\nout = []\nfor i in range(3):\n    out.append(i)\n")
    assert isinstance(outcome.error, UsageError)
    message = str(outcome.error).splitlines()[0]
    assert message.startswith(f"{given.split()[0].split('=')[0]} is not an option of %%parallel")
    assert meant in message
    assert "out" not in ip.user_ns  # nothing ran
    assert run("%%parallel -q -w 2 -b threads\nout = [i for i in range(3)]\n").error is None


def test_the_line_magics_usage_errors_name_the_line_magic(ip, run):
    outcome = run("%parallel -q --worker 2 out = [i for i in range(3)]")
    assert isinstance(outcome.error, UsageError)
    first, *rest = str(outcome.error).splitlines()
    assert first.startswith("--worker is not an option of %parallel;")
    assert rest[0].startswith("%parallel")
    assert "%%parallel" not in str(outcome.error)


def test_counts_read_as_sentences(ip, run):
    assert errors.plural(1, "item") == "1 item" and errors.plural(2, "item") == "2 items"
    assert errors.items_named("4") == "item 4" and errors.items_named("2-3, 7") == "items 2-3, 7"
    assert errors.item_span(5, 1) == "item 5" and errors.item_span(5, 3) == "items 5-7"
    assert errors.first_applied(1) == "the first item was applied"
    assert errors.first_applied(0) == "no item was applied"
    run("%%parallel -q -b threads -w 1\nout = []\nfor i in range(2):\n    out.append(i)\n")
    info = str(ip.run_line_magic("parallel_info", ""))
    assert "threads (1 worker)" in info and "1 workers" not in info
    assert "item(s)" not in errors.WORKER_DIED + errors.ITEMS_ABANDONED + errors.INTERRUPTED
