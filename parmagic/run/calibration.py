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

from ..summary.report import RecordingCosts, RunReport

ITEMS = 1000
REPEATS = 3


@functools.cache
def recording_costs() -> RecordingCosts:
    """What recording costs here (measured in about 20 ms, once per session)."""
    plain, floor = _per_item("for i in range(N):\n    x = i\n", {})
    changing, _ = _per_item("for i in range(N):\n    x = i\n    out.append(i)\n", {"out"})
    return RecordingCosts(plain, max(0.0, changing - plain), floor)


def _per_item(source: str, receivers: set[str]) -> tuple[float, float]:
    """Seconds per item that recording and replaying add, and that running in place takes."""
    from ..analysis.cell import plan_cell
    from ..analysis.itemcode import build_in_place_code, build_item_code
    from ..worker.chunk import run_chunk, run_chunk_in_place
    from ..worker.kernel_state import HeldInterrupt
    from ..worker.task import Task
    from .dispatch import Applier

    plan = plan_cell(source, "<calibration>", "threads")
    items = list(range(ITEMS))
    ns: dict = {"out": []}
    code = build_item_code(plan.body, frozenset(receivers), "<calibration>")
    logging = Task(FunctionType(code, ns), plan.body.bound, True)
    in_place = Task(
        logging.function,
        plan.body.bound,
        True,
        in_place=build_in_place_code(plan.body, "<calibration>"),
        namespace=ns,
    )
    held = HeldInterrupt(hold=False)

    def record_and_replay() -> None:
        applier = Applier(ns, logging, RunReport("threads", 1), "<calibration>")
        for _ in applier.apply_chunk(run_chunk(logging, 0, 0, items), items):
            pass

    def run_in_place() -> None:
        run_chunk_in_place(in_place, 0, 0, items, held)

    with_recording = min(_seconds(record_and_replay) for _ in range(REPEATS))
    in_place_time = min(_seconds(run_in_place) for _ in range(REPEATS))
    return max(0.0, with_recording - in_place_time) / ITEMS, in_place_time / ITEMS


def _seconds(step) -> float:
    began = time.perf_counter()
    step()
    return time.perf_counter() - began
