"""How items are handed out (chunk sizes) and what travels back per chunk (issue 18)."""

from __future__ import annotations

import ast
from types import FunctionType

import pytest

import parmagic
from parmagic.analysis.cell import plan_cell
from parmagic.analysis.itemcode import build_item_code
from parmagic.backends.base import Backend
from parmagic.backends.other_processes import PickledItems
from parmagic.run import session
from parmagic.run.dispatch import ChunkSizer, Pace
from parmagic.worker.chunk import run_chunk
from parmagic.worker.task import ChunkResult, Task


def test_every_thread_starts_on_the_first_items_at_once(ip, run):
    """Slow items are handed out one per chunk until they are timed: with 4 threads, the
    first 4 items all start before any of them ends (none sits queued in a bigger chunk)."""
    outcome = run(
        "%%parallel -b threads -w 4\nimport time\nspans = []\nfor i in range(8):\n"
        "    began = time.monotonic()\n    time.sleep(0.4)\n"
        "    spans.append((i, began, time.monotonic()))\n"
    )
    assert outcome.error is None, outcome.out + outcome.err
    first = sorted(ip.user_ns["spans"])[:4]
    assert max(began for _, began, _ in first) < min(ended for _, _, ended in first)


def _timed(count: int, seconds: float) -> ChunkResult:
    result = ChunkResult(0, 0, "test")
    for k in range(count):
        result.add(k * seconds, (k + 1) * seconds, 0.0, [], None, None)
    return result


def test_chunks_hold_one_item_until_items_are_timed_then_follow_their_time():
    sizer = ChunkSizer(None, workers=2, length=100_000)
    assert [sizer.next_size() for _ in range(6)] == [1] * 6
    ms = 1 / 1024  # about a millisecond, exact in binary: 20 ms hold 20.48 such items
    sizer.observe(_timed(1, ms))  # 20 ms chunks, but at most 8x the largest chunk timed
    assert sizer.next_size() == ChunkSizer.RAMP
    sizer.observe(_timed(8, ms))
    assert sizer.next_size() == 20
    sizer.observe(_timed(20, 2.0))  # items got slow: one per chunk again
    assert sizer.next_size() == 1


def test_a_loop_run_before_starts_from_its_pace():
    """The latest run of a cell measured its items: the next starts with chunks of about
    20 ms of them at once (at most 1/8 of the loop per chunk, the guided share), not one."""
    ms = 1 / 1024
    pace = Pace(ms)
    sizer = ChunkSizer(None, workers=2, length=100_000, pace=pace)
    assert sizer.next_size() == 20
    fresh = ChunkSizer(None, workers=2, length=100_000, pace=Pace())
    assert fresh.next_size() == 1
    tiny = ChunkSizer(None, workers=2, length=64, pace=Pace(1e-7))
    assert tiny.next_size() >= 64  # all of it: under 2 ms of work balances nothing


def test_chunks_of_worker_processes_hold_longer_work():
    """Each chunk in another process costs messages, pickling and the guard's look: their
    chunks are four times as long (Backend.chunk_seconds), and the guided end shrinks them
    half as fast (a quarter of the items left for two workers, not an eighth)."""
    ms = 1 / 1024
    shape = {"seconds": PickledItems.chunk_seconds, "shares": PickledItems.chunk_shares}
    assert shape == {"seconds": 4 * Backend.chunk_seconds, "shares": Backend.chunk_shares // 2}
    assert ChunkSizer(None, 2, 100_000, Pace(ms), **shape).next_size() == 81
    assert ChunkSizer(None, 2, 240, Pace(ms), **shape).next_size() == 60  # a quarter left
    assert ChunkSizer(None, 2, 120, Pace(ms)).next_size() == 15  # the kernel's: an eighth
    assert ChunkSizer(None, 2, 120, Pace(ms), **shape).next_size() == 60  # within one chunk
    # of work per worker: shared out evenly at once


def test_the_second_run_of_a_cell_needs_fewer_chunks(ip, run):
    cell = "%%parallel -q -b threads -w 2\nfor i in range(2000):\n    x = i * i\n"
    first = run(cell)
    assert first.error is None, first.err
    chunks = parmagic.last_report().chunks
    second = run(cell)
    assert second.error is None, second.err
    assert parmagic.last_report().chunks < chunks and ip.user_ns["x"] == 1999**2


def test_a_fixed_chunksize_is_kept():
    sizer = ChunkSizer(7, workers=2, length=100)
    assert [sizer.next_size() for _ in range(3)] == [7, 7, 7]


def _task(source: str, stop_on_error: bool = True) -> Task:
    plan = plan_cell(source, "<cell>", "processes")
    code = build_item_code(plan.body, frozenset(), "<cell>")
    return Task(FunctionType(code, {}), plan.body.bound, stop_on_error, merge_names=True)


def test_a_chunk_from_a_worker_process_carries_its_names_once():
    task = _task("for i in range(5):\n    square = i * i\n    label = str(i)\n")
    result = run_chunk(task, 0, 0, [0, 1, 2, 3, 4])
    assert result.names[:4] == [None] * 4
    assert result.names[4] == {"i": 4, "square": 16, "label": "4"}
    assert result.names_merged


@pytest.mark.parametrize("stop_on_error", [True, False])
def test_merged_names_are_those_the_plain_loop_leaves_after_a_failure(stop_on_error):
    """Stopping at a failure, the failed item's names so far count (as in the plain loop);
    under --on-error continue a failed item leaves nothing, its names included."""
    task = _task(
        "for i in range(4):\n    first = i\n    if i == 3:\n        1 / 0\n    second = i\n",
        stop_on_error,
    )
    result = run_chunk(task, 0, 0, [0, 1, 2, 3])
    assert set(result.errors) == {3}
    holder = 3 if stop_on_error else 2
    assert [k for k, names in enumerate(result.names) if names] == [holder]
    assert result.names[holder] == {"i": holder, "first": holder, "second": 2}


def test_serial_times_every_item_as_the_loop_takes_it(ip, run):
    outcome = run("%%parallel -b serial\nimport time\nfor i in range(30):\n    time.sleep(0.002)\n")
    assert outcome.error is None, outcome.out + outcome.err
    timings = ip.run_line_magic("parallel_report", "").timings
    assert [t[0] for t in timings] == list(range(30))
    assert all(start < end for _, _, start, end, _ in timings)
    assert all(a[3] <= b[2] for a, b in zip(timings, timings[1:], strict=False))


@pytest.fixture
def plans(monkeypatch) -> list[str]:
    """The cells planned (parsed and checked) from their source, in order."""
    planned: list[str] = []

    def spy(source, *args):
        planned.append(source)
        return plan_cell(source, *args)

    monkeypatch.setattr(session, "plan_cell", spy)
    return planned


def test_a_cell_run_again_is_planned_once_and_runs_as_the_plain_cell(ip, run, plans):
    cell = "%%parallel -q -b processes\ntotal = 0\nfor i in range(50):\n    total += i\n"
    for _ in range(3):
        ip.user_ns["total"] = -1
        outcome = run(cell)
        assert outcome.error is None, outcome.err
        assert ip.user_ns["total"] == sum(range(50))
    assert len(plans) == 1


def test_a_kept_plan_runs_under_each_cells_own_file_name(ip, plans):
    """The loop body's frames name the cell that ran (In[n]), not the one first planned."""
    cell = "%%parallel -q -b threads\nfor i in range(3):\n    if i == 2:\n        1 / 0\n"
    files = []
    for _ in range(2):
        error = ip.run_cell(cell, store_history=True).error_in_exec
        assert isinstance(error, ZeroDivisionError)
        files.append(_deepest_file(error))
    assert len(plans) == 1 and files[0] != files[1], files
    assert all(name.startswith("<ipython-input-") for name in files), files


def _deepest_file(error: BaseException) -> str:
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename


def test_a_syntax_error_names_its_own_cell_each_time(ip):
    cell = "%%parallel\nx = 1\nfor i in range(3)\n    pass\n"
    files = []
    for _ in range(2):
        error = ip.run_cell(cell, store_history=True).error_in_exec  # raised by the magic
        assert isinstance(error, SyntaxError) and error.lineno == 3, error
        files.append(error.filename)
    assert files[0] != files[1] and all(f.startswith("<ipython-input-") for f in files), files


def test_a_new_ast_transformer_plans_the_cell_again_through_it(ip, run, plans):
    """The shell's AST transformers rewrite the cell before it is checked: one added between
    two runs is applied to the second."""
    cell = "%%parallel -q -b threads\nout = []\nfor i in range(3):\n    out.append(i)\n"
    assert run(cell).error is None
    assert ip.user_ns["out"] == [0, 1, 2]

    class TenTimes(ast.NodeTransformer):  # every integer constant, times ten
        def visit_Constant(self, node):
            if type(node.value) is int:
                return ast.copy_location(ast.Constant(node.value * 10), node)
            return node

    ip.ast_transformers.append(TenTimes())
    try:
        assert run(cell).error is None
    finally:
        ip.ast_transformers.pop()
    assert ip.user_ns["out"] == list(range(30)) and len(plans) == 2


@pytest.mark.parametrize("stage", ["input_transformers_cleanup", "input_transformers_post"])
def test_a_cell_run_again_goes_through_a_text_transformer_added_between_runs(ip, run, stage):
    """IPython's text transformations of a cell run again are remembered (tokenizing costs
    a tenth of a warm run of cheap items), but not past a transformer added since."""
    cell = "%%parallel -q -b threads\nout = []\nfor i in range(3):\n    out.append(i)\n"
    for _ in range(2):
        assert run(cell).error is None
        assert ip.user_ns["out"] == [0, 1, 2]

    def ten_times(lines: list[str]) -> list[str]:  # the loop's own text only: not the cell's
        if not lines or not lines[0].startswith("out = []"):
            return lines
        return [line.replace("range(3)", "range(30)") for line in lines]

    getattr(ip, stage).append(ten_times)
    try:
        assert run(cell).error is None
    finally:
        getattr(ip, stage).remove(ten_times)
    assert ip.user_ns["out"] == list(range(30))
    assert run(cell).error is None
    assert ip.user_ns["out"] == [0, 1, 2]
