"""Objects from the kernel stay the kernel's, on every backend: what an item changes in the
objects it is handed (through methods, NumPy views, library calls, nested objects) lands on
the kernel's objects, and what the loop keeps of them (appended, indexed, paired, bound,
filtered) is those very objects, as after the plain loop."""

from __future__ import annotations

import pytest
from conftest import BACKENDS, PROCESS_BACKENDS
from IPython.core.error import UsageError

from parmagic.worker.kernel_objects import HeldObjects, SentObjects

MODELS = (
    "class Model:\n"
    "    def __init__(self, k):\n        self.k, self.w, self.seen = k, None, []\n"
    "    def fit(self, xs):\n        self.w = sum(xs) * self.k\n"
    "        self.seen.append(len(xs))\n        return self\n"
    "models = [Model(k) for k in range(9)]\n"
    "ids = [id(m) for m in models]\nseen_ids = [id(m.seen) for m in models]\n"
)
RECORDS = (
    "recs = [{'id': i, 'x': i * 2, 'meta': {'tags': [], 'n': 0}} for i in range(10)]\n"
    "metas = [r['meta'] for r in recs]\n"
)
# An estimator as scikit-learn writes them: parameters set in __init__, learnt attributes
# with a trailing underscore, its own __getstate__ / __setstate__ (scikit-learn's keep a
# version), NumPy arrays in and out.
ESTIMATOR = (
    "import numpy as np\n"
    "class Ridge:\n"
    "    def __init__(self, alpha=1.0):\n        self.alpha = alpha\n"
    "    def fit(self, X, y):\n"
    "        A = X.T @ X + self.alpha * np.eye(X.shape[1])\n"
    "        self.coef_ = np.linalg.solve(A, X.T @ y)\n"
    "        self.n_features_in_ = X.shape[1]\n        return self\n"
    "    def __getstate__(self):\n        return {**self.__dict__, '_version': '1.0'}\n"
    "    def __setstate__(self, state):\n"
    "        state = dict(state)\n        state.pop('_version', None)\n"
    "        self.__dict__.update(state)\n"
    "rng = np.random.default_rng(5)\nX = rng.normal(size=(40, 3))\ny = X @ [1.0, -2.0, 0.5]\n"
    "estimators = [Ridge(alpha) for alpha in (0.01, 0.1, 1.0, 10.0, 100.0)]\n"
)


def parallel(run, backend: str, cell: str):
    outcome = run(f"%%parallel -q {backend}\n{cell}")
    assert outcome.error is None, outcome.out + outcome.err
    return outcome


def copies(backend: str) -> bool:
    """Whether the backend's items get copies of the kernel's objects (worker processes)."""
    return "processes" in backend or "dask" in backend


def test_a_method_an_item_calls_changes_the_kernels_object(ip, run, backend):
    run(MODELS)
    parallel(run, backend, "for m in models:\n    m.fit([1, 2, 3])\n")
    ns = ip.user_ns
    assert [m.w for m in ns["models"]] == [6 * k for k in range(9)]
    assert [m.seen for m in ns["models"]] == [[3]] * 9
    assert [id(m) for m in ns["models"]] == ns["ids"]
    assert [id(m.seen) for m in ns["models"]] == ns["seen_ids"]


def test_the_objects_a_comprehension_gives_are_the_kernels(ip, run, backend):
    run(MODELS)
    parallel(run, backend, "fitted = [m.fit([k, 1]) for k, m in enumerate(models)]\n")
    ns = ip.user_ns
    assert all(a is b for a, b in zip(ns["fitted"], ns["models"], strict=True))
    assert [m.w for m in ns["models"]] == [(k + 1) * k for k in range(9)]


def test_numpy_rows_written_in_place_write_through_to_their_matrix(ip, run, backend):
    run("import numpy as np\nmat = np.zeros((7, 3))\ngrid = np.zeros((5, 4))\n")
    parallel(run, backend, "for row in mat:\n    row += 1\n")
    parallel(
        run, backend, "for i, row in enumerate(grid):\n    np.copyto(row, i)\n    row[0] = -i\n"
    )
    assert ip.user_ns["mat"].tolist() == [[1.0] * 3] * 7
    assert ip.user_ns["grid"].tolist() == [[-i, i, i, i] for i in range(5)]


def test_kernel_objects_kept_by_the_loop_are_the_kernels_own(ip, run, backend):
    run(RECORDS + "by_id = {}\nbig = []\npairs = []\n")
    cell = (
        "for r in recs:\n    by_id[r['id']] = r\n    if r['x'] > 5:\n        big.append(r)\n"
        "    pairs.append((r, r['x'] + 1))\n    last = r\n"
    )
    parallel(run, backend, cell)
    ns = ip.user_ns
    recs = ns["recs"]
    assert all(ns["by_id"][k] is recs[k] for k in range(10))
    assert [r["id"] for r in ns["big"]] == [3, 4, 5, 6, 7, 8, 9]
    assert all(r is recs[r["id"]] for r in ns["big"])
    assert all(r is recs[k] and s == 2 * k + 1 for k, (r, s) in enumerate(ns["pairs"]))
    assert ns["last"] is recs[-1] and ns["r"] is recs[-1]
    run("recs[2]['seen'] = True\n")
    assert ns["by_id"][2]["seen"] is True  # one object, seen through both names


def test_a_filtered_comprehension_holds_the_kernels_objects(ip, run, backend):
    run(RECORDS)
    parallel(run, backend, "sel = [r for r in recs if r['x'] > 5]\n")
    parallel(run, backend, "by = {r['id']: r for r in recs}\n")
    ns = ip.user_ns
    assert [r["id"] for r in ns["sel"]] == [3, 4, 5, 6, 7, 8, 9]
    assert all(r is ns["recs"][r["id"]] for r in ns["sel"])
    assert all(ns["by"][k] is ns["recs"][k] for k in range(10))


def test_nested_objects_change_in_place(ip, run, backend):
    run(RECORDS)
    cell = (
        "for r in recs:\n    r['meta']['tags'].append(r['id'])\n"
        "    meta = r['meta']\n    meta['n'] += r['x']\n    r['score'] = r['x'] ** 2\n"
    )
    parallel(run, backend, cell)
    ns = ip.user_ns
    assert [r["meta"] for r in ns["recs"]] == [{"tags": [i], "n": 2 * i} for i in range(10)]
    assert all(r["meta"] is m for r, m in zip(ns["recs"], ns["metas"], strict=True))
    assert [r["score"] for r in ns["recs"]] == [(2 * i) ** 2 for i in range(10)]


def test_a_notebook_function_may_change_the_item_it_is_handed(ip, run, backend):
    run(MODELS + "def train(model, data):\n    model.fit(data)\n    model.tag = 'trained'\n")
    parallel(run, backend, "for m in models:\n    train(m, [2, 2])\n")
    assert [(m.w, m.tag) for m in ip.user_ns["models"]] == [(4 * k, "trained") for k in range(9)]


def test_estimators_fit_in_place(ip, run, backend):
    run(ESTIMATOR)
    run("import copy\nexpected = [copy.deepcopy(e).fit(X, y).coef_ for e in estimators]\n")
    run("before = [id(e) for e in estimators]\n")
    parallel(run, backend, "for est in estimators:\n    est.fit(X, y)\n")
    ns = ip.user_ns
    assert [id(e) for e in ns["estimators"]] == ns["before"]
    for estimator, coef in zip(ns["estimators"], ns["expected"], strict=True):
        assert estimator.coef_.tolist() == coef.tolist()
        assert estimator.n_features_in_ == 3 and "_version" not in vars(estimator)


def test_pandas_frames_changed_in_place(ip, run, backend):
    run(
        "import pandas as pd\nframes = [pd.DataFrame({'v': [3, 1, 2], 'k': [k] * 3}) for k in range(4)]\n"
        "ids = [id(f) for f in frames]\n"
    )
    parallel(
        run,
        backend,
        "for f in frames:\n    f['w'] = f['v'] * 10\n    f.index = ['a', 'b', 'c']\n"
        "    f.iloc[0, 1] = -f.iloc[0, 1]\n",
    )
    ns = ip.user_ns
    assert [id(f) for f in ns["frames"]] == ns["ids"]
    for k, frame in enumerate(ns["frames"]):
        assert frame["w"].tolist() == [30, 10, 20] and frame["k"].tolist() == [-k, k, k]
        assert frame.index.tolist() == ["a", "b", "c"]


def test_handed_out_iterators_advanced_with_next(ip, run, backend):
    run("gens = [iter(range(3)) for _ in range(4)]\nout = []\n")
    outcome = run(f"%%parallel -q {backend}\nfor g in gens:\n    out.append(next(g))\n")
    if copies(backend):  # a copy's position cannot be carried back: refused before the run
        assert isinstance(outcome.error, UsageError) and "advances an iterator" in str(
            outcome.error
        )
        assert ip.user_ns["out"] == [] and [next(g) for g in ip.user_ns["gens"]] == [0] * 4
    else:
        assert outcome.error is None
        assert ip.user_ns["out"] == [0] * 4 and [next(g) for g in ip.user_ns["gens"]] == [1] * 4


@pytest.mark.parametrize("name", [*PROCESS_BACKENDS, "futures-fork"])
def test_an_iterator_advanced_out_of_sight_fails_naming_the_item(ip, run, name):
    run("def first(it):\n    return next(it)\n")
    run("gens = [iter(range(3)) for _ in range(4)]\nout = []\n")
    outcome = run(f"%%parallel -q {BACKENDS[name]}\nfor g in gens:\n    out.append(first(g))\n")
    assert isinstance(outcome.error, TypeError), outcome.err
    assert "cannot be carried back" in str(outcome.error) and "list_iterator" not in outcome.err
    assert "item 0" in outcome.out + outcome.err + "".join(getattr(outcome.error, "__notes__", []))
    assert ip.user_ns["out"] == []  # what the item did is not half applied: it stopped there


@pytest.mark.parametrize("name", [*PROCESS_BACKENDS, "futures-fork"])
def test_one_object_changed_by_two_items_stops_the_run(ip, run, name):
    run("shared = {'n': 0}\nitems = [shared, {'n': 0}, shared]\n")
    outcome = run(
        f"%%parallel -q {BACKENDS[name]} --chunksize 1\nfor d in items:\n    d['n'] += 1\n"
    )
    assert type(outcome.error).__name__ == "SharedObjectChanged", outcome.err
    assert "item 2" in str(outcome.error)
    assert ip.user_ns["shared"] == {"n": 1}  # the run stopped after item 0, applied
    again = run(f"%%parallel -q {BACKENDS[name]}\nfor d in items[:2]:\n    d['n'] += 1\n")
    assert again.error is None and ip.user_ns["items"][:2] == [{"n": 2}, {"n": 1}]


def test_items_of_numbers_and_strings_are_never_compared():
    """What keeps loops over plain data at their speed: nothing in them is watched."""
    sent, held = SentObjects(), HeldObjects.none()
    items, objects = held.load_chunk(sent.chunk_bytes(0, 0, [1, "a", 2.5, (1, "b"), None]))
    assert objects.watched == {} and [objects.before(item) for item in items] == [None] * 5
    items, objects = held.load_chunk(sent.chunk_bytes(1, 5, [[1], {"a": [2]}, (3, [4])]))
    assert len(objects.watched) == 4  # the two lists, the dict, the list in the tuple
    before = [objects.before(item) for item in items]
    items[1]["a"].append(5)
    changed = [objects.changes(item, b, 1) for item, b in zip(items, before, strict=True)]
    assert [len(ops) for ops in changed] == [0, 2, 0]  # the dict and its list, reached


# (setup, loop, check, what the plain loop leaves): what an item makes, keeps, detaches,
# swaps or deletes in the objects it is handed, as the plain loop leaves it
PATTERNS = {
    "a kernel list the items reach, changed by other items' appends": (
        "out = []\nrecs = [{'k': j} for j in range(24)]\nrecs[-1]['sink'] = out\n",
        "for r in recs:\n    r['v'] = r['k']\n    out.append(r['k'])\n",
        "out == list(range(24)) and all(r['v'] == r['k'] for r in recs)",
    ),
    "a new object, kept twice": (
        "class M:\n    pass\nms = [M() for _ in range(6)]\nout = []\n",
        "for m in ms:\n    m.w = [1]\n    out.append(m.w)\n    last = m.w\n",
        "all(o is m.w for o, m in zip(out, ms)) and last is ms[-1].w",
    ),
    "a new object in two places of the item": (
        "recs = [{'inner': {}} for _ in range(5)]\n",
        "for r in recs:\n    r['inner']['l'] = r['l'] = []\n",
        "all(r['inner']['l'] is r['l'] for r in recs)",
    ),
    "the item holding itself": (
        "recs = [{} for _ in range(5)]\n",
        "for r in recs:\n    r['me'] = r\n    r['child'] = {'parent': r}\n",
        "all(r['me'] is r and r['child']['parent'] is r for r in recs)",
    ),
    "a part taken out of the item, then changed": (
        "recs = [{'meta': {'n': 0}} for _ in range(5)]\nmetas = [r['meta'] for r in recs]\n",
        "for r in recs:\n    r.pop('meta')['n'] = 5\n",
        "[m['n'] for m in metas] == [5] * 5 and all('meta' not in r for r in recs)",
    ),
    "a part replaced by an equal copy, and two parts swapped": (
        "recs = [{'meta': {'n': 0}, 'a': [], 'b': []} for _ in range(5)]\n"
        "metas = [r['meta'] for r in recs]\nbs = [r['b'] for r in recs]\n",
        "for r in recs:\n    r['meta'] = dict(r['meta'])\n    r['a'], r['b'] = r['b'], r['a']\n",
        "not any(r['meta'] is m for r, m in zip(recs, metas))"
        " and all(r['a'] is b for r, b in zip(recs, bs))",
    ),
    "an attribute deleted from an object whose __setstate__ merges": (
        "class E:\n    def __init__(self):\n        self.a, self.b = 1, 2\n"
        "    def __setstate__(self, state):\n        self.__dict__.update(state)\n"
        "es = [E() for _ in range(4)]\n",
        "for e in es:\n    del e.b\n",
        "not any(hasattr(e, 'b') for e in es)",
    ),
    "the iterable read by the body": (
        "recs = [{'k': j} for j in range(10)]\n",
        "for r in recs:\n    r['frac'] = r['k'] / len(recs)\n",
        "[r['frac'] for r in recs] == [j / 10 for j in range(10)]",
    ),
    "shared parts only read: a dict with a key 'i', a set of strings, a frozenset": (
        "meta = {'i': 1, 'tags': {'alpha', 'beta', 'gamma'}}\n"
        "recs = [{'k': j, 'meta': meta, 'f': frozenset('abc')} for j in range(30)]\n",
        "for r in recs:\n    r['v'] = r['k'] + len(r['meta']['tags']) + len(r['f'])\n",
        "[r['v'] for r in recs] == [j + 6 for j in range(30)]",
    ),
    "a shared object changed by one item and changed back by the next": (
        "W = {'a': 0}\nrecs = [{'w': W, 'i': i % 2} for i in range(2)]\n",
        "for r in recs:\n    r['w']['a'] = 1 - r['i']\n",
        "W == {'a': 0}",
    ),
    "numpy scalars, dates with a time zone and a factory beside the change": (
        "import datetime\nimport numpy as np\nfrom collections import defaultdict\n"
        "utc = datetime.timezone.utc\nrecs = [{'a': np.float64(k), 'n': np.int64(k), "
        "'t': datetime.datetime(2020, 1, 1, tzinfo=utc), 'd': defaultdict(int)} "
        "for k in range(6)]\n",
        "for r in recs:\n    r['b'] = r['a'] * 2\n    r['d'].default_factory = list\n",
        "[r['b'] for r in recs] == [2.0 * k for k in range(6)]"
        " and all(r['d'].default_factory is list and r['t'].tzinfo is utc for r in recs)",
    ),
    "objects whose __copy__ returns themselves, a new object, or a deep copy": (
        "import copy\nclass Same:\n    def __init__(self):\n        self.x = 0\n"
        "    def __copy__(self):\n        return self\n"
        "class Fresh:\n    def __init__(self, p=1):\n        self.p, self.fitted = p, None\n"
        "    def __copy__(self):\n        return Fresh(self.p)\n"
        "class Deep:\n    def __init__(self):\n        self.sub = []\n"
        "    def __copy__(self):\n        return copy.deepcopy(self)\n"
        "recs = [{'s': Same(), 'f': Fresh(), 'd': Deep()} for _ in range(4)]\n"
        "for r in recs:\n    r['f'].fitted = 'yes'\nsubs = [r['d'].sub for r in recs]\n",
        "for r in recs:\n    r['s'].x += 1\n    r['d'].sub.append(1)\n",
        "all(r['s'].x == 1 and r['f'].fitted == 'yes' for r in recs)"
        " and all(r['d'].sub is s and s == [1] for r, s in zip(recs, subs))",
    ),
    "captured data a notebook function returns, beside the shell's stand-ins": (
        "lookup = {'a': 1}\ndef f(i):\n    return lookup\nout = []\n",
        "for i in range(4):\n    if i < 0:\n        get_ipython()\n    out.append(f(i))\n",
        "all(o is lookup for o in out)",
    ),
}


@pytest.mark.parametrize("setup, loop, check", list(PATTERNS.values()), ids=list(PATTERNS))
def test_what_items_make_keep_detach_and_swap_ends_as_the_plain_loop(
    ip, run, backend, setup, loop, check
):
    namespace: dict = {"get_ipython": lambda: None}
    exec(setup + loop, namespace)
    assert eval(check, namespace), "the check does not hold for the plain loop"
    run(setup)
    parallel(run, f"{backend} --chunksize 2", loop)  # items' objects split between chunks
    assert ip.ev(check)


@pytest.mark.parametrize("name", [*PROCESS_BACKENDS, "futures-fork"])
def test_one_object_changed_by_name_and_through_items_is_never_silently_merged(ip, run, name):
    """Copies in worker processes cannot merge a change recorded by name with an item's own:
    the run ends as the plain loop, or stops with the conflict named."""
    setup = "groups = {'a': []}\nrecs = [{'g': groups['a'], 'i': i} for i in range(4)]\n"
    loop = (
        "for r in recs:\n    if r['i'] % 2:\n        r['g'].append(('item', r['i']))\n"
        "    else:\n        groups['a'].append(('cap', r['i']))\n"
    )
    plain: dict = {}
    exec(setup + loop, plain)
    run(setup)
    outcome = run(f"%%parallel -q {BACKENDS[name]} --chunksize 4\n{loop}")
    if outcome.error is None:
        assert ip.user_ns["groups"] == plain["groups"]
    else:
        assert type(outcome.error).__name__ == "SharedObjectChanged", outcome.err
        assert ip.user_ns["groups"]["a"] == plain["groups"]["a"][: len(ip.user_ns["groups"]["a"])]
