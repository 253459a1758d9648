"""Slower tests through a real Jupyter kernel (``python3`` kernelspec, installed by ``make setup``).

One kernel serves the module's magic tests; the demo notebook gets a fresh kernel of its own.
Every kernel is shut down by its fixture.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from conftest import HANG_GUARD, REPLY_TIMEOUT, a_kernel, execute_notebook

DEMO = Path(__file__).resolve().parent.parent / "demo_notebooks" / "01_processes.ipynb"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Outcome:
    """What one execute request produced."""

    stdout: str
    stderr: str
    result: str | None  # text/plain of the execute_result
    ename: str | None  # from the execute_reply: set for UsageError too, which sends no error msg
    evalue: str | None
    traceback: str


def execute(kc, code: str) -> Outcome:
    """Run ``code`` in the kernel; collect its streams, its result and its error. A failing
    cell must not abort the next: ipykernel 6.17 (Colab's) aborts every request that arrives
    in the moment after an error unless the failed one says not to."""
    return collect(kc, kc.execute(code, stop_on_error=False))


def collect(kc, msg_id: str) -> Outcome:
    """Everything the kernel sends for one execute request, up to its reply."""
    streams = {"stdout": [], "stderr": []}
    result = None
    while True:
        msg = kc.get_iopub_msg(timeout=REPLY_TIMEOUT)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            streams[content["name"]].append(content["text"])
        elif kind == "execute_result":
            result = content["data"].get("text/plain")
        elif kind == "display_data":  # the run summary: text/plain beside its HTML
            streams["stdout"].append(content["data"].get("text/plain", "") + "\n")
        elif kind == "status" and content["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=REPLY_TIMEOUT)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=REPLY_TIMEOUT)
    content = reply["content"]
    assert content["status"] in ("ok", "error"), content  # not aborted: the cell ran
    failed = content["status"] == "error"
    return Outcome(
        stdout="".join(streams["stdout"]),
        stderr="".join(streams["stderr"]),
        result=result,
        ename=content["ename"] if failed else None,
        evalue=content["evalue"] if failed else None,
        traceback=ANSI.sub("", "\n".join(content.get("traceback", []))) if failed else "",
    )


def run_ok(kc, code: str) -> Outcome:
    outcome = execute(kc, code)
    assert outcome.ename is None, f"{outcome.ename}: {outcome.evalue}\n{outcome.traceback}"
    return outcome


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One kernel for the module's magic tests (starting one costs about a second)."""
    with a_kernel(str(tmp_path_factory.mktemp("k"))) as (km, client):
        yield km, client


@pytest.fixture
def kc(kernel):
    """The shared kernel with parmagic loaded; unloading after the test stops its worker pools
    (conftest's leak check looks for child processes left behind)."""
    _, client = kernel
    run_ok(client, "%load_ext parmagic")
    try:
        yield client
    finally:
        run_ok(client, "%unload_ext parmagic")


@pytest.fixture
def km(kernel, kc):
    """The shared kernel's manager, to interrupt it."""
    return kernel[0]


@pytest.mark.timeout(120)
def test_spawn_notebook_function_serial_results_and_ordered_output(kc):
    run_ok(
        kc,
        "import time\n"
        "def square(x):\n"
        "    time.sleep(0.01 * (x % 3))  # later items may finish first\n"
        "    return x * x\n",
    )
    outcome = run_ok(
        kc,
        "%%parallel --backend processes --start-method spawn --workers 2\n"
        "results = []\n"
        "for x in range(12):\n"
        "    print(f'item {x} starts')\n"
        "    print(f'item {x} ends')\n"
        "    results.append(square(x))\n",
    )
    printed = [line for line in outcome.stdout.splitlines() if line.startswith("item ")]
    expected = [f"item {x} {when}" for x in range(12) for when in ("starts", "ends")]
    assert printed == expected
    assert run_ok(kc, "results").result == repr([x * x for x in range(12)])
    assert run_ok(kc, "results == [square(x) for x in range(12)]").result == "True"


@pytest.mark.timeout(120)
def test_summary_line_is_printed_unless_quiet(kc):
    outcome = run_ok(kc, "%%parallel -b threads -w 2\nsquares = [x * x for x in range(10)]")
    summary = [line for line in outcome.stdout.splitlines() if line.startswith("parmagic:")]
    assert len(summary) == 1, outcome.stdout
    assert "threads" in summary[0]
    assert "2 workers" in summary[0]
    assert "10 items" in summary[0]
    quiet = run_ok(kc, "%%parallel -b threads -q\nsquares = [x * x for x in range(10)]")
    assert "parmagic:" not in quiet.stdout + quiet.stderr


@pytest.mark.timeout(120)
def test_item_error_raises_original_type_and_keeps_serial_prefix(kc):
    run_ok(kc, "def inverse_of(n):\n    return 1 / (n - 3)\n")
    outcome = execute(
        kc,
        "%%parallel --backend processes --workers 2\n"
        "inverses = []\n"
        "for n in range(8):\n"
        "    inverses.append(inverse_of(n))\n",
    )
    assert outcome.ename == "ZeroDivisionError"
    assert "inverses.append(inverse_of(n))" in outcome.traceback  # the cell's line
    assert "return 1 / (n - 3)" in outcome.traceback  # the notebook function's line
    assert "item 3" in outcome.traceback  # the note naming the item
    check = "inverses == [inverse_of(n) for n in range(3)]"
    assert run_ok(kc, check).result == "True"


@pytest.mark.timeout(120)
def test_unknown_backend_is_a_usage_error_and_kernel_keeps_working(kc):
    outcome = execute(kc, "%%parallel --backend gpu\nfor x in range(3):\n    pass\n")
    assert outcome.ename == "UsageError"
    assert "gpu" in outcome.evalue
    assert "processes" in outcome.evalue  # the valid choices are listed
    assert "Traceback" not in outcome.stderr + outcome.traceback
    assert run_ok(kc, "1 + 1").result == "2"
    after = run_ok(kc, "%%parallel -b serial -q\ndoubled = [2 * x for x in range(4)]\ndoubled")
    assert after.result == "[0, 2, 4, 6]"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["threads", "processes --start-method spawn"])
def test_interrupt_button_stops_the_run_and_the_next_run_works(km, kc, backend, tmp_path):
    run_ok(kc, f"import pathlib, time\ndone = []\nmarks = {str(tmp_path)!r}")
    msg_id = kc.execute(
        f"%%parallel -b {backend} -w 2\nfor i in range(400):\n    time.sleep(0.05)\n"
        "    done.append(i)\n    pathlib.Path(marks, str(i)).touch()\n",
        stop_on_error=False,  # see execute
    )
    deadline = time.monotonic() + HANG_GUARD  # spawn's start-up can take seconds on a busy machine
    while len(list(tmp_path.iterdir())) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    interrupted = time.monotonic()
    km.interrupt_kernel()
    outcome = collect(kc, msg_id)
    assert time.monotonic() - interrupted < HANG_GUARD
    assert outcome.ename == "KeyboardInterrupt"
    assert "the parallel run was interrupted" in outcome.traceback
    assert run_ok(kc, "done == list(range(len(done))) and 0 < len(done) < 400").result == "True"
    after = run_ok(
        kc, f"%%parallel -b {backend} -w 2 -q\nagain = [i for i in range(50)]\nlen(again)"
    )
    assert after.result == "50"


@pytest.mark.timeout(120)
def test_killed_worker_fails_the_cell_and_the_next_run_works(kc):
    run_ok(kc, "import os, signal")
    outcome = execute(
        kc,
        "%%parallel -b processes -w 2 --chunksize 1\nkept = []\nfor i in range(6):\n"
        "    if i == 2:\n        os.kill(os.getpid(), signal.SIGKILL)\n    kept.append(i)\n",
    )
    assert outcome.ename == "WorkerDied"
    assert "killed by SIGKILL" in outcome.evalue and "running item 2;" in outcome.evalue
    assert run_ok(kc, "kept").result == "[0, 1]"
    assert run_ok(kc, "%%parallel -b processes -w 2 -q\n[i * i for i in range(5)]").result == (
        "[0, 1, 4, 9, 16]"
    )


@pytest.mark.timeout(120)
def test_asyncio_with_a_client_session_around_the_loop(kc):
    run_ok(kc, "from parmagic.demo import SlowServer\nsite = SlowServer(latency=0.3).start()")
    try:
        outcome = run_ok(
            kc,
            "%%parallel\nimport aiohttp\nsizes = []\n"
            "async with aiohttp.ClientSession() as session:\n"
            "    for n in range(20):\n"
            "        async with session.get(site.url(f'/page/{n}')) as response:\n"
            "            print('got', n)\n"
            "            sizes.append(len(await response.text()))\n",
        )
        printed = [line for line in outcome.stdout.splitlines() if line.startswith("got")]
        assert printed == [f"got {n}" for n in range(20)]  # in this cell's output, in order
        assert "parmagic: asyncio" in outcome.stdout
        assert run_ok(kc, "len(sizes), site.max_overlap() >= 15").result == "(20, True)"
    finally:
        run_ok(kc, "site.stop()")


@pytest.fixture
def demo_kernel():
    """A fresh kernel whose working directory is the demo notebook's folder."""
    with a_kernel(str(DEMO.parent)) as (_, client):
        yield client


@pytest.mark.timeout(120)
def test_demo_notebook_runs_end_to_end(demo_kernel):
    nb = nbformat.read(DEMO, as_version=4)
    outcomes = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outcome = execute(demo_kernel, cell.source)
        if "raises-exception" not in cell.metadata.get("tags", []):
            assert outcome.ename is None, f"{cell.source}\n{outcome.ename}: {outcome.evalue}"
        outcomes[cell.source] = outcome
    equality = next(o for source, o in outcomes.items() if source.endswith("serial == parallel"))
    assert equality.result == "True"
    printed = "".join(o.stdout for o in outcomes.values())
    assert re.search(r"^parmagic: processes \(\w+\) .* 5000 items", printed, re.M)
    assert re.search(r"^parmagic: processes \(spawn\) .* 5000 items", printed, re.M)
    assert re.search(r"^  item 3 \(3\): ZeroDivisionError", printed, re.M)


def notebook_text(name: str, smaller: dict[str, str] | None = None) -> tuple[dict, str]:
    """Execute a demo notebook in a fresh kernel; its cells' results by source, and all text.
    ``smaller``: sizes replaced in the cells' sources (``make demo`` runs the full ones)."""
    nb = nbformat.read(DEMO.parent / name, as_version=4)
    for cell in nb.cells:
        for full, small in (smaller or {}).items():
            cell.source = cell.source.replace(full, small)
    execute_notebook(nb, DEMO.parent)
    results, printed = {}, []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain", "")
            printed.append(text)
            if output.get("output_type") == "execute_result":
                results[cell.source] = text
    return results, "\n".join(printed)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "name, last_source, result, printed",
    [
        (
            "03_threads.ipynb",
            "threaded == titles",
            "True",
            "parmagic: threads · 12 workers · 12 items",
        ),
        (
            "04_futures.ipynb",
            "list(sizes) == urls",
            "True",
            "TimeoutError('the item ran longer than the 1 s",
        ),
        (
            "05_asyncio.ipynb",
            "len(pages), site.max_overlap()",
            "(48, 48)",
            "the loop body never awaits",
        ),
    ],
)
def test_io_demo_notebooks_run_end_to_end(name, last_source, result, printed):
    results, text = notebook_text(name)
    assert results[last_source] == result
    assert printed in text


@pytest.mark.timeout(150)
def test_compare_demo_notebook_compares_and_exports():
    # the demo's workloads, smaller: the test is of comparing and exporting, not of sizes
    results, text = notebook_text(
        "02_compare.ipynb",
        {"range(4000)": "range(1200)", "range(2000)": "range(600)", "latency=0.2": "latency=0.05"},
    )
    assert re.match(
        r"\(1200,\s+'(fastest|no backend was clearly)",
        results["len(digits), cpu_table.conclusion()"],
    )
    header = [line for line in text.splitlines() if line.startswith("backend ")]
    assert len(header) >= 4 and all("same as serial" in line for line in header)
    assert re.search(r"^futures:processes\s+2\s.*✓$", text, re.M)  # one row per backend
    assert re.search(r"^asyncio\s+\d+\s.*✓$", text, re.M)
    assert re.search(r"^threads\s+6\s.*✓$", text, re.M)  # in the kernel's process, as serial
    assert re.search(r"^processes\s+2\s.*differs: item 0: ran_in\.append\(\d+\)$", text, re.M)
    assert 'multiprocessing.get_context("spawn").Pool(2)' in text
    total = re.search(r"^(\d+)\nparmagic: wrote", text, re.M).group(1)
    assert text.count(f"{total}\n") >= 2  # the exported script printed what the cell printed
    assert text.count("<IPython.core.display.Image object>") == 1


@pytest.mark.timeout(120)
def test_an_executed_notebook_keeps_no_progress_bar_and_shows_code_highlighted(tmp_path):
    from nbconvert import HTMLExporter

    cells = (
        "%load_ext parmagic\nimport time",
        # 1.5 s: long enough for a bar where someone watches
        "%%parallel -b threads -w 2\nfor i in range(30):\n    time.sleep(0.1)\n",
        "%%parallel -b serial -q --show-code\nsquares = [i * i for i in range(5)]",
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    execute_notebook(nb, tmp_path)
    outputs = [output for cell in nb.cells for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not [
        o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert "parmagic-summary" in nb.cells[1].outputs[-1].data["text/html"]
    assert [set(o.data) for o in nb.cells[2].outputs] == [{"text/html", "text/plain"}]
    page, _ = HTMLExporter().from_notebook_node(nb)
    code = re.search(
        r'<div class="highlight[^"]*"><pre>(.*?)</pre>', page.split("--show-code")[-1], re.S
    )
    assert code and "squares" in code.group(1) and "<span" in code.group(1)  # highlighted
