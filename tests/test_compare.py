"""--compare: every backend runs the loop, the kernel ends as after one serial run."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from parmagic.analysis.same_results import first_difference, same
from parmagic.demo import SlowServer
from parmagic.summary.compare_table import Comparison

THREE = "--compare serial,threads,processes -w 2"


def test_kernel_ends_as_after_one_serial_run(ip, run):
    run("def square(n):\n    return n * n\n")
    outcome = run(
        f"%%parallel {THREE} -o cmp\nbefore = []\nbefore.append('once')\nsquares = []\ntotal = 0\n"
        "for n in range(40):\n    squares.append(square(n))\n    total += n\n    print('item', n)\n"
        "after = len(squares)\n"
    )
    assert outcome.error is None, outcome.err
    assert ip.user_ns["before"] == ["once"]  # statements before the loop ran once
    assert ip.user_ns["squares"] == [n * n for n in range(40)]  # one copy, not three
    assert ip.user_ns["total"] == sum(range(40))
    assert ip.user_ns["after"] == 40
    assert ip.user_ns["n"] == 39
    printed = [line for line in outcome.out.splitlines() if line.startswith("item ")]
    assert printed == [f"item {n}" for n in range(40)]  # printed output shown once, in order
    comparison = ip.user_ns["cmp"]
    assert isinstance(comparison, Comparison)
    assert [row.backend for row in comparison.rows] == ["serial", "threads", "processes"]
    assert all(row.same for row in comparison.rows)


def test_table_has_one_row_per_backend_and_names_the_fastest(ip, run):
    outcome = run(f"%%parallel {THREE}\nout = []\nfor n in range(10):\n    out.append(n)\n")
    assert outcome.error is None, outcome.err
    lines = outcome.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("backend"))
    rows = [line.split()[0] for line in lines[header + 1 : header + 4]]
    assert rows == ["serial", "threads", "processes"]
    conclusion = lines[header + 4]
    assert conclusion.startswith(("fastest with the serial results:", "no backend was clearly"))
    assert "same as serial" in lines[header]


def test_a_shared_random_source_is_refused_in_the_rows_of_backends_that_refuse_it(ip, run):
    outcome = run(
        f"%%parallel {THREE} -o cmp\nimport random\ndraws = []\n"
        "for n in range(30):\n    draws.append(random.random())\n"
    )
    assert outcome.error is None, outcome.err
    rows = {row.backend: row for row in ip.user_ns["cmp"].rows}
    for backend in ("threads", "processes"):  # as -b threads and -b processes refuse it
        assert "random" in rows[backend].refused and not rows[backend].runs
    assert "did not run" in outcome.out
    assert len(ip.user_ns["draws"]) == 30  # the serial run's draws only


def test_a_backend_that_cannot_run_the_body_says_why_in_its_row(ip, run):
    run("import threading\nguard = threading.Lock()\n")
    outcome = run(
        "%%parallel --compare serial,threads,processes,asyncio -o cmp\nseen = []\n"
        "for n in range(5):\n    with guard:\n        seen.append(n)\n"
    )
    assert outcome.error is None, outcome.err
    rows = {row.backend: row for row in ip.user_ns["cmp"].rows}
    assert rows["threads"].same
    assert "guard" in rows["processes"].refused  # a lock cannot be pickled
    assert "never awaits" in rows["asyncio"].refused
    assert ip.user_ns["seen"] == list(range(5))


def test_an_item_error_is_raised_after_the_table_with_the_serial_prefix(ip, run):
    outcome = run(
        f"%%parallel {THREE}\ngot = []\nfor n in range(10):\n    got.append(10 // (n - 6))\n"
    )
    assert isinstance(outcome.error, ZeroDivisionError)
    assert ip.user_ns["got"] == [10 // (n - 6) for n in range(6)]
    assert "stopped at item 6" not in outcome.out  # serial itself failed at item 6:
    assert "failed at item 6" in outcome.out
    assert "no backend is named fastest" in outcome.out  # no verdict from failed runs
    assert "✓" not in outcome.out and "fastest with the serial results" not in outcome.out


def test_when_every_item_fails_no_row_is_marked_the_same_and_none_is_fastest(ip, run):
    outcome = run(f"%%parallel {THREE}\nx = [digit_count(n) for n in range(10)]\n")
    assert isinstance(outcome.error, NameError)
    rows = [line for line in outcome.out.splitlines() if line.endswith("failed at item 0")]
    assert len(rows) == 3  # serial, threads, processes
    assert "✓" not in outcome.out and "fastest with" not in outcome.out


def test_compare_all_on_an_awaiting_body_compares_asyncio_with_one_at_a_time(ip, run):
    with SlowServer(latency=0.05) as site:
        ip.user_ns["base"] = site.url("/page/")
        outcome = run(
            "%%parallel --compare all -o cmp\nimport aiohttp\nsizes = []\n"
            "async with aiohttp.ClientSession() as s:\n    for n in range(12):\n"
            "        async with s.get(f'{base}{n}') as r:\n            sizes.append(len(await r.text()))\n"
        )
    assert outcome.error is None, outcome.err
    comparison = ip.user_ns["cmp"]
    assert [row.backend for row in comparison.rows] == ["serial", "asyncio"]
    assert comparison.rows[0].report.workers == 1
    assert comparison.rows[1].same
    assert len(ip.user_ns["sizes"]) == 12


def test_comprehension_value_comes_from_the_serial_run(ip, run):
    outcome = run("%%parallel --compare serial,threads\nsq = [n * n for n in range(8)]\n")
    assert outcome.error is None
    assert ip.user_ns["sq"] == [n * n for n in range(8)]


def test_unknown_backend_in_the_list_is_a_usage_error(run):
    outcome = run("%%parallel --compare serial,gpu\nfor n in range(3):\n    pass\n")
    assert "unknown backend 'gpu'" in outcome.err


def test_interrupt_stops_the_whole_comparison_and_keeps_the_serial_run(ip, run):
    run("import time\n")
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        outcome = run(
            "%%parallel --compare serial,threads,processes -w 2\nout = []\n"
            "for n in range(8):\n    time.sleep(0.15)\n    out.append(n)\nafter = True\n"
        )
    finally:
        timer.cancel()
    assert isinstance(outcome.error, KeyboardInterrupt)
    assert ip.user_ns["out"] == list(range(8))  # serial had finished (1.2 s) before the interrupt
    assert "after" not in ip.user_ns
    assert "the comparison was interrupted" in "\n".join(outcome.error._render_traceback_())
    again = run("%%parallel -b threads\nback = [n for n in range(3)]\n")
    assert again.error is None and ip.user_ns["back"] == [0, 1, 2]


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([1, (2, 3)], [1, (2, 3)], True),
        ([1, 2], [1, 3], False),
        (1, 1.0, False),
        (object(), object(), True),  # no equality defined: each run makes its own
    ],
)
def test_same_compares_values(a, b, expected):
    assert same(a, b) is expected


def test_same_compares_arrays_by_content():
    numpy = pytest.importorskip("numpy")
    assert same(numpy.arange(3), numpy.arange(3))
    assert not same(numpy.arange(3), numpy.arange(1, 4))


def test_first_difference_names_the_item_and_what_differed(ip):
    from parmagic.worker.task import ChunkResult

    def transcript(printed: str) -> list:
        result = ChunkResult(0, 0, "w")
        result.add(0.0, 0.0, 0.0, [], {"n": 0}, None)
        result.add(0.0, 0.0, 0.0, [], {"n": 1}, None)
        result.outputs[1] = [(1, printed)]
        return [(result, [0, 1])]

    assert first_difference(transcript("a"), transcript("a")) is None
    assert first_difference(transcript("a"), transcript("b")) == "item 1 printed other output"
