"""--timeout means the same on every backend: the item over its limit fails with TimeoutError
and keeps what it did before the limit (its recorded changes and its output so far), as an
item that raised at that moment would; what it does after the limit is never kept.

Items outlast their limit by far (1 s against 30 s); on threads and the event loop, which
nothing can stop, they nap on ``probes.WAKE``, which each test sets as it ends.
"""

from __future__ import annotations

import re

import probes
import pytest

CELL = "for i in range(6):\n    out.append(i)\n    print('p', i)\n    if i == 3:\n        {wait}\n"


@pytest.fixture
def woken():
    """Wakes every item still napping when the test ends (an abandoned thread, a blocked loop)."""
    probes.WAKE.clear()
    yield
    probes.WAKE.set()


def setup(run) -> None:
    run("import asyncio, time\nfrom probes import nap, nap_async\nout = []\n")


def test_a_timed_out_item_keeps_what_it_did_before_its_limit(ip, run, backend, woken):
    setup(run)
    in_process = any(
        f"-b {name}" in backend for name in ("serial", "threads", "futures -w", "asyncio")
    )
    wait = "nap(30)" if in_process else "time.sleep(30)"
    outcome = run(f"%%parallel -q {backend} --timeout 1\n" + CELL.format(wait=wait))
    assert isinstance(outcome.error, TimeoutError), outcome.out + outcome.err
    assert "longer than the 1 s allowed by --timeout" in str(outcome.error)
    assert ip.user_ns["out"] == [0, 1, 2, 3]
    assert re.findall(r"^p \d$", outcome.out, re.M) == ["p 0", "p 1", "p 2", "p 3"]


def test_a_coroutine_that_swallows_its_cancellation_still_times_out(ip, run, woken):
    setup(run)
    outcome = run(
        "%%parallel -q -b asyncio --timeout 1\nfor i in range(3):\n    out.append(i)\n"
        "    if i == 1:\n        print('before')\n        try:\n"
        "            await asyncio.sleep(30)\n        except asyncio.CancelledError:\n"
        "            out.append('cancelled')\n            print('after')\n"
    )
    assert isinstance(outcome.error, TimeoutError), outcome.out + outcome.err
    assert ip.user_ns["out"] == [0, 1]  # the except block ran after the limit: not kept
    assert "before" in outcome.out and "after" not in outcome.out


def test_a_coroutine_that_blocks_the_loop_still_times_out(ip, run, woken):
    setup(run)
    outcome = run(
        "%%parallel -q -b asyncio --timeout 1\nfor i in range(3):\n    out.append(i)\n"
        "    if i == 1:\n        await nap_async(30)\n        out.append('late')\n"
    )
    assert isinstance(outcome.error, TimeoutError), outcome.out + outcome.err
    assert ip.user_ns["out"] == [0, 1]


def test_a_timed_out_item_keeps_its_changes_to_its_own_item(ip, run, backend, woken):
    """In worker processes the items are copies, compared after each item: the item over its
    limit is compared at its limit (on dask, where no alarm stops it, as it stands then)."""
    setup(run)
    run("records = [{'i': i} for i in range(6)]")
    in_process = any(
        f"-b {name}" in backend for name in ("serial", "threads", "futures -w", "asyncio")
    )
    wait = "nap(30)" if in_process else "time.sleep(30)"
    cell = "for r in records:\n    r['seen'] = True\n    if r['i'] == 3:\n        {wait}\n"
    outcome = run(f"%%parallel -q {backend} --timeout 1\n" + cell.format(wait=wait))
    assert isinstance(outcome.error, TimeoutError), outcome.out + outcome.err
    seen = [r["i"] for r in ip.user_ns["records"] if r.get("seen")]
    if in_process and "serial" not in backend:  # items that ran ahead on the kernel's own
        seen = seen[:4]  # objects keep what they did (README, "Ending early")
    assert seen == [0, 1, 2, 3]
