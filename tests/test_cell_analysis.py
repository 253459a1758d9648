"""Cell -> plan: which loop runs in parallel, what is refused, and the per-item code (spec §4, §5).

Pure tests: no IPython, no processes. Cells are source strings; line 1 is their first line.
"""

from __future__ import annotations

import ast
import traceback
import types

import pytest

from parmagic import errors
from parmagic.body import analyse_for, build_item_code
from parmagic.cell import HOOK_NAME, find_parallel_loop, plan_cell
from parmagic.effects import AUGITEM, CALL, DELITEM, REDUCE, SETITEM, EffectLog
from parmagic.errors import LoopRefused

FILENAME = "<ipython-input-7-cell>"


def cell(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def case(case_id: str, *values, bug: str | None = None):
    """A parametrize case; ``bug`` marks a known package bug as a strict xfail."""
    marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {bug}")] if bug else []
    return pytest.param(*values, id=case_id, marks=marks)


def plan(source: str):
    return plan_cell(source, FILENAME)


def loop_target(node: ast.AST) -> str:
    target = node.target if isinstance(node, ast.For) else node.generators[0].target
    return ast.unparse(target)


def kernel() -> dict:
    """Fresh kernel objects: recorded effects must leave them untouched."""
    return {"results": [], "d": {3: 0}, "groups": {0: [], 1: []}, "counts": {}, "total": 0}


def item_function(source: str, namespace: dict | None = None):
    info = plan(source).body
    code = build_item_code(info, frozenset(info.receivers), FILENAME)
    return info, code, types.FunctionType(code, kernel() if namespace is None else namespace)


def run_item(source: str, item, namespace: dict | None = None):
    info, _, function = item_function(source, namespace)
    log = EffectLog()
    return info, function(item, log), log


# §4: which loop is chosen --------------------------------------------------------------------

TRY = ("try:", "    setup()")
LOOP = ("    for x in xs:", "        pass")


@pytest.mark.parametrize(
    ("source", "kind", "line", "target"),
    [
        case("single-for", cell("for x in xs:", "    y = x * 2"), "for", 1, "x"),
        case("in-with", cell("with lock:", *LOOP), "for", 2, "x"),
        case("in-async-with", cell("async with lock:", *LOOP), "for", 2, "x"),
        case("in-try", cell("try:", *LOOP, "except ValueError:", "    pass"), "for", 2, "x"),
        case("in-except", cell(*TRY, "except ValueError:", *LOOP), "for", 4, "x"),
        case("in-finally", cell(*TRY, "finally:", *LOOP), "for", 4, "x"),
        case(
            "statements-before-and-after",
            cell("results = []", "for n in range(3):", "    results.append(n)", "print(results)"),
            *("for", 2, "n"),
        ),
        case("for-else", cell("for x in xs:", "    pass", "else:", "    done = 1"), "for", 1, "x"),
        case("for-beats-comp", cell("ys = [y for y in xs]", "for x in ys:", "    pass"), "for", 2, "x"),
        case("list", cell("squares = [n ** 2 for n in range(10)]"), "list", 1, "n"),
        case("set", cell("import math", "r = {math.isqrt(n) for n in ns}"), "set", 2, "n"),
        case("dict", cell("lengths = {w: len(w) for w in words}"), "dict", 1, "w"),
        case("genexp-in-sum", cell("total = sum(cost(x) for x in xs)"), "generator", 1, "x"),
        case(
            "nested-comp-outermost",
            cell("grid = [", "    [i * j for j in range(3)]", "    for i in range(3)", "]"),
            *("list", 1, "i"),
        ),
        case("lambda-ignored", cell("f = lambda s: [c for c in s]", "ys = [*xs]"), "list", 2, "x"),
    ],
)
def test_chosen_loop(source, kind, line, target):
    result = plan(source)
    assert (result.body.kind, result.body.node.lineno, result.body.line) == (kind, line, line)
    assert loop_target(result.body.node) == target
    assert find_parallel_loop(ast.parse(source)).lineno == line
