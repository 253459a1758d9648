"""Whole chunks: on worker processes and threads a for loop's chunk runs in one call of a
function that loops over the chunk's items itself (itemcode.build_item_code with
``whole_chunk``); its items record into one log, cut per item (chunk.TimedItems), and its
names come once, as the items left them last.

Every case compares the kernel after ``%%parallel`` on processes and threads with
what the plain loop leaves, and checks which item function the run built (the whole chunk's,
or one per item for the options that need each item's own record).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import pickle
import re
import signal
import sys
import time
from types import FunctionType

import pytest
from conftest import BACKENDS, report

from parmagic.analysis.cell import plan_cell
from parmagic.analysis.itemcode import build_item_code
from parmagic.run import dispatch, loop_run
from parmagic.worker.chunk import run_values
from parmagic.worker.effects import CALL
from parmagic.worker.item_clock import GROUP_SPAN, MAX_GROUP, group_size
from parmagic.worker.item_output import ItemOutput
from parmagic.worker.kernel_objects import HeldObjects
from parmagic.worker.task import ChunkResult, Task, group_starts

PROCESSES = BACKENDS["fork"]
UNBOUND = "<unbound>"


@pytest.fixture
def built(monkeypatch) -> list[bool]:
    """The ``whole_chunk`` of every item function the runs of this test built."""
    flags: list[bool] = []

    def spy(*args, whole_chunk=False, **kwargs):
        flags.append(whole_chunk)
        return build_item_code(*args, whole_chunk=whole_chunk, **kwargs)

    monkeypatch.setattr(loop_run, "build_item_code", spy)
    return flags


@pytest.fixture(params=["fork", "threads"])
def on(request) -> str:
    """The backends whose for loops run a chunk in one call: worker processes and threads
    (``futures`` runs its chunks as ``threads`` does, through another pool)."""
    return BACKENDS[request.param]


def parallel(run, cell: str, options: str = "", on: str = PROCESSES):
    outcome = run(f"%%parallel {on} {options}\n{cell}")
    assert outcome.error is None, outcome.out + outcome.err
    return outcome


def serial_state(ip, setup: str, cell: str, names: list[str]) -> dict:
    """The names as the plain loop leaves them, run after ``setup`` in a scratch namespace."""
    namespace: dict = {}
    exec(setup, namespace)
    exec(cell, namespace)
    return {name: namespace.get(name, UNBOUND) for name in names}


def kernel_state(ip, names: list[str]) -> dict:
    return {name: ip.user_ns.get(name, UNBOUND) for name in names}


def assert_as_serial(
    ip, run, setup: str, cell: str, names: list[str], options: str = "", on: str = PROCESSES
):
    run(setup)
    parallel(run, cell, options, on)
    assert kernel_state(ip, names) == serial_state(ip, setup, cell, names)


@pytest.mark.parametrize(
    "cell",
    [
        "for i in range(40):\n    if i % 3 == 0:\n        continue\n    out.append(i)\n    kept = i\n",
        "for i in range(40):\n    out.append(-i)\n    if i % 3:\n        skipped = i\n        continue\n    kept = i\n",
        "for i in range(40):\n    if i % 2:\n        if i % 5 == 0:\n            continue\n        odd = i\n    out.append(i)\n    kept = i\n",
    ],
    ids=["top-level", "inside-if", "nested-ifs"],
)
def test_continue_ends_only_its_own_item(ip, run, built, on, cell):
    """In the whole chunk's function ``continue`` stays a ``continue`` of its own loop (not a
    return): it must skip to the chunk's next item, never end the chunk."""
    assert_as_serial(
        ip, run, "out = []", cell, ["out", "kept", "skipped", "odd", "i"], "--chunksize 7", on=on
    )
    assert built == [True]


def test_break_in_an_inner_loop_ends_only_that_loop(ip, run, built, on):
    """A ``break`` inside the body's own loop (and its ``else``) belongs to that loop."""
    cell = (
        "for i in range(30):\n    total = 0\n    for j in range(i):\n        if j > 3:\n"
        "            break\n        total += j\n    else:\n        out.append(('whole', i))\n"
        "    out.append(total)\n"
    )
    assert_as_serial(ip, run, "out = []", cell, ["out", "total", "j", "i"], "--chunksize 7", on=on)
    assert built == [True]


def test_continue_in_try_finally_runs_the_finally(ip, run, built, on):
    """``continue`` through a ``finally`` runs it, and the next item still runs."""
    cell = (
        "for i in range(30):\n    try:\n        if i % 3 == 0:\n            continue\n"
        "        out.append(i)\n        last = i\n    finally:\n        fin.append(i)\n"
        "        closed = i\n"
    )
    names = ["out", "fin", "last", "closed", "i"]
    assert_as_serial(ip, run, "out = []\nfin = []", cell, names, "--chunksize 7", on=on)
    assert built == [True]


def test_names_bound_by_some_items_keep_the_last_binding_across_chunks(ip, run, built, on):
    """A chunk that binds a name leaves it as its last binder did; a chunk that never binds
    it leaves the kernel's value of it from an earlier chunk."""
    cell = (
        "for i in range(100):\n    if i % 7 == 0:\n        last_seven = i\n"
        "    if i % 10 == 3:\n        last_three = i\n    if i < 5:\n        early = i\n"
        "    if i == 50:\n        middle = i\n"
    )
    names = ["last_seven", "last_three", "early", "middle", "never", "i"]
    assert_as_serial(ip, run, "never = 'before'", cell, names, "--chunksize 7", on=on)
    assert kernel_state(ip, names) == {
        "last_seven": 98, "last_three": 93, "early": 4, "middle": 50, "never": "before", "i": 99
    }  # fmt: skip
    assert report().chunks == 15
    assert built == [True]


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("for i in range(30):\n    x = i\n    if i % 2:\n        del x\n", UNBOUND),
        ("for i in range(30):\n    x = i\n    if i % 4 == 0:\n        del x\n", 29),
        ("for i in range(30):\n    x = i\n    if i >= 10:\n        del x\n", UNBOUND),
        ("for i in range(29):\n    x = i\n    if i % 7 == 6:\n        del x\n", 28),
    ],
    ids=["odd-items-delete", "some-items-delete", "later-chunks-delete", "last-of-chunk-deletes"],
)
def test_a_name_deleted_by_an_item_is_unbound_as_serial_leaves_it(
    ip, run, built, on, cell, expected
):
    """``del`` after binding: the kernel loses the name exactly when the plain loop's last
    binding of it was deleted (the forget op, and the chunk's names as its locals end)."""
    assert_as_serial(ip, run, "x = 'before'", cell, ["x", "i"], "--chunksize 7", on=on)
    assert ip.user_ns.get("x", UNBOUND) == expected
    assert built == [True]


def test_a_name_deleted_by_an_item_over_kernel_objects(ip, run, built, on):
    """The same over items that are kernel dicts (compared item by item)."""
    setup = "rows = [{'n': n} for n in range(30)]"
    cell = (
        "for r in rows:\n    r['seen'] = True\n    x = r['n']\n    if r['n'] % 2:\n        del x\n"
    )
    assert_as_serial(ip, run, setup, cell, ["x"], "--chunksize 7", on=on)


def test_a_name_deleted_by_an_item_under_on_error_continue(ip, run, built, on):
    cell = "for i in range(30):\n    x = i\n    if i % 2:\n        del x\n"
    assert_as_serial(ip, run, "", cell, ["x"], "--chunksize 7 --on-error continue", on=on)


@pytest.mark.xfail(
    strict=True,
    reason="bug (every backend but serial): `del` of a kernel name the item did not bind "
    "raises UnboundLocalError in the item function; the plain loop deletes the kernel's name",
)
def test_deleting_a_kernel_name_unbinds_it(ip, run, built):
    cell = "for i in range(30):\n    if i == 3:\n        del x\n"
    assert_as_serial(ip, run, "x = 5", cell, ["x", "i"], "--chunksize 7")


@pytest.mark.parametrize(
    "failing", [10, 7, 13], ids=["mid-chunk", "first-of-chunk", "last-of-chunk"]
)
def test_an_item_error_mid_chunk_keeps_what_the_plain_loop_keeps(ip, run, built, on, failing):
    """Earlier items' changes all apply, the failing item's up to its failure too, later
    items' none; the names are those the failing item left, including one it bound before
    raising (and one only earlier items bound); the error names the item."""
    run("out = []\nd = {}\n")
    outcome = run(
        f"%%parallel {on} --chunksize 7\nfor i in range(20):\n    out.append(i)\n"
        f"    note = f'item {{i}}'\n    d[i] = note\n    if i == {failing}:\n"
        "        raise ValueError(i)\n    after = i\n"
    )
    assert isinstance(outcome.error, ValueError)
    assert outcome.error.args == (failing,)
    message = "\n".join(outcome.error._render_traceback_())
    assert f"raised by item {failing} of the parallel loop" in message
    ns = ip.user_ns
    assert ns["out"] == list(range(failing + 1))
    assert ns["d"] == {i: f"item {i}" for i in range(failing + 1)}
    assert (ns["i"], ns["note"], ns["after"]) == (failing, f"item {failing}", failing - 1)
    assert report().stopped_at == failing
    assert built == [True]


def test_printed_output_comes_back_in_item_order(run, built, on):
    """Each item's output is cut from the one call's at the item's start, stdout and stderr."""
    run("import sys, time\n")
    cell = (
        "for i in range(30):\n    time.sleep(0.001 * ((i * 7) % 3))\n    print('out', i)\n"
        "    if i % 2:\n        print('err', i, file=sys.stderr)\n        continue\n"
        "    print('more', i)\n"
    )
    outcome = parallel(run, cell, "--chunksize 7", on)
    expected = [line for i in range(30) for line in [f"out {i}"] + ([] if i % 2 else [f"more {i}"])]
    assert [ln for ln in outcome.out.splitlines() if ln.startswith(("out", "more"))] == expected
    printed = [ln for ln in outcome.err.splitlines() if ln.startswith("err")]
    assert printed == [f"err {i}" for i in range(1, 30, 2)]
    assert built == [True]


def test_kernel_container_changes_apply_in_item_order(ip, run, built, on):
    """Calls, item writes and augmented item writes of every item, cut per item from one log."""
    setup = "from collections import Counter\nout = []\nd = {}\ncounts = Counter()\n"
    run(setup + "ids = [id(out), id(d), id(counts)]\n")
    cell = (
        "for i in range(60):\n    out.append(i * i)\n    d[f'k{59 - i}'] = i\n"
        "    counts[i % 4] += 1\n    if i % 9 == 0:\n        out.extend([-i, -i])\n"
        "        del d[f'k{59 - i}']\n"
    )
    parallel(run, cell, "--chunksize 7", on)
    expected = serial_state(ip, setup, cell, ["out", "d", "counts"])
    ns = ip.user_ns
    assert [id(ns["out"]), id(ns["d"]), id(ns["counts"])] == ns["ids"]
    assert ns["out"] == expected["out"]
    assert list(ns["d"].items()) == list(expected["d"].items())  # insertion order too
    assert ns["counts"] == expected["counts"]
    assert built == [True]


def test_kernel_dicts_as_items_change_in_place(ip, run, built, on):
    """Items that are the kernel's own dicts: what each item did to its copy is made to the
    kernel's dict, which stays the same object, and the loop variable ends as that object."""
    run("rows = [{'n': n} for n in range(20)]\nids = [id(r) for r in rows]\n")
    cell = (
        "for r in rows:\n    r['seen'] = True\n    if r['n'] % 3 == 0:\n"
        "        r['tag'] = 'three'\n        continue\n    last_other = r['n']\n"
    )
    parallel(run, cell, "--chunksize 7", on)
    ns = ip.user_ns
    assert [id(r) for r in ns["rows"]] == ns["ids"]
    assert ns["rows"] == [
        {"n": n, "seen": True, **({"tag": "three"} if n % 3 == 0 else {})} for n in range(20)
    ]
    assert ns["r"] is ns["rows"][-1]
    assert ns["last_other"] == 19
    assert built == [True]


def test_on_error_continue_keeps_per_item_semantics(ip, run, built, on):
    """A failed item leaves nothing, neither changes nor names: each item runs on its own."""
    run("out = []\n")
    cell = (
        "for i in range(19):\n    out.append(i)\n    tag = i\n    if i % 5 == 3:\n"
        "        raise ValueError(i)\n"
    )
    parallel(run, cell, "--chunksize 7 --on-error continue", on)
    assert ip.user_ns["out"] == [i for i in range(19) if i % 5 != 3]
    assert ip.user_ns["tag"] == 17  # item 18 failed: it leaves no names
    assert [index for index, _, _ in report().failures] == [3, 8, 13, 18]
    assert built == [False]


def test_an_interrupted_item_keeps_its_names_under_on_error_continue(ip, run, on):
    """An item that raises KeyboardInterrupt stops the run half applied, as under raise: its
    names up to the interrupt stay, though a failed item under ``continue`` leaves none."""
    run("out = []\n")
    cell = (
        "for i in range(20):\n    x = i * 10\n    if i == 9:\n        raise KeyboardInterrupt\n"
        "    out.append(i)\n"
    )
    outcome = run(f"%%parallel -q {on} --chunksize 5 --on-error continue\n{cell}")
    assert isinstance(outcome.error, KeyboardInterrupt)
    assert kernel_state(ip, ["out", "i", "x"]) == {"out": list(range(9)), "i": 9, "x": 90}


@pytest.mark.parametrize("options", ["--on-error continue", "--timeout 5"])
@pytest.mark.parametrize("when", ["before", "inside"])
def test_a_ctrl_c_while_serial_records_an_item_keeps_a_whole_prefix(ip, run, options, when):
    """Serial records its items on the kernel's thread where it cannot run the loop in place:
    a Ctrl-C there can land between the records of one item (a SIGINT handler raises at any
    line), and the kernel must still hold the items before it, their names too."""
    run("out = []\n")
    add = ChunkResult.add.__code__
    line = add.co_firstlineno + (1 if when == "before" else 4)
    seen = []

    def at_line(frame, event, arg):
        if event == "line" and frame.f_lineno == line:
            seen.append(frame.f_lineno)
            if len(seen) == 7:  # item 6
                raise KeyboardInterrupt
        return at_line

    sys.settrace(lambda frame, event, arg: at_line if frame.f_code is add else None)
    try:
        outcome = run(f"%%parallel -q -b serial --chunksize 10 {options}\n"
                      "for i in range(20):\n    x = i * 10\n    out.append(i)\n")  # fmt: skip
    finally:
        sys.settrace(None)
    assert isinstance(outcome.error, KeyboardInterrupt), outcome.err
    assert kernel_state(ip, ["out", "i", "x"]) == {"out": list(range(6)), "i": 5, "x": 50}


def test_a_ctrl_c_while_a_chunk_is_bound_stops_after_it_whole(ip, run, on):
    """A chunk whose items only bound names is bound and counted at once: a Ctrl-C that comes
    in between waits until both are done, and the run stops after the chunk, so the kernel
    holds exactly the items the message says were applied."""
    apply_chunk = dispatch.Applier.apply_chunk.__code__
    counted = (
        next(
            number
            for number, text in enumerate(
                inspect.getsource(dispatch.Applier.apply_chunk).splitlines()
            )
            if "self.report.add(result, len(result))" in text
        )
        + apply_chunk.co_firstlineno
    )
    seen = []

    def at_line(frame, event, arg):
        if event == "line" and frame.f_lineno == counted:
            seen.append(counted)
            if len(seen) == 2:  # the second chunk
                signal.raise_signal(signal.SIGINT)
        return at_line

    sys.settrace(lambda frame, event, arg: at_line if frame.f_code is apply_chunk else None)
    try:
        outcome = run(f"%%parallel -q {on} --chunksize 10\nfor i in range(40):\n    x = i\n")
    finally:
        sys.settrace(None)
    assert isinstance(outcome.error, KeyboardInterrupt), outcome.err
    applied = int(re.search(r"the first (\d+) items were applied", str(outcome.error.__notes__))[1])
    assert applied == 20
    assert (ip.user_ns["i"], ip.user_ns["x"]) == (19, 19)


def test_timeout_runs_items_one_by_one_and_correctly(ip, run, built, on):
    """--timeout needs each item's alarm: the per-item function, same results."""
    setup = "out = []\nd = {}\n"
    cell = (
        "for i in range(20):\n    if i % 4 == 1:\n        continue\n    out.append(i)\n"
        "    d[i] = -i\n    last = i\n"
    )
    assert_as_serial(ip, run, setup, cell, ["out", "d", "last", "i"], "--timeout 5", on=on)
    assert built == [False]


def _whole_chunk_task(source: str, replayed: frozenset[str], ns: dict) -> Task:
    plan = plan_cell(source, "<cell>", "processes")
    code = build_item_code(plan.body, replayed, "<cell>", whole_chunk=True)
    function = FunctionType(code, ns)
    return Task(function, plan.body.bound, True, merge_names=True, whole_chunks=True)


def _in_a_worker(task: Task) -> Task:
    """The task as a worker process loads it: nothing there cancels items, so they are taken
    in the tightest loop, timed a group at a time."""
    task.held = HeldObjects.none()
    return task


@pytest.mark.parametrize("where", ["kernel", "worker"])
def test_run_values_cuts_the_one_log_per_item(where):
    """A whole chunk's one call: each item's ops under its own offset, a failing item's ops
    up to its failure kept, the chunk's names on its last item (the failing one), as it
    left them."""
    source = (
        "for i in range(9):\n    out.append(i)\n    if i % 3 == 1:\n        continue\n"
        "    if i == 5:\n        half = i\n        raise ValueError(i)\n    out.append(-i)\n"
        "    last = i\n"
    )
    task = _whole_chunk_task(source, frozenset({"out"}), {})
    if where == "worker":
        task = _in_a_worker(task)
    result = run_values(task, 0, 0, list(range(9)), "worker")
    assert len(result) == 6  # items 0 to 5: the chunk stops at the failure
    appended = [[op[5] for op in ops if op[0] == CALL and op[2] == "out"] for ops in result.ops]
    assert appended == [[(0,), (0,)], [(1,)], [(2,), (-2,)], [(3,), (-3,)], [(4,)], [(5,)]]
    assert list(result.errors) == [5]
    assert isinstance(result.errors[5].exception, ValueError)
    assert result.names_merged
    assert result.names[:5] == [None] * 5
    assert result.names[5] == {"i": 5, "half": 5, "last": 3}


def test_run_values_gives_the_names_the_last_item_left():
    """A chunk that succeeds: names on its last item, a name deleted by an item gone."""
    source = "for i in range(6):\n    gone = i\n    if i % 2:\n        kept = i\n        del gone\n"
    task = _whole_chunk_task(source, frozenset(), {})
    result = run_values(task, 0, 0, [10, 11, 12, 13], "worker")
    assert len(result) == 4 and not result.errors
    assert result.names == [None, None, None, {"i": 13, "kept": 13}]
    assert [ops for ops in result.ops] == [[], [(5, 5, "gone")], [], [(5, 5, "gone")]]


def test_cheap_items_in_a_worker_read_the_clock_a_group_at_a_time(monkeypatch):
    """10,000 items that do nothing: the clock is read far less than once an item (reading
    it costs as much as such an item), and the result carries the groups, not a start per
    item; loaded in the kernel, every item has its start, in order, and the ends and CPU
    times made from them add up to the chunk's."""
    reads = []
    clock = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: reads.append(1) or clock())
    task = _in_a_worker(_whole_chunk_task("for i in range(5):\n    pass\n", frozenset(), {}))
    sent = run_values(task, 0, 0, list(range(10_000)), "worker")
    monkeypatch.undo()
    assert len(reads) < 10_000 / 4, len(reads)
    sent_bytes = pickle.dumps(sent)
    assert len(sent_bytes) < 10_000, len(sent_bytes)  # the groups travel, not 8 bytes an item
    result: ChunkResult = pickle.loads(sent_bytes)
    assert len(result) == 10_000 and not result.errors and result.spread_only
    ended, cpu = result.spread
    ends, cpus = result.ends, result.cpus  # worked out when first read, with the starts
    starts = result.starts
    assert len(set(starts)) == len(starts) == 10_000 and starts == sorted(starts)
    assert ends[:-1] == starts[1:] and ends[-1] == ended
    spans = [end - start for start, end in zip(starts, ends, strict=True)]
    assert min(spans) > 0 and math.fsum(spans) == pytest.approx(ended - starts[0])
    assert math.fsum(cpus) == pytest.approx(cpu)


@pytest.mark.parametrize("failing", [0, 1, 500, 9_999])
def test_a_failure_inside_a_group_is_its_own_items(failing):
    """Items timed in groups: the one that raised is still the one recorded as failed, and
    the chunk ends with it, as in the plain loop."""
    source = f"for i in range(5):\n    if i == {failing}:\n        raise KeyError(i)\n"
    task = _in_a_worker(_whole_chunk_task(source, frozenset(), {}))
    result = pickle.loads(pickle.dumps(run_values(task, 0, 0, list(range(10_000)), "worker")))
    assert len(result) == len(result.starts) == len(result.ends) == failing + 1
    assert list(result.errors) == [failing]
    assert isinstance(result.errors[failing].exception, KeyError)


def test_a_group_of_items_shares_its_span_evenly_and_a_slow_item_makes_the_next_one_alone():
    """Items timed a group at a time are spread evenly up to the next group's start
    (the last group's up to the chunk's end); after cheap items a group holds many, after
    items as slow as a group's span it holds one."""
    assert group_starts([0, 4, 5], [1.0, 2.0, 3.0], 7, 4.0) == [
        1.0, 1.25, 1.5, 1.75, 2.0, 3.0, 3.5,
    ]  # fmt: skip
    assert group_size(1e-7) == MAX_GROUP
    assert group_size(GROUP_SPAN / 4) == 4
    assert group_size(GROUP_SPAN) == group_size(1.0) == 1


def _as_plain_python(source: str, item: int) -> tuple[list, str, bool]:
    """What the comprehension gives for one item alone in plain Python: its values, what it
    printed, and whether it raised."""
    single = source.replace("range(9)", f"[{item}]")
    namespace, printed = {"inverse": _inverse}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            exec(single, namespace)
        except ZeroDivisionError:
            return [], printed.getvalue(), True
    out = namespace["out"]
    return (list(out.items()) if isinstance(out, dict) else out), printed.getvalue(), False


def _inverse(i: int) -> int:
    print(i)
    return 100 // (i % 7)


def _comprehension_task(source: str, stop_on_error: bool) -> Task:
    """A comprehension's task as the kernel builds it, loaded as in a worker process."""
    plan = plan_cell(source, "<cell>", "processes")
    mapped = plan.body.mapped_function is not None
    code = build_item_code(plan.body, frozenset(), "<cell>", mapped=mapped)
    assert ("map" in code.co_names) is mapped
    function = FunctionType(code, {"print": print, "inverse": _inverse})
    task = Task(function, plan.body.bound, stop_on_error, comprehension=True, kind=plan.body.kind)
    task.one_value = plan.body.one_value_per_item
    return _in_a_worker(task)


@pytest.mark.parametrize(
    ("source", "one_value"),
    [
        ("out = [print(i) or 100 // (i % 7) for i in range(9)]", True),
        ("out = {i: print(i) or 100 // (i % 7) for i in range(9)}", True),
        (
            "out = [100 // (i % 7) + j for i in range(9) for j in range(i % 3) if print(i) is None]",
            False,
        ),
        ("out = [i for i in range(9) if print(i) is None and 100 // (i % 7)]", False),
        ("out = [inverse(i) for i in range(9)]", True),
    ],
    ids=["one-each", "dict-one-each", "several-each", "filtered", "mapped"],
)
@pytest.mark.parametrize("stop_on_error", [True, False], ids=["raise", "continue"])
def test_a_comprehensions_chunk_in_a_worker_gives_each_item_its_values_output_and_error(
    monkeypatch, source, one_value, stop_on_error
):
    """Items handed over at C speed, counted by what they left where each gives one value:
    every item keeps its own values, output and error, as plain Python gives them for that
    item, wherever in its group it failed; the chunk stops at the first failure, or
    (--on-error continue) goes on after each."""
    task = _comprehension_task(source, stop_on_error)
    assert task.one_value is one_value
    items = list(range(1, 3000))  # some fail: some inside a group, some first in one
    monkeypatch.setattr(sys, "stdout", ItemOutput(io.StringIO(), 1))  # as a worker's is
    result = run_values(task, 0, 0, items, "worker")
    monkeypatch.undo()
    plain = [_as_plain_python(source, i) for i in items]
    failing = [offset for offset, (_, _, raised) in enumerate(plain) if raised]
    ran = len(items) if not stop_on_error else failing[0] + 1
    assert len(result) == ran
    assert list(result.errors) == (failing if not stop_on_error else failing[:1])
    assert all(isinstance(e.exception, ZeroDivisionError) for e in result.errors.values())
    loaded: ChunkResult = pickle.loads(pickle.dumps(result))
    assert len(loaded) == len(loaded.starts) == ran
    assert [loaded.item_values(offset) for offset in range(ran)] == [v for v, _, _ in plain[:ran]]
    printed = {o: "".join(text for _, text in loaded.outputs.get(o, [])) for o in range(ran)}
    assert printed == {o: text for o, (_, text, _) in enumerate(plain[:ran])}


@pytest.mark.parametrize("options", ["", "--on-error continue"])
def test_a_comprehension_over_kernel_objects_fails_the_item_that_raised(ip, run, options):
    """Items that are the kernel's objects are run and compared one at a time: the item
    that raised is the one that failed; earlier items' changes and its own up to its failure
    apply, as in the plain loop, or, under --on-error continue, every item's but the failed
    ones' (spec §6)."""
    setup = "rows = [{'n': i} for i in range(40)]\n"
    cell = "out = [r.update(seen=True) or 10 // (r['n'] % 7 - 3) for r in rows]\n"
    run(setup)
    outcome = run(f"%%parallel {PROCESSES} --chunksize 9 {options}\n{cell}")
    assert isinstance(outcome.error, ZeroDivisionError) or options
    failed = [index for index, _, _ in report().failures] if options else [report().stopped_at]
    assert failed == ([i for i in range(40) if i % 7 == 3] if options else [3])
    seen = [row.get("seen", False) for row in ip.user_ns["rows"]]
    kept = [i % 7 != 3 for i in range(40)] if options else [True] * 4 + [False] * 36
    assert seen == kept, seen


@pytest.mark.parametrize(
    ("source", "mapped"),
    [
        ("out = [f(x) for x in items]", "f"),
        ("out = {f(x) for x in items}", "f"),
        ("total = sum(f(x) for x in items)", "f"),
        ("out = [f(x, 2) for x in items]", None),
        ("out = [f(x=x) for x in items]", None),
        ("out = [f(x) for x in items if x]", None),
        ("out = [f(y) for x in items]", None),
        ("out = [x(x) for x in items]", None),
        ("out = [m.f(x) for x in items]", None),
        ("out = [f(x) for x, y in items]", None),
        ("out = {x: f(x) for x in items}", None),
    ],
)
def test_a_comprehension_of_one_call_on_the_item_is_a_map(source, mapped):
    assert plan_cell(source, "<cell>", "processes").body.mapped_function == mapped


@pytest.mark.parametrize("options", ["", "--on-error continue"])
def test_a_mapped_comprehension_ends_as_the_plain_one(ip, run, options):
    """``[f(x) for x in ...]`` runs as ``map(f, items)`` in a worker: the same values and
    failures, a traceback through the cell's line to the function's, and a notebook name
    ``map`` is never called in its place."""
    run(
        "map = {'not': 'the builtin'}\n"
        "def inverse(i):\n    if i % 7 == 3:\n        raise ValueError(f'no inverse of {i}')\n"
        "    return 1 / (i % 7 + 1)\n"
    )
    outcome = run(
        f"%%parallel {PROCESSES} --chunksize 5 {options}\nout = [inverse(i) for i in range(30)]"
    )
    if options:
        assert outcome.error is None, outcome.err
        assert [index for index, _, _ in report().failures] == [3, 10, 17, 24]
        assert ip.user_ns["out"] == [1 / (i % 7 + 1) for i in range(30) if i % 7 != 3]
    else:
        assert isinstance(outcome.error, ValueError) and report().stopped_at == 3
        shown = "\n".join(outcome.error._render_traceback_())
        assert "out = [inverse(i) for i in range(30)]" in shown
        assert "raise ValueError(f'no inverse of {i}')" in shown
        assert "out" not in ip.user_ns
    assert ip.user_ns["map"] == {"not": "the builtin"}
    outcome = run(f"%%parallel {PROCESSES} -q\nlengths = [len(s) for s in ['a', 'bb']]")
    assert outcome.error is None and ip.user_ns["lengths"] == [1, 2]
