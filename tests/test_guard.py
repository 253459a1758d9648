"""The guard's fingerprints (hidden_state.py) on their own: what they see change, what they put
back, and that big state is looked at in part, never whole. The guard at work in runs, over
every backend, is in test_hidden_state.py."""

from __future__ import annotations

import os
import random
import sys
import types

import numpy as np
import pytest

from parmagic.worker.hidden_state import SAMPLE, Guard, Reached, Space, digest


def _module_space(module: types.ModuleType) -> Space:
    return Space(
        f"`{module.__name__}.{{name}}`",
        lambda: list(vars(module).items()),
        lambda name, value: setattr(module, name, value),
        lambda name: delattr(module, name),
    )


@pytest.fixture
def module():
    made = types.ModuleType("guarded")
    made.counts = [1, 2, 3]
    made.table = {"a": [1]}
    made.arr = np.zeros(10)
    made.big = np.zeros(1_000_000)
    made.n = 5
    return made


CHANGES = {
    "rebinding": lambda m: setattr(m, "n", 6),
    "append": lambda m: m.counts.append(4),
    "an element replaced": lambda m: m.counts.__setitem__(1, 7),
    "a list inside a dict": lambda m: m.table["a"].append(2),
    "a dict key": lambda m: m.table.__setitem__("b", 1),
    "an array element": lambda m: m.arr.__setitem__(3, 1.0),
    "a name added": lambda m: setattr(m, "extra", 1),
    "a name removed": lambda m: delattr(m, "n"),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_change_is_seen_and_put_back(module, change):
    space = _module_space(module)
    before = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in vars(module).items()}
    assert space.changed() is None
    change(module)
    assert space.changed() is not None
    assert space.restore() == []
    assert space.changed() is None
    after = vars(module)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert (
            np.array_equal(after[name], value) if name in ("arr", "big") else after[name] == value
        )


def test_the_change_is_named(module):
    space = _module_space(module)
    module.counts.append(9)
    assert space.changed() == "`guarded.counts`"


def test_a_big_array_is_sampled_not_read_whole(module):
    """Its buffer and 4 KB spread over it: a change at a sampled place is seen, and the digest
    stays small whatever the size."""
    print_before = digest(module.big)
    assert len(print_before[-1]) <= 4096
    module.big[0] = 1.0  # the first element is always sampled
    assert digest(module.big) != print_before


def test_a_long_list_is_sampled_at_its_ends():
    values = list(range(10_000))
    before = digest(values)
    assert len(before[1]) == 2 * SAMPLE
    values[-1] = -1
    assert digest(values) != before


def test_the_environment_is_compared_by_value():
    """os.environ makes new strings at each read: by identity, it would always differ."""
    guard = Guard.around(lambda: None, random=False)
    assert guard.changed() is None
    os.environ["PARMAGIC_GUARD_TEST"] = "1"
    try:
        assert guard.changed() == "`os.environ['PARMAGIC_GUARD_TEST']`"
        guard.restore()
        assert "PARMAGIC_GUARD_TEST" not in os.environ
    finally:
        os.environ.pop("PARMAGIC_GUARD_TEST", None)


@pytest.mark.parametrize("change", ["changed", "deleted"])
def test_an_environment_variable_changed_or_deleted_is_named_and_put_back(change):
    os.environ["PARMAGIC_GUARD_TEST"] = "before"
    try:
        guard = Guard.around(lambda: None, random=False)
        if change == "changed":
            os.environ["PARMAGIC_GUARD_TEST"] = "after"
        else:
            del os.environ["PARMAGIC_GUARD_TEST"]
        assert guard.changed() == "`os.environ['PARMAGIC_GUARD_TEST']`"
        assert guard.restore() == []
        assert os.environ["PARMAGIC_GUARD_TEST"] == "before"
        assert os.getenv("PARMAGIC_GUARD_TEST") == "before" and guard.changed() is None
    finally:
        os.environ.pop("PARMAGIC_GUARD_TEST", None)


def test_random_states_path_and_directory_are_put_back(tmp_path):
    guard = Guard.around(lambda: None)
    state, path, cwd = random.getstate(), list(sys.path), os.getcwd()
    random.random()
    sys.path.append(str(tmp_path))
    os.chdir(tmp_path)
    try:
        assert guard.changed() is not None
        assert guard.restore() == []
        assert (random.getstate(), sys.path, os.getcwd()) == (state, path, cwd)
    finally:
        os.chdir(cwd)
        sys.path[:] = path


def _closure():
    made = []

    def add(x):
        made.append(x)

    return add


def test_what_the_body_reaches_is_found():
    """Through the names its code reads, a closure, a class, a dict of functions; the
    ``random`` module's own generator is watched apart, a user's generator through its name."""
    namespace = {"__name__": "__main__"}
    exec(
        "import random\nclass K:\n    made = 0\n"
        "own = random.Random(1)\nfns = {'r': random.random, 'own': own.random}\n"
        "def body(i):\n    K()\n    add(i)\n    return fns['own']()\n",
        namespace,
    )
    namespace["add"] = _closure()
    found = Reached(namespace["body"])
    assert namespace["K"] in found.classes
    assert namespace["add"] in found.functions
    assert [via for via, _ in found.generators] == ["fns"]


def test_settle_takes_again_what_changed_before_the_items(module):
    """In a worker, loading a chunk's objects may change state: not the items' doing."""
    guard = Guard([_module_space(module)])
    module.counts.append(4)
    guard.settle()
    assert guard.changed() is None
    module.counts.append(5)
    assert guard.changed() == "`guarded.counts`"


def test_modules_reached_through_packages_imports_and_other_modules(tmp_path, monkeypatch):
    """``pkg.sub.counter`` in a notebook function, a module imported inside a function, and a
    module another module's function changes: each is watched, and put back."""
    (tmp_path / "guardpkg").mkdir()
    (tmp_path / "guardpkg" / "__init__.py").write_text("from . import sub\n")
    (tmp_path / "guardpkg" / "sub.py").write_text("counter = 0\n")
    (tmp_path / "guard_helper.py").write_text("counter = 0\n")
    (tmp_path / "guard_caller.py").write_text(
        "import guard_helper\ndef f(i):\n    guard_helper.counter += i\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import guard_caller
    import guard_helper
    import guardpkg

    namespace = {"__name__": "__main__", "guardpkg": guardpkg, "guard_caller": guard_caller}
    exec(
        "def g():\n    guardpkg.sub.counter += 1\n"
        "def h():\n    import guard_helper\n    guard_helper.counter += 1\n"
        "def body(i):\n    g()\n    h()\n    guard_caller.f(i)\n",
        namespace,
    )
    for module, name in ((guardpkg.sub, "`guardpkg.sub.counter`"), (guard_helper, None)):
        guard = Guard.around(namespace["body"])
        module.counter += 1
        assert guard.changed() == (name or "`guard_helper.counter`")
        assert guard.restore() == [] and module.counter == 0


def test_a_replaced_default_is_put_back():
    namespace = {"__name__": "__main__"}
    exec("def keep(x, acc=[1]):\n    acc.append(x)\ndef body(i):\n    keep(i)\n", namespace)
    guard = Guard.around(namespace["body"])
    namespace["keep"].__defaults__ = ([2],)
    assert guard.changed() == "the default `acc` of `keep`"
    assert guard.restore() == [] and namespace["keep"].__defaults__ == ([1],)


def test_taking_again_gives_back_what_the_old_copies_used(module):
    """A worker takes its fingerprints again before each chunk where loading changed them:
    the copies to put state back must not run out after many chunks."""
    guard = Guard([_module_space(module)])
    for value in range(50):
        module.counts.append(value)
        guard.settle()
    module.counts.append(-1)
    assert guard.changed() is not None
    assert guard.restore() == [] and module.counts[-1] == 49


def test_a_container_changing_during_the_check_is_a_change(module):
    """On threads an item may change a small dict while the guard reads it: that is a hidden
    change, reported, never a RuntimeError from the guard."""
    space = _module_space(module)

    def racing_read():
        raise RuntimeError("dictionary changed size during iteration")

    space.read = racing_read
    space.quick = None
    assert Guard([space]).changed() == "`guarded.…`"
