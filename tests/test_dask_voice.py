"""dask speaks through parmagic only: its warnings about how parmagic ships data stay out of
the cell (the item's own warnings do not), and the summary's figures of a dask run are the
items' real times, never "busy 0.000 s" or "0.00×" (issue 31)."""

from __future__ import annotations

import re
import warnings

import pytest
from conftest import report

from parmagic.summary.render import text_summary, times
from parmagic.summary.report import RunReport

BIG = "import numpy as np, warnings\narrays = [np.zeros(10_000_000 // 8) + i for i in range(4)]\n"
UNITS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6}


def _seconds(text: str) -> float:
    number, unit = text.split()
    return float(number) * UNITS[unit]


def _dask(dask_cluster: str) -> str:
    return f"-b dask --scheduler {dask_cluster} -w 2"


def _run_recording_warnings(run, cell: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = run(cell)
    return outcome, [f"{w.category.__name__}: {w.message}" for w in caught]


def _check_figures(summary: str) -> float:
    """The head's busy time, and the speedup line (where the run was long enough to have
    one) consistent with the wall time and serial estimate it shows."""
    assert "0.00×" not in summary and "busy 0.000 s" not in summary, summary
    head = re.search(r"wall (\S+ s) · busy (\S+ (?:s|ms|µs))", summary)
    assert head, summary
    speedup = re.search(
        r"speedup +(?:at most )?(\S+)× \(serial [≈≤] (\S+ \S+)\) of an ideal (\d+)×", summary
    )
    if speedup:
        shown, serial, ideal = float(speedup[1]), _seconds(speedup[2]), float(speedup[3])
        expected = min(serial / _seconds(head[1]), ideal)
        assert abs(shown - expected) <= 0.01 + 0.01 * expected, summary
    return _seconds(head[2])


@pytest.mark.slow
def test_large_items_on_dask_print_no_dask_warning_and_give_the_plain_loops_result(
    ip, run, dask_cluster
):
    run(BIG + "out = []\n")
    outcome, caught = _run_recording_warnings(
        run, f"%%parallel {_dask(dask_cluster)}\nfor a in arrays:\n    out.append(a.sum())\n"
    )
    assert outcome.error is None, outcome.err
    assert "large graph" not in outcome.out + outcome.err, outcome.out + outcome.err
    assert caught == []
    assert ip.user_ns["out"] == [i * 10_000_000 // 8 for i in range(4)]


@pytest.mark.slow
def test_a_users_own_warning_in_a_large_item_still_shows(ip, run, dask_cluster):
    run(BIG + "out = []\n")
    cell = (
        f"%%parallel -q {_dask(dask_cluster)}\nfor a in arrays:\n    if a[0] == 2:\n"
        "        warnings.warn('item two is odd')\n    out.append(a.sum())\n"
    )
    outcome, caught = _run_recording_warnings(run, cell)
    assert outcome.error is None, outcome.err
    shown = outcome.out + outcome.err + "\n".join(caught)
    assert "UserWarning: item two is odd" in shown
    assert "large graph" not in shown
    assert len(ip.user_ns["out"]) == 4


@pytest.mark.slow
def test_trivial_items_on_dask_show_their_busy_time_and_no_zero_speedup(ip, run, dask_cluster):
    outcome = run(
        f"%%parallel {_dask(dask_cluster)}\nys = []\nfor i in range(50):\n    ys.append(i)\n"
    )
    assert outcome.error is None, outcome.err
    assert report().busy > 0
    assert _check_figures(outcome.out) > 0
    assert ip.user_ns["ys"] == list(range(50))


@pytest.mark.slow
def test_sleeping_items_on_dask_count_their_sleep_as_busy(ip, run, dask_cluster):
    run("import time\n")
    outcome = run(
        f"%%parallel --chunksize 1 {_dask(dask_cluster)}\nfor i in range(40):\n"
        "    time.sleep(0.01)\n"
    )
    assert outcome.error is None, outcome.err
    r = report()
    assert r.item_count == 40
    assert r.busy >= 40 * 0.01  # each item's span holds its sleep, on any machine
    assert _check_figures(outcome.out) == pytest.approx(r.busy, abs=0.001)


@pytest.mark.slow
def test_compare_with_dask_on_trivial_items_shows_no_zero_speedup(ip, run):
    """On a local cluster, whose start makes dask's run hundreds of times the serial one."""
    outcome = run(
        "%%parallel --compare serial,dask -w 2\nys = []\nfor i in range(20):\n    ys.append(i)\n"
    )
    assert outcome.error is None, outcome.err
    assert "dask" in outcome.out
    assert "0.00×" not in outcome.out, outcome.out
    assert ip.user_ns["ys"] == list(range(20))


def test_a_tiny_busy_time_and_speedup_keep_their_figures():
    r = RunReport("dask", 2, cores=2, wall=0.5, item_count=50, chunks=9, busy=0.0004)
    r.cpu = r.alone = 0.0004
    summary = text_summary(r, unicode=True)
    assert "busy 0.40 ms" in summary
    assert "speedup  under 0.01×" in summary
    assert [times(x) for x in (0.0, 0.004, 0.006, 1.234)] == [
        "under 0.01×", "under 0.01×", "0.01×", "1.23×",
    ]  # fmt: skip
