"""Cell -> plan: which loop runs in parallel, what is refused, and the per-item code.

Pure tests: no IPython, no processes. Cells are source strings; line 1 is their first line.
"""

from __future__ import annotations

import ast
import traceback
import types

import pytest

from parmagic import errors
from parmagic.analysis.body import analyse_for
from parmagic.analysis.cell import HOOK_NAME as HOOK
from parmagic.analysis.cell import find_parallel_loop, plan_cell
from parmagic.analysis.itemcode import build_item_code
from parmagic.errors import LoopRefused
from parmagic.worker.effects import AUGITEM, CALL, DELITEM, REDUCE, SETITEM, EffectLog

FILENAME = "<ipython-input-7-cell>"


def case(case_id: str, *values):
    return pytest.param(*values, id=case_id)


def plan(source: str):
    return plan_cell(source, FILENAME)


def loop_target(node: ast.AST) -> str:
    return ast.unparse(node.target if isinstance(node, ast.For) else node.generators[0].target)


def kernel() -> dict:
    """Fresh kernel objects: recorded effects must leave them untouched."""
    return {"results": [], "d": {3: 0}, "groups": {0: [], 1: []}, "counts": {}, "total": 0}


def item_function(source: str, namespace: dict | None = None):
    info = plan(source).body
    code = build_item_code(info, frozenset(info.receivers), FILENAME)
    return info, code, types.FunctionType(code, kernel() if namespace is None else namespace)


def run_item(source: str, item, namespace: dict | None = None):
    """One item through the item function: a loop's records its changes in a log; a
    comprehension's runs a chunk of items (here, of one) into a list of values."""
    info, _, function = item_function(source, namespace)
    log = EffectLog()
    if info.kind == "for":
        return info, function(item, log), log
    values: list = []
    function((item,), values)
    return info, values, log


# which loop is chosen --------------------------------------------------------------------

LOOP = "\n    for x in xs:\n        pass"


@pytest.mark.parametrize(
    ("source", "kind", "line", "target"),
    [
        case("single-for", "for x in xs:\n    y = x * 2", "for", 1, "x"),
        case("in-with", "with lock:" + LOOP, "for", 2, "x"),
        case("in-async-with", "async with lock:" + LOOP, "for", 2, "x"),
        case("in-try", f"try:{LOOP}\nexcept ValueError:\n    pass", "for", 2, "x"),
        case("in-except", f"try:\n    setup()\nexcept ValueError:{LOOP}", "for", 4, "x"),
        case("in-finally", f"try:\n    setup()\nfinally:{LOOP}", "for", 4, "x"),
        case("in-main-guard", f"if __name__ == '__main__':{LOOP}", "for", 2, "x"),
        case("before-and-after", "r = []\nfor n in ns:\n    r.append(n)\nprint(r)", "for", 2, "n"),
        case("for-else", "for x in xs:\n    pass\nelse:\n    done = 1", "for", 1, "x"),
        case("for-beats-comp", "ys = [y for y in xs]\nfor x in ys:\n    pass", "for", 2, "x"),
        case("list", "squares = [n ** 2 for n in range(10)]", "list", 1, "n"),
        case("set", "import math\nr = {math.isqrt(n) for n in ns}", "set", 2, "n"),
        case("dict", "lengths = {w: len(w) for w in words}", "dict", 1, "w"),
        case("genexp-in-sum", "total = sum(cost(x) for x in xs)", "generator", 1, "x"),
        case(
            "nested-outermost", "g = [\n    [i * j for j in js]\n    for i in xs\n]", "list", 1, "i"
        ),
        case("lambda-ignored", "f = lambda: [c for c in s]\nys = [x for x in xs]", "list", 2, "x"),
    ],
)
def test_chosen_loop(source, kind, line, target):
    result = plan(source)
    assert (result.body.kind, result.body.node.lineno, result.body.line) == (kind, line, line)
    assert loop_target(result.body.node) == target
    assert find_parallel_loop(ast.parse(source)).lineno == line


@pytest.mark.parametrize(
    ("source", "rewritten"),
    [
        case("for-else", "for x in xs:\n    pass\nelse:\n    e = 1", f"{HOOK}(xs)\ne = 1"),
        case("comp", "xs = f()\nt = sum(x for x in xs)\nt", f"xs = f()\nt = sum({HOOK}(xs))\nt"),
    ],
)
def test_loop_replaced_in_place(source, rewritten):
    """Only the loop becomes a hook call; `else:` and the other statements stay in place."""
    assert ast.unparse(plan(source).module) == rewritten


# refusals --------------------------------------------------------------------------------

BREAK = errors.BREAK_REFUSED.format
READ = errors.CARRIED_READ.format
NAME = errors.CARRIED_NAME.format


def first_needs(refusal: str, rewrite: str = "") -> str:
    """The refusal of a body whose first statement reads the carried state: nothing else."""
    return errors.NOTHING_PARALLEL.format(why=refusal.split(". ", 1)[0], rewrite=rewrite)


ASYNC_FOR = errors.ASYNC_FOR_REFUSED.format(line=1)
AWAIT = errors.AWAIT_REFUSED.format(line=2, what="await", backend="threads")
NO_LOOP = errors.NO_LOOP
BAD = errors.BAD_TARGET.format
WALRUS = errors.WALRUS_IN_COMPREHENSION.format(line=1)
LATE = errors.LATE_BINDING.format
CHANGED = errors.ITERABLE_CHANGED.format


@pytest.mark.parametrize(
    ("source", "message", "line"),
    [
        case("break", "for x in xs:\n    if x > 3:\n        break", BREAK(line=3), 3),
        case(
            "break-in-except",
            "for x in xs:\n    try:\n        f(x)\n    except KeyError:\n        break",
            *(BREAK(line=5), 5),
        ),
        case(
            "break-in-inner-else",
            "for x in xs:\n    for y in x:\n        pass\n    else:\n        break",
            *(BREAK(line=5), 5),
        ),
        case(
            "two-for-loops",
            "for x in xs:\n    pass\nwith lock:" + LOOP,
            *(errors.SEVERAL_LOOPS.format(count=2, lines="1, 4"), None),
        ),
        case(
            "comps-on-two-statements",
            "a = [x for x in xs]\nb = {y for y in ys}",
            *(errors.SEVERAL_COMPREHENSIONS.format(lines="1, 2"), None),
        ),
        case(
            "two-comps-one-statement",
            "pairs = list(zip([x for x in xs], (y for y in ys)))",
            *(errors.SEVERAL_IN_STATEMENT.format(line=1, count=2), 1),
        ),
        case("no-loop", "x = 1\nprint(x)", NO_LOOP, None),
        case("for-in-if", "if ready:" + LOOP, NO_LOOP, None),
        case("for-in-def", "def f(xs):" + LOOP, NO_LOOP, None),
        case(
            "comp-in-def",
            "def f(xs):\n    return [x for x in xs]",
            *(NO_LOOP, None),
        ),
        case("async-for", "async for x in stream():\n    pass", ASYNC_FOR, 1),
        case("async-comprehension", "ys = [x async for x in stream()]", ASYNC_FOR, 1),
        case("await-in-body", "for u in urls:\n    page = await get(u)", AWAIT, 2),
        case(
            "reads-reduction",
            "for x in xs:\n    if total > 10:\n        pass\n    total += x",
            *(first_needs(READ(line=2, name="total", write_line=4)), 2),
        ),
        case(
            "reads-mutated-container",
            "for x in xs:\n    if x not in seen:\n        seen.add(x)",
            *(first_needs(READ(line=2, name="seen", write_line=3)), 2),
        ),
        case(
            "read-before-assign",
            "for x in xs:\n    print(s)\n    s = x",
            *(first_needs(NAME(line=2, name="s")), 2),
        ),
        case("subscript-target", 'for d["k"] in xs:\n    pass', BAD(line=1, target="d['k']"), 1),
        case("walrus-in-comp", "ys = [y for x in xs if (y := x * 2)]", WALRUS, 1),
        case(
            "closure-over-loop-name",
            "fs = []\nfor i in xs:\n    fs.append(lambda: i)",
            LATE(line=3, what="lambda", name="i"),
            3,
        ),
        case(
            "closure-over-comp-variable",
            "fs = [lambda: x for x in xs]",
            LATE(line=1, what="lambda", name="x"),
            1,
        ),
        case(
            "function-reads-loop-name",
            "for i in xs:\n    def get():\n        return prev\n    out.append(get())\n    prev = i",
            LATE(line=3, what="function `get`", name="prev"),
            3,
        ),
        case(
            "loop-extends-its-iterable",
            "for x in queue:\n    queue.append(x + 1)",
            CHANGED(line=1, name="queue", write_line=2),
            1,
        ),
    ],
)
def test_refused(source, message, line):
    with pytest.raises(LoopRefused) as caught:
        plan(source)
    assert (str(caught.value), caught.value.line) == (message, line)


@pytest.mark.parametrize(
    ("source", "bound"),
    [
        case("break-in-inner-for", "for x in xs:\n    for y in x:\n        break", {"x", "y"}),
        case("break-in-inner-while", "for x in xs:\n    while 1:\n        break", {"x"}),
        case("assigned-then-read", "for x in xs:\n    s = x\n    f(s)", {"x", "s"}),
        case(
            "assigned-on-both-branches",
            "for x in xs:\n    if x:\n        s = 1\n    else:\n        s = 2\n    f(s)",
            {"x", "s"},
        ),
        case(
            "else-continues",
            "for x in xs:\n    if x:\n        s = x\n    else:\n        continue\n    f(s)",
            {"x", "s"},
        ),
        case(
            "generator-variable-is-local-to-it",
            "for x in xs:\n    m = max(p * x for p in range(3))\n    print(m)",
            {"x", "m"},
        ),
        case(
            "target-read-after-del-item",
            "for k in keys:\n    del d[k]\n    print(k)",
            {"k"},
        ),
    ],
)
def test_not_refused(source, bound):
    body = plan(source).body
    assert (body.kind, body.line, body.bound) == ("for", 1, frozenset(bound))


@pytest.mark.parametrize(
    ("source", "first_tail_line"),
    [
        case(
            "reads-name-assigned-on-one-branch",
            "for x in xs:\n    if x:\n        flag = x\n    print(flag)",
            4,
        ),
        case(
            "match-without-catch-all",
            "for x in xs:\n    match x:\n        case int():\n            kind = 1\n    out.append(kind)",
            5,
        ),
        case(
            "walrus-behind-and",
            "for i in xs:\n    if i % 2 and (y := i):\n        pass\n    out.append(y)",
            4,
        ),
        case(
            "assigned-under-suppress",
            "for i in xs:\n    with suppress(ZeroDivisionError):\n        y = 10 // i\n    out.append(y)",
            4,
        ),
        case(
            "running-maximum",
            "for n in ns:\n    steps = cost(n)\n    if steps > longest:\n        longest, number = steps, n",
            3,
        ),
        case(
            "word-counts",
            "for line in lines:\n    words = line.split()\n    for w in words:\n        counts[w] = counts.get(w, 0) + 1",
            3,
        ),
        case(
            "running-position",
            "for s in sizes:\n    step = simulate(s)\n    position += step\n    positions.append(position)",
            4,  # `position += step` stays a reduction, replayed before the tail reads it
        ),
    ],
)
def test_carried_reads_at_the_end_become_an_ordered_tail(source, first_tail_line):
    """Reads of the previous items' state that come last run in the kernel, in item order."""
    body = plan(source).body
    assert body.tail and body.tail[0].lineno == first_tail_line
    assert all(s.lineno < first_tail_line for s in body.head)


@pytest.mark.parametrize(
    ("source", "first_reads"),
    [
        ("for x in xs:\n    y = state * 2\n    state = cost(y)", True),  # the work needs it
        ("for x in xs:\n    if x > best:\n        continue\n    best = x", True),
        (
            "for x in xs:\n    y = cost(x)\n    if y < 0:\n        continue\n    if y > best:\n"
            "        best = y",
            False,  # cost(x) could run in parallel, but the `continue` would skip the tail
        ),
        ("for x in xs:\n    y = cost(x, seen)\n    if y not in seen:\n        seen.add(y)", True),
    ],
    ids=[
        "work-needs-it",
        "reads-first",
        "continue-skips-the-tail",
        "head-reads-what-the-tail-changes",
    ],
)
def test_carried_reads_that_the_parallel_part_needs_stay_refused(source, first_reads):
    """Where the body's first statement reads the carried state, nothing can run in
    parallel, and the message says so, with no advice to move reads after other work."""
    with pytest.raises(LoopRefused) as refused:
        plan(source)
    assert refused.value.carried
    message = str(refused.value)
    assert ("nothing could run in parallel" in message) == first_reads
    assert ("in item order, when they come last in the body" in message) != first_reads


def test_a_word_count_is_told_the_reduction_that_runs_it():
    with pytest.raises(LoopRefused) as refused:
        plan("counts = {}\nfor w in words:\n    counts[w] = counts.get(w, 0) + 1")
    message = str(refused.value)
    assert "nothing could run in parallel" in message and errors.MOVE_THE_READS not in message
    assert "make `counts` a `collections.Counter()` before the loop" in message
    assert "write `counts[w] += 1`" in message


# what the analysis learns ----------------------------------------------------------------

WRITE_BACKS = (
    "for k, v in items:\n    results.append(v)\n    d[k] = v\n    groups[k].append(v)\n"
    "    counts[k] += 1\n    del old[k]"
)
WARNINGS = [
    (2, "`obj.attr = ...`", "obj"),
    (3, "`self.items.append(...)`", "self"),
    (4, "`global g`", "g"),
]


@pytest.mark.parametrize(
    ("source", "bound", "reductions", "receivers", "warnings"),
    [
        case(
            "reductions",
            "for x in xs:\n    y = x * 2\n    total += y\n    count -= 1",
            *({"x", "y"}, {"total": 3, "count": 4}, {}, []),
        ),
        case("augmented-local", "for x in xs:\n    a = 0\n    a += x", {"x", "a"}, {}, {}, []),
        case("tuple-target", "for i, (a, b) in ps:\n    s = a", {"i", "a", "b", "s"}, {}, {}, []),
        case(
            "receivers",
            WRITE_BACKS,
            *({"k", "v"}, {}, {"results": 2, "d": 3, "groups": 4, "counts": 5, "old": 6}, []),
        ),
        case(
            "local-container-is-no-receiver",
            "for x in xs:\n    row = []\n    row.append(x)\n    rows.append(row)",
            *({"x", "row"}, {}, {"rows": 4}, []),
        ),
        case(
            "copy-warnings",
            "for x in xs:\n    obj.attr = x\n    self.items.append(x)\n    global g",
            *({"x"}, {}, {}, WARNINGS),
        ),
    ],
)
def test_body_facts(source, bound, reductions, receivers, warnings):
    body = analyse_for(find_parallel_loop(ast.parse(source)))
    assert body.bound == frozenset(bound)
    assert body.reductions == reductions
    assert body.receivers == receivers
    assert body.copy_warnings == warnings


# the per-item code -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "item", "ops"),
    [
        case("append", "results.append(x + 1)", 2, [(CALL, 2, "results", (), "append", (3,), {})]),
        case("path", "groups[x % 2].append(x)", 3, [(CALL, 2, "groups", (1,), "append", (3,), {})]),
        case("setitem", "d[x] = x * x", 3, [(SETITEM, 2, "d", (), 3, 9)]),
        case("slice", "d[x:x + 2] = [0]", 1, [(SETITEM, 2, "d", (), slice(1, 3), [0])]),
        case("augitem", "counts[x] += 2", 5, [(AUGITEM, 2, "counts", (), 5, "iadd", 2)]),
        case("reduce", "total -= x", 4, [(REDUCE, 2, "total", "isub", 4)]),
        case("delitem", "del d[x]", 3, [(DELITEM, 2, "d", (), 3)]),
        case(
            "reduce-in-inner-loop",
            "for y in range(x):\n        total += y",
            *(2, [(REDUCE, 3, "total", "iadd", 0), (REDUCE, 3, "total", "iadd", 1)]),
        ),
        case(
            "delitem-in-inner-loop",
            "for k in x:\n        del d[k]",
            *((3, 4), [(DELITEM, 3, "d", (), 3), (DELITEM, 3, "d", (), 4)]),
        ),
        case(
            "annotated-setitem",
            "d[x]: int = x * x",
            *(3, [(SETITEM, 2, "d", (), 3, 9)]),
        ),
    ],
)
def test_item_records_ops(body, item, ops):
    namespace = kernel()
    _, value, log = run_item(f"for x in xs:\n    {body}\n", item, namespace)
    assert (value, log.ops) == (None, ops)
    assert namespace == kernel(), "recorded effects must not touch the kernel's objects"


BINDS = "for i, x in xs:\n    y = x * 2\n    if y > 4:\n        continue\n    d[i] = (z := y)"


@pytest.mark.parametrize(
    ("item", "names", "ops"),
    [
        case("continue-ends-item", (0, 3), {"i": 0, "x": 3, "y": 6}, []),
        case("to-end", (1, 1), {"i": 1, "x": 1, "y": 2, "z": 2}, [(SETITEM, 5, "d", (), 1, 2)]),
    ],
)
def test_item_binds_names(item, names, ops):
    info, _, log = run_item(BINDS, item)
    assert {name: log.names[name] for name in info.bound if name in log.names} == names
    assert log.ops == ops


@pytest.mark.parametrize(
    ("source", "line"),
    [
        case("for", "for x in xs:\n    y = 10\n    results.append(y // x)", 3),
        case("comp", "xs = [1, 0]\nys = [\n    10 // x\n    for x in xs\n]", 3),
    ],
)
def test_item_traceback_points_at_cell_line(source, line):
    _, code, _ = item_function(source)
    with pytest.raises(ZeroDivisionError) as caught:
        run_item(source, 0)
    frame = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert (code.co_filename, code.co_name) == (FILENAME, errors.ITEM_FUNCTION_NAME)
    assert (frame.filename, frame.lineno) == (FILENAME, line)


@pytest.mark.parametrize(
    ("source", "item", "values"),
    [
        case("list", "ys = [x * x for x in xs]", 3, [9]),
        case("filter-drops", "ys = [x for x in xs if x % 2]", 2, []),
        case("filter-keeps", "ys = [x for x in xs if x % 2]", 3, [3]),
        case("inner-for", "p = [(x, y) for x in xs for y in range(x) if y]", 3, [(3, 1), (3, 2)]),
        case("dict-pairs", "d = {x: str(x) for x in xs}", 4, [(4, "4")]),
        case("dict-tuple-target", "d = {k: v * 2 for k, v in kv}", ("a", 1), [("a", 2)]),
        case("set", "s = {x % 3 for x in xs}", 5, [2]),
        case("generator", "t = sum(x * 2 for x in xs)", 4, [8]),
        case("nested", "g = [[i * j for j in range(3)] for i in xs]", 2, [[0, 2, 4]]),
    ],
)
def test_comprehension_item_values(source, item, values):
    _, value, log = run_item(source, item)
    assert (value, log.ops) == (values, [])


def test_a_spelled_out_reduction_is_told_to_use_augmented_assignment():
    with pytest.raises(LoopRefused) as refused:
        plan("x = 0\nfor i in range(3):\n    x = x + i * 2")
    assert str(refused.value) == errors.SPELLED_OUT_REDUCTION.format(
        line=3, name="x", op="+", right="i * 2"
    )


@pytest.mark.parametrize(
    "body, advanced",
    [
        ("out.append(next(g))", ["g"]),
        ("it = g\n    out.append(next(it))", ["g"]),  # through an alias of the item
        ("g.append(1)", []),  # a change to the item's object: it comes back from copies
        ("t = g['tags']\n    t.append(1)", []),
        ("out.append(next(iter(g)))", []),  # a new iterator of the item's own
    ],
)
def test_only_advancing_a_handed_out_iterator_is_what_copies_cannot_carry_back(body, advanced):
    plan = plan_cell(f"out = []\nfor g in gens:\n    {body}\n", "<cell>", "processes")
    assert [name for _, _, name in plan.body.item_advances] == advanced
