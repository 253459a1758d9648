"""Stress matrix: item sizes × result sizes × chunking on every kind of worker.

Every run must end (pytest-timeout stops a deadlock), give exactly what the plain loop gives,
and leave the kernel's memory bounded: growth over the run, and its peak while running, stay
under a generous multiple of what the loop keeps (a guard against unbounded buffering, not a
measurement). Sizes go through the pipes both ways: an item is sent, and the body's name ``r``
(the result) comes back for every item.

Regression guard: 40 items of 100 kB with 100 kB results on ``processes`` once deadlocked the
pipes (the kernel blocked sending a chunk while the worker blocked sending a result). The
``*-item100kB-result100kB`` cases are that run, with ``--chunksize 1``, ``--chunksize 4`` and the
adaptive default (no ``--chunksize``) on every process backend; against the code before the fix
(662a015) the ``--chunksize 4`` and adaptive ones on fork, spawn and forkserver, and both NumPy
cases below, hang until pytest-timeout stops them.

Chosen to fit in well under a minute on two cores: every size pair on fork, threads and serial,
the diagonal (equal item and result sizes) on the other process backends; 8 items when a size
is 10 MB, 40 otherwise; 10 MB items with 10 MB results on ``--chunksize 1`` only.
"""

from __future__ import annotations

import re
from itertools import product

import psutil
import pytest
from conftest import report

OPTIONS = {
    "fork": "-b processes -w 2 --start-method fork",
    "spawn": "-b processes -w 2 --start-method spawn",
    "forkserver": "-b processes -w 2 --start-method forkserver",
    "futures-fork": "-b futures:processes -w 2 --start-method fork",
    "futures-spawn": "-b futures:processes -w 2 --start-method spawn",
    "threads": "-b threads -w 4",
    "serial": "-b serial",
}
PROCESS_NAMES = ("fork", "spawn", "forkserver", "futures-fork", "futures-spawn")
EVERY_PAIR = ("fork", "threads", "serial")  # the rest: equal item and result sizes only
SIZES = {"1B": 1, "100kB": 100_000, "10MB": 10_000_000}
CHUNKINGS = {"cs1": "--chunksize 1", "cs4": "--chunksize 4", "adaptive": ""}
KEPT_WHOLE = 100_000  # results up to this size are appended whole; larger, as (len, first byte)
MB = 1 << 20


def matrix():
    for name, options in OPTIONS.items():
        pairs = product(SIZES, SIZES) if name in EVERY_PAIR else [(s, s) for s in SIZES]
        for item, result in pairs:
            chunkings = ["cs1", "cs4"]
            if item == result == "10MB":
                chunkings = ["cs1"]  # eight 10 MB messages each way, two queued per worker
            if name in PROCESS_NAMES and item == result == "100kB":
                chunkings.append("adaptive")  # the deadlock's own run: no --chunksize
            for chunking in chunkings:
                yield pytest.param(
                    options,
                    SIZES[item],
                    SIZES[result],
                    CHUNKINGS[chunking],
                    id=f"{name}-item{item}-result{result}-{chunking}",
                )


def item_count(*sizes: int) -> int:
    return 8 if max(sizes) >= 10_000_000 else 40


def peak_reset() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs``); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    with open("/proc/self/status") as status:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.M).group(1)) * 1024


class Memory:
    """The kernel's RSS around a run (the kernel is this process: the shell runs in it)."""

    def __init__(self, kept: int) -> None:
        self.bound = 5 * kept + 200 * MB
        self.has_peak = peak_reset()
        self.before = psutil.Process().memory_info().rss

    def check(self) -> None:
        grown = psutil.Process().memory_info().rss - self.before
        assert grown < self.bound, f"RSS grew {grown / MB:.0f} MB (bound {self.bound / MB:.0f})"
        if self.has_peak:
            peak = peak_rss() - self.before
            assert peak < self.bound, f"RSS peaked {peak / MB:.0f} MB over its start"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("options, item_size, result_size, chunking", list(matrix()))
def test_sizes_travel_both_ways_with_serial_results_and_bounded_memory(
    ip, run, options, item_size, result_size, chunking
):
    n = item_count(item_size, result_size)
    whole = result_size <= KEPT_WHOLE
    run(f"items = [bytes([i % 256]) * {item_size} for i in range({n})]\n")
    expected = []  # the plain loop, here
    for item in ip.user_ns["items"]:
        r = item[:1] * result_size
        expected.append(r if whole else (len(r), r[:1]))
    last = r
    memory = Memory(kept=n * item_size + (n * result_size if whole else result_size))
    keep = "r" if whole else "(len(r), r[:1])"
    outcome = run(
        f"%%parallel {options} {chunking} -q\nout = []\nfor item in items:\n"
        f"    r = item[:1] * {result_size}\n    out.append({keep})\n"
    )
    assert outcome.error is None, outcome.out + outcome.err
    assert "parmagic:" not in outcome.out
    assert ip.user_ns["out"] == expected
    assert ip.user_ns["r"] == last  # the last item's whole result came back
    assert ip.user_ns["item"] == ip.user_ns["items"][-1]
    assert report().item_count == n
    memory.check()


NUMPY_ITEMS = "import numpy as np\narrays = [np.random.default_rng(i).random((300, 300)) for i in range(40)]\n"
NUMPY_BODY = (
    "sorted_ = []\nfor a in arrays:\n"
    "    r = a\n    for _ in range(2):\n        r = np.sort(r + 1.0, axis=None).reshape(300, 300)\n"
    "    sorted_.append(r)\n"
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "options",
    ["-b processes -w 2 --start-method fork", ""],
    ids=["processes-adaptive", "auto"],
)
def test_forty_numpy_arrays_travel_both_ways(ip, run, options):
    import numpy as np

    run(NUMPY_ITEMS)
    expected = []
    for a in ip.user_ns["arrays"]:
        r = a
        for _ in range(2):
            r = np.sort(r + 1.0, axis=None).reshape(300, 300)
        expected.append(r)
    memory = Memory(kept=2 * 40 * 300 * 300 * 8)
    outcome = run(f"%%parallel {options} -q\n{NUMPY_BODY}")
    assert outcome.error is None, outcome.out + outcome.err
    got = ip.user_ns["sorted_"]
    assert len(got) == 40 and all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))
    assert report().item_count == 40
    memory.check()
