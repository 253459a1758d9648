"""parmagic on the classic Jupyter Notebook page (Notebook 6.5), as its users see it.

Google Colab runs parmagic in a kernel of the classic Notebook's generation: IPython 7.34,
ipykernel 6.17 and ipywidgets 7.7, pinned beside Notebook 6.5 (tools/stacks/colab.txt). Colab's
own page cannot be opened here; the classic Notebook's page, which such a kernel was made to
talk to, can. So a real Notebook 6.5 server runs on 127.0.0.1 with a token, the notebook opens
in headless Chromium (Debian's, driven through Playwright, as in test_jupyterlab.py), its cells
run as a user runs them (select a cell, then the toolbar's Run), and the tests check what the
page shows: the ipywidgets 7 progress bar during a run and never after it, the summary, the
comparison, the figure, the program --show-code writes, and the toolbar's interrupt. The page
must load from the server alone: it may ask nothing of any other host.

Runs only where Notebook 6 is installed (``make test-colab``'s venv, .venvs/colab); skipped
elsewhere (Notebook 7 is JupyterLab's page, which test_jupyterlab.py covers), and where
/usr/bin/chromium is missing. Screenshots of a failing page go to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

notebook_package = pytest.importorskip("notebook")
if int(notebook_package.__version__.split(".")[0]) >= 7:
    pytest.skip(
        f"Notebook {notebook_package.__version__} serves JupyterLab's page, not the classic one",
        allow_module_level=True,
    )
playwright_api = pytest.importorskip("playwright.sync_api")
expect, PageTimeout = playwright_api.expect, playwright_api.TimeoutError

# JupyterLab's browser test: the same Chromium, cells and server plumbing
import test_jupyterlab as lab  # noqa: E402
from test_jupyterlab import (  # noqa: E402
    BACKGROUNDS,
    CELL_DONE,
    CELLS,
    CHROMIUM,
    GONE,
    KERNELSPEC,
    _free_port,
    _wait_for_server,
)

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (.ci/run installs it)"),
    pytest.mark.timeout(300),
]

browser = lab.browser  # one headless Chromium for the module
RUN = "#maintoolbar button[data-jupyter-action='jupyter-notebook:run-cell-and-select-next']"
INTERRUPT = "#maintoolbar button[data-jupyter-action='jupyter-notebook:interrupt-kernel']"
# The page has loaded the notebook and its extensions (ipywidgets' among them: a widget shown
# before its comm target is registered never renders), the kernel has answered its info request
# (a cell run before then may be lost), and the indicator in the menu bar shows it idle.
KERNEL_READY = """() => {
  const notebook = window.Jupyter?.notebook;
  const kernel = notebook?.kernel;
  const indicator = document.querySelector('#kernel_indicator_icon');
  return Boolean(notebook?._fully_loaded && kernel?.is_connected()
    && kernel.info_reply?.implementation && 'jupyter.widget' in kernel.comm_manager.targets
    && !notebook.kernel_busy && indicator?.classList.contains('kernel_idle_icon'));
}"""


@pytest.fixture(autouse=True)
def no_leaks():
    """parmagic runs in the Notebook server's kernel here, not in this process: what this process
    holds is the browser's driver (Playwright's event loop and its executor thread), for the
    module."""
    yield


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    """A Notebook 6 server of this venv, on 127.0.0.1, with its own config, data and runtime
    folders (so that nothing of the machine's user dirs leaks in: the venv's own, where
    ipywidgets enables its extension and the kernel spec lives, still count), serving one
    notebook."""
    home = tmp_path_factory.mktemp("classic")
    work = home / "work"
    work.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS.values()])
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, work / "parmagic.ipynb")
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
    )
    port, token = _free_port(), secrets.token_hex(16)
    log = home / "server.log"
    with log.open("w") as written:
        server = subprocess.Popen(
            [sys.executable, "-m", "notebook", "--no-browser", "--allow-root",
             "--NotebookApp.ip=127.0.0.1", f"--NotebookApp.port={port}",
             "--NotebookApp.port_retries=0", f"--NotebookApp.token={token}",
             f"--NotebookApp.notebook_dir={work}"],
            env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=written,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, token, server, log)  # Notebook 6 answers /api/status too
        yield url, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class ClassicNotebook:
    """The notebook's page: cells run as a user runs them (click the cell's prompt to select
    it, then the toolbar's Run)."""

    def __init__(self, page, failures: Path) -> None:
        self.page, self.failures = page, failures
        self.cells = page.locator("#notebook-container .cell")
        self.names = list(CELLS)
        self.before: dict[str, str] = {}  # a cell's prompt when it was last started
        self.elsewhere: list[str] = []  # requests the page made to any other host
        self.errors: list[str] = []  # the page's uncaught errors and console errors

    def cell(self, name: str):
        return self.cells.nth(self.names.index(name))

    def start(self, name: str):
        cell = self.cell(name)
        prompt = cell.locator(".input_prompt")
        self.before[name] = prompt.inner_text()
        prompt.click()  # selects the cell
        expect(cell).to_have_class(re.compile(r"\bselected\b"))
        self.page.locator(RUN).click()
        return cell

    def wait(self, name: str):
        """Until the cell's prompt shows an execution count (``In [3]:``, not ``In [*]:``) it
        did not show before."""
        cell = self.cell(name)
        prompt = cell.locator(".input_prompt")
        try:
            self.page.wait_for_function(
                "([prompt, before]) => /\\[\\d+\\]/.test(prompt.textContent)"
                " && prompt.textContent !== before",
                arg=[prompt.element_handle(), self.before[name]],
            )
        except PageTimeout:
            page = self.shoot(name)
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

    def output(self, name: str) -> str:
        return self.cell(name).locator(".output_wrapper").inner_text()

    def shoot(self, name: str) -> Path:
        path = self.failures / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def notebook(classic, browser, tmp_path_factory):
    url, token = classic
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(CELL_DONE)
    book = ClassicNotebook(page, tmp_path_factory.mktemp("failed"))

    def request(sent) -> None:
        if not sent.url.startswith((url, "data:", "blob:")):
            book.elsewhere.append(sent.url)

    def console(message) -> None:
        if message.type == "error":
            book.errors.append(f"console: {message.text}")

    page.on("request", request)
    page.on("console", console)
    page.on("pageerror", lambda error: book.errors.append(f"uncaught: {error}"))
    page.goto(f"{url}/notebooks/parmagic.ipynb?token={token}")
    page.wait_for_function(KERNEL_READY)
    book.run("load")
    try:
        yield book
    finally:
        page.close()


@pytest.fixture(autouse=True)
def page_on_failure(request, notebook):
    """A failed test leaves a picture of the whole page; its path is printed with the failure."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print(f"the page after the failure: {notebook.shoot(request.node.name)}")


def test_the_page_loads_from_the_server_alone(notebook):
    assert notebook.output("load").strip() == ""  # %load_ext parmagic says nothing
    assert notebook.page.evaluate("() => window.MathJax?.version")  # the server's own copy
    assert notebook.elsewhere == []
    assert notebook.errors == []


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_the_progress_widget_shows_during_a_run_and_is_gone_after_it(notebook, backend):
    notebook.start(backend)
    bars = notebook.progress_bars(backend)
    bars.first.wait_for(state="visible")  # tqdm shows it once the run has lasted a second
    cell = notebook.wait(backend)
    expect(bars).to_have_count(0, timeout=GONE)
    summary = cell.locator("table.parmagic-summary")
    assert summary.count() == 1
    assert summary.inner_text().startswith(f"parmagic: {backend}")
    assert "speedup" in summary.inner_text() and "cores" in summary.inner_text()
    # the cores' bars, painted: on this page ipywidgets 7's extension defines JupyterLab's
    # light colour variables, which they use (a grey track, a blue fill)
    found = summary.evaluate_all(BACKGROUNDS)
    assert found["spans"] > 0 and found["bars"] == found["spans"]
    assert len(set(found["colours"])) >= 2, found  # the fill stands out from its track


def test_compare_and_plot_render(notebook):
    table = notebook.run("compare").locator("table.parmagic-compare")
    assert table.count() == 1
    rows = table.locator("tr").all_inner_texts()
    assert [row.split()[0] for row in rows] == ["backend", "serial", "threads", "processes"]
    assert rows[1].endswith("(the reference)") and all(row.endswith("✓") for row in rows[2:])
    plot = notebook.run("plot")
    assert plot.locator("table.parmagic-summary").count() == 1
    image = plot.locator(".output_area img")
    assert image.count() == 1  # the figure, after the summary
    assert image.evaluate("img => img.complete && img.naturalWidth > 100")  # drawn, not broken


def test_show_code_shows_the_program_highlighted(notebook):
    shown = notebook.run("show-code")
    code = shown.locator(".output_subarea pre")
    assert code.count() == 1
    assert "squares" in code.inner_text() and "Pool" in code.inner_text()
    font = code.evaluate("element => getComputedStyle(element).fontFamily")
    assert "mono" in font.lower()  # a code block, not prose
    assert code.locator("span").count() > 5  # pygments' tokens
    # highlighted as a user sees it: its keywords in another colour than its names
    colours = code.evaluate(
        "pre => Object.fromEntries([...pre.querySelectorAll('span.k, span.n')]"
        ".map(span => [span.className, getComputedStyle(span).color]))"
    )
    assert colours["k"] != colours["n"], colours


def test_the_toolbar_interrupt_stops_the_run_and_leaves_no_bar(notebook):
    notebook.start("long")
    bars = notebook.progress_bars("long")
    bars.first.wait_for(state="visible")
    notebook.page.locator(INTERRUPT).click()
    notebook.wait("long")
    output = notebook.output("long")
    assert "KeyboardInterrupt" in output and "the parallel run was interrupted" in output
    applied = re.search(r"the first (\d+) items? were applied", output)
    assert applied and int(applied.group(1)) < 80, output  # stopped, not run to its end
    expect(bars).to_have_count(0, timeout=GONE)
    notebook.run("stdout")
    assert notebook.output("stdout").strip() == "ipykernel.iostream OutStream"
