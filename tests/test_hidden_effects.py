"""What the body's own lines do not show: notebook functions it calls,
global random state, and changes parmagic cannot replay. On every backend the cell either ends
as the plain loop ends or is refused before any item runs, naming the line."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from conftest import BACKENDS, report
from IPython.core.error import UsageError

from parmagic.analysis.hidden_effects import LOOP_NAME, RANDOM, UNORDERED
from parmagic.analysis.hidden_effects import HiddenEffect as Effect
from parmagic.analysis.policy import verdict_for

PARALLEL = [name for name in BACKENDS if name != "serial"]
SEEDABLE = ("serial", "fork", "spawn", "forkserver", "futures-fork", "futures-spawn")


def refused_before_any_item(ip, outcome, *fragments: str) -> None:
    assert isinstance(outcome.error, UsageError), (outcome.out, outcome.err)
    for fragment in fragments:
        assert fragment in str(outcome.error)
    assert ip.user_ns["ran"] == []  # a side-effect counter the items would have filled


def test_global_random_state_is_refused_on_parallel_backends(ip, run, backend):
    run("import numpy as np, random\nran = []\nnp.random.seed(7)\n")
    cell = "means = []\nfor i in range(8):\n    ran.append(i)\n    means.append(np.random.choice(np.arange(5), 5).mean())\n"
    outcome = run(f"%%parallel {backend} -q\n{cell}")
    if backend == BACKENDS["serial"]:
        assert outcome.error is None
        plain = {"np": ip.user_ns["np"]}
        exec(
            "np.random.seed(7)\nmeans = []\nfor i in range(8):\n    means.append(np.random.choice(np.arange(5), 5).mean())\n",
            plain,
        )
        assert ip.user_ns["means"] == plain["means"]
        return
    refused_before_any_item(
        ip, outcome, "line 5: `np.random.choice(...)` draws from numpy's", "--seed N"
    )


@pytest.mark.parametrize("call", ["random.random()", "choice([1, 2, 3])", "np.random.rand()"])
def test_draws_through_a_notebook_function_are_refused_and_auto_runs_serially(ip, run, call):
    run(
        f"import numpy as np, random\nfrom random import choice\nran = []\ndef draw():\n    return {call}\n"
    )
    refused = run(
        "%%parallel -b processes -w 2\nfor i in range(4):\n    ran.append(i)\n    draw()\n"
    )
    refused_before_any_item(ip, refused, "the notebook function `draw` (line 5 of its cell)")
    outcome = run("%%parallel\nout = [draw() for i in range(4)]\n")
    assert outcome.error is None and len(ip.user_ns["out"]) == 4
    assert report().backend == "serial" and "global random state" in report().auto_reason


@pytest.mark.parametrize("name", SEEDABLE)
def test_seed_gives_each_item_the_same_numbers_on_every_backend(ip, run, name):
    run("import numpy as np, random\n")
    cell = "xs = []\nfor i in range(9):\n    xs.append((np.random.rand(), random.random()))\n"
    run(f"%%parallel -b serial --seed 11 -q\n{cell}")
    reference = ip.user_ns["xs"]
    assert len(set(reference)) == 9  # every item its own stream
    options = BACKENDS[name].replace(" -w 2", "")
    for workers, chunks in ((1, 1), (2, 4), (3, 2)):
        run(f"%%parallel {options} -w {workers} --chunksize {chunks} --seed 11 -q\n{cell}")
        assert ip.user_ns["xs"] == reference, (workers, chunks)


def test_seed_leaves_the_kernels_random_state_as_it_was(ip, run):
    run("import numpy as np, random\nrandom.seed(1)\nnp.random.seed(1)\n")
    run(
        "%%parallel -b serial --seed 5 -q\nfor i in range(3):\n    x = random.random() + np.random.rand()\n"
    )
    after = run("pair = (random.random(), np.random.rand())\n")
    assert after.error is None
    plain = {}
    exec(
        "import numpy as np, random\nrandom.seed(1)\nnp.random.seed(1)\npair = (random.random(), np.random.rand())\n",
        plain,
    )
    assert ip.user_ns["pair"] == plain["pair"]


@pytest.mark.parametrize("name", ["threads", "futures", "asyncio"])
def test_seed_is_refused_where_items_share_one_global_state(run, name):
    outcome = run(f"%%parallel -b {name} --seed 3\nfor i in range(3):\n    pass\n")
    assert isinstance(outcome.error, UsageError)
    assert "share the kernel's one global random state" in str(outcome.error)


def test_a_notebook_function_changing_kernel_objects_is_refused_on_parallel_backends(
    ip, run, backend
):
    run(
        "import time\nseen = {}\nran = []\ndef record(k):\n    time.sleep(0.01 * (k % 2))\n    seen[k] = k * k\n"
    )
    outcome = run(
        f"%%parallel {backend} -q\nfor k in range(6):\n    ran.append(k)\n    record(k)\n"
    )
    if backend == BACKENDS["serial"]:
        assert outcome.error is None and list(ip.user_ns["seen"].items()) == [
            (k, k * k) for k in range(6)
        ]
        return
    refused_before_any_item(
        ip,
        outcome,
        "line 4: the notebook function `record` (line 6 of its cell) changes the kernel's `seen`",
        "--unordered",
    )


def test_functions_are_followed_through_other_notebook_functions(ip, run):
    run(
        "log = []\nran = []\ndef inner(x):\n    log.append(x)\ndef outer(x):\n    inner(x)\n    return x\n"
    )
    outcome = run("%%parallel -b threads\nfor i in range(3):\n    ran.append(i)\n    outer(i)\n")
    refused_before_any_item(
        ip, outcome, "the notebook function `inner` (line 4 of its cell) changes the kernel's `log`"
    )


def test_auto_runs_a_loop_with_unreplayable_changes_serially(ip, run):
    run("seen = {}\ndef record(k):\n    seen[k] = k\n")
    outcome = run("%%parallel\nfor k in range(30):\n    record(k)\n")
    assert outcome.error is None and list(ip.user_ns["seen"]) == list(range(30))
    assert report().backend == "serial" and "changes the kernel's `seen`" in outcome.out


def test_a_loop_name_read_as_a_global_is_refused_on_every_backend(ip, run, backend):
    """... but serial, which runs the loop as written, as the plain kernel would."""
    run("def show():\n    return repo * 2\nrepo = 0\nran = []\n")
    outcome = run(
        f"%%parallel {backend}\nout = []\nfor repo in range(3):\n    ran.append(repo)\n    out.append(show())\n"
    )
    if backend == BACKENDS["serial"]:
        assert outcome.error is None and ip.user_ns["out"] == [0, 2, 4]
        assert "ran as written in the kernel: line 5: the notebook function `show`" in outcome.out
        return
    refused_before_any_item(
        ip,
        outcome,
        "line 5: the notebook function `show` (line 2 of its cell) reads `repo`",
        "show(",
    )


def test_library_functions_and_pure_notebook_functions_run(ip, run, backend):
    run("import math\ndef area(r):\n    scale = 2\n    return math.pi * r * r * scale\n")
    outcome = run(f"%%parallel {backend} -q\nareas = [area(r) for r in range(5)]\n")
    assert outcome.error is None and ip.user_ns["areas"] == [math_area(r) for r in range(5)]


def test_a_library_function_named_like_a_method_is_no_change(ip, run, backend):
    """``np.sort(values)`` and ``heapq.heapify(h)`` call a module's function: nothing of the
    kernel's changes, as it would with ``values.sort()``."""
    run(
        "import heapq\nimport numpy as np\n"
        "def top(seed):\n    values = np.random.default_rng(seed).random(50)\n"
        "    heap = list(values)\n    heapq.heapify(heap)\n    return float(np.sort(values)[-1]), heap[0]\n"
    )
    outcome = run(
        f"%%parallel {backend} -q\ntops = []\nfor seed in range(6):\n    tops.append(top(seed))\n"
    )
    assert outcome.error is None, outcome.err
    expected = []
    for seed in range(6):
        values = np.random.default_rng(seed).random(50)
        expected.append((float(np.sort(values)[-1]), float(values.min())))
    assert ip.user_ns["tops"] == expected


def math_area(r: int) -> float:
    import math

    return math.pi * r * r * 2


@pytest.mark.parametrize(
    "effects, backend, unordered, seed, refused, serial",
    [
        ([Effect(LOOP_NAME, 3, "", "reads `i`", "i")], "serial", True, 1, True, False),
        ([Effect(UNORDERED, 3, "", "`b.x = ...`", "b")], "serial", False, None, False, False),
        ([Effect(UNORDERED, 3, "", "`b.x = ...`", "b")], "threads", False, None, True, False),
        ([Effect(UNORDERED, 3, "", "`b.x = ...`", "b")], "threads", True, None, False, False),
        ([Effect(UNORDERED, 3, "", "`b.x = ...`", "b")], "auto", False, None, False, True),
        ([Effect(RANDOM, 3, "", "draws", "")], "processes", False, None, True, False),
        ([Effect(RANDOM, 3, "", "draws", "")], "processes", False, 4, False, False),
        ([Effect(RANDOM, 3, "", "draws", "")], "threads", False, 4, True, False),
        ([Effect(RANDOM, 3, "", "draws", "")], "auto", False, None, False, True),
        ([], "threads", False, None, False, False),
    ],
)
def test_refusal_rules(effects, backend, unordered, seed, refused, serial):
    verdict = verdict_for(effects, backend, unordered, seed)
    message, reason = verdict.refused, verdict.in_the_kernel
    assert (message is not None) == refused and (reason is not None) == serial


@pytest.mark.filterwarnings("ignore:coroutine 'fetch' was never awaited")
def test_tasks_made_by_items_are_refused_on_every_backend(ip, run, backend):
    """... but serial, which runs the loop as written: in a terminal, where no event loop
    runs, the first item fails as it does in the plain loop."""
    run("import asyncio\nran = []\nasync def fetch(u):\n    return u\n")
    outcome = run(
        f"%%parallel {backend}\nfor u in range(3):\n    ran.append(u)\n    t = asyncio.create_task(fetch(u))\n"
    )
    if backend == BACKENDS["serial"]:
        assert isinstance(outcome.error, RuntimeError) and "no running event loop" in str(
            outcome.error
        )
        assert ip.user_ns["ran"] == [0]
        gc.collect()  # the coroutine create_task refused, unawaited: its warning here
        return
    refused_before_any_item(
        ip, outcome, "line 4: `asyncio.create_task(...)` makes a task", "--backend asyncio"
    )


def test_coroutines_left_unawaited_are_refused_for_processes_and_kept_elsewhere(ip, run, backend):
    run("ran = []\nasync def fetch(u):\n    return u\n")
    cell = "coros = []\nfor u in range(3):\n    ran.append(u)\n    coros.append(fetch(u))\n"
    outcome = run(f"%%parallel {backend} -q\n{cell}")
    if any(name in backend for name in ("processes", "dask")):
        refused_before_any_item(
            ip, outcome, "line 5: `fetch(u)` makes a coroutine that is never awaited"
        )
        return
    assert outcome.error is None and len(ip.user_ns["coros"]) == 3
    run("for c in coros:\n    c.close()\n")  # no 'never awaited' warnings at collection


def test_functions_and_modules_of_the_same_cell_are_followed_before_any_item(ip, run, backend):
    run("ran = []\n")
    cell = (
        "import random\nseen = {}\ndef record(k):\n    seen[k] = random.random()\n"
        "for k in range(4):\n    ran.append(k)\n    record(k)\n"
    )
    outcome = run(f"%%parallel {backend} -q\n{cell}")
    if backend == BACKENDS["serial"]:
        assert outcome.error is None and list(ip.user_ns["seen"]) == [0, 1, 2, 3]
        return
    refused_before_any_item(ip, outcome, "line 8: the notebook function `record`")


@pytest.mark.parametrize("make", ["np.random.default_rng(0)", "random.Random(0)"])
def test_a_shared_generator_object_is_refused_like_global_state(ip, run, make):
    run(f"import numpy as np, random\nrng = {make}\nran = []\n")
    draw = "rng.random()"
    outcome = run(
        f"%%parallel -b processes -w 2\nfor i in range(4):\n    ran.append(i)\n    x = {draw}\n"
    )
    refused_before_any_item(
        ip, outcome, "`rng.random(...)` draws from `rng`, a random generator every item would share"
    )
