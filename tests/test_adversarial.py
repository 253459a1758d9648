"""Loops written to break serial equivalence, each a pattern found by trying (issue 17).

Every case runs on every backend and must end as the plain loop (the cell without the magic
line) ends, or be refused before any item runs, naming the line, with the kernel untouched.
The plain loop's end state is the truth: each case runs it first, in the same shell.
"""

from __future__ import annotations

import math

import pytest
from conftest import BACKENDS
from IPython.core.error import UsageError

from parmagic.errors import ParmagicUsageError

# one of each kind of run: in the kernel, threads, forked and executor processes, a loop, auto
CONFORMANCE = {
    "serial": BACKENDS["serial"],
    "threads": BACKENDS["threads"],
    "fork": BACKENDS["fork"],
    "futures-fork": BACKENDS["futures-fork"],
    "asyncio": BACKENDS["asyncio"],
    "auto": "-b auto",
}

GRAPH = (
    "class Graph:\n    def __init__(self):\n        self.edges = []\n"
    "    def add_edge(self, a, b):\n        self.edges.append((a, b))\n"
)
FLAGS = "class Flags:\n    pass\n"

# (id, setup, the loop, names the case compares). A loop's own names are compared too.
CASES = [
    # changes through the loop variable or a local alias of a kernel object
    ("loop-variable-setitem", "recs = [{'x': i} for i in range(40)]\n",
     "for rec in recs:\n    rec['score'] = rec['x'] * 2\n", ["recs"]),
    ("loop-variable-append", "rows = [[i] for i in range(20)]\n",
     "for row in rows:\n    row.append(0)\n", ["rows"]),
    ("loop-variable-attribute", FLAGS + "bs = [Flags() for i in range(10)]\nfor b in bs:\n    b.v = 1\n",
     "for b in bs:\n    b.v += 100\n", ["bs"]),
    ("enumerate-target-append", "rows = [[i] for i in range(20)]\n",
     "for i, row in enumerate(rows):\n    row.append(i)\n", ["rows"]),
    ("alias-append", "groups = [[], [], []]\n",
     "for x in range(30):\n    bucket = groups[x % 3]\n    bucket.append(x)\n", ["groups"]),
    ("alias-setitem", "grid = [[0] * 5 for _ in range(5)]\n",
     "for i in range(5):\n    row = grid[i]\n    row[i] = 1\n", ["grid"]),
    ("alias-before-the-loop", "seen = set()\ns = seen\nout = []\n",
     "for x in [1, 2, 1, 3, 2]:\n    if x not in s:\n        seen.add(x)\n        out.append(x)\n",
     ["seen", "out"]),
    # writes through methods and functions
    ("numpy-fill", "import numpy as np\narr = np.zeros((8, 3))\n",
     "for i in range(8):\n    arr[i].fill(i)\n", ["arr"]),
    ("numpy-copyto", "import numpy as np\narr = np.zeros((8, 3))\n",
     "for i in range(8):\n    np.copyto(arr[i], np.arange(3) * i)\n", ["arr"]),
    ("numpy-out", "import numpy as np\nbase = np.ones((8, 3))\narr = np.zeros((8, 3))\n",
     "for i in range(8):\n    np.add(base[i], i, out=arr[i])\n", ["arr"]),
    ("heappush", "import heapq\nh = []\n",
     "for x in [5, 3, 8, 1, 9, 2]:\n    heapq.heappush(h, x)\n", ["h"]),
    ("insort", "import bisect\nkept = []\n",
     "for x in [5, 3, 8, 1, 9, 2]:\n    bisect.insort(kept, x)\n", ["kept"]),
    ("setattr", FLAGS + "flags = Flags()\n",
     "for i in range(6):\n    setattr(flags, f'a{i}', i)\n", ["flags"]),
    ("globals-setitem", "",
     "for i in range(4):\n    globals()[f'made{i}'] = i\n", ["made0", "made3"]),
    ("method-of-a-kernel-object", GRAPH + "g = Graph()\n",
     "for i in range(6):\n    g.add_edge(i, i + 1)\n", ["g"]),
    ("setdefault-append", "d = {}\n",
     "for v in range(30):\n    d.setdefault(v % 3, []).append(v)\n", ["d"]),
    ("notebook-function-appends", "res = []\ndef add(x):\n    res.append(x)\n",
     "for x in range(30):\n    add(x)\n", ["res"]),
    # state carried from item to item that the body's own names do not show
    ("pop", "stack = list(range(10))\nout = []\n",
     "for _ in range(10):\n    x = stack.pop()\n    out.append(x)\n", ["stack", "out"]),
    ("next", "it = iter(range(10))\nout = []\n",
     "for _ in range(10):\n    out.append(next(it))\n", ["out"]),
    ("popleft", "from collections import deque\nq = deque(range(10))\nout = []\n",
     "for _ in range(10):\n    out.append(q.popleft())\n", ["q", "out"]),
    ("iter-of-a-growing-list", "queue = [1, 2, 3]\n",
     "for x in iter(queue):\n    if x < 10:\n        queue.append(x + 10)\n", ["queue"]),
    ("dict-grows-while-iterated", "d = {1: 1, 2: 2}\n",
     "for k in d.keys():\n    d[k + 10] = k\n", ["d"]),
    ("notebook-function-reads-a-reduction", "total = 0\nout = []\ndef show():\n    return total\n",
     "for i in range(10):\n    total += i\n    out.append(show())\n", ["total", "out"]),
    # the iterable and items ending early
    ("iterable-raises-part-way",
     "out = []\ndef gen():\n    for i in range(10):\n        if i == 4:\n"
     "            raise ValueError(i)\n        yield i\n",
     "for x in gen():\n    out.append(x)\n", ["out"]),
    ("stopiteration-in-an-item", "out = []\n",
     "for i in range(5):\n    out.append(i)\n    if i == 2:\n        raise StopIteration\n", ["out"]),
    # smaller differences
    ("same-nan-object", "nan = float('nan')\nbag = set()\n",
     "for i in range(5):\n    bag.add(nan)\n", ["bag"]),
    ("name-read-after-an-inner-loop", "out = []\n",
     "for i in range(3):\n    for j in range(10):\n        pass\n    out.append(j)\n", ["out"]),
]  # fmt: skip


def canonical(value):
    """A value's content for comparison: NumPy arrays by their elements, objects by their
    attributes, sets with their size (NaN is unequal to itself)."""
    if hasattr(value, "tolist"):
        return ("array", value.tolist())
    if isinstance(value, set):
        return ("set", len(value), sorted(map(repr, value)))
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return [(repr(k), canonical(v)) for k, v in value.items()]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if hasattr(value, "__dict__") and not callable(value):
        return (type(value).__name__, canonical(vars(value)))
    if hasattr(value, "__iter__") and type(value).__name__ == "deque":
        return ("deque", list(value))
    return repr(value)


def state(ip, names: list[str]) -> dict:
    return {n: canonical(ip.user_ns.get(n, "<unbound>")) for n in names}


@pytest.mark.parametrize("name", list(CONFORMANCE))
@pytest.mark.parametrize("setup, loop, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_loop_ends_as_the_plain_loop_or_is_refused(ip, run, name, setup, loop, names):
    targets = [t.strip() for t in loop.split(" in ")[0].removeprefix("for ").split(",")]
    names = [*names, *targets]
    run(setup)
    plain = run(loop)
    truth, truth_error = state(ip, names), type(plain.error)
    run("%reset -f")
    run(setup)
    before = state(ip, names)
    outcome = run(f"%%parallel -q {CONFORMANCE[name]}\n{loop}")
    if isinstance(outcome.error, ParmagicUsageError | UsageError):
        assert state(ip, names) == before, "refused, but items ran"
        assert "line " in str(outcome.error), outcome.error
        return
    assert type(outcome.error) is truth_error, outcome.out + outcome.err
    assert state(ip, names) == truth


@pytest.mark.parametrize("name", ["fork", "spawn", "forkserver", "futures-fork"])
def test_warm_workers_run_the_kernels_code_after_a_reload(ip, run, name, tmp_path):
    """A module edited and reloaded, a module attribute set in the kernel, and a module
    importable only through a sys.path entry added after the pool started."""
    (tmp_path / "mymod17.py").write_text("def f(x):\n    return x + 1\n")
    run(f"import importlib, sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport mymod17\n")
    cell = f"%%parallel -q {BACKENDS[name]}\nout = []\nfor i in range(6):\n    out.append(mymod17.f(i))\n"
    assert run(cell).error is None and ip.user_ns["out"] == [i + 1 for i in range(6)]
    (tmp_path / "mymod17.py").write_text("def f(x):\n    return x + 100\n")
    run("importlib.reload(mymod17)\nmymod17.SETTING = 'kernel'\n")
    outcome = run(cell.replace("mymod17.f(i)", "(mymod17.f(i), mymod17.SETTING)"))
    assert outcome.error is None, outcome.err
    assert ip.user_ns["out"] == [(i + 100, "kernel") for i in range(6)]
    assert "restarted" in outcome.err
    later = tmp_path / "later"
    later.mkdir()
    (later / "latemod17.py").write_text("def g(x):\n    return -x\n")
    run(f"sys.path.insert(0, {str(later)!r})\nimport latemod17\n")
    outcome = run(cell.replace("mymod17.f(i)", "latemod17.g(i)"))
    assert outcome.error is None, outcome.err
    assert ip.user_ns["out"] == [-i for i in range(6)]
    run(
        "sys.modules.pop('mymod17', None)\nsys.modules.pop('latemod17', None)\n"
        f"sys.path.remove({str(tmp_path)!r})\nsys.path.remove({str(later)!r})\n"
    )


def test_a_worker_count_beyond_the_machine_is_refused_before_anything_starts(ip, run):
    import psutil

    children = len(psutil.Process().children())
    outcome = run(
        "%%parallel -b processes -w 1000000\nout = []\nfor i in range(3):\n    out.append(i)\n"
    )
    assert isinstance(outcome.error, UsageError) and "max_workers" in str(outcome.error)
    assert "out" not in ip.user_ns and len(psutil.Process().children()) == children
    run("%config ParallelMagics.max_workers = 64")
    outcome = run("%%parallel -b threads -w 3\nout = []\nfor i in range(3):\n    out.append(i)\n")
    assert outcome.error is None and ip.user_ns["out"] == [0, 1, 2]


@pytest.mark.parametrize("name", ["serial", "threads", "fork"])
@pytest.mark.parametrize("timeout", ["inf", "1e10"])
def test_a_timeout_too_long_to_matter_is_no_limit(ip, run, name, timeout):
    outcome = run(
        f"%%parallel -q {CONFORMANCE[name]} --timeout {timeout}\nout = [i * 2 for i in range(5)]\n"
    )
    assert outcome.error is None, outcome.err
    assert ip.user_ns["out"] == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("name", [*CONFORMANCE, "spawn", "futures"])
def test_an_item_raising_keyboardinterrupt_interrupts_and_keeps_the_pool(ip, run, name):
    options = CONFORMANCE.get(name) or BACKENDS[name]
    loop = (
        "out = []\nfor i in range(20):\n    out.append(i)\n    if i == 5:\n"
        "        raise KeyboardInterrupt\n    out.append(-i)\n"
    )
    assert isinstance(run(loop).error, KeyboardInterrupt)
    truth = state(ip, ["out", "i"])
    run("%reset -f")
    outcome = run(f"%%parallel -q {options}\n{loop}")
    assert isinstance(outcome.error, KeyboardInterrupt), outcome.err
    assert state(ip, ["out", "i"]) == truth
    after = run(f"%%parallel -q {options}\ndoubled = [k * 2 for k in range(30)]\n")
    assert after.error is None and ip.user_ns["doubled"] == [k * 2 for k in range(30)]


@pytest.mark.parametrize("name", ["fork", "spawn", "futures-fork", "threads"])
def test_changes_to_the_items_objects_run_and_land_on_the_kernels_objects(ip, run, name):
    """Not refused: done on the worker's copy (the item reads its own change) and again, in
    item order, on the kernel's object that the item came from."""
    run(
        "recs = [{'x': i} for i in range(30)]\nrows = [[i] for i in range(30)]\nids = list(map(id, recs))\n"
        "class Box:\n    v = 1\nboxes = [Box() for _ in range(5)]\n"
    )
    cells = [
        "for rec in recs:\n    rec['score'] = rec['x'] * 2\n    rec['next'] = rec['score'] + 1\n",
        "for i, row in enumerate(rows):\n    row.append(i)\n    row[0] += 10\n    del row[-1]\n",
        "for box in boxes:\n    box.v += 100\n",
    ]
    for cell in cells:
        outcome = run(f"%%parallel -q {BACKENDS[name]}\n{cell}")
        assert outcome.error is None, outcome.err
    ns = ip.user_ns
    assert ns["recs"] == [{"x": i, "score": 2 * i, "next": 2 * i + 1} for i in range(30)]
    assert list(map(id, ns["recs"])) == ns["ids"]
    assert ns["rows"] == [[i + 10] for i in range(30)]
    assert [box.v for box in ns["boxes"]] == [101] * 5


@pytest.mark.parametrize("name", ["serial", "threads", "fork", "spawn", "futures-fork"])
def test_shell_commands_in_the_body_run_where_the_items_run(ip, run, name):
    cell = (
        "names = []\nfor i in range(4):\n    !echo item {i} $i\n"
        "    out = !echo got {i * 2}\n    names.append(list(out))\n"
    )
    plain = run(cell)
    outcome = run(f"%%parallel -q {BACKENDS[name]}\n{cell}")
    if isinstance(plain.error, SyntaxError):  # IPython 7: `x = !cmd` at a cell's top level only
        assert isinstance(outcome.error, SyntaxError) and outcome.error.lineno == 5
        return
    assert outcome.error is None, outcome.err
    assert ip.user_ns["names"] == [[f"got {2 * i}"] for i in range(4)]
    if "fork" in name or "spawn" in name:  # output captured per item in worker processes
        assert [ln for ln in outcome.out.splitlines() if ln.startswith("item")] == [
            f"item {i} {i}" for i in range(4)
        ]


@pytest.mark.parametrize("name", ["serial", "threads", "fork", "spawn", "futures-fork", "asyncio"])
def test_an_items_exception_keeps_its_cause_and_its_arguments(ip, run, name):
    run(
        "import threading\nclass Wrapped(Exception):\n    pass\n"
        "def parse(text):\n    return int(text)\n"
    )
    outcome = run(
        f"%%parallel -q {BACKENDS.get(name) or CONFORMANCE[name]}\nfor text in ['1', 'x']:\n"
        "    try:\n        parse(text)\n    except ValueError as e:\n"
        "        raise Wrapped(text) from e\n"
    )
    error = outcome.error
    assert type(error).__name__ == "Wrapped" and isinstance(error.__cause__, ValueError)
    shown = "\n".join(error._render_traceback_())
    assert "direct cause" in shown and "int(text)" in shown and "ValueError" in shown
    outcome = run(
        f"%%parallel -q {BACKENDS.get(name) or CONFORMANCE[name]}\nfor k in range(2):\n"
        "    if k:\n        raise Wrapped('held', threading.Lock())\n"
    )
    assert type(outcome.error).__name__ == "Wrapped" and outcome.error.args[0] == "held"


@pytest.mark.parametrize("name", ["serial", "threads", "fork", "spawn", "futures-fork"])
def test_what_items_display_is_displayed_in_item_order(ip, run, name):
    run("from IPython.display import display\n")
    outcome = run(
        f"%%parallel -q {BACKENDS[name]}\nfor i in range(6):\n    display(f'shown {{i}}')\n"
    )
    assert outcome.error is None, outcome.err
    shown = [ln.strip("'") for ln in outcome.out.splitlines() if "shown" in ln]
    assert shown == [f"shown {i}" for i in range(6)]


@pytest.mark.parametrize("name", list(CONFORMANCE))
def test_a_notebook_function_changing_its_argument(ip, run, name):
    """``add_score(rec)`` changing ``rec``: the plain loop's result, or a refusal where items
    would change copies."""
    setup = "recs = [{'x': i} for i in range(12)]\ndef add_score(rec):\n    rec['score'] = rec['x'] * 3\n"
    loop = "for rec in recs:\n    add_score(rec)\n"
    run(setup)
    run(loop)
    truth = state(ip, ["recs"])
    run("%reset -f")
    run(setup)
    outcome = run(f"%%parallel -q {CONFORMANCE[name]}\n{loop}")
    if isinstance(outcome.error, UsageError):
        assert "changes its argument `rec`" in str(outcome.error)
        assert name in ("fork", "futures-fork")
        return
    assert outcome.error is None, outcome.err
    assert state(ip, ["recs"]) == truth
