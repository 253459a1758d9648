"""Serial equivalence, one suite stamped out over every backend and start method.

Each test runs a cell with ``%%parallel`` on the backend under test and compares the kernel's
state with what the same loop leaves when run as plain Python.
"""

from __future__ import annotations

import pytest
from conftest import PROCESS_BACKENDS, parallel, report, serial_state

# Item i sleeps a little, later items often less than earlier ones, so that items finish
# out of order on every parallel backend.
SETUP = "import time\ndef nap(i):\n    time.sleep(0.002 * ((i * 7) % 5))\n"


def test_append_order_is_serial_order(ip, run, backend):
    run(SETUP)
    cell = "results = []\nfor i in range(24):\n    nap(i)\n    results.append(i * i)\n"
    parallel(run, backend, cell)
    assert ip.user_ns["results"] == [i * i for i in range(24)]


def test_reductions_equal_the_in_order_result(ip, run, backend):
    cell = (
        "total = 0\nftotal = 0.0\ntext = ''\nchunks = []\n"
        "for i in range(300):\n"
        "    total += i * i\n    ftotal += 1 / (i + 1)\n    text += str(i % 10)\n"
        "    chunks += [i]\n"
    )
    parallel(run, backend, cell)
    expected = serial_state(ip, cell, ["total", "ftotal", "text", "chunks"])
    for name, value in expected.items():
        assert ip.user_ns[name] == value, name
    assert repr(ip.user_ns["ftotal"]) == repr(expected["ftotal"])  # same float, bit for bit


def test_container_writes_land_on_the_same_objects(ip, run, backend):
    run(
        SETUP + "from collections import Counter, OrderedDict, defaultdict, deque\n"
        "d = {}\ns = set()\nq = deque()\nc = Counter()\ngroups = defaultdict(list)\n"
        "od = OrderedDict()\nids = [id(o) for o in (d, s, q, c, groups, od)]\n"
    )
    cell = (
        "for i in range(20):\n    nap(i)\n    d[f'k{i}'] = i\n    s.add(i % 7)\n"
        "    q.appendleft(i)\n    c[i % 3] += 1\n    groups[i % 4].append(i)\n"
        "    od[i] = -i\n    if i % 5 == 0:\n        del od[i]\n"
    )
    parallel(run, backend, cell)
    ns = ip.user_ns
    assert [id(ns[n]) for n in ("d", "s", "q", "c", "groups", "od")] == ns["ids"]
    assert list(ns["d"]) == [f"k{i}" for i in range(20)]  # insertion order
    assert ns["s"] == set(range(7))
    assert list(ns["q"]) == list(reversed(range(20)))
    assert ns["c"] == {0: 7, 1: 7, 2: 6}
    assert ns["groups"] == {k: [i for i in range(20) if i % 4 == k] for k in range(4)}
    assert list(ns["od"].items()) == [(i, -i) for i in range(20) if i % 5]


def test_numpy_item_writes_in_place(ip, run, backend):
    run("import numpy as np\narr = np.zeros((10, 3))\narr_id = id(arr)\n")
    parallel(
        run, backend, "for i in range(10):\n    arr[i] = np.arange(3) * i\n    arr[i, 0] += 1\n"
    )
    arr = ip.user_ns["arr"]
    assert id(arr) == ip.user_ns["arr_id"]
    assert arr.tolist() == [[1, i, 2 * i] for i in range(10)]


def test_prints_arrive_in_item_order(run, backend):
    run(SETUP + "import sys\n")
    cell = "for i in range(12):\n    nap(i)\n    print('out', i)\n    print('err', i, file=sys.stderr)\n"
    outcome = parallel(run, backend, cell)
    assert [ln for ln in outcome.out.splitlines() if ln.startswith("out")] == [
        f"out {i}" for i in range(12)
    ]
    printed = [ln for ln in outcome.err.splitlines() if not ln.startswith("parmagic warning")]
    assert printed == [f"err {i}" for i in range(12)]


def test_names_hold_what_the_last_item_bound(ip, run, backend):
    cell = (
        "for i, word in enumerate(['a', 'bb', 'ccc', 'dd', 'e']):\n"
        "    size = len(word)\n    if size == 3:\n        longest = word\n"
    )
    parallel(run, backend, cell)
    expected = serial_state(ip, cell, ["i", "word", "size", "longest"])
    assert {n: ip.user_ns[n] for n in expected} == expected


@pytest.mark.parametrize(
    "statement, name",
    [
        ("squares = [n ** n for n in range(60)]", "squares"),
        ("evens = [a * b for a in range(12) if a % 2 for b in range(a) if b != 3]", "evens"),
        ("table = {str(k): k * k for k in range(30)}", "table"),
        ("letters = {w[0] for w in ['apple', 'avocado', 'banana', 'cherry']}", "letters"),
        ("total = sum(x * x for x in range(500))", "total"),
    ],
)
def test_comprehension_values_are_the_serial_value(ip, run, backend, statement, name):
    parallel(run, backend, statement + "\n")
    value = ip.user_ns[name]
    expected = serial_state(ip, statement, [name])[name]
    assert value == expected
    if isinstance(value, dict):
        assert list(value) == list(expected)


def test_final_expression_is_the_cell_output_and_else_runs_once(ip, run, backend):
    outcome = parallel(
        run,
        backend,
        "hits = []\nfor i in range(5):\n    hits.append(i)\nelse:\n    hits.append('done')\nlen(hits)\n",
    )
    assert ip.user_ns["hits"] == [0, 1, 2, 3, 4, "done"]
    assert "6" in outcome.out


def test_notebook_defined_code_works_in_workers(ip, run, backend):
    run(
        "from dataclasses import dataclass\n"
        "@dataclass\nclass Point:\n    x: int\n    y: int\n    def norm(self):\n"
        "        return abs(self.x) + abs(self.y)\n"
        "class Scaler:\n    def __init__(self, k):\n        self.k = k\n"
        "    def __call__(self, v):\n        return v * self.k\n"
        "triple = Scaler(3)\nshift = lambda v: v - 1\n"
        "def describe(p):\n    return f'{p.x},{p.y}:{triple(shift(p.norm()))}'\n"
    )
    cell = "out = []\nfor i in range(8):\n    out.append(describe(Point(i, -i)))\n"
    parallel(run, backend, cell)
    assert ip.user_ns["out"] == serial_state(ip, cell, ["out"])["out"]


def test_empty_iterable_runs_nothing(ip, run, backend):
    run("seen = []\ni = 'before'\n")
    parallel(run, backend, "for i in []:\n    seen.append(i)\n")
    assert ip.user_ns["seen"] == [] and ip.user_ns["i"] == "before"
    assert report().item_count == 0


def test_statements_around_the_loop_run_once_in_the_kernel(ip, run, backend):
    parallel(
        run,
        backend,
        "calls = ['before']\nfor i in range(3):\n    calls.append(i)\ncalls.append('after')\n",
    )
    assert ip.user_ns["calls"] == ["before", 0, 1, 2, "after"]


def test_line_magic_runs_one_statement(ip, run, backend):
    run("def cube(v):\n    return v ** 3\n")
    outcome = run(f"%parallel {backend} cubes = [cube(v) for v in range(40)]")
    assert outcome.error is None, outcome.out
    assert ip.user_ns["cubes"] == [v**3 for v in range(40)]


def test_ten_thousand_tiny_items_travel_in_few_chunks(ip, run, backend):
    parallel(run, backend, "acc = 0\nfor i in range(10_000):\n    acc += i\n")
    assert ip.user_ns["acc"] == sum(range(10_000))
    assert report().item_count == 10_000
    if "asyncio" in backend:
        assert report().chunks == 10_000  # one coroutine per item, by design
    else:
        assert report().chunks < 500


@pytest.mark.parametrize("backend_name", ["threads", *PROCESS_BACKENDS])
def test_items_really_overlap(run, backend_name):
    from conftest import BACKENDS

    run("import time\n")
    parallel(run, BACKENDS[backend_name], "for i in range(4):\n    time.sleep(0.2)\n")
    items = sorted(report().items, key=lambda t: t.start)
    overlaps = [a for a, b in zip(items, items[1:], strict=False) if b.start < a.end]
    assert overlaps, [(t.worker, t.start, t.end) for t in items]
    assert len(report().worker_ids) >= 2


def test_the_iterable_is_read_lazily_with_a_bounded_window(ip, run):
    run(
        "pulled = []\ndef numbers():\n    for n in range(2000):\n        pulled.append(n)\n        yield n\n"
    )
    parallel(
        run,
        "-b threads -w 4 --chunksize 1",
        "lag = []\nfor n in numbers():\n    lag.append(len(pulled) - n)\n",
    )
    assert len(ip.user_ns["lag"]) == 2000
    assert max(ip.user_ns["lag"]) <= 64  # never the whole iterable ahead of the items


@pytest.mark.parametrize("backend_name", ["threads", *PROCESS_BACKENDS])
def test_slow_items_are_shared_between_workers(run, backend_name):
    from conftest import BACKENDS

    run("import time\n")
    parallel(
        run,
        BACKENDS[backend_name].replace("-w 4", "-w 2"),
        "for i in range(40):\n    time.sleep(0.01)\n",
    )
    counts = {}
    for timing in report().items:
        counts[timing.worker] = counts.get(timing.worker, 0) + 1
    assert len(counts) == 2 and min(counts.values()) >= 12, counts


def test_a_loop_under_a_main_guard_is_the_cells_loop(ip, run, backend):
    """Cells pasted from scripts keep `if __name__ == "__main__":`, always true in a kernel."""
    cell = "if __name__ == '__main__':\n    out = []\n    for i in range(5):\n        out.append(i * 3)\n"
    parallel(run, backend, cell)
    assert ip.user_ns["out"] == [0, 3, 6, 9, 12]
