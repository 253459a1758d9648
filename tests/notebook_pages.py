"""What the browser tests of the notebook pages share (test_jupyterlab.py: JupyterLab 4 and
Notebook 7; test_classic_notebook.py: the classic Notebook 6.5): Debian's Chromium driven through
Playwright, the notebook's cells, a Jupyter server of the venv on 127.0.0.1 with a token, a page
whose cells run as a user runs them, and the checks whose expectations are the same on every page.

Not a test module: those import it once their own skips have passed (Playwright installed, the
right Notebook), so it may import Playwright outright.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import TimeoutError as PageTimeout
from playwright.sync_api import expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# As the machines' own Chromium checks run it: no sandbox (root), no GPU, and none of the
# background connections that a closed network refuses.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START = 90.0  # seconds: a server's first start on a loaded machine
CELL_DONE = 90_000  # milliseconds a cell may take, whatever else the machine is doing
GONE = 5_000  # milliseconds for the page to drop a closed widget (a frozen bar stays forever)
SHOWN = 30_000  # milliseconds for an output the kernel sent to show, on a busy machine
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

# Both modules' marks: no page without Chromium, and room for a server's start and a dozen runs.
MARKS = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (.ci/run installs it)"),
    pytest.mark.timeout(300),
]

CELLS = {
    "load": "%load_ext parmagic\nimport sys, time",
    # runs of a few seconds: the bar shows after one
    "threads": "%%parallel -b threads -w 4\nfor i in range(48):\n    time.sleep(0.25)\n    last = i",
    "processes": (
        "%%parallel -b processes -w 2\nfor i in range(24):\n    time.sleep(0.25)\n    last = i"
    ),
    "compare": (
        "%%parallel --compare threads,processes -w 2\ncounts = []\nfor n in range(40):\n"
        "    counts.append(sum(i % 7 for i in range(200_000)))"
    ),
    "plot": (
        "%%parallel -b processes -w 2 --plot\ncounts = []\nfor n in range(40):\n"
        "    counts.append(sum(i % 7 for i in range(200_000)))"
    ),
    "show-code": "%%parallel -b threads -q --show-code\nsquares = [i * i for i in range(10)]",
    "long": "%%parallel -b threads -w 4\nfor i in range(80):\n    time.sleep(1)\n    last = i",
    "stdout": "print(type(sys.stdout).__module__, type(sys.stdout).__name__)",
}

# Every element of parmagic's tables whose background is light (relative luminance over 0.5,
# not mostly transparent); how many of the bars' spans there are, how many have a background,
# and which colours those are.
BACKGROUNDS = """
tables => {
  const light = [], colours = [];
  let bars = 0, spans = 0;
  for (const table of tables) {
    for (const element of [table, ...table.querySelectorAll('*')]) {
      const colour = getComputedStyle(element).backgroundColor;
      if (element.tagName === 'SPAN') spans += 1;
      const [r, g, b, a = 1] = colour.match(/[\\d.]+/g).map(Number);
      if (a < 0.1) continue;
      if (element.tagName === 'SPAN') { bars += 1; colours.push(colour); }
      const linear = c => (c /= 255) <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
      const luminance = 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
      if (luminance > 0.5) light.push(element.outerHTML.slice(0, 120) + ' ' + colour);
    }
  }
  return {light, bars, spans, colours};
}
"""


@pytest.fixture(autouse=True)
def no_leaks():
    """parmagic runs in the server's kernel here, not in this process: what this process holds
    is the browser's driver (Playwright's event loop and its executor thread), for the module."""
    yield


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for a module's pages."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


def new_notebook(sources) -> nbformat.NotebookNode:
    """A notebook of these code cells, for the kernel that every server here has."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = KERNELSPEC
    return nb


def notebook_folder(home: Path) -> Path:
    """The folder a server serves: ``parmagic.ipynb``, with every cell of CELLS, unrun."""
    work = home / "work"
    work.mkdir()
    nbformat.write(new_notebook(CELLS.values()), work / "parmagic.ipynb")
    return work


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def jupyter_server(
    home: Path, module: str, options: Callable[[int, str], list[str]], **folders: Path
) -> Iterator[tuple[str, str]]:
    """Runs ``python -m <module>`` of this venv in ``home / "work"``, with ``options(port,
    token)`` (a free port, a new token) and its own config, data and runtime folders under
    ``home`` (so that nothing of the machine's user dirs leaks in), plus ``folders`` as more of
    its environment; yields its URL and token once it answers, and stops it after."""
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        **{name: str(folder) for name, folder in folders.items()},
    )
    port, token = _free_port(), secrets.token_hex(16)
    log = home / "server.log"
    with log.open("w") as written:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--no-browser", "--allow-root", *options(port, token)],
            env=env, cwd=home / "work", stdout=subprocess.DEVNULL, stderr=written,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, token, process, log)
        yield url, token
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_server(url: str, token: str, server: subprocess.Popen, log: Path) -> None:
    # every server here answers /api/status: Jupyter Server's, and Notebook 6's own
    deadline = time.monotonic() + SERVER_START
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5):
                return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"the server did not answer within {SERVER_START:.0f} s:\n{log.read_text()}")


def new_page(browser):
    """A page of the screenshots' size whose waits last as long as a cell may run."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(CELL_DONE)
    return page


class NotebookPage:
    """A notebook's page, its cells those of CELLS: cells run as a user runs them (click the
    cell's prompt to select it, then the toolbar's run). A page names its parts in its own
    selectors, which its subclass gives."""

    CELL = ""  # the notebook's cells, in order
    PROMPT = ""  # a cell's input prompt: ``[3]:`` once run, ``[*]:`` while running
    SELECTED: re.Pattern | None = None  # a selected cell's class, where the page is slow to set it
    RUN = ""  # the toolbar's run button
    INTERRUPT = ""  # the toolbar's interrupt button
    OUTPUT = ""  # a cell's outputs
    FULL_PAGE = False  # a failure's picture is the whole page's, not the window's

    def __init__(self, page, failures: Path) -> None:
        self.page, self.failures = page, failures
        self.cells = page.locator(self.CELL)
        self.names = list(CELLS)
        self.before: dict[str, str] = {}  # a cell's prompt when it was last started

    def cell(self, name: str):
        return self.cells.nth(self.names.index(name))

    def start(self, name: str):
        cell = self.cell(name)
        prompt = cell.locator(self.PROMPT)
        self.before[name] = prompt.inner_text()
        prompt.click()  # selects the cell
        if self.SELECTED:
            expect(cell).to_have_class(self.SELECTED)
        self.page.locator(self.RUN).click()
        return cell

    def wait(self, name: str):
        """Until the cell's prompt shows an execution count it did not show before."""
        cell = self.cell(name)
        prompt = cell.locator(self.PROMPT)
        try:
            self.page.wait_for_function(
                "([prompt, before]) => /\\[\\d+\\]/.test(prompt.textContent)"
                " && prompt.textContent !== before",
                arg=[prompt.element_handle(), self.before[name]],
            )
        except PageTimeout:
            page = self.picture(name)
            raise AssertionError(
                f"cell {name!r} did not end: its prompt shows {prompt.inner_text()!r}, was "
                f"{self.before[name]!r} (the page: {page})"
            ) from None
        return cell

    def run(self, name: str):
        self.start(name)
        return self.wait(name)

    def interrupt(self) -> None:
        self.page.locator(self.INTERRUPT).click()

    def progress_bars(self, name: str):
        return self.cell(name).locator(".widget-hprogress")

    def output(self, name: str) -> str:
        return self.cell(name).locator(self.OUTPUT).inner_text()

    def picture(self, name: str) -> Path:
        """The page as it is, for a failure's report: its path."""
        path = self.failures / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=self.FULL_PAGE)
        return path


@contextmanager
def running_with_a_bar(notebook: NotebookPage, name: str):
    """Starts the cell and, once its progress bar shows (tqdm's, after a second of the run),
    yields the cell; after the block, waits for the cell to end and for its bar to be gone."""
    notebook.start(name)
    bars = notebook.progress_bars(name)
    bars.first.wait_for(state="visible")
    yield notebook.cell(name)
    notebook.wait(name)
    expect(bars).to_have_count(0, timeout=GONE)


def check_summary(cell, backend: str):
    """The cell shows one summary, of this backend's run, with its speedup and cores: the
    summary's table."""
    summary = cell.locator("table.parmagic-summary")
    expect(summary).to_have_count(1, timeout=SHOWN)  # drawn a moment after the cell's end
    assert summary.inner_text().startswith(f"parmagic: {backend}")
    assert "speedup" in summary.inner_text() and "cores" in summary.inner_text()
    return summary


def run_compare(notebook: NotebookPage):
    """Runs the compare cell: one table, a row a backend, serial the reference and the others'
    results the same as its. The cell."""
    cell = notebook.run("compare")
    table = cell.locator("table.parmagic-compare")
    expect(table).to_have_count(1, timeout=SHOWN)
    rows = table.locator("tr").all_inner_texts()
    assert [row.split()[0] for row in rows] == ["backend", "serial", "threads", "processes"]
    assert rows[1].endswith("(the reference)") and all(row.endswith("✓") for row in rows[2:])
    return cell


def check_program(code) -> None:
    """The program --show-code wrote: in a code block, its tokens in spans of their own."""
    assert "squares" in code.inner_text() and "Pool" in code.inner_text()
    font = code.evaluate("element => getComputedStyle(element).fontFamily")
    assert "mono" in font.lower()  # a code block, not prose
    assert code.locator("span").count() > 5  # highlighted


def check_the_interrupt(notebook: NotebookPage) -> None:
    """The toolbar's interrupt during a long run: the run stops early, says so, leaves no bar,
    and the kernel's stdout is ipykernel's again."""
    with running_with_a_bar(notebook, "long"):
        notebook.interrupt()
    output = notebook.output("long")
    assert "KeyboardInterrupt" in output and "the parallel run was interrupted" in output
    applied = re.search(r"the first (\d+) items? were applied", output)
    assert applied and int(applied.group(1)) < 80, output  # stopped, not run to its end
    notebook.run("stdout")
    assert notebook.output("stdout").strip() == "ipykernel.iostream OutStream"
