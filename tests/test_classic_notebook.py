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

import re

import pytest

notebook_package = pytest.importorskip("notebook")
if int(notebook_package.__version__.split(".")[0]) >= 7:
    pytest.skip(
        f"Notebook {notebook_package.__version__} serves JupyterLab's page, not the classic one",
        allow_module_level=True,
    )
pytest.importorskip("playwright.sync_api")
# the same Chromium, cells, server plumbing and checks as JupyterLab's browser test
import notebook_pages as pages  # noqa: E402

pytestmark = pages.MARKS
# fixtures pytest finds here: one Chromium for the module, and conftest's leak check waived
browser, no_leaks = pages.browser, pages.no_leaks

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


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    """A Notebook 6 server of this venv, with its own config, data and runtime folders (the
    venv's own, where ipywidgets enables its extension and the kernel spec lives, still count),
    serving one notebook."""
    home = tmp_path_factory.mktemp("classic")
    work = pages.notebook_folder(home)

    def options(port: int, token: str) -> list[str]:
        return [
            "--NotebookApp.ip=127.0.0.1", f"--NotebookApp.port={port}",
            "--NotebookApp.port_retries=0", f"--NotebookApp.token={token}",
            f"--NotebookApp.notebook_dir={work}",
        ]  # fmt: skip

    with pages.jupyter_server(home, "notebook", options) as (url, token):
        yield url, token


class ClassicNotebook(pages.NotebookPage):
    """The classic notebook's page, and what it asked of the network and what it reported
    wrong while loading."""

    CELL = "#notebook-container .cell"
    PROMPT = ".input_prompt"
    SELECTED = re.compile(r"\bselected\b")
    RUN = "#maintoolbar button[data-jupyter-action='jupyter-notebook:run-cell-and-select-next']"
    INTERRUPT = "#maintoolbar button[data-jupyter-action='jupyter-notebook:interrupt-kernel']"
    OUTPUT = ".output_wrapper"
    FULL_PAGE = True

    def __init__(self, page, failures) -> None:
        super().__init__(page, failures)
        self.elsewhere: list[str] = []  # requests the page made to any other host
        self.errors: list[str] = []  # the page's uncaught errors and console errors


@pytest.fixture(scope="module")
def notebook(classic, browser, tmp_path_factory):
    url, token = classic
    page = pages.new_page(browser)
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
        print(f"the page after the failure: {notebook.picture(request.node.name)}")


def test_the_page_loads_from_the_server_alone(notebook):
    assert notebook.output("load").strip() == ""  # %load_ext parmagic says nothing
    assert notebook.page.evaluate("() => window.MathJax?.version")  # the server's own copy
    assert notebook.elsewhere == []
    assert notebook.errors == []


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_the_progress_widget_shows_during_a_run_and_is_gone_after_it(notebook, backend):
    with pages.running_with_a_bar(notebook, backend) as cell:
        pass  # the bar shown is all this page's test asks of the run's middle
    summary = pages.check_summary(cell, backend)
    # the cores' bars, painted: on this page ipywidgets 7's extension defines JupyterLab's
    # light colour variables, which they use (a grey track, a blue fill)
    found = summary.evaluate_all(pages.BACKGROUNDS)
    assert found["spans"] > 0 and found["bars"] == found["spans"]
    assert len(set(found["colours"])) >= 2, found  # the fill stands out from its track


def test_compare_and_plot_render(notebook):
    pages.run_compare(notebook)
    plot = notebook.run("plot")
    pages.expect(plot.locator("table.parmagic-summary")).to_have_count(1, timeout=pages.SHOWN)
    image = plot.locator(".output_area img")
    pages.expect(image).to_have_count(1, timeout=pages.SHOWN)  # the figure, after the summary
    assert image.evaluate("img => img.complete && img.naturalWidth > 100")  # drawn, not broken


def test_show_code_shows_the_program_highlighted(notebook):
    shown = notebook.run("show-code")
    code = shown.locator(".output_subarea pre")
    pages.expect(code).to_have_count(1, timeout=pages.SHOWN)
    pages.check_program(code)  # pygments' tokens
    # highlighted as a user sees it: its keywords in another colour than its names
    colours = code.evaluate(
        "pre => Object.fromEntries([...pre.querySelectorAll('span.k, span.n')]"
        ".map(span => [span.className, getComputedStyle(span).color]))"
    )
    assert colours["k"] != colours["n"], colours


def test_the_toolbar_interrupt_stops_the_run_and_leaves_no_bar(notebook):
    pages.check_the_interrupt(notebook)
