"""parmagic in JupyterLab 4 and in Notebook 7 as their users see it: a real server of each on
127.0.0.1 with a token, a notebook opened in headless Chromium (Debian's, driven through
Playwright), and what the page shows: the progress widget during a run and never after it, the
summary and the comparison, the toolbar's interrupt, the dark theme, and a notebook executed
elsewhere then opened here. Every test runs against both pages (Notebook 7's is built from
JupyterLab's components: the same cells, outputs, toolbar and themes, one document a page).

Skipped where /usr/bin/chromium is missing (``.ci/run`` installs Debian's ``chromium``); the
Notebook 7 variant where the ``notebook`` package installed is not 7.x. JupyterLab's
screenshots go to ``$PARMAGIC_SCREENSHOTS`` (``make screenshots``: docs/screenshots, which the
README shows), else to the test's temporary folder; Notebook 7's always to a temporary folder.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
from conftest import execute_notebook

playwright_api = pytest.importorskip("playwright.sync_api")
expect, sync_playwright = playwright_api.expect, playwright_api.sync_playwright
PageTimeout = playwright_api.TimeoutError

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
LIGHT, DARK = "JupyterLab Light", "JupyterLab Dark"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

pytestmark = [
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


@pytest.fixture(autouse=True)
def no_leaks():
    """parmagic runs in the server's kernel here, not in this process: what this process holds
    is the browser's driver (Playwright's event loop and its executor thread), for the module."""
    yield


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _settings(folder: Path) -> None:
    """User settings that keep the page off the network: no news, no update checks (both pages
    read them from ``$JUPYTERLAB_SETTINGS_DIR``)."""
    apputils = folder / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True)
    (apputils / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Path:
    """A notebook run by nbclient, as ``make demo`` runs the demos: opened in a page afterwards,
    it is not trusted, and its HTML outputs are sanitised. Run once, copied to each server."""
    path = tmp_path_factory.mktemp("elsewhere") / "executed.ipynb"
    cells = ["%load_ext parmagic\nimport time", CELLS["processes"]]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = KERNELSPEC
    execute_notebook(nb, path.parent)
    nbformat.write(nb, path)
    return path


def _notebook_version() -> str:
    try:
        return metadata.version("notebook")
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class App:
    """One of the two pages built from JupyterLab's components, and how its server is asked for
    it. Both servers load JupyterLab's server extension, which answers the pages' news and
    update checks (/lab/api/news, /lab/api/update): the ``LabApp`` options keep it off the
    network in both."""

    name: str
    module: str  # python -m <module>
    expose: str  # the app class's option that puts the app in the page as window.jupyterapp
    url: str  # a notebook's page: {path}, and {workspace} where the page keeps workspaces
    left_area: bool  # a left side area (the file browser's), hidden for the screenshots

    def page(self, path: str, workspace: str) -> str:
        return self.url.format(path=path, workspace=workspace)


APPS = {
    "lab": App(
        "lab", "jupyterlab", "--LabApp.expose_app_in_browser=True",
        "/lab/workspaces/{workspace}/tree/{path}", left_area=True,
    ),
    # Notebook 7: JupyterNotebookApp, one document a page, no left area and no workspaces
    "notebook7": App(
        "notebook7", "notebook", "--JupyterNotebookApp.expose_app_in_browser=True",
        "/notebooks/{path}", left_area=False,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Server:
    app: App
    url: str
    token: str


@pytest.fixture(
    scope="module",
    params=[
        "lab",
        pytest.param(
            "notebook7",
            marks=pytest.mark.skipif(
                not _notebook_version().startswith("7."),
                reason=f"Notebook 7's page: the notebook package is {_notebook_version()}",
            ),
        ),
    ],
)
def server(request, executed, tmp_path_factory):
    """A server of this venv (JupyterLab, or Notebook 7), on 127.0.0.1, with its own config,
    data and settings folders (so that nothing of the machine's user dirs leaks in), serving one
    notebook and the one executed elsewhere."""
    app = APPS[request.param]
    home = tmp_path_factory.mktemp(app.name)
    work = home / "work"
    work.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS.values()])
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, work / "parmagic.ipynb")
    shutil.copy(executed, work / "executed.ipynb")
    _settings(home / "settings")
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
    )
    port, token = _free_port(), secrets.token_hex(16)
    log = home / "server.log"
    with log.open("w") as written:
        process = subprocess.Popen(
            [sys.executable, "-m", app.module, "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
             app.expose, "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=written,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, token, process, log)
        yield Server(app, url, token)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_server(url: str, token: str, server: subprocess.Popen, log: Path) -> None:
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


class Notebook:
    """The notebook's page: cells run as a user runs them (select, then the toolbar's run)."""

    def __init__(self, page, shots: Path, failures: Path) -> None:
        self.page, self.shots, self.failures = page, shots, failures
        self.cells = page.locator(".jp-Notebook .jp-Cell")
        self.names = list(CELLS)
        self.before: dict[str, str] = {}  # a cell's prompt when it was last started

    def cell(self, name: str):
        return self.cells.nth(self.names.index(name))

    def start(self, name: str):
        cell = self.cell(name)
        prompt = cell.locator(".jp-InputPrompt")
        self.before[name] = prompt.inner_text()
        prompt.click()  # selects the cell
        self.page.locator("[data-jp-item-name='run'] jp-button").click()
        return cell

    def wait(self, name: str):
        """Until the cell's prompt shows an execution count it did not show before."""
        cell = self.cell(name)
        prompt = cell.locator(".jp-InputPrompt")
        try:
            self.page.wait_for_function(
                "([prompt, before]) => /\\[\\d+\\]/.test(prompt.textContent)"
                " && prompt.textContent !== before",
                arg=[prompt.element_handle(), self.before[name]],
            )
        except PageTimeout:
            page = self.failures / f"{name}.png"
            self.page.screenshot(path=str(page))
            raise AssertionError(
                f"cell {name!r} did not end: its prompt shows {prompt.inner_text()!r}, was "
                f"{self.before[name]!r} (the page: {page})"
            ) from None
        return cell

    def run(self, name: str):
        self.start(name)
        return self.wait(name)

    def progress_bars(self, name: str):
        return self.cell(name).locator(".widget-hprogress")

    def theme(self, theme: str) -> None:
        self.page.evaluate(
            "theme => window.jupyterapp.commands.execute('apputils:change-theme', {theme})", theme
        )
        light = "true" if theme == LIGHT else "false"
        self.page.wait_for_selector(f"body[data-jp-theme-light='{light}']", state="attached")

    def shoot(self, what, name: str) -> Path:
        path = self.shots / f"{name}.png"
        what.screenshot(path=str(path))
        return path


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


# The open notebook's kernel has started and is connected: a cell run before then may be lost.
KERNEL_READY = """() => {
  const session = window.jupyterapp?.shell.currentWidget?.sessionContext?.session;
  const kernel = session?.kernel;
  return kernel?.connectionStatus === 'connected' && kernel?.status === 'idle';
}"""


def open_page(browser, server: Server, path: str, workspace: str):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(CELL_DONE)
    page.goto(f"{server.url}{server.app.page(path, workspace)}?token={server.token}")
    page.wait_for_function(KERNEL_READY)
    if server.app.left_area:
        page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
    return page


@pytest.fixture(scope="module")
def notebook(server, browser, tmp_path_factory):
    """The notebook's page on this server. JupyterLab's screenshots are the README's (same
    names whichever folder); Notebook 7's go to a temporary folder of their own."""
    if server.app.name == "lab" and os.environ.get("PARMAGIC_SCREENSHOTS"):
        shots = Path(os.environ["PARMAGIC_SCREENSHOTS"])
    else:
        shots = tmp_path_factory.mktemp(f"shots-{server.app.name}")
    shots.mkdir(parents=True, exist_ok=True)
    page = open_page(browser, server, "parmagic.ipynb", "run-here")
    try:
        book = Notebook(page, shots, tmp_path_factory.mktemp(f"failed-{server.app.name}"))
        book.theme(LIGHT)
        book.run("load")
        yield book
    finally:
        page.close()


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


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_the_progress_widget_shows_during_a_run_and_is_gone_after_it(notebook, backend):
    notebook.start(backend)
    bars = notebook.progress_bars(backend)
    bars.first.wait_for(state="visible")  # tqdm shows it once the run has lasted a second
    if backend == "threads":  # the README's pictures
        notebook.shoot(notebook.cell(backend), "progress-threads-light")
    cell = notebook.wait(backend)
    expect(bars).to_have_count(0, timeout=GONE)
    summary = cell.locator("table.parmagic-summary")
    assert summary.count() == 1
    assert summary.inner_text().startswith(f"parmagic: {backend}")
    assert "speedup" in summary.inner_text() and "cores" in summary.inner_text()
    if backend == "threads":
        notebook.shoot(cell, "summary-threads-light")


def test_compare_plot_and_show_code_render(notebook):
    table = notebook.run("compare").locator("table.parmagic-compare")
    assert table.count() == 1
    rows = table.locator("tr").all_inner_texts()
    assert [row.split()[0] for row in rows] == ["backend", "serial", "threads", "processes"]
    assert rows[1].endswith("(the reference)") and all(row.endswith("✓") for row in rows[2:])
    notebook.shoot(notebook.cell("compare"), "compare-light")
    plot = notebook.run("plot")
    assert plot.locator("img").count() == 1  # the figure, after the summary
    notebook.shoot(plot, "plot-light")
    shown = notebook.run("show-code")
    notebook.shoot(shown, "show-code-light")
    code = shown.locator(".jp-OutputArea-output pre")
    assert "squares" in code.inner_text() and "Pool" in code.inner_text()
    font = code.evaluate("element => getComputedStyle(element).fontFamily")
    assert "mono" in font.lower()  # a code block, not prose
    assert code.locator("span").count() > 5  # highlighted


def test_the_toolbar_interrupt_stops_the_run_and_leaves_no_bar(notebook):
    notebook.start("long")
    bars = notebook.progress_bars("long")
    bars.first.wait_for(state="visible")
    notebook.page.locator("[data-jp-item-name='interrupt'] jp-button").click()
    cell = notebook.wait("long")
    output = cell.locator(".jp-OutputArea").inner_text()
    assert "KeyboardInterrupt" in output and "the parallel run was interrupted" in output
    applied = re.search(r"the first (\d+) items? were applied", output)
    assert applied and int(applied.group(1)) < 80, output  # stopped, not run to its end
    expect(bars).to_have_count(0, timeout=GONE)
    printed = notebook.run("stdout").locator(".jp-OutputArea").inner_text()
    assert printed.strip() == "ipykernel.iostream OutStream"


def test_the_dark_theme_gives_the_summary_no_light_background(notebook):
    notebook.theme(DARK)
    try:
        notebook.start("threads")
        notebook.progress_bars("threads").first.wait_for(state="visible")
        notebook.shoot(notebook.cell("threads"), "progress-threads-dark")
        notebook.wait("threads")
        notebook.run("compare")
        notebook.run("plot")
        tables = notebook.page.locator("table.parmagic-summary, table.parmagic-compare")
        found = tables.evaluate_all(BACKGROUNDS)
        assert found["bars"] >= 10  # 2 cores' and 3 backends' bars: a track and a fill each
        assert found["light"] == []
        for name in ("threads", "compare", "plot"):
            notebook.shoot(
                notebook.cell(name), f"{'summary-threads' if name == 'threads' else name}-dark"
            )
    finally:
        notebook.theme(LIGHT)


def test_a_notebook_run_elsewhere_keeps_its_bars_where_the_page_does_not_trust_it(server, browser):
    page = open_page(browser, server, "executed.ipynb", "opened")
    try:
        summary = page.locator("table.parmagic-summary")
        summary.wait_for()
        assert summary.inner_text().startswith("parmagic: processes")
        untrusted = page.locator(
            ".jp-OutputArea-output:not(.jp-mod-trusted) table.parmagic-summary"
        )
        assert untrusted.count() == 1  # the page sanitised this HTML
        found = summary.evaluate_all(BACKGROUNDS)
        assert found["spans"] > 0 and found["bars"] == found["spans"]  # every bar painted
        assert {"rgb(76, 120, 168)", "rgba(128, 128, 128, 0.25)"} <= set(found["colours"])
        assert page.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    finally:
        page.close()
