"""Worker interpreters that are not forked from the kernel salt string hashes otherwise: a body
whose result hangs on a set's order or on ``hash`` is refused there, naming the line, unless
the kernel's seed is known and handed on; fork, threads and serial run it as the plain loop."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
from conftest import BACKENDS, PLATFORM_START_METHOD
from IPython.core.error import UsageError

from parmagic.analysis.hash_order import hash_order_uses, items_that_are_sets
from parmagic.worker.hash_seeds import kernel_hash_seed

WORDS = 'words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]\n'
SET_ORDER = "s = [''.join(set(w)) for w in words]\n"
PLAIN = {"words": ast.literal_eval(WORDS.split("= ")[1])}
exec(SET_ORDER, PLAIN)


def uses(source: str, ns: dict | None = None) -> list[tuple[int, str]]:
    return [(use.line, use.what) for use in hash_order_uses(ast.parse(source).body, ns or {})]


def test_order_free_uses_of_sets_are_not_flagged():
    source = (
        "seen = set(words)\n"
        "n = len(seen)\n"
        "if w in seen and w not in {'a', 'b'}:\n"
        "    pass\n"
        "first = sorted(seen | {'z'})\n"
        "top = max(seen), min(set(w)), any(seen), all(frozenset(w))\n"
        "same = seen == {'a'} and seen <= set(w)\n"
        "seen.add(w)\n"
        "seen |= {'q'}\n"
        "ok = seen.issubset(set(w)) and len(seen.union(w))\n"
    )
    assert uses(source) == []


@pytest.mark.parametrize(
    ("source", "line", "what"),
    [
        ("for t in set(tags):\n    print(t)\n", 1, "`set(tags)` is iterated"),
        ("x = ''.join(set(w))\n", 1, "`set(w)` is iterated"),
        ("x = list({a, b})\n", 1, "`{a, b}` is iterated"),
        ("x = sum(set(v))\n", 1, "`set(v)` is iterated"),
        ("x = [t for t in {u for u in w}]\n", 1, "`{u for u in w}` is iterated"),
        ("print(set(w))\n", 1, "`set(w)` is printed"),
        ("x = f'{set(w)}'\n", 1, "`set(w)` is printed"),
        ("x = (set(a) | set(b)).pop()\n", 1, "`set(a) | set(b)` gives up an arbitrary member"),
        ("x = hash(w)\n", 1, "`hash(w)` is a string hash"),
        ("x = store(set(w))\n", 1, "`set(w)` is handed on in its order"),
        ("s = set(w)\nn = len(s)\nfor t in s:\n    pass\n", 3, "`s` is iterated"),
        ("s = set(w)\nt = s - {'a'}\nout = list(t)\n", 3, "`t` is iterated"),
        ("a, b = set(w)\n", 1, "`set(w)` is unpacked in its order"),
    ],
)
def test_uses_that_consume_a_sets_order_are_flagged(source, line, what):
    found = uses(source)
    assert found and found[0][0] == line and found[0][1].startswith(what), found


def test_a_name_assigned_otherwise_too_counts_as_a_use_of_the_order():
    """Over-approximated: which assignment a later use sees is not followed."""
    found = uses("s = set(w)\ns = sorted(s)\nfor t in s:\n    pass\n")
    assert found == [
        (1, "`set(w)` goes to a name assigned otherwise too, whose uses are not followed")
    ]


def test_a_kernel_set_the_body_walks_is_flagged():
    assert uses("for t in tags:\n    pass\n", {"tags": {"a", "b"}}) == [(1, "`tags` is iterated")]


def test_notebook_functions_the_body_calls_are_searched(ip):
    ip.run_cell("def letters(w):\n    return ''.join(set(w))\n")
    found = hash_order_uses(ast.parse("x = letters(w)\n").body, ip.user_ns)
    assert [(u.line, u.what) for u in found] == [(2, "`set(w)` is iterated")]
    assert found[0].place == "the notebook function `letters` (line 2 of its cell)"


def seed_seen_by(env: dict, code: str = "") -> str:
    program = (
        f"{code}from parmagic.worker.hash_seeds import kernel_hash_seed\nprint(kernel_hash_seed())"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_the_kernels_seed_is_known_only_when_it_started_with_it():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    assert seed_seen_by({**env, "PYTHONHASHSEED": "123"}) == "123"
    assert seed_seen_by({**env, "PYTHONHASHSEED": "0"}) == "0"
    assert seed_seen_by(env) == "None"
    late = "import os\nos.environ['PYTHONHASHSEED'] = '123'\n"
    assert seed_seen_by(env, late) == "None"  # set after start: the probe tells


def cell_on(run, options: str):
    run(WORDS)
    return run(f"%%parallel {options}\n{SET_ORDER}")


@pytest.mark.parametrize("name", ["fork", "threads", "serial"])
def test_sets_of_strings_keep_the_plain_loops_order_where_the_kernel_hashes(ip, run, name):
    outcome = cell_on(run, BACKENDS[name])
    assert outcome.error is None and ip.user_ns["s"] == PLAIN["s"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["spawn", "forkserver", "futures-spawn"] + (["default"] if PLATFORM_START_METHOD else []),
)
def test_sets_of_strings_are_refused_where_workers_hash_otherwise(ip, run, name):
    outcome = cell_on(run, BACKENDS[name])
    if kernel_hash_seed() is None:  # this test process's hashing is random: cannot be handed on
        assert isinstance(outcome.error, UsageError)
        message = str(outcome.error)
        assert message.startswith("line 2: `set(w)` is iterated, and worker processes started")
        assert name != "default" or f"started by {PLATFORM_START_METHOD}" in message
        assert "--start-method fork" in message and "s" not in ip.user_ns
    else:
        assert outcome.error is None and ip.user_ns["s"] == PLAIN["s"]


@pytest.mark.slow
def test_auto_keeps_such_a_loop_out_of_spawned_processes(ip, run):
    run("import time\n" + WORDS)
    cell = "s = []\nfor w in words * 4:\n    time.sleep(0.05)\n    s.append(''.join(set(w)))\n"
    outcome = run(f"%%parallel -b auto --start-method spawn\n{cell}")
    assert outcome.error is None
    assert ip.user_ns["s"] == ["".join(set(w)) for w in PLAIN["words"] * 4]


@pytest.mark.slow
@pytest.mark.dask
def test_sets_of_strings_on_a_local_dask_cluster_are_refused_or_equal(ip, run):
    outcome = cell_on(run, "-b dask -w 1")
    if outcome.error is not None:
        assert isinstance(outcome.error, UsageError)
        assert str(outcome.error).startswith("line 2: `set(w)` is iterated, and dask's workers")
        assert kernel_hash_seed() in (None, "0")
    else:
        assert ip.user_ns["s"] == PLAIN["s"]


@pytest.mark.parametrize(
    "source, flagged",
    [
        ("import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\n", False),
        ("f({1, 2, 3})\n", False),
        ("f(set(range(5)))\n", False),
        ("f({'a', 'b'})\n", True),  # strings: salted
        ("x = 1\nf({x})\n", True),  # a plain name: the loop may bind it to anything
    ],
)
def test_sets_known_to_hold_numbers_are_not_flagged(source, flagged):
    import signal

    from parmagic.analysis.hash_order import hash_order_uses

    uses = hash_order_uses(ast.parse(source).body, {"signal": signal})
    assert bool(uses) is flagged, uses


def test_a_global_set_a_notebook_function_walks_is_flagged(ip):
    ip.run_cell("STOP = {'a', 'the'}\ndef stop_words(w):\n    return [s for s in STOP if s < w]\n")
    found = hash_order_uses(ast.parse("x = stop_words(w)\n").body, ip.user_ns)
    assert [(u.line, u.what) for u in found] == [(3, "`STOP` is iterated")]


@pytest.mark.parametrize(
    "loop, groups, found",
    [
        ("for g in groups:\n    out.append(list(g))\n", [{"a", "b"}], ["`g` is iterated"]),
        ("x = [sorted(g) for g in groups]\n", [{"a", "b"}], []),  # sorted: order-free
        ("x = [' '.join(g) for g in groups]\n", [frozenset("ab")], ["`g` is iterated"]),
        ("for g in groups:\n    out.append(list(g))\n", [["a", "b"]], []),  # lists keep order
    ],
)
def test_items_that_are_sets_count_as_sets(loop, groups, found):
    ns = {"groups": groups, "out": []}
    tree = ast.parse(loop).body[0]
    node = tree if isinstance(tree, ast.For) else tree.value
    body = tree.body if isinstance(tree, ast.For) else [node.elt]
    uses = hash_order_uses(body, ns, items_that_are_sets(node, ns))
    assert [use.what for use in uses] == found


@pytest.mark.slow
def test_a_list_of_sets_walked_by_spawned_workers_is_refused_or_equal(ip, run):
    run(WORDS + "groups = [set(w) for w in words]\n")
    outcome = run("%%parallel -b processes -w 2 --start-method spawn\nout = []\n"
                  "for g in groups:\n    out.append(''.join(g))\n")  # fmt: skip
    plain = ["".join(g) for g in ip.user_ns["groups"]]
    if kernel_hash_seed() is None:
        assert isinstance(outcome.error, UsageError)
        assert str(outcome.error).startswith("line 4: `g` is iterated, and worker processes")
    else:
        assert outcome.error is None and ip.user_ns["out"] == plain
