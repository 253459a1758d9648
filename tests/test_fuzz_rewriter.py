"""Fuzzing the rewriter: generated loop cells end as plain Python would, or are refused.

A grammar (hypothesis strategies) writes small cells line by line: setup lines that create
kernel containers and scalars, then one top-level ``for`` loop (or, sometimes, one statement
holding a comprehension instead), sometimes a statement after it. Each cell runs once as plain
Python in a scratch namespace, then with ``%%parallel`` on every backend. The kernel must end
with exactly the serial names and printed lines, or the magic must refuse before anything in
the cell ran, with a message naming a line (or the documented no-loop / several-loops ones).
A refusal is only right for a cell that holds something the README lists as refused (``break``,
a carried read, a read before the item assigns the name, ``:=`` in the parallel comprehension,
two loops); the grammar records which of those it wrote.

``PARMAGIC_FUZZ_EXAMPLES=1500 pytest tests/test_fuzz_rewriter.py -o timeout=0`` runs a longer
session (past about 1000 examples a backend takes longer than the suite's 120 s per test).
"""

from __future__ import annotations

import contextlib
import io
import os
import types
from dataclasses import dataclass, field

import pytest
from conftest import BACKENDS
from hypothesis import HealthCheck, assume, example, given, note, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError

from parmagic import errors

EXAMPLES = int(os.environ.get("PARMAGIC_FUZZ_EXAMPLES", "25"))
FUZZ_BACKENDS = ("serial", "threads", "fork", "spawn")

# Kernel names the grammar may use, and the setup line that creates each one.
SETUP = {
    "results": "results = []",
    "d": "d = {}",
    "s": "s = set()",
    "total": "total = 0",
    "text": "text = ''",
    "c": "from collections import Counter; c = Counter()",
    "groups": "from collections import defaultdict; groups = defaultdict(list)",
    "base": "base = 7",
    "table": "table = [3, 1, 4, 1, 5, 9, 2, 6]",
    "f": "def f(x):\n    return 3 * x + 1",
    "y": "y = 0",  # a kernel value under the name the body uses as a local
    "i": "i = -1",  # the loop variable before the loop (kept when there are no items)
    # notebook functions the body calls: what they do counts as the body (README)
    "record": "log = []\ndef record(k):\n    log.append(k)",
    "random": "import random\nrandom.seed(3)",
    "show": "def show():\n    return i * 2",
    "frame": "import pandas as pd\nframe = pd.DataFrame({'v': [0.0] * 4})",
    # objects the loop hands its items, changed in place (replayed on the kernel's objects)
    "rows": "rows = [[k] for k in range(40)]",
    # ... through their methods, and kept by the loop: the kernel's own objects afterwards
    "recs": "class Rec:\n    def __init__(self, k):\n        self.k, self.hits, self.tags = k, [], {}\n"
    "    def bump(self, v):\n        self.hits.append(v)\n        self.k += v\n"
    "recs = [Rec(k) for k in range(40)]",
    "kept": "kept = []",
    "by_k": "by_k = {}",
    # what an item takes from, or changes through another name or a function (issue 17)
    "stack": "stack = list(range(40))",
    "heap": "import heapq\nheap = []",
    # hidden state (issue 28): a closure's cell, a class's attribute; read, or only guarded
    "inc": "def make():\n    n = 0\n    def inc(x):\n        nonlocal n\n        n += x\n"
    "        return n\n    return inc\ninc = make()",
    "K": "class K:\n    made, tally = 0, []\n    def __init__(self):\n        type(self).made += 1",
}
OPTIONAL_SETUP = ("results", "total", "base", "y", "i")  # sometimes present though unused


# (kernel name, what the README says of it, the body's line)
HIDDEN = [
    ("record", "unreplayable", "record(i)"),
    ("random", "random", "results.append(random.random())"),
    ("show", "loop name as global", "results.append(show())"),
    ("random", "random", "results.append(sorted([1, 2, 3], key=lambda _: random.random()))"),
    ("inc", "unreplayable", "results.append(inc(i))"),
    ("K", "unreplayable", "K()"),
    ("K", "guarded", "getattr(K, 'tally').append(i)"),  # only the guard sees it
]


@dataclass(frozen=True)
class Cell:
    source: str
    refusals: tuple[str, ...] = ()  # what in the cell the README lists as refused


@dataclass
class _Writer:
    """What the cell being written needs from its setup, and what it holds that is refused.

    ``assigned`` (a set, or a frozenset where it only gets read) holds the locals an item has
    surely bound at the point being written: ``y``, ``z``, the loop's ``w``, a comprehension's
    ``j``; only those are read, except where the grammar writes a refused read on purpose.
    """

    draw: st.DrawFn
    used: set[str] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)
    y_bound: bool = False  # the body binds y somewhere (so y is the item's local)
    y_augmented_unbound: bool = False  # `y += ...` before any `y = ...`: refused if y_bound

    def use(self, *names: str) -> None:
        self.used.update(names)

    def rare(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) >= 100 - percent  # shrinks towards "no"

    def bind_y(self, assigned: set[str]) -> None:
        self.y_bound = True
        assigned.add("y")

    def expr(self, assigned: frozenset[str], depth: int = 0) -> str:
        """A small arithmetic expression over i, kernel names, bound locals and constants."""
        choice = self.draw(st.integers(0, 10 if depth < 2 else 5))
        if choice == 0:
            return "i"
        if choice == 1:
            return str(self.draw(st.integers(0, 9)))
        if choice == 2:
            self.use("base")
            return "base"
        if choice == 3:
            return self.draw(st.sampled_from(sorted(assigned))) if assigned else "i"
        if choice == 4:
            self.use("table")
            return "table[i % 8]"
        if choice == 5:
            self.use("f")
            return "f(i)"
        left = self.expr(assigned, depth + 1)
        if choice == 10:
            return f"({left} / 4)" if self.rare(30) else f"-{left}"
        op = "+-*%/"[choice - 6]
        if op in "%/":
            return f"({left} {op}{op if op == '/' else ''} {self.draw(st.integers(1, 5))})"
        return f"({left} {op} {self.expr(assigned, depth + 1)})"

    def key(self, assigned: frozenset[str]) -> str:
        choice = self.draw(st.integers(0, 4))
        return (
            ["i", "i % 3", "str(i % 4)", "(i % 2, i % 3)"][choice]
            if choice < 4
            else (self.expr(assigned))
        )

    def cond(self, assigned: frozenset[str]) -> str:
        choice = self.draw(st.integers(0, 3))
        k = self.draw(st.integers(1, 9))
        if choice == 0:
            return f"i % {k} == 0"
        if choice == 1:
            return f"i > {k}"
        if choice == 2:
            return f"{self.expr(assigned)} > {k * 3}"
        return f"i in (1, 2, {k + 2})"

    def block(self, indent: str, depth: int, assigned: set[str], most: int) -> list[str]:
        lines: list[str] = []
        for _ in range(self.draw(st.integers(1, most))):
            lines += self.statement(indent, depth, assigned)
        return lines

    def statement(self, indent: str, depth: int, assigned: set[str]) -> list[str]:
        """One statement of the loop body."""
        if self.rare(4):
            return [indent + line for line in self.refused(assigned)]
        return [indent + line for line in self.plain(indent, depth, assigned)]

    def plain(self, indent: str, depth: int, assigned: set[str]) -> list[str]:  # noqa: C901
        a = frozenset(assigned)
        kind = self.draw(st.integers(0, 18 if depth < 2 else 16))
        if kind == 0:
            return [f"print({self.expr(a)})"]
        if kind == 1:
            self.use("results")
            return [f"results.append({self.expr(a)})"]
        if kind == 2:
            line = f"y = {self.expr(a)}"
            self.bind_y(assigned)
            return [line]
        if kind == 3:
            self.use("d")
            return [f"d[{self.key(a)}] = {self.expr(a)}"]
        if kind == 4:
            self.use("s")
            return [f"s.add({self.expr(a)})"]
        if kind == 5:
            self.use("total")
            return [f"total += {self.expr(a)}"]
        if kind == 6:
            self.use("text")
            return [f"text += str({self.expr(a)})"]
        if kind == 7:
            self.use("c")
            value = "1" if self.draw(st.booleans()) else self.expr(a)
            return [f"c[{self.key(a)}] += {value}"]
        if kind == 8:
            self.use("groups")
            return [f"groups[{self.key(a)}].append({self.expr(a)})"]
        if kind == 9:
            return [self.inner_comprehension(a)]
        if kind == 10:
            return [f"print(i, {self.expr(a)}, sep=':')"]
        if kind == 11:  # other mutators of kernel containers
            return [self.mutator(a)]
        if kind == 12:  # y += ...: a local's update once bound, else a reduction (or refused)
            if "y" not in assigned:
                self.y_augmented_unbound = True
                self.use("y")
            return [f"y += {self.expr(a)}"]
        if kind == 13:
            line = f"y, z = {self.expr(a)}, {self.expr(a)}"
            self.bind_y(assigned)
            assigned.add("z")
            return [line]
        if kind == 14:
            line = f"y: int = {self.expr(a)}"
            self.bind_y(assigned)
            return [line]
        if kind == 15 and self.rare(15):  # a pandas write, replayed in item order
            self.use("frame")
            return [f"frame.loc[i % 4, 'v'] = {self.expr(a)}"]
        if kind == 15:  # set a key and delete it again: `del` always finds it
            self.use("d")
            key = self.key(a)
            return [f"d[{key}] = {self.expr(a)}", f"del d[{key}]"]
        if kind == 16:
            self.use("total")
            return [f"total += sum(j * {self.expr(a | {'j'})} for j in range(3))"]
        if kind == 17:  # if COND: a nested block, sometimes an else
            if self.rare(20):  # `if (y := ...) > k:` binds y for the rest of the item
                self.bind_y(assigned)
                test = f"(y := {self.expr(a)}) > {self.draw(st.integers(0, 20))}"
            else:
                test = self.cond(a)
            lines = [f"if {test}:"]
            then = set(assigned)
            lines += self.block("    ", depth + 1, then, 2)
            if self.rare(25):
                orelse = set(assigned)
                lines += ["else:", *self.block("    ", depth + 1, orelse, 2)]
                assigned |= then & orelse  # bound on both branches: bound after the `if`
            return lines
        lines = [f"if {self.cond(a)}:"]  # continue inside an if
        if self.draw(st.booleans()):
            lines += self.statement("    ", depth + 1, set(assigned))
        return [*lines, "    continue"]

    def mutator(self, a: frozenset[str]) -> str:
        choice = self.draw(st.integers(0, 6))
        if choice == 0:
            self.use("results")
            return f"results.extend([{self.expr(a)}, {self.expr(a)}])"
        if choice == 1:
            self.use("results")
            return f"results.insert(0, {self.expr(a)})"
        if choice == 2:
            self.use("s")
            return f"s.discard({self.expr(a)})"
        if choice == 3:
            self.use("d")
            return f"d.pop({self.key(a)}, None)"
        if choice == 4:
            self.use("d")
            return f"d.setdefault({self.key(a)}, {self.expr(a)})"
        if choice == 5:
            self.use("c")
            return f"c.update([{self.key(a)}])"
        self.use("d")
        return f"d.update({{{self.key(a)}: {self.expr(a)}}})"

    def item_object(self) -> list[str]:
        """What a loop over kernel objects does with its item ``rec``: calls its methods,
        changes what it holds, keeps it (identity counts: see same_value's anchors)."""
        lines = []
        for _ in range(self.draw(st.integers(1, 3))):
            choice = self.draw(st.integers(0, 4))
            if choice == 0:
                lines.append(f"rec.bump({self.expr(frozenset())})")
            elif choice == 1:
                self.use("kept")
                lines.append("kept.append(rec)")
            elif choice == 2:
                self.use("by_k")
                lines.append(f"by_k[{self.key(frozenset())}] = rec")
            elif choice == 3:
                self.use("kept")
                lines.append(f"kept.append((rec, {self.expr(frozenset())}))")
            else:
                lines.append(f"rec.tags[i % 3] = {self.expr(frozenset())}")
        return lines

    def inner_comprehension(self, a: frozenset[str]) -> str:
        """A comprehension inside the body: its variables are its own (not the item's)."""
        self.use("results")
        choice = self.draw(st.integers(0, 4))
        if choice == 0:
            return "results.append([j * i for j in range(3)])"
        if choice == 1:
            return f"results.append([j * {self.expr(a | {'j'})} for j in range(3)])"
        if choice == 2:
            return f"results.append([j for j in range(3) if j != {self.expr(a)} % 3])"
        if choice == 3:  # its first iterable is read by the item itself
            return f"results.append([j for j in range(int({self.expr(a)}) % 4)])"
        # a variable named like a kernel name, a reduction or the item's local: still its own
        name = self.draw(st.sampled_from(["s", "d", "total", "text", "y", "c", "results"]))
        return f"results.append([{name} * 2 for {name} in range(2)])"

    def refused(self, assigned: set[str]) -> list[str]:
        """Something the README lists as refused: break, a carried read, y before it is bound."""
        choice = self.draw(st.integers(0, 8))
        if choice == 0:
            self.refusals.append("break")
            return [f"if {self.cond(frozenset(assigned))}:", "    break"]
        if choice in (5, 6) and "y" not in assigned:
            self.refusals.append("read before assignment")
            self.use("y")
            read = (
                "print('y was', y)" if choice == 5 else "results.append([y + j for j in range(2)])"
            )
            self.use("results")
            self.bind_y(assigned)
            return [read, f"y = {self.expr(frozenset(assigned))}"]
        self.refusals.append("carried read")
        if choice == 1:
            self.use("total", "results")
            return ["total += i", "if total > 5:", "    results.append(i)"]
        if choice == 2:
            self.use("s")
            return ["if i % 5 not in s:", "    s.add(i % 5)"]
        if choice == 3:
            self.use("d")
            return ["d[i] = len(d)"]
        if choice == 1 and self.rare(50):  # changes made through another name or a function
            self.refusals[-1] = "unreplayable"
            if self.draw(st.booleans()):
                self.use("groups")
                return ["bucket = groups[i % 3]", "bucket.append(i)"]
            self.use("heap")
            return ["heapq.heappush(heap, i)"]
        if choice == 2 and self.rare(50):  # an item that takes what the one before left
            self.use("stack", "results")
            return ["results.append(stack.pop())"]
        if choice == 4 and self.rare(60):  # what notebook functions and modules hide
            self.refusals.pop()  # not a carried read: one of these
            hidden = self.draw(st.integers(0, len(HIDDEN) - 1))
            name, refusal, line = HIDDEN[hidden]
            self.use(name, "results")
            self.refusals.append(refusal)
            return [line]
        if choice == 7:  # the read is in a comprehension's first iterable
            self.use("total", "results")
            return ["total += i", "results.append([j for j in range(total % 3)])"]
        if choice == 8:  # the read is inside a comprehension
            self.use("s", "results")
            return ["s.add(i % 3)", "results.append([j for j in range(3) if j in s])"]
        self.use("results")
        return ["results.append(len(results))"]

    def comprehension(self, n: str) -> str:
        """A statement whose comprehension is the parallel loop."""
        none: frozenset[str] = frozenset()
        choice = self.draw(st.integers(0, 12))
        if self.rare(4):
            self.refusals.append("`:=` in the parallel comprehension")
            self.use("results")
            return f"results = [(z := {self.expr(none)}) for i in {n}]"
        if choice == 0:
            self.use("results")
            return f"results = [{self.expr(none)} for i in {n}]"
        if choice == 1:
            self.use("results")
            return f"results = [{self.expr(none)} for i in {n} if {self.cond(none)}]"
        if choice == 2:
            self.use("results")
            return f"results = [j * {self.expr(frozenset({'j'}))} for i in {n} for j in range(3)]"
        if choice == 3:
            self.use("total")
            return f"total = sum({self.expr(none)} for i in {n})"
        if choice == 4:
            self.use("text")
            return f"text = ''.join(str({self.expr(none)}) for i in {n})"
        if choice == 5:
            self.use("d")
            return f"d = {{{self.key(none)}: {self.expr(none)} for i in {n}}}"
        if choice == 6:
            self.use("s")
            return f"s = {{{self.expr(none)} for i in {n}}}"
        if choice == 7:
            self.use("results")
            return f"results.extend({self.expr(none)} for i in {n})"
        if choice == 8:  # a consumer that stops early: serial prints only up to the hit
            shown = "print(i) or "
            return f"found = any({shown}{self.cond(none)} for i in {n})"
        if choice == 9:
            return f"found = next((i for i in {n} if {self.cond(none)}), None)"
        if choice == 10:
            return f"found = max(({self.expr(none)} for i in {n}), default=None)"
        if choice == 11:  # taken from twice, then dropped: left in the kernel, it would be an
            # itertools.chain under %%parallel, not a generator (reported, not tested here)
            value = "i"
            if self.draw(st.booleans()):
                value = f"print(i) or {self.expr(none)}"
            return (
                f"gen = ({value} for i in {n})\nfound = [next(gen, None), next(gen, None)]\ndel gen"
            )
        return f"print([{self.expr(none)} for i in {n}])"

    def after(self, comprehension: bool) -> list[str]:
        choice = self.draw(st.integers(0, 5))
        if choice == 0:
            self.use("results")
            return ["after = len(results)"]
        if choice == 1:
            self.use("total")
            return ["print('after', total)"]
        if choice == 2:
            return ["after = i"]  # needs `i = -1` in the setup when there are no items
        if choice == 3:  # a second comprehension: ambiguous only without a `for` loop
            if comprehension:
                self.refusals.append("comprehensions on several lines")
            return ["after = [k * 2 for k in range(3)]"]
        if choice == 4:  # a second `for` loop; after a comprehension, it is the parallel loop
            if comprehension:  # and the comprehension runs in the kernel: nothing refused
                self.refusals.clear()
            else:
                self.refusals.append("two top-level for loops")
            self.use("results")
            return ["for k in range(2):", "    results.append(k)"]
        self.use("d")
        return ["after = sorted(d.items(), key=repr)"]


@st.composite
def cells(draw) -> Cell:
    w = _Writer(draw)
    n = f"range({draw(st.integers(0, 30))})"
    if w.rare(10):
        n = f"reversed({n})"
    comprehension = w.rare(20)
    if comprehension:
        loop = w.comprehension(n).split("\n")
    else:
        header, assigned = f"for i in {n}:", set()
        changes_items, object_items = w.rare(10), False
        if changes_items:  # each item changes its own object, a row of a kernel list
            header = f"for i, row in zip({n}, rows):"
            w.use("rows")
        elif w.rare(15):  # each item is a kernel object: its methods, kept references
            header, object_items = f"for i, rec in zip({n}, recs):", True
            w.use("recs")
        elif w.rare(10):
            header, assigned = f"for i, w in enumerate({n}):", {"w"}
        loop = [header, *w.block("    ", 0, assigned, 5)]
        if changes_items:
            loop.insert(1, f"    row.append({w.expr(frozenset())})")
        if object_items:
            loop[1:1] = ["    " + line for line in w.item_object()]
        if w.rare(10):
            loop += ["else:", "    done = True"]
        if w.y_augmented_unbound and w.y_bound:
            w.refusals.append("read before assignment")  # `y += ...` before `y = ...`
    if w.rare(5):  # top level includes the inside of a top-level `try`
        loop = ["try:", *["    " + line for line in loop], "except ZeroDivisionError:", "    pass"]
    after = w.after(comprehension) if w.rare(30) else []
    names = w.used | {name for name in OPTIONAL_SETUP if w.rare(20)}
    setup = [SETUP[name] for name in SETUP if name in names]
    return Cell("\n".join([*setup, *loop, *after]) + "\n", tuple(w.refusals))


def _is_state(name: str, value: object) -> bool:
    dunder = name.startswith("__") and name.endswith("__")
    return not dunder and not isinstance(value, types.ModuleType)


def serial_run(source: str) -> tuple[dict, str] | None:
    """The names and printed text the cell leaves as plain Python (None if it raises)."""
    namespace: dict = {}
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(source, "<serial cell>", "exec"), namespace)
    except Exception:
        return None
    return {k: v for k, v in namespace.items() if _is_state(k, v)}, printed.getvalue()


def same_value(a: object, b: object, anchors: tuple[dict, dict] = ({}, {})) -> bool:
    """Equal values; ``anchors`` (id -> place, in the serial run's objects and in the
    kernel's): objects that must be the very object at that place, not an equal one."""
    mine, theirs = anchors
    if id(a) in mine or id(b) in theirs:
        return mine.get(id(a), "a") == theirs.get(id(b), "b")
    if isinstance(a, type) and isinstance(b, type):
        return a.__qualname__ == b.__qualname__  # a notebook class: one in each namespace
    if type(a) is not type(b):
        same_class = type(a).__qualname__ == type(b).__qualname__ and hasattr(a, "__dict__")
        return same_class and same_value(vars(a), vars(b), anchors)
    if isinstance(a, types.FunctionType):
        return a.__name__ == b.__name__  # a notebook function: a new object in each namespace
    if isinstance(a, float):
        return repr(a) == repr(b)  # bit for bit
    if hasattr(a, "equals"):  # a pandas object
        return a.equals(b)
    if isinstance(a, dict):
        if getattr(a, "default_factory", None) is not getattr(b, "default_factory", None):
            return False
        return list(a) == list(b) and all(same_value(a[k], b[k], anchors) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(
            same_value(x, y, anchors) for x, y in zip(a, b, strict=True)
        )
    if hasattr(a, "__dict__") and type(a).__eq__ is object.__eq__:
        return same_value(vars(a), vars(b), anchors)
    return a == b


def anchors_of(expected: dict, ns: dict) -> tuple[dict, dict]:
    """The kernel objects a loop over ``recs`` may keep: each must be the kernel's own."""
    if "recs" not in expected:
        return {}, {}
    places = [{id(r): k for k, r in enumerate(names["recs"])} for names in (expected, ns)]
    return places[0], places[1]


REFUSAL_SENTENCES = tuple(
    text.split("{")[0]
    for text in (errors.NO_LOOP, errors.SEVERAL_LOOPS, errors.SEVERAL_COMPREHENSIONS)
)


def check_cell(ip, run, options: str, cell: Cell) -> None:
    serial = serial_run(cell.source)
    assume(serial is not None)
    expected, printed = serial
    note(f"cell:\n{cell.source}expected refusal: {cell.refusals or 'none'}")

    ip.reset(new_session=False)
    kernel_names = {k for k in ip.user_ns if not k.startswith("_")}
    outcome = run(f"%%parallel {options} -q\n{cell.source}")
    ns = ip.user_ns
    where = f"cell:\n{cell.source}\nout:\n{outcome.out}\nerr:\n{outcome.err}"

    if isinstance(outcome.error, UsageError):
        assert options != "-b serial", f"serial refused a cell plain Python runs\n{where}"
        message = str(outcome.error)
        assert "line " in message or message.startswith(REFUSAL_SENTENCES), message
        ran = sorted(k for k in expected if k in ns and k not in kernel_names)
        if ran:  # a verdict that needed what a statement made (`inc = make()`): it says so
            assert "so they ran: line " in message, f"refused after {ran} ran, unsaid\n{where}"
        assert outcome.out == "", f"refused, but something printed\n{where}"
        assert cell.refusals, f"refused a loop the README does not refuse: {message}\n{where}"
        return

    if isinstance(outcome.error, errors.HiddenChange):  # stopped before the chunk that did it
        assert "guarded" in cell.refusals, f"the guard stopped {outcome.error}\n{where}"
        assert ns["K"].tally == [], f"the class's state is not as before the run\n{where}"
        done = ns.get("results", [])
        assert done == expected.get("results", [])[: len(done)], f"not a prefix\n{where}"
        return
    assert outcome.error is None, f"{outcome.error!r} where plain Python ran\n{where}"
    # state carried from item to item may run as an ordered tail: then it must end as plain
    # Python, which the checks below hold it to
    if options != "-b serial":  # serial runs every cell plain Python runs, as written
        assert not set(cell.refusals) - ORDERED_TAIL_MAY_RUN, (
            f"ran a cell holding what the README refuses: {cell.refusals}\n{where}"
        )
    anchors = anchors_of(expected, ns)
    wrong = {
        name: (value, ns.get(name, "<unset>"))
        for name, value in expected.items()
        if name not in ns
        or not same_value(value, ns[name], ({}, {}) if name == "recs" else anchors)
    }
    assert not wrong, f"name: (serial, parallel) {wrong}\n{where}"
    extra = {k for k in ns if not k.startswith("_") and _is_state(k, ns[k])}
    extra -= kernel_names | set(expected)
    assert not extra, f"names the serial run did not leave: {sorted(extra)}\n{where}"
    assert outcome.out == printed, f"printed {outcome.out!r}, serial {printed!r}\n{where}"
    assert outcome.err == "", f"stderr (warnings?) where plain Python wrote nothing\n{where}"


ORDERED_TAIL_MAY_RUN = {"read before assignment", "carried read"}


# Cells worth running every time, whatever the grammar draws (each passes on every backend).
EDGE_CASES = [
    # no items: the loop variable keeps its value from before the loop
    Cell("i = -1\nresults = []\nfor i in range(0):\n    results.append(i)\nafter = i\n"),
    # a name bound by some items only: the last item that bound it wins
    Cell("y = 0\nfor i in range(7):\n    if i % 3 == 1:\n        y = i * 2\n    print(i)\n"),
    # ... and read after that `if`, it may come from an earlier item
    Cell(
        "y = 0\nfor i in range(7):\n    if i % 3 == 1:\n        y = i * 2\n    print(y)\n",
        ("read before assignment",),
    ),
    # `y += ...` with no `y = ...` in the body is a float reduction, bit for bit
    Cell("y = 0\nfor i in range(6):\n    y += i / 4\n"),
    Cell("y = 0\nfor i in range(6):\n    y += i\n    y = i\n", ("read before assignment",)),
    # a comprehension variable named like a changed kernel container is the comprehension's
    Cell(
        "s = set()\nr = []\nfor i in range(4):\n    s.add(i)\n    r.append([s for s in range(2)])\n"
    ),
    # a carried read in a comprehension's first iterable
    Cell(
        "total = 0\nr = []\nfor i in range(5):\n    total += i\n    r.append([j for j in range(total)])\n",
        ("carried read",),
    ),
    # what notebook functions and modules of the same cell hide, and a pandas write
    Cell(
        SETUP["record"] + "\nresults = []\nfor i in range(5):\n    record(i)\n",
        ("unreplayable",),
    ),
    Cell(
        SETUP["random"]
        + "\nresults = []\nfor i in range(5):\n    results.append(random.random())\n",
        ("random",),
    ),
    Cell(
        SETUP["show"] + "\nresults = []\nfor i in range(5):\n    results.append(show())\n",
        ("loop name as global",),
    ),
    Cell(SETUP["frame"] + "\nfor i in range(9):\n    frame.loc[i % 4, 'v'] = i * 1.5\n"),
    # hidden state: read in a closure and a constructor; seen only by the guard
    Cell(
        SETUP["inc"] + "\nresults = []\nfor i in range(5):\n    results.append(inc(i))\n",
        ("unreplayable",),
    ),
    Cell(SETUP["K"] + "\nfor i in range(6):\n    K()\n", ("unreplayable",)),
    Cell(SETUP["K"] + "\nfor i in range(6):\n    getattr(K, 'tally').append(i)\n", ("guarded",)),
    # a running maximum: an ordered tail
    Cell(
        "best = -1\nfor i in range(9):\n    y = (i * 7) % 5\n    if y > best:\n        best = y\n",
        ("read before assignment",),
    ),
    # a generator expression taken from twice, then dropped
    Cell("gen = (i * i for i in range(30))\nfound = [next(gen), next(gen)]\ndel gen\n"),
    # kernel objects: a method, a nested write, kept references (identity checked)
    Cell(
        "\n".join([SETUP["recs"], SETUP["kept"], SETUP["by_k"]])
        + "\nfor i, rec in zip(range(12), recs):\n    rec.bump(i)\n    rec.tags[i % 3] = i\n"
        "    kept.append((rec, i))\n    by_k[i % 4] = rec\n"
    ),
]


def _with_edge_cases(test):
    for cell in reversed(EDGE_CASES):
        test = example(cell=cell)(test)
    return test


@pytest.mark.parametrize("name", FUZZ_BACKENDS)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cell=cells())
@_with_edge_cases
def test_generated_cells_end_as_plain_python_or_are_refused(ip, run, name, cell):
    check_cell(ip, run, BACKENDS[name], cell)
