"""The ordered tail: statements at the end of the body that read state carried from
item to item run in the kernel, in item order, as each item's results are applied; the rest
of the body runs in parallel. The kernel ends as after the plain loop, on every backend."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest

SETUP = (
    "import time\n"
    "def collatz_steps(n):\n    s = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        s += 1\n    return s\n"
    "def clean(line):\n    time.sleep(0.001 * (len(line) % 3))\n    return line.lower().replace(',', '')\n"
    "def simulate(k):\n    return k * 0.5 - 1\n"
    "lines = ['A b, c', 'b C d', 'd, e a', 'x'] * 10\nsizes = list(range(30))\n"
)
CELLS = {
    "running-maximum": "longest = number = 0\nfor n in range(1, 400):\n    steps = collatz_steps(n)\n    if steps > longest:\n        longest, number = steps, n\n",
    "word-counts": "counts = {}\nfor line in lines:\n    words = clean(line).split()\n    for w in words:\n        counts[w] = counts.get(w, 0) + 1\n",
    "running-position": "position = 0\npositions = []\nfor step_size in sizes:\n    step = simulate(step_size)\n    position += step\n    positions.append(position)\n    if step_size % 7 == 0:\n        print(step_size, position)\n",
}
NAMES = ["longest", "number", "steps", "counts", "words", "position", "positions", "step"]


def plain_run(ip, cell: str) -> tuple[dict, str]:
    namespace = {k: v for k, v in ip.user_ns.items() if not k.startswith("_")}
    printed = io.StringIO()
    with redirect_stdout(printed):
        exec(cell, namespace)
    return namespace, printed.getvalue()


@pytest.mark.parametrize("cell", list(CELLS.values()), ids=list(CELLS))
def test_the_kernel_ends_as_after_the_plain_loop(ip, run, backend, cell):
    run(SETUP)
    plain, printed = plain_run(ip, cell)
    outcome = run(f"%%parallel {backend} -q\n{cell}")
    assert outcome.error is None, outcome.out + outcome.err
    for name in NAMES:
        if name in plain:
            assert ip.user_ns[name] == plain[name], name
    assert outcome.out == printed  # the tail's prints, in item order


def test_an_error_in_the_tail_stops_at_its_item_with_the_prefix_applied(ip, run, backend):
    cell = "total = 0\nseen = []\nfor i in range(12):\n    sq = i * i\n    seen.append(sq)\n    total = total + 10 // (sq - 49)\n"
    outcome = run(f"%%parallel {backend} -q\n{cell}")
    assert isinstance(outcome.error, ZeroDivisionError)
    assert "raised by item 7" in "\n".join(outcome.error._render_traceback_())
    assert ip.user_ns["seen"] == [i * i for i in range(8)]  # the failing item's own append too
    assert ip.user_ns["total"] == sum(10 // (i * i - 49) for i in range(7))
