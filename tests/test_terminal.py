"""Terminal IPython, typed at a real prompt through a pty (pexpect)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pexpect
import pytest
from conftest import HANG_GUARD

IPYTHON = str(Path(sys.executable).with_name("ipython"))
PROMPT = r"In \[\d+\]: "


@pytest.fixture
def terminal():
    child = pexpect.spawn(
        IPYTHON, ["--simple-prompt", "--no-banner", "--colors=NoColor"],
        encoding="utf-8", timeout=60, dimensions=(50, 200),
    )  # fmt: skip
    child.expect(PROMPT)
    child.sendline("%load_ext parmagic")
    child.expect(PROMPT)
    try:
        yield child
    finally:
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()


def typed(child, cell: str) -> str:
    """Type a cell (a multi-line one ends with blank lines) and return what it printed."""
    cell = cell.rstrip("\n")
    child.sendline(cell + "\n\n" if "\n" in cell else cell)
    child.expect(PROMPT)
    return child.before


@pytest.mark.timeout(120)
def test_a_typed_cell_prints_its_items_and_the_summary(terminal):
    out = typed(
        terminal,
        "%%parallel -b processes --start-method spawn\nsquares = []\nfor n in range(6):\n"
        "    print('item', n)\n    squares.append(n * n)\n",
    )
    assert re.findall(r"item \d+", out.split("squares.append")[-1]) == [
        f"item {n}" for n in range(6)
    ]
    assert "parmagic: processes (spawn)" in out
    assert "[0, 1, 4, 9, 16, 25]" in typed(terminal, "squares")


@pytest.mark.timeout(120)
def test_asyncio_cell_runs_in_the_terminal(terminal):
    out = typed(
        terminal,
        "%%parallel\nimport asyncio\nhalves = [await asyncio.sleep(0.1, result=i / 2) for i in range(8)]\n",
    )
    assert "parmagic: asyncio" in out
    assert "[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]" in typed(terminal, "halves")


@pytest.mark.timeout(120)
def test_ctrl_c_stops_the_run_and_the_prompt_comes_back_usable(terminal):
    typed(terminal, "import time; done = []")
    terminal.sendline(
        "%%parallel -b processes -w 2\nfor i in range(400):\n    time.sleep(0.05)\n    done.append(i)\n\n"
    )
    time.sleep(2.0)
    interrupted = time.monotonic()
    terminal.sendintr()
    terminal.expect(PROMPT)
    assert time.monotonic() - interrupted < HANG_GUARD
    assert "the parallel run was interrupted" in terminal.before
    assert "True" in typed(terminal, "0 < len(done) < 400 and done == list(range(len(done)))")
    assert "[0, 2, 4]" in typed(
        terminal, "%%parallel -b processes -w 2 -q\n[i * 2 for i in range(3)]\n"
    )
