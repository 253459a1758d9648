"""No line of the summary contradicts another: a run too short to measure says so instead of
showing figures its samples cannot give, the speedup never exceeds the ideal beside it, the
cores' use is never below what this kernel and its workers used, the advice the README lists
appears where its figures call for it, an interrupted run names its unfinished items, the
native thread cap is told once, and --plot leaves the working folder alone.

Whether a real run is long enough to measure depends on the machine's load: each check takes
the run as it came, and holds for both forms of the summary.
"""

from __future__ import annotations

import os
import re

import pytest
from conftest import BACKENDS, report

from parmagic.summary.render import MEASURABLE, advice, item_ranges, text_summary
from parmagic.summary.report import RunReport

SPIN = "def spin(n):\n    t = 0\n    for k in range(300_000):\n        t += k % (n + 1)\n    return t\n"
SPEEDUP = re.compile(r"speedup  (?:at most )?([\d.]+)× \(.*\) of an ideal (\d+)× here")
CORES = re.compile(r"cores    (.*) · this kernel and its workers (\d+)%")
TOO_SHORT = "too short to measure"


def rows(out: str) -> dict[str, str]:
    """The summary's labelled rows, by label."""
    found = {}
    for line in out.splitlines():
        match = re.match(r"  (\w+) +(.*)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def assert_agrees(out: str, r: RunReport) -> None:
    """The summary ``out`` of report ``r``, line against line."""
    shown = rows(out)
    if r.wall < MEASURABLE:
        assert TOO_SHORT in shown.get("figures", ""), out
        assert not {"speedup", "cores", "time", "workers"} & set(shown), out
    else:
        assert TOO_SHORT not in out and "speedup" in shown, out
    assert "0.000 s)" not in out and "≤ 0.000" not in out, out  # a bound of nothing
    speedup = SPEEDUP.search(out)
    if speedup:
        assert float(speedup.group(1)) <= float(speedup.group(2)), out
        assert float(speedup.group(2)) == r.ideal
    cores = CORES.search(out)
    if cores:
        percents = [int(p) for p in re.findall(r"(\d+)%", cores.group(1))]
        assert percents and max(percents) >= int(cores.group(2)) - 1, out  # rounding
    hint = advice(r)
    assert shown.get("advice") == hint, out


def _report(backend: str, **figures) -> RunReport:
    """Figures as a run on ``backend`` gives them: threads share the kernel's process."""
    r = RunReport(backend, 2, cores=2, copies_objects=backend == "processes")
    r.plain_loop, r.event_loop = backend == "serial", backend == "asyncio"
    for name, value in figures.items():
        setattr(r, name, value)
    if r.copies_objects:
        r.alone = r.busy - r.queued
    else:
        r.shared_busy, r.shared_cpu, r.shared_wall = r.busy, r.cpu, r.wall
    return r


def test_a_run_too_short_to_measure_says_so_and_nothing_its_samples_cannot_give(ip, run):
    outcome = run(
        f"%%parallel {BACKENDS['threads']}\nout = []\nfor i in range(5):\n    out.append(i)\n"
    )
    assert outcome.error is None
    assert_agrees(outcome.out, report())
    assert "wall" in outcome.out.splitlines()[0]  # the head stays


def test_a_short_summary_keeps_the_advice_and_never_bounds_serial_by_nothing():
    r = _report("threads", item_count=2000, chunks=16, wall=0.012, busy=0.004, cpu=0.004)
    text = text_summary(r, unicode=True)
    assert TOO_SHORT in text and "cores" not in text
    assert "advice   the loop is too small for threads: serial is faster here" in text
    assert "0.000 s" not in text


def test_an_asyncio_body_that_never_awaits_has_an_ideal_of_one(ip, run):
    """Its items hold the event loop one after another: 1×, not the number of coroutines.
    Eight naps of 50 ms one after another make a run long enough to measure."""
    run("import time\n")
    outcome = run("%%parallel -b asyncio\nfor i in range(8):\n    time.sleep(0.05)\n")
    assert outcome.error is None
    r = report()
    assert "never awaits" in outcome.err
    assert r.one_at_a_time and r.ideal == 1.0
    assert "of an ideal 1× here" in outcome.out
    assert_agrees(outcome.out, r)


def test_threads_on_a_computing_loop_are_advised(ip, run):
    """Whatever the load makes of the speedup, a computing loop on threads is told what to
    do instead (processes, or serial when too small for them), unless other programs took
    the machine: then that is said first."""
    run(SPIN)
    outcome = run("%%parallel -b threads -w 2\nfor i in range(12):\n    spin(i)\n")
    assert outcome.error is None
    r = report()
    assert_agrees(outcome.out, r)
    if r.computing and not r.releases_the_gil:
        hint = rows(outcome.out).get("advice", "")
        assert (
            "one thread runs Python at a time" in hint
            or "too small for threads" in hint
            or (hint.startswith("other programs"))
        ), outcome.out


@pytest.mark.parametrize(
    "figures, expected",
    [
        (dict(item_count=12, wall=1.0, busy=6.0, cpu=0.95), "try --backend processes"),
        (dict(item_count=12, wall=0.4, busy=0.3, cpu=0.18), "too little to pay for worker"),
        (dict(item_count=12, wall=0.4, busy=0.3, cpu=0.18, cores=1), "the one usable core"),
        (dict(item_count=2000, wall=0.5, busy=0.1, cpu=0.1), "too small for threads"),
        (dict(item_count=300, wall=0.5, busy=0.2, cpu=0.01), "too small for threads"),
    ],
    ids=["enough-work", "too-little-for-processes", "one-core", "tiny-items", "waiting-tiny"],
)
def test_threads_get_the_advice_the_readme_lists(figures, expected):
    r = _report("threads", **figures)
    hint = advice(r)
    assert hint is not None and expected in hint, hint
    assert_agrees(text_summary(r), r)


def test_no_smaller_chunksize_is_advised_when_each_chunk_is_one_item():
    uneven = dict(item_count=6, wall=1.0, busy=1.2, cpu=0.01, workers=2)
    r = _report("threads", chunks=6, **uneven)
    r.worker_busy = {"a": 1.0, "b": 0.2}
    assert advice(r) is None
    r.chunks, r.item_count = 3, 12  # four items a chunk: smaller ones would spread them
    assert advice(r) == "some workers were idle while others worked: try a smaller --chunksize"


def test_item_ranges_are_compact_and_capped():
    assert item_ranges([12, 4, 5, 6, 7, 8, 9]) == "4-9, 12"
    many = item_ranges(list(range(0, 40, 2)))
    assert many.startswith("0, 2, 4, 6, 8, 10, …") and "(20 items in all)" in many


def test_the_native_thread_cap_is_told_once_in_a_summary_and_only_for_native_items(ip, run):
    """Pure-Python items are not told of it; the first summary whose items use NumPy is, the
    next is not; a quiet run prints nothing of it."""
    pytest.importorskip("threadpoolctl")
    options = BACKENDS["fork"]
    run("import numpy as np\n")
    pure = run(f"%%parallel {options}\nout = []\nfor i in range(6):\n    out.append(i * 2)\n")
    quiet = run(f"%%parallel {options} -q\nout = [float(np.ones(3).sum()) for i in range(6)]\n")
    native = "out = []\nfor i in range(6):\n    out.append(float(np.ones(3).sum()))\n"
    first = run(f"%%parallel {options}\n{native}")
    capped = report().native_limit is not None and report().native_code
    second = run(f"%%parallel {options}\n{native}")
    assert all(o.error is None for o in (pure, quiet, first, second))
    assert "--keep-native-threads" not in pure.out + pure.err
    assert quiet.out == "" and "--keep-native-threads" not in quiet.err
    told = [line for line in first.out.splitlines() if "--keep-native-threads" in line]
    assert len(told) == (1 if capped else 0), first.out
    assert all(line.startswith("  note ") for line in told)
    assert "--keep-native-threads" not in second.out + second.err


@pytest.mark.parametrize("magic", ["%parallel_report --plot", "%parallel_report --plot -o kept"])
def test_report_plot_returns_nothing_and_writes_nothing_in_the_working_folder(
    ip, run, tmp_path, monkeypatch, magic
):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    run(f"%%parallel {BACKENDS['threads']} -q\nfor i in range(8):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    outcome = run(magic)
    assert outcome.error is None and outcome.result.result is None  # no Out[...] summary
    assert os.listdir(tmp_path) == []
    path = re.search(r"plot written to (\S+\.png)", outcome.out).group(1)
    with open(path, "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    if "-o kept" in magic:
        assert ip.user_ns["kept"] is report()
    run("%reload_ext parmagic")  # unloading removes the plots it wrote
    assert not os.path.exists(path)


@pytest.mark.slow
def test_a_dask_run_summary_agrees_with_itself(ip, run, dask_cluster):
    run("import time\n")
    outcome = run(
        f"%%parallel -b dask --scheduler {dask_cluster} -w 2\n"
        "for i in range(12):\n    time.sleep(0.1)\n"
    )
    assert outcome.error is None
    r = report()
    assert_agrees(outcome.out, r)
    assert r.dashboard and "dashboard" in outcome.out


def test_threads_advice_never_names_processes_that_auto_found_refused():
    from parmagic.summary.render import advice
    from parmagic.summary.report import RunReport

    r = RunReport("threads", 6, cores=2, wall=1.0, item_count=100, cpu=0.95, shared_busy=1.0)
    r.shared_cpu, r.shared_wall, r.shared_process_cpu = 0.95, 1.0, 0.95
    assert (
        advice(r) == "items compute, and one thread runs Python at a time: try --backend processes"
    )
    r.processes_refused = "the loop uses `lock`"
    assert "processes cannot take this loop (the loop uses `lock`)" in advice(r)
    assert "try --backend processes" not in advice(r)
