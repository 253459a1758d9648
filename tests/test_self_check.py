"""The summary checks itself: for each kind of loop users bring, on each backend, the
label the CPU line gives and the advice it prints, and what ``auto`` picks. On a busy machine
the advice may say so instead ("other programs used…"), and nothing else may change.

How close the printed speedup comes to a measured one is a benchmark's question
(``bench/honesty.py``); here only what holds whatever the load: labels, advice, choices, and
figures that cannot be true (a share over 100%, a single thread's CPU time over the wall).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import report

from parmagic.machine import usable_cores
from parmagic.summary.render import advice

SETUP = """
import asyncio, time
import numpy as np

def spin(n):
    t = 0
    for k in range(1_000_000):
        t += k % (n + 1)
    return t

def digit_count(number):
    value = number**number
    count = int(value.bit_length() * 0.30103)
    while 10**count <= value:
        count += 1
    return count

def sorted_top(seed):
    values = np.random.default_rng(seed).random(2_000_000)
    return float(np.sort(values)[-10])

captured = np.ones(20_000_000)  # 160 MB
"""

CORES = usable_cores()
ONE_THREAD = "items compute, and one thread runs Python at a time: try --backend processes"
TOO_SMALL = "the loop is too small to pay for worker processes"
SENDING = "sending the data to the workers took most of the run"
TOO_MANY = f"{4 * CORES} workers compute on {CORES} cores: --workers {CORES} is enough"

PURE_PYTHON = "totals = []\nfor i in range(12):\n    totals.append(spin(i))\n"
NUMPY = "tops = []\nfor seed in range(6):\n    tops.append(sorted_top(seed))\n"
SLEEP = "slept = []\nfor i in range(16):\n    time.sleep(0.05)\n    slept.append(i)\n"
ASYNC_SLEEP = "woke = []\nfor i in range(40):\n    await asyncio.sleep(0.05)\n    woke.append(i)\n"
TINY = "total = 0\nfor i in range(3):\n    total += i\n"
DATA_HEAVY = "sums = []\nfor i in range(4):\n    sums.append(float(captured[i]))\n"
README = "digits = []\nfor number in range(4000):\n    digits.append(digit_count(number))\n"

CASES = [
    # (workload, options, label, advice: the first words, or None)
    ("pure-python", PURE_PYTHON, "-b serial", "computing", None),
    ("pure-python", PURE_PYTHON, "-b threads -w 4", "computing", ONE_THREAD if CORES > 1 else None),
    ("pure-python", PURE_PYTHON, "-b processes --start-method fork", "computing", None),
    ("pure-python", PURE_PYTHON, f"-b processes -w {4 * CORES}", "computing", TOO_MANY),
    ("numpy-releasing-the-gil", NUMPY, "-b threads -w 2", "computing", None),
    ("numpy-releasing-the-gil", NUMPY, "-b processes --start-method fork", "computing", None),
    ("blocking-sleep", SLEEP, "-b serial", "mostly waiting", None),
    ("blocking-sleep", SLEEP, "-b threads -w 8", "mostly waiting", None),
    ("blocking-sleep", SLEEP, "-b processes --start-method fork", "mostly waiting", None),
    ("asyncio-sleep", ASYNC_SLEEP, "-b asyncio", "mostly waiting", None),
    ("tiny-items", TINY, "-b processes --start-method fork", None, TOO_SMALL),
    ("data-heavy", DATA_HEAVY, "-b processes --start-method fork", None, SENDING),
    ("readme-digit-count", README, "-b processes --start-method fork", "computing", None),
]


def _shown_advice(out: str) -> str | None:
    lines = [line.split("advice", 1)[1].strip() for line in out.splitlines() if "  advice " in line]
    return lines[0] if lines else None


def _bounded(r) -> None:
    """Figures that cannot be true, whatever the load."""
    assert 0 <= r.cpu_share <= 1 and 0 <= r.efficiency <= 1
    assert r.cpu <= r.own_time + 1e-9 or r.cpu_share == 1
    assert all(0 <= m <= 100 for m in (r.usage.core_means() if r.usage else []))
    if r.backend == "asyncio":  # one thread ran every coroutine
        assert r.cpu <= r.wall
    if r.backend == "serial":
        assert r.speedup == pytest.approx(1.0)


@pytest.mark.parametrize(
    "body, options, label, expected",
    [case[1:] for case in CASES],
    ids=[f"{case[0]}:{case[2]}" for case in CASES],
)
def test_the_summary_labels_and_advises_as_the_loop_calls_for(
    ip, run, body, options, label, expected
):
    run(SETUP)
    run("%%parallel -q -b processes --start-method fork\nfor i in range(2):\n    pass\n")  # warm
    outcome = run(f"%%parallel {options}\n{body}")
    assert outcome.error is None, outcome.err
    r = report()
    _bounded(r)
    if label:
        assert f"of their own time: {label}" in outcome.out, outcome.out
    hint, shown = advice(r), _shown_advice(outcome.out)
    assert shown == hint, outcome.out + outcome.err  # the advice printed is its figures'
    if hint is not None and hint.startswith("other programs"):
        assert r.usage.others_mean > 25  # a busy machine: its figures say little of the loop
    elif expected is None:  # unless other programs slowed the items (load is not the loop's)
        assert hint is None or r.usage.others_mean > 25, outcome.out
    else:
        assert hint is not None and hint.startswith(expected), outcome.out + outcome.err


@pytest.mark.parametrize(
    "body, chosen",
    [
        (README, "processes" if CORES > 1 else "serial"),  # its first items are the cheapest
        (SLEEP, "threads"),
        (TINY, "serial"),
        (ASYNC_SLEEP, "asyncio"),
    ],
    ids=["readme-digit-count", "blocking-sleep", "tiny-items", "asyncio-sleep"],
)
def test_auto_picks_what_the_whole_loop_calls_for(ip, run, body, chosen):
    run(SETUP)
    outcome = run(f"%%parallel\n{body}")
    assert outcome.error is None, outcome.err
    r = report()
    assert r.backend == chosen, outcome.out
    _bounded(r)
    _kept_the_serial_result(ip, body)
    if chosen not in ("asyncio", "serial"):
        assert f"auto chose {chosen}: items" in outcome.out
        assert "over the whole loop" not in outcome.out  # the lead-in saw what the loop did


def _kept_the_serial_result(ip, body: str) -> None:
    for name, count in {"slept": 16, "woke": 40}.items():
        if f"{name} = []" in body:
            assert ip.user_ns[name] == list(range(count))
    if "digits = []" in body:
        digits, digit_count = ip.user_ns["digits"], ip.user_ns["digit_count"]
        assert len(digits) == 4000
        assert [digits[n] for n in (0, 1, 9, 10, 999, 3999)] == [1, 1, 9, 11, 2997, 14405]
        assert digits[3998] == digit_count(3998)


def test_auto_runs_as_a_row_of_compare(ip, run):
    run(SETUP)
    outcome = run(f"%%parallel --compare serial,auto\n{README}")
    assert outcome.error is None, outcome.err
    table = parmagic_table(outcome.out)
    chosen = "processes" if CORES > 1 else "serial"
    assert table[1].startswith(f"auto: {chosen}") and table[1].rstrip().endswith("✓")
    _kept_the_serial_result(ip, README)


def parmagic_table(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("backend "))
    return lines[start + 1 :]


def test_auto_tries_threads_when_processes_cannot_pay_and_keeps_them_for_numpy(ip, run):
    """Whether code releases the GIL shows only on threads: a loop over a large captured
    array, too dear to send to processes, gets a trial on threads, and keeps them when its
    items ran side by side (NumPy's sort lets go of the GIL)."""
    if CORES < 2:
        pytest.skip("threads can run side by side only on two cores or more")
    run(SETUP)
    body = "tops = []\nfor i in range(40):\n    tops.append(float(np.sort(np.sin(captured[i::50]))[-1]))\n"
    outcome = run(f"%%parallel\n{body}")
    assert outcome.error is None, outcome.err
    r = report()
    assert ip.user_ns["tops"] == [float(np.sin(1.0))] * 40
    assert "threads, tried for" in outcome.out
    if "finished the loop" in outcome.out:  # a fast moment: the trial took the whole rest
        assert r.backend == "threads", outcome.out
        return
    if r.backend != "threads":  # a trial of 0.1 s on a machine others crowd can misjudge
        assert r.usage is not None and r.usage.others_mean > 25, outcome.out
        return
    assert "in code that releases the GIL" in outcome.out
    # the whole run's figures agree, unless other programs crowded the cores meanwhile
    assert (r.releases_the_gil and r.ideal > 1) or r.usage.others_mean > 25, outcome.out


def test_auto_takes_a_computing_loop_back_to_the_kernel_when_threads_run_one_at_a_time(ip, run):
    run(SETUP)
    run("import threading\nlock = threading.Lock()\n")  # processes cannot take the loop
    body = "totals = []\nfor i in range(16):\n    with lock:\n        totals.append(spin(i))\n"
    outcome = run(f"%%parallel\n{body}")
    assert outcome.error is None, outcome.err
    assert report().backend == "serial", outcome.out
    assert "ran one at a time" in outcome.out and "the loop uses `lock`" in outcome.out
    assert len(ip.user_ns["totals"]) == 16
