"""What recording costs on this machine: the part of an item's time a serial run never pays.

Every backend but serial records what each item does and replays it in the kernel; serial
runs the loop itself. A parallel run's items are timed with their recording, so a serial
estimate made from their times must leave it out, or the speedup flatters exactly the loops
whose items are cheapest. Measured once per session, on two small loops (one with a change
to replay, one without), both ways: recorded and replayed, and in place.
"""

from __future__ import annotations

import functools
import time
from types import FunctionType

ITEMS = 1000
REPEATS = 3


@functools.cache
def recording_costs() -> tuple[float, float]:
    """Seconds that recording adds per item, and per recorded change (about 20 ms, once)."""
    plain = _extra_per_item("for i in range(N):\n    x = i\n", {})
    changing = _extra_per_item("for i in range(N):\n    x = i\n    out.append(i)\n", {"out"})
    return plain, max(0.0, changing - plain)


def _extra_per_item(source: str, receivers: set[str]) -> float:
    from .cell import plan_cell
    from .itemcode import build_in_place_code, build_item_code
    from .kernel_state import HeldInterrupt
    from .report import RunReport
    from .runner import Applier
    from .worker import Task, run_chunk, run_chunk_in_place

    plan = plan_cell(source, "<calibration>", "threads")
    items = list(range(ITEMS))
    ns: dict = {"out": []}
    code = build_item_code(plan.body, frozenset(receivers), "<calibration>")
    recorded = Task(FunctionType(code, ns), plan.body.bound, True)
    in_place = Task(
        recorded.function,
        plan.body.bound,
        True,
        in_place=build_in_place_code(plan.body, "<calibration>"),
        namespace=ns,
    )
    held = HeldInterrupt(hold=False)

    def record_and_replay() -> None:
        applier = Applier(ns, recorded, RunReport("threads", 1), "<calibration>")
        for _ in applier.apply_chunk(run_chunk(recorded, 0, 0, items), items):
            pass

    def run_in_place() -> None:
        run_chunk_in_place(in_place, 0, 0, items, held)

    extra = min(_seconds(record_and_replay) - _seconds(run_in_place) for _ in range(REPEATS))
    return max(0.0, extra / ITEMS)


def _seconds(step) -> float:
    began = time.perf_counter()
    step()
    return time.perf_counter() - began
