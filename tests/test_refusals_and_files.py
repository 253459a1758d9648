"""Who refuses, when, and what files end up holding (spec §5.13, §5.14, §7).

`serial` and `auto` run whatever the plain kernel runs, as written; only a parallel backend the
user names refuses, and before the cell's first statement. Writes to files keep item order on
every backend, appends to one shared path are refused where items run side by side, and worker
processes either add floats as the kernel does or say that they may not.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import inspect
from dataclasses import dataclass

import pytest
from conftest import BACKENDS, report
from IPython.core.error import UsageError

# Parallel backends named explicitly: a thread pool and forked worker processes
PARALLEL = ("threads", "fork")
UNBOUND = "<unbound>"  # what a name the cell never bound shows, in both runs
AS_WRITTEN_LINE = {
    "serial": "the loop ran as written in the kernel:",
    "auto": "auto chose serial: nothing here can run in parallel (",
}
WARNING = "parmagic warning"


@dataclass(frozen=True)
class Case:
    setup: str  # run in the kernel before the cell, as an earlier notebook cell
    cell: str
    names: tuple[str, ...]  # what the cell binds or changes: compared with the plain run


# Cells the plain kernel runs but no parallel backend can run item by item
CASES = {
    "word-count": Case(
        "words = 'a b a c b a'.split()\ncounts = {}",
        "for w in words:\n    counts[w] = counts.get(w, 0) + 1\n",
        ("counts", "w"),
    ),
    "name-from-a-counter": Case(
        "ok = 0",
        "for i in range(6):\n    name = f'out{ok}.txt'\n    if i % 2 == 0:\n        ok += 1\n",
        ("ok", "name", "i"),
    ),
    "break": Case(
        "out = []",
        "for i in range(10):\n    if i == 3:\n        break\n    out.append(i)\n",
        ("out", "i"),
    ),
    "two-loops": Case(
        "out = []",
        "for i in range(3):\n    out.append(i)\nfor j in range(3):\n    out.append(j * 10)\n",
        ("out", "i", "j"),
    ),
    "read-before-assigned": Case(
        "prev = -1\nout = []",
        "for i in range(5):\n    out.append(prev)\n    prev = i\n",
        ("out", "prev", "i"),
    ),
    "loop-name-as-a-global": Case(
        "def show():\n    return repo * 2\nrepo = 0\nout = []",
        "for repo in range(3):\n    out.append(show())\n",
        ("out", "repo"),
    ),
    "method-named-add": Case(
        "class Adder:\n    def add(self, x):\n        return x * 2\nadder = Adder()\nout = []",
        "for i in range(4):\n    out.append(adder.add(i))\n",
        ("out", "i"),
    ),
    "ensure-future": Case(
        "import asyncio\nasync def job(i):\n    return i\ntasks = []",
        "for i in range(3):\n    tasks.append(asyncio.ensure_future(job(i)))\n",
        ("tasks", "i"),
    ),
    "create-task": Case(
        "import asyncio\nasync def job(i):\n    return i\ntasks = []",
        "for i in range(3):\n    tasks.append(asyncio.create_task(job(i)))\n",
        ("tasks", "i"),
    ),
}
# The coroutines the asyncio cases make and may leave unawaited
NEVER_AWAITED = "ignore:coroutine 'job' was never awaited:RuntimeWarning"


def refused(outcome, *fragments: str) -> str:
    """The refusal's message, checked to be IPython's UsageError holding every fragment."""
    assert isinstance(outcome.error, UsageError), (outcome.error, outcome.out, outcome.err)
    message = str(outcome.error)
    for fragment in fragments:
        assert fragment in message, message
    return message


def run_ok(run, options: str, cell: str):
    outcome = run(f"%%parallel {options}\n{cell}")
    assert outcome.error is None, outcome.out + outcome.err
    return outcome


def plain_run(setup: str, cell: str) -> tuple[dict, BaseException | None]:
    """The cell without the magic line, in a fresh namespace after the same setup (a notebook
    function's globals are that namespace): what it left, and what it raised."""
    namespace: dict = {}
    exec(setup, namespace)
    try:
        exec(cell, namespace)
    except Exception as exc:
        return namespace, exc
    return namespace, None


def value(namespace: dict, name: str):
    """A name's value for comparison across two runs: tasks by their count and kind (each run
    makes its own), anything else as it is."""
    found = namespace.get(name, UNBOUND)
    if isinstance(found, list) and any(isinstance(v, asyncio.Future) for v in found):
        return [type(v).__name__ for v in found]
    return found


@pytest.fixture
def idle_event_loop():
    """An event loop set for this thread but not running, as a terminal shell has (none runs
    while a cell does); afterwards the tasks the cells made are cancelled and run out, and the
    coroutines left unawaited closed, so that none of them warns in a later test."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
        asyncio.set_event_loop(None)
        for obj in gc.get_objects():
            if inspect.iscoroutine(obj) and obj.cr_code.co_name == "job":
                obj.close()


def kernel_backend(name: str) -> str:
    """The options of the two backends that run in the kernel."""
    return "-b auto" if name == "auto" else BACKENDS[name]


# §5.14: serial and auto never refuse a cell the plain kernel runs


@pytest.mark.filterwarnings(NEVER_AWAITED)
@pytest.mark.parametrize("name", ["serial", "auto"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_serial_and_auto_run_what_the_plain_kernel_runs_as_written(
    ip, run, idle_event_loop, case, name
):
    """The kernel ends as after the plain cell (the names, the exception's type), and the
    summary says that the loop ran as written, and why."""
    plain, raised = plain_run(case.setup, case.cell)
    run(case.setup)
    outcome = run(f"%%parallel {kernel_backend(name)}\n{case.cell}")
    assert type(outcome.error) is type(raised), (outcome.error, raised, outcome.out)
    for each in case.names:
        assert value(ip.user_ns, each) == value(plain, each), each
    lines = outcome.out.splitlines()
    assert any(line.startswith(AS_WRITTEN_LINE[name]) for line in lines), outcome.out
    assert report().backend == "serial"


@pytest.mark.filterwarnings(NEVER_AWAITED)
def test_create_task_fails_in_the_kernel_as_the_plain_cell_does(ip, run, idle_event_loop):
    """No event loop runs while a terminal's cell does: the plain cell's first item raises
    RuntimeError, and so does serial's run of it as written (tested above against the plain
    run; here, that the plain run does raise, so the comparison compares a failure)."""
    case = CASES["create-task"]
    _, raised = plain_run(case.setup, case.cell)
    assert isinstance(raised, RuntimeError) and "no running event loop" in str(raised)
    run(case.setup)
    outcome = run(f"%%parallel -b serial -q\n{case.cell}")
    assert isinstance(outcome.error, RuntimeError) and "no running event loop" in str(outcome.error)
    assert ip.user_ns["tasks"] == [] and ip.user_ns["i"] == 0


@pytest.mark.filterwarnings(NEVER_AWAITED)
@pytest.mark.parametrize("name", PARALLEL)
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_named_parallel_backend_refuses_them_and_nothing_runs(
    ip, run, idle_event_loop, case, name
):
    """Only a parallel backend the user names refuses; the names the cell would bind stay
    unbound, and those it would change keep their values."""
    run(case.setup)
    before = {each: copy.deepcopy(value(ip.user_ns, each)) for each in case.names}
    outcome = run(f"%%parallel {BACKENDS[name]}\n{case.cell}")
    refused(outcome)
    assert {each: value(ip.user_ns, each) for each in case.names} == before


@pytest.mark.parametrize("name", PARALLEL)
def test_the_word_count_refusal_says_nothing_could_run_and_gives_the_counter_rewrite(run, name):
    """The body's first statement needs the carried counts: no part of an item can run
    early, so the advice is the Counter reduction, not moving reads later."""
    case = CASES["word-count"]
    run(case.setup)
    message = refused(
        run(f"%%parallel {BACKENDS[name]}\n{case.cell}"),
        "nothing could run in parallel",
        "collections.Counter()",
        "`counts[w] += 1`",
    )
    assert "Move the reads of" not in message


# §5.14: a refusal comes before the cell's first statement runs


@pytest.mark.parametrize("name", PARALLEL)
def test_a_refusal_comes_before_the_cells_first_statement(ip, run, tmp_path, name):
    """Neither the counter before the `with` nor the `open(..., 'w')` that would empty the
    file has run when the `break` inside is refused."""
    path = tmp_path / "data.txt"
    path.write_text("data\n")
    run("attempts = 0\n")
    cell = (
        f"attempts += 1\nwith open({str(path)!r}, 'w') as f:\n    for i in range(10):\n"
        "        if i == 3:\n            break\n        f.write(f'{i}\\n')\n"
    )
    refused(run(f"%%parallel {BACKENDS[name]}\n{cell}"))
    assert ip.user_ns["attempts"] == 0
    assert path.read_text() == "data\n"


@pytest.mark.parametrize("name", PARALLEL)
def test_definitions_before_the_loop_are_judged_from_their_source(ip, run, name):
    """The refusal of a same-cell function that changes a same-cell list needs neither to
    exist: none of the cell's names is bound afterwards."""
    cell = (
        "seen = []\ndef remember(x):\n    seen.append(x)\nout = []\n"
        "for i in range(5):\n    remember(i)\n    out.append(i)\n"
    )
    refused(run(f"%%parallel {BACKENDS[name]}\n{cell}"), "`remember`", "`seen`")
    for each in ("seen", "remember", "out", "i"):
        assert each not in ip.user_ns, each
    assert isinstance(run("seen\n").error, NameError)


@pytest.mark.parametrize("name", PARALLEL)
def test_a_verdict_that_needs_objects_made_before_the_loop_names_the_statements_that_ran(
    ip, run, name
):
    """Only the object `same(seen)` returns shows that the body reads the set it changes:
    those two statements run, and the message says so; no item ran."""
    run("def same(x):\n    return x\n")
    cell = (
        "seen = set()\ns = same(seen)\n"
        "for i in range(5):\n    if i in s:\n        continue\n    seen.add(i)\n"
    )
    refused(
        run(f"%%parallel {BACKENDS[name]}\n{cell}"),
        "line 2 `seen = set()`",
        "line 3 `s = same(seen)`",
        "no item of the loop and nothing after it has run",
    )
    assert ip.user_ns["seen"] == set() and ip.user_ns["s"] is ip.user_ns["seen"]
    assert "i" not in ip.user_ns


# §5.13: files keep item order

# Items that finish in reverse order: the first sleeps longest
SLOW_FIRST = "    time.sleep(0.0015 * (12 - i))\n"
# (an earlier cell, the loop's cell): PATH is the file's path; `fh` is closed in a later cell
FILE_CASES = {
    "with-open-around-the-loop": (
        "",
        "with open(PATH, 'w') as f:\n    for i in range(12):\n"
        "        time.sleep(0.0015 * (12 - i))\n        f.write(f'{i}\\n')\n",
    ),
    "print-to-a-file-of-an-earlier-cell": (
        "fh = open(PATH, 'w')",
        f"for i in range(12):\n{SLOW_FIRST}    print(i, i * i, file=fh)\n",
    ),
    "csv-writer-in-the-body": (
        "fh = open(PATH, 'w', newline='')",
        f"for i in range(12):\n{SLOW_FIRST}    csv.writer(fh).writerow([i, i * i])\n",
    ),
    "csv-writer-of-an-earlier-cell": (
        "fh = open(PATH, 'w', newline='')\nwr = csv.writer(fh)",
        f"for i in range(12):\n{SLOW_FIRST}    wr.writerow([i, str(i)])\n",
    ),
    "writelines": (
        "fh = open(PATH, 'w')",
        f"for i in range(12):\n{SLOW_FIRST}    fh.writelines([f'{{i}}a\\n', f'{{i}}b\\n'])\n",
    ),
}
IMPORTS = "import asyncio, csv, time\n"


def with_path(code: str, path) -> str:
    return code.replace("PATH", repr(str(path)))


def pausing(cell: str, backend: str) -> str:
    """On asyncio, items pause by awaiting (so that they do overlap, and finish out of order):
    a body that never awaits runs its items one after another there, and is warned about."""
    if backend == BACKENDS["asyncio"]:
        return cell.replace("time.sleep(", "await asyncio.sleep(")
    return cell


def plain_file(tmp_path, before: str, cell: str) -> str:
    """What the plain cells write (as bytes are written: csv's line ends included)."""
    path = tmp_path / "plain.txt"
    exec(
        with_path(IMPORTS + before + "\n" + cell + "\nif 'fh' in dir():\n    fh.close()\n", path),
        {},
    )
    return path.read_bytes().decode()


@pytest.mark.parametrize(("before", "cell"), list(FILE_CASES.values()), ids=list(FILE_CASES))
def test_writes_to_a_kernel_file_are_made_in_item_order(ip, run, backend, tmp_path, before, cell):
    """The file holds what the plain loop writes, though the items finish in reverse order,
    and nothing is warned about: the writes are the plain loop's, made in item order."""
    expected = plain_file(tmp_path, before, cell)
    assert expected.startswith("0")  # the plain loop wrote, from its first item
    path = tmp_path / "parallel.txt"
    run(IMPORTS + with_path(before, path))
    outcome = run_ok(run, backend, pausing(with_path(cell, path), backend))
    if before:
        run("fh.close()\n")
    assert path.read_bytes().decode() == expected
    assert WARNING not in outcome.err, outcome.err


# Every item appends to one path that does not depend on the item
APPEND = (
    "for i in range(8):\n    time.sleep(0.002 * (8 - i))\n"
    "    with open(PATH, 'a') as g:\n        g.write(f'{i}\\n')\n"
)
IN_ORDER = "".join(f"{i}\n" for i in range(8))


def test_appends_to_one_shared_path_are_refused_where_items_run_side_by_side(
    ip, run, backend, tmp_path
):
    """Every item's lines would land in the order the items finish: refused before any item
    (the file is never made); serial, running the items in order, writes them in order."""
    path = tmp_path / "shared.txt"
    run("import asyncio, time\n")
    outcome = run(f"%%parallel {backend} -q\n{pausing(with_path(APPEND, path), backend)}")
    if backend == BACKENDS["serial"]:
        assert outcome.error is None, outcome.err
        assert path.read_text() == IN_ORDER
        return
    refused(outcome, "every item writes to the one file", "--unordered")
    assert not path.exists()
    assert "i" not in ip.user_ns


def test_auto_runs_appends_to_one_shared_path_in_the_kernel(run, tmp_path):
    """auto never refuses: it runs the items in the kernel, in order, and says why."""
    path = tmp_path / "shared.txt"
    run("import time\n")
    outcome = run_ok(run, "-b auto", with_path(APPEND, path))
    assert path.read_text() == IN_ORDER
    assert report().backend == "serial"
    assert "auto chose serial:" in outcome.out, outcome.out


def test_unordered_accepts_appends_to_one_shared_path_and_says_so(run, tmp_path):
    """Asked for knowingly, the appends run side by side: every line is there, in whatever
    order the items finished, and a warning names the option that allowed it."""
    path = tmp_path / "shared.txt"
    run("import time\n")
    outcome = run_ok(run, f"{BACKENDS['threads']} --unordered -q", with_path(APPEND, path))
    assert sorted(path.read_text().splitlines(), key=int) == IN_ORDER.splitlines()
    warnings = [line for line in outcome.err.splitlines() if WARNING in line]
    assert any("--unordered" in line for line in warnings), outcome.err


def test_pandas_appends_to_one_shared_path_are_refused(ip, run, tmp_path):
    """`to_csv(path, mode="a")` appends as `open(path, "a")` does."""
    pytest.importorskip("pandas")
    path = tmp_path / "table.csv"
    run("import pandas as pd\n")
    cell = (
        "for i in range(6):\n"
        f"    pd.DataFrame({{'i': [i]}}).to_csv({str(path)!r}, mode='a', header=False)\n"
    )
    refused(
        run(f"%%parallel {BACKENDS['threads']}\n{cell}"),
        "every item writes to the one file",
        "--unordered",
    )
    assert not path.exists()


def test_a_path_per_item_runs_and_leaves_the_last_items_file_closed(ip, run, backend, tmp_path):
    """Each item writes its own file, so nothing is refused; `f`, bound in the body, is in the
    kernel as after the plain loop: the last item's file, closed, of the same type and mode
    (from worker processes, a closed like of it: an open file could not travel)."""
    run(f"import asyncio, time\nfolder = {str(tmp_path)!r}\n")
    cell = (
        "for i in range(6):\n    time.sleep(0.002 * (6 - i))\n"
        "    with open(f'{folder}/f{i}.txt', 'w') as f:\n        f.write(str(i))\n"
    )
    outcome = run_ok(run, backend, pausing(cell, backend))
    assert [(tmp_path / f"f{i}.txt").read_text() for i in range(6)] == [str(i) for i in range(6)]
    f = ip.user_ns["f"]
    assert type(f).__name__ == "TextIOWrapper" and f.closed
    assert (f.name, f.mode) == (f"{tmp_path}/f5.txt", "w")
    assert "could not be sent back" not in outcome.err, outcome.err


# §7: native thread pools in worker processes

# np.dot of a long vector splits its sum across BLAS threads, so the thread count decides the
# order of the additions; `kernel_threads` is what the kernel's BLAS runs with
NUMPY_SETUP = (
    "import numpy as np\nfrom threadpoolctl import threadpool_info\n"
    "rng = np.random.default_rng(0)\nvs = [rng.random(2_000_000) for _ in range(4)]\n"
    "plain = [float(v @ v) for v in vs]\n"
    "kernel_threads = max(p['num_threads'] for p in threadpool_info())\n"
)
# The sums, and the native threads each item's worker had while it added
DOTS = (
    "sums, threads = [], []\nfor v in vs:\n    sums.append(float(v @ v))\n"
    "    threads.append(max((p['num_threads'] for p in threadpool_info()), default=0))\n"
)
START_METHODS = ("fork", "spawn")


def capped_in_workers(ip) -> bool:
    """Whether the items ran with fewer native threads than the kernel has: what the user
    must be told of, whatever the sums turned out to be."""
    return min(ip.user_ns["threads"]) < ip.user_ns["kernel_threads"]


@pytest.mark.parametrize("method", START_METHODS)
def test_keep_native_threads_gives_the_kernels_sums_in_worker_processes(ip, run, method):
    """With the kernel's thread count the workers add in the kernel's order, to the last bit."""
    pytest.importorskip("threadpoolctl")
    run(NUMPY_SETUP)
    run_ok(run, f"{BACKENDS[method]} --keep-native-threads -q", DOTS)
    assert report().native_limit is None  # nothing capped, nothing to tell
    assert ip.user_ns["threads"] == [ip.user_ns["kernel_threads"]] * 4
    assert ip.user_ns["sums"] == ip.user_ns["plain"]


@pytest.mark.parametrize("method", START_METHODS)
def test_capped_native_threads_are_told_in_the_summary(ip, run, method):
    """A cap, where one applied, is never silent: the summary names the option and says what
    may differ. Whether the sums do differ is not asserted (they may not, on some machines).
    Fresh interpreters (spawn) are capped before NumPy loads, in their first run too."""
    pytest.importorskip("threadpoolctl")
    run(NUMPY_SETUP)
    shown = run_ok(run, BACKENDS[method], DOTS)
    capped = capped_in_workers(ip)
    assert (report().native_limit is not None) == capped, (ip.user_ns["threads"], shown.out)
    told = ("--keep-native-threads" in shown.out, "last bits" in shown.out)
    assert told == (capped, capped), shown.out


@pytest.mark.parametrize("method", START_METHODS)
def test_capped_native_threads_are_told_once_a_session_when_quiet(ip, run, method):
    """With -q there is no summary, and nothing is printed: the session's first summary
    after it tells of the cap, and the one after that does not repeat it."""
    pytest.importorskip("threadpoolctl")
    run(NUMPY_SETUP)
    quiet = run_ok(run, f"{BACKENDS[method]} -q", DOTS)
    capped = capped_in_workers(ip)
    first = run_ok(run, BACKENDS[method], DOTS)
    second = run_ok(run, BACKENDS[method], DOTS)
    assert capped_in_workers(ip) == capped  # the same warm pool
    assert quiet.out == quiet.err == ""
    told = [line for line in first.out.splitlines() if "--keep-native-threads" in line]
    assert len(told) == (1 if capped else 0), (ip.user_ns["threads"], first.out)
    assert "--keep-native-threads" not in second.out + second.err, second.out


# What a review found: the preview evaluates nothing of the kernel's, and is never stale


@pytest.mark.parametrize("name", ["serial", "threads"])
def test_the_preview_leaves_a_kernel_iterator_alone(ip, run, name):
    """`data = list(it)` before the loop is not made in the preview: that would run the
    kernel's iterator out before the cell does."""
    run("it = iter([1, 2, 3])\n")
    run_ok(
        run,
        f"{BACKENDS[name]} -q",
        "data = list(it)\nout = []\nfor x in data:\n    out.append(x * 2)\n",
    )
    assert ip.user_ns["out"] == [2, 4, 6]


def test_the_preview_calls_a_factory_only_while_it_still_only_makes(ip, run):
    """A factory whose callee was rebound, in the same cell, to one that does something is
    not called by the preview: the refused cell leaves `log` empty."""
    cell = (
        "def load():\n    return []\ndef make():\n    return load()\n"
        "def load():\n    log.append('load ran')\n    return []\n"
        "out = make()\nfor i in range(3):\n    out.append(random.random())\n"
    )
    run("import random\nlog = []\n")
    refused(run(f"%%parallel {BACKENDS['threads']}\n{cell}"), "random")
    assert ip.user_ns["log"] == []


def test_a_name_a_call_rebinds_before_the_loop_is_judged_at_the_loop(ip, run):
    """`reset()` rebinds `results` through `global`, which the source does not show: the
    checks on objects wait for the loop, which then finds a list, and runs."""
    run(
        "class Bag:\n    def append(self, x):\n        pass\nresults = Bag()\n"
        "def reset():\n    global results\n    results = []\n"
    )
    run_ok(run, BACKENDS["threads"], "reset()\nfor i in range(4):\n    results.append(i * i)\n")
    assert ip.user_ns["results"] == [0, 1, 4, 9]


def test_open_in_memory_files_come_back_open_from_workers(ip, run):
    """Only a closed file travels as its closed like: an open BytesIO is a value like any."""
    run("import io\n")
    run_ok(
        run, BACKENDS["fork"],
        "bufs = []\nfor i in range(3):\n    b = io.BytesIO()\n    b.write(b'x' * i)\n    bufs.append(b)\n",
    )  # fmt: skip
    assert [b.getvalue() for b in ip.user_ns["bufs"]] == [b"", b"x", b"xx"]


@pytest.mark.parametrize(
    "opening",
    [
        "lzma.open(f'{folder}/o{i}.xz', mode='wt')",
        "tarfile.open(f'{folder}/o{i}.tar', mode='w')",
        "open(os.devnull, 'w')",
    ],
)
def test_a_module_open_of_a_path_per_item_or_devnull_is_not_a_shared_file(run, tmp_path, opening):
    run(f"import lzma, os, tarfile\nfolder = {str(tmp_path)!r}\n")
    run_ok(
        run,
        f"{BACKENDS['threads']} -q",
        f"for i in range(3):\n    with {opening} as g:\n        pass\n",
    )


def test_a_path_the_body_binds_from_a_constant_is_one_shared_file(ip, run, tmp_path):
    """`path = "..."` in the body does not make the path the item's own."""
    path = tmp_path / "shared.txt"
    cell = (
        f"for i in range(4):\n    path = {str(path)!r}\n"
        "    with open(path, 'a') as fh:\n        fh.write(f'{i} ')\n"
    )
    refused(run(f"%%parallel {BACKENDS['threads']}\n{cell}"), "every item writes to the one file")
    assert not path.exists()


@pytest.mark.parametrize("name", ["serial", "auto"])
def test_a_generator_expression_run_as_written_at_the_loop_stays_lazy(ip, run, name):
    """Found only at the loop (a function reached through a dict reads the loop name), the
    generator expression runs as written: taking its first value calls the function once."""
    run("x = 'global'\ncalls = []\ndef reader():\n    calls.append(1)\n    return x\n")
    cell = "f = {'a': reader}['a']\ng = (f() for x in range(3))\nfirst = next(g)\n"
    run_ok(run, f"{kernel_backend(name)} -q", cell)
    assert ip.user_ns["calls"] == [1] and ip.user_ns["first"] == "global"
    assert next(ip.user_ns["g"]) == "global"  # the plain generator, not closed by parmagic
    assert ip.user_ns["calls"] == [1, 1]


def test_auto_runs_an_awaiting_loop_as_written_when_the_loop_shows_why(ip, run):
    """asyncio cannot run it (a function reached through a dict reads the loop name, found
    at the loop): auto runs the loop, awaits and all, in the kernel, as written."""
    run("import asyncio\ndef reader():\n    return x\n")
    cell = (
        "f = {'a': reader}['a']\nout = []\nfor x in range(3):\n"
        "    await asyncio.sleep(0)\n    out.append(f())\n"
    )
    run_ok(run, "-b auto -q", cell)
    assert ip.user_ns["out"] == [0, 1, 2]


def test_a_refusal_under_compare_after_statements_ran_names_them(ip, run):
    """However an earlier run ended, a refusal at the loop says which statements ran."""
    run_ok(run, "-b serial -q", "for i in range(2):\n    pass\n")
    run("log = []\n")
    cell = (
        "log.append('ran')\nseen = []\ns = (lambda v: v)(seen)\n"
        "for i in range(3):\n    seen.append(len(s))\n"
    )
    refused(run(f"%%parallel --compare serial,threads\n{cell}"), "line 2 `log.append('ran')`")
    assert ip.user_ns["log"] == ["ran"]


# Writes to a kernel file that no stand-in records: code the body calls, or an object's file
FILE_SETUP = (
    "import time\nfh = open(PATH, 'w')\ndef log(s):\n    fh.write(s)\n"
    "class Journal:\n    sink = fh\n    @classmethod\n    def note(cls, s):\n        cls.sink.write(s)\n"
    "def make_writer():\n    out = fh\n    def write(s):\n        out.write(s)\n    return write\n"
    "closure_write = make_writer()\nlam = lambda s: fh.write(s)\ncfg = {'log': fh}\n"
)
UNRECORDED_WRITES = {
    "notebook-function": "log(f'{i} ')",
    "classmethod-through-cls": "Journal.note(f'{i} ')",
    "closure-cell": "closure_write(f'{i} ')",
    "lambda": "lam(f'{i} ')",
    "class-attribute-in-the-body": "Journal.sink.write(f'{i} ')",
    "dict-value-in-the-body": "print(i, file=cfg['log'])",
}


@pytest.mark.parametrize("call", list(UNRECORDED_WRITES.values()), ids=list(UNRECORDED_WRITES))
@pytest.mark.parametrize("name", ["threads", "auto"])
def test_writes_to_a_kernel_file_that_no_stand_in_records_never_land_out_of_order(
    ip, run, tmp_path, call, name
):
    """A write made by a function the body calls, or through an object, goes straight to the
    file where the item runs: refused on a named parallel backend (nothing written), run in
    the kernel by auto, in item order."""
    path = tmp_path / "journal.txt"
    run(with_path(FILE_SETUP, path))
    cell = f"for i in range(6):\n    time.sleep(0.002 * (6 - i))\n    {call}\n"
    outcome = run(f"%%parallel {kernel_backend(name)} -q\n{cell}")
    run("fh.close()\n")
    if name == "threads":
        refused(outcome, "writes to the kernel's file")
        assert path.read_text() == ""
    else:
        assert outcome.error is None and report().backend == "serial"
        assert path.read_text().split() == [str(i) for i in range(6)]
