"""--compare's figures and verdicts: no impossible speedup as a fact, "fastest" only when it is,
"same as serial" exactly the promise, and backends that refuse a body refuse it here too."""

from __future__ import annotations

import os
import re

import pytest

from parmagic.analysis.same_results import same
from parmagic.errors import ParmagicUsageError
from parmagic.run.compare import first_sentence, run_comparison
from parmagic.summary.compare_table import Comparison, Row
from parmagic.summary.report import RunReport

SPIN = "def spin(n):\n    total = 0\n    for i in range(150_000):\n        total += i % 7\n    return total\n"


def computing(backend: str, wall: float, workers: int = 2, copies: bool = True) -> RunReport:
    """A report of a loop whose items computed for 0.8 s in all, on a 2-core machine."""
    report = RunReport(backend, workers, cores=2, wall=wall, item_count=8, cpu=0.8, alone=0.8)
    report.copies_objects, report.plain_loop = copies, backend == "serial"
    return report


def table(walls: dict[str, list[float]], workers: int = 2) -> Comparison:
    rows = []
    for name, times in walls.items():
        row = Row(
            name, runs=[computing(name, t, 1 if name == "serial" else workers) for t in times]
        )
        row.walls = list(times)
        rows.append(row)
    return Comparison(rows=rows, rounds=len(next(iter(walls.values()))))


def test_a_speedup_above_the_ideal_is_marked_and_explained_never_stated():
    comparison = table({"serial": [0.405], "processes": [0.155]})
    text = comparison.summary()
    assert "2.61×*" in text  # marked in its row
    assert "more than 2 workers can give on 2 cores (at most 2×)" in text
    assert "fastest with the serial results: processes, 0.155 s" in text  # no 2.62× there
    assert "2.61× serial" not in text


def test_a_speedup_within_the_ideal_is_stated():
    comparison = table({"serial": [0.4], "processes": [0.22]})
    text = comparison.summary()
    assert "1.82×*" not in text and "1.82× serial (0.220 s)" in text


def test_threads_on_a_computing_loop_have_an_ideal_of_one():
    comparison = table({"serial": [0.4], "threads": [0.2]}, workers=6)
    comparison.rows[1].runs[0].copies_objects = False
    assert comparison.ideal(comparison.rows[1]) == 1.0
    assert "2.00×*" in comparison.summary()


@pytest.mark.parametrize(
    "walls, conclusion",
    [
        ({"serial": [0.40, 0.41, 0.42], "processes": [0.21, 0.22, 0.23]}, "processes, 1.86×"),
        (  # overlapping runs: even, and said so
            {"serial": [0.40, 0.41, 0.42], "threads": [0.39, 0.44, 0.40]},
            "no backend was clearly fastest: threads, serial were even",
        ),
        (  # the two fastest overlap; serial is beaten by both
            {"serial": [0.4] * 3, "processes": [0.20, 0.25, 0.21], "futures": [0.22, 0.21, 0.3]},
            "fastest with the serial results: processes, futures, even at about",
        ),
        ({"serial": [0.40], "threads": [0.38]}, "under 10% says nothing"),  # one run each
    ],
)
def test_fastest_is_named_only_beyond_the_runs_spread(walls, conclusion):
    assert conclusion in table(walls).conclusion()


def fake_run(walls: dict[str, list[float]]):
    """run_one for run_comparison: backends that 'run' in the given times, in order."""
    from parmagic.run.dispatch import Recording

    taken = {name: iter(times) for name, times in walls.items()}
    order: list[str] = []

    def run_one(name: str):
        order.append(name)
        report = computing(name, next(taken[name]))
        return report, Recording(None, report)

    return run_one, order


def test_rounds_alternate_their_order_and_only_where_repeating_is_safe():
    run_one, order = fake_run({"serial": [0.1] * 3, "threads": [0.1] * 3, "processes": [0.1] * 3})
    names = ["serial", "threads", "processes"]
    comparison = run_comparison(names, False, run_one, rounds=3)
    assert comparison.rounds == 3
    assert order == names + names[::-1] + names
    assert all(len(row.walls) == 3 for row in comparison.rows)
    run_one, order = fake_run({"serial": [0.1] * 3, "threads": [0.1] * 3})
    once = run_comparison(
        ["serial", "threads"], False, run_one, rounds=3, unrepeatable=lambda serial: "it writes"
    )
    assert once.rounds == 1 and order == ["serial", "threads"]
    assert "each backend ran the loop once" in once.warnings[0] and "it writes" in once.warnings[0]


def test_one_run_each_by_default():
    run_one, order = fake_run({"serial": [0.1], "threads": [0.1]})
    assert run_comparison(["serial", "threads"], False, run_one).rounds == 1
    assert order == ["serial", "threads"]


def test_a_refused_backend_does_not_run_and_auto_that_stays_is_the_serial_run():
    run_one, order = fake_run({"serial": [0.1], "threads": [0.1]})
    comparison = run_comparison(
        ["serial", "threads", "auto"], False, run_one,
        refused=lambda name: "it would refuse" if name == "threads" else None,
        stays=lambda: "items draw random numbers",
    )  # fmt: skip
    assert order == ["serial"]
    threads, auto = comparison.rows[1], comparison.rows[2]
    assert threads.refused == "it would refuse" and not threads.runs
    assert auto.runs == comparison.reference.runs and "auto: serial" in comparison.summary()
    assert "auto stays in the kernel (items draw random numbers)" in comparison.summary()


def test_first_sentence_keeps_what_stops_the_backend():
    refusal = ParmagicUsageError(
        "line 3: `m` is changed in place, so the cell could differ (nothing has run). Make it so"
    )
    assert first_sentence(refusal) == "line 3: `m` is changed in place, so the cell could differ"


class Point:  # a notebook class without ==
    def __init__(self, x):
        self.x = x


Point.__module__ = "__main__"


class Slotted:
    __slots__ = ("x",)
    __module__ = "__main__"

    def __init__(self, x):
        self.x = x


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (float("nan"), float("nan"), True),  # NaN is the same result
        ([float("nan")], [float("nan")], True),
        (0.0, -0.0, False),  # a worker's -0.0 is not serial's 0.0
        (complex(0.0, 1), complex(-0.0, 1), False),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, False),  # key order is part of the result
        ({"a": 1, "b": 2}, {"a": 1, "b": 2}, True),
        (Point(1), Point(1), True),
        (Point(1), Point(2), False),  # no __eq__: their state is compared
        (Slotted(1), Slotted(2), False),
        ([Point([1, 2])], [Point([1, 3])], False),
        (object(), object(), True),  # a library's object without ==: each run makes its own
    ],
)
def test_same_as_serial_is_exactly_the_promise(a, b, expected):
    assert same(a, b) is expected


def test_a_self_referencing_object_is_compared_without_end():
    a, b = Point(None), Point(None)
    a.x, b.x = a, b
    assert same(a, b)


def test_worker_floats_are_compared_by_sign(ip, run):
    outcome = run(
        "%%parallel --compare serial,processes -w 2 -o cmp\nimport os\nv = []\n"
        "for n in range(4):\n    v.append(-0.0 if os.getpid() != KERNEL else 0.0)\n".replace(
            "KERNEL", str(os.getpid())
        )
    )
    assert outcome.error is None, outcome.err
    processes = ip.user_ns["cmp"].rows[1]
    assert processes.difference == "item 0: v.append(-0.0)"
    assert [str(x) for x in ip.user_ns["v"]] == ["0.0"] * 4


def test_a_backend_that_would_refuse_the_body_refuses_it_in_its_row(ip, run):
    run("calls = 0\ndef f(x):\n    global calls\n    calls += 1\n    return x\n")
    outcome = run(
        "%%parallel --compare serial,threads,processes -w 2 -o cmp\nres = []\n"
        "for x in range(4):\n    res.append(f(x))\n"
    )
    assert outcome.error is None, outcome.err
    rows = {row.backend: row for row in ip.user_ns["cmp"].rows}
    for name in ("threads", "processes"):
        assert "changes the kernel's `calls`" in rows[name].refused and not rows[name].runs
    assert ip.user_ns["calls"] == 4 and ip.user_ns["res"] == [0, 1, 2, 3]  # one serial run


@pytest.mark.parametrize("backends", ["serial,threads", "serial,futures", "serial,auto"])
def test_changes_through_methods_happen_once(ip, run, backends):
    run("class Model:\n    def __init__(self):\n        self.seen = []\n"
        "    def fit(self, x):\n        self.seen.append(x)\nm = Model()\n")  # fmt: skip
    outcome = run(
        f"%%parallel -q --compare {backends} --rounds 3 -o cmp\nfor x in range(4):\n    m.fit(x)\n"
    )
    assert outcome.error is None, outcome.err
    assert ip.user_ns["m"].seen == [0, 1, 2, 3]
    assert ip.user_ns["cmp"].rounds == 1  # running it again would change m again
    assert "each backend ran the loop once" in outcome.out + outcome.err


TAKE = "g = iter(range(100))\ndef take():\n    return next(g)\n"  # a kernel generator, advanced


def test_a_compare_without_rounds_runs_each_backend_once(ip, run):
    run(TAKE)
    outcome = run(
        "%%parallel --compare serial,processes -w 2\nfor x in range(6):\n    y = take()\n"
    )
    assert outcome.error is None, outcome.err
    assert next(ip.user_ns["g"]) == 6  # one serial run advanced it; processes had copies


def test_rounds_stop_when_serial_differs_from_itself(ip, run):
    run(TAKE)
    outcome = run(
        "%%parallel --compare serial,processes -w 2 --rounds 3 -o cmp\nout = []\n"
        "for x in range(6):\n    out.append(take())\n"
    )
    assert outcome.error is None, outcome.err
    assert "serial's second run differed from its first" in outcome.out + outcome.err
    comparison = ip.user_ns["cmp"]
    assert comparison.rounds == 2 and comparison.reference.difference is None
    assert ip.user_ns["out"] == list(range(6))  # the first serial run's values


def test_a_clean_loop_runs_the_rounds_asked_for(ip, run):
    outcome = run(
        "%%parallel --compare serial,threads --rounds 3 -o cmp\nout = []\nfor n in range(20):\n"
        "    out.append(n * n)\n"
    )
    assert outcome.error is None, outcome.err
    comparison = ip.user_ns["cmp"]
    assert comparison.rounds == 3
    assert all(len(row.walls) == 3 for row in comparison.rows)
    assert ip.user_ns["out"] == [n * n for n in range(20)]  # one serial run's effects
    assert "ran the loop 3 times" in outcome.out and "±" in outcome.out


def test_a_body_that_opens_files_runs_once(ip, run, tmp_path):
    ip.user_ns["folder"] = str(tmp_path)
    outcome = run(
        "%%parallel --compare serial,threads --rounds 2 -o cmp\nfor n in range(4):\n"
        "    with open(f'{folder}/{n}.txt', 'a') as f:\n        f.write('x')\n"
    )
    assert outcome.error is None, outcome.err
    assert ip.user_ns["cmp"].rounds == 1
    assert (tmp_path / "0.txt").read_text() == "xx"  # serial and threads: once each


def test_rounds_need_compare(run):
    outcome = run("%%parallel --rounds 3\nfor n in range(3):\n    pass\n")
    assert "add --compare LIST" in outcome.err


@pytest.mark.slow
def test_on_a_busy_machine_no_speedup_above_the_ideal_is_printed_as_fact(ip, run, busy_machine):
    run(SPIN)
    outcome = run(
        "%%parallel --compare serial,threads,processes -w 2 -o cmp\nout = []\n"
        "for n in range(24):\n    out.append(spin(n))\n"
    )
    assert outcome.error is None, outcome.err
    comparison = ip.user_ns["cmp"]
    for row in comparison.rows[1:]:
        speedup = f"{comparison.speedup(row):.2f}×"
        beyond = comparison.speedup(row) > 1.05 * comparison.ideal(row)
        assert (f"{speedup}*" in outcome.out) is beyond
        conclusion = comparison.conclusion()
        assert not (beyond and speedup in conclusion)
    busy = comparison.busy_machine > 25
    assert ("other programs used up to" in outcome.out) is busy
    assert re.search(r"^(fastest with|no backend was clearly)", outcome.out, re.M)


def test_a_long_chain_of_objects_is_compared_without_running_out_of_stack():
    def chain(n: int, last: int) -> Point:
        head = Point(last)
        for value in range(n):
            head = Point([value, head])
        return head

    assert same(chain(2000, 0), chain(2000, 0))
    assert not same(chain(10, 0), chain(10, 1))  # within it: the difference is found
