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


def screen(stream: str, width: int) -> list[str]:
    """The lines a terminal ``width`` columns wide shows after ``stream`` (no height: nothing
    scrolls away). Enough of a terminal for what IPython and tqdm write: text that wraps at
    the last column, carriage return, newline, backspace, and erase-to-end-of-line; other
    escape sequences change nothing here."""
    lines, row, col, pending_wrap = [[]], 0, 0, False
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b.|.", stream, re.DOTALL):
        line = lines[row]
        if token == "\r":
            col, pending_wrap = 0, False
        elif token == "\n":
            row, pending_wrap = row + 1, False
            lines += [[] for _ in range(row + 1 - len(lines))]
        elif token == "\b":
            col, pending_wrap = max(col - 1, 0), False
        elif token in ("\x1b[K", "\x1b[0K"):
            del line[col:]
        elif not token.startswith("\x1b") and token.isprintable():
            if pending_wrap:
                row, col, pending_wrap = row + 1, 0, False
                lines += [[] for _ in range(row + 1 - len(lines))]
                line = lines[row]
            line += [" "] * (col + 1 - len(line))
            line[col] = token
            col, pending_wrap = (col, True) if col == width - 1 else (col + 1, False)
    return ["".join(line).rstrip() for line in lines]


BAR_LINE = re.compile(r"parmagic: +\d+%\|")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["asyncio", "futures", "processes", "serial", "threads"])
def test_after_ctrl_c_no_progress_bar_stays_on_the_screen(terminal, backend):
    """The terminal echoes "^C" after the bar; a bar as wide as the terminal wrapped it to
    the next line, and tqdm's clearing blanked that line, leaving the bar above with a "^"."""
    typed(terminal, "import asyncio, time; done = []")
    wait = "await asyncio.sleep(0.05)" if backend == "asyncio" else "time.sleep(0.05)"
    terminal.sendline(f"%%parallel -b {backend} -w 2\nfor i in range(400):\n    {wait}\n\n")
    shown = ""
    for _ in range(2):  # shown after a second, and drawn again: it is moving
        terminal.expect(BAR_LINE)
        shown += terminal.before + terminal.after
    terminal.sendintr()
    terminal.expect(PROMPT)
    lines = screen(shown + terminal.before, width=terminal.getwinsize()[1])
    assert any("the parallel run was interrupted" in line for line in lines)
    assert not [line for line in lines if BAR_LINE.search(line)]


@pytest.mark.timeout(120)
def test_threads_and_processes_draw_the_same_bar(terminal):
    """Threads put stand-ins in sys.stderr (without encoding or terminal size); tqdm drew
    ASCII at a fixed width there, and blocks at the terminal's width on processes."""
    typed(terminal, "import time")
    drawn = {}
    for backend in ("threads", "processes"):
        out = typed(
            terminal,
            f"%%parallel -b {backend} -w 2\nfor i in range(60):\n    time.sleep(0.05)\n",
        )
        frames = [frame for frame in re.split(r"[\r\n]", out) if BAR_LINE.match(frame)]
        assert frames, f"no bar drawn on {backend}: {out!r}"
        meter = "".join(frame.split("|")[1] for frame in frames)
        assert set(meter) <= set(" ▏▎▍▌▋▊▉█"), meter  # tqdm's blocks, never ASCII (#, digits)
        assert "█" in meter
        drawn[backend] = {len(frame) for frame in frames}
    assert drawn["threads"] == drawn["processes"]  # the same width: the terminal's
