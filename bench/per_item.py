"""Where an item's microseconds go: each step of the per-item path, timed on its own.

The loop is ``total += i; out.append(i)`` (an item that only adds and appends, so that what
is measured is parmagic's own work). Each step runs a chunk of 2,000 items many times and
reports microseconds per item; the plain loop is the floor. Prints a Markdown table.

Usage: python bench/per_item.py
"""

from __future__ import annotations

import pickle
import statistics
import time
from types import FunctionType

from parmagic.analysis.cell import plan_cell
from parmagic.analysis.itemcode import build_in_place_code, build_item_code
from parmagic.run.dispatch import Applier
from parmagic.summary.report import RunReport
from parmagic.worker.chunk import run_chunk, run_chunk_in_place
from parmagic.worker.kernel_state import HeldInterrupt
from parmagic.worker.shipping import dump_result
from parmagic.worker.task import Task

SOURCE = "total = 0\nout = []\nfor i in range(N):\n    total += i\n    out.append(i)\n"
CHUNK = 2000
ROUNDS = 200


def per_item(step) -> float:
    """Microseconds per item: the median over rounds of one chunk's time."""
    times = []
    for _ in range(ROUNDS):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return statistics.median(times) / CHUNK * 1e6


def main() -> None:
    plan = plan_cell(SOURCE, "<cell>", "processes")
    items = list(range(CHUNK))
    ns: dict = {"total": 0, "out": []}

    def plain() -> None:
        exec(compile("for i in items:\n    total += i\n    out.append(i)", "<p>", "exec"), ns)

    ns["items"] = items
    code = build_item_code(plan.body, frozenset({"out"}), "<cell>")
    function = FunctionType(code, ns)
    logging = Task(function, plan.body.bound, True, merge_names=True)
    whole = build_item_code(plan.body, frozenset({"out"}), "<cell>", whole_chunk=True)
    in_one_call = Task(
        FunctionType(whole, ns), plan.body.bound, True, merge_names=True, whole_chunks=True
    )
    in_place = Task(
        function,
        plan.body.bound,
        True,
        in_place=build_in_place_code(plan.body, "<cell>"),
        namespace=ns,
    )
    held = HeldInterrupt(hold=False)
    chunk = run_chunk(logging, 0, 0, items)
    data = dump_result(chunk)

    def applied() -> None:
        applier = Applier(ns, logging, RunReport("processes", 2), "<cell>")
        for _ in applier.apply_chunk(chunk, items):
            pass

    steps = [
        ("the plain loop (the floor)", plain),
        ("serial: the loop in place, each item timed", lambda: run_chunk_in_place(in_place, 0, 0, items, held)),
        ("worker: item function with recording, timings, output sink (a call per item: --on-error continue, --timeout, asyncio)", lambda: run_chunk(logging, 0, 0, items)),
        ("worker: the same, the chunk in one call (the default on worker processes and threads)", lambda: run_chunk(in_one_call, 0, 0, items)),
        ("worker: pickling the chunk's result", lambda: dump_result(chunk)),
        ("kernel: unpickling the chunk's result", lambda: pickle.loads(data)),
        ("kernel: replaying changes, binding names (Applier)", applied),
    ]  # fmt: skip
    print(f"Per-item cost of `total += i; out.append(i)`, chunks of {CHUNK} items:\n")
    print("| step | µs per item |\n|---|---|")
    for label, step in steps:
        print(f"| {label} | {per_item(step):.2f} |")
    print(f"\nPickled result: {len(data) / CHUNK:.0f} bytes per item.")


if __name__ == "__main__":
    main()
