"""``--backend auto``: pick a backend from the body and from a short probe of the first items.

The probe runs the first items in the kernel, one after another, as a serial run would; they
count as done (no item runs twice). Their CPU time against their wall time says whether the
loop computes (processes) or waits (threads); their time per item, with the loop's length,
says whether starting workers would cost more than the whole loop (serial).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from .report import CPU_BOUND_SHARE

PROBE_SECONDS = 0.02  # stop probing once this much time went into probe items...
PROBE_ITEMS = 8  # ...or after this many items
SMALL_LOOP_SECONDS = 0.05  # a loop shorter than this is not worth any worker
SMALL_FOR_PROCESSES = 0.2  # below this, process start-up and shipping eat the gain


class Probe:
    """Hands out the loop's first items, until the probe has seen enough of them."""

    def __init__(self) -> None:
        self.count = 0
        self.exhausted = False

    def items(self, iterator: Iterator) -> Iterator:
        began = time.monotonic()
        for item in iterator:
            yield item
            self.count += 1
            if self.count >= PROBE_ITEMS or time.monotonic() - began >= PROBE_SECONDS:
                return
        self.exhausted = True


def choose(
    probe: Probe, busy: float, share: float, remaining: int | None, cores: int, refusal: str | None
) -> tuple[str, str]:
    """(backend, the reason in words) from what the probe items cost.

    ``share``: the probe items' CPU share (``RunReport.cpu_share``: time queued for a core on
    a busy machine left out); ``remaining``: items left (None: unknown, taken as many);
    ``refusal``: why the body cannot go to a process, if it cannot.
    """
    if probe.exhausted:
        return "serial", "the probe ran every item"
    per_item = busy / probe.count if probe.count else 0.0
    estimate = per_item * remaining if remaining else float("inf")
    computing = f"items compute (CPU {share:.0%} of their time)"
    if estimate < SMALL_LOOP_SECONDS:
        return "serial", f"the loop takes about {estimate * 1000:.0f} ms, less than workers cost"
    if share < CPU_BOUND_SHARE:
        return "threads", f"items mostly wait (CPU {share:.0%} of their time)"
    if cores < 2:
        return "serial", f"{computing} and only one core is usable"
    if refusal:
        return "threads", f"{computing}, but cannot go to processes: {refusal}"
    if estimate < SMALL_FOR_PROCESSES:
        return "serial", f"{computing}, but the loop takes about {estimate:.2f} s: too short"
    return "processes", f"{computing} and {cores} cores are usable"
