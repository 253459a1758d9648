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
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
from conftest import execute_notebook

pytest.importorskip("playwright.sync_api")
import notebook_pages as pages  # noqa: E402

LIGHT, DARK = "JupyterLab Light", "JupyterLab Dark"
pytestmark = pages.MARKS
# fixtures pytest finds here: one Chromium for the module, and conftest's leak check waived
browser, no_leaks = pages.browser, pages.no_leaks


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
    nb = pages.new_notebook(["%load_ext parmagic\nimport time", pages.CELLS["processes"]])
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
    """A server of this venv (JupyterLab, or Notebook 7), with its own config, data and
    settings folders, serving one notebook and the one executed elsewhere."""
    app = APPS[request.param]
    home = tmp_path_factory.mktemp(app.name)
    work = pages.notebook_folder(home)
    shutil.copy(executed, work / "executed.ipynb")
    _settings(home / "settings")

    def options(port: int, token: str) -> list[str]:
        return [
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
            app.expose, "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]  # fmt: skip

    with pages.jupyter_server(
        home,
        app.module,
        options,
        JUPYTERLAB_SETTINGS_DIR=home / "settings",
        JUPYTERLAB_WORKSPACES_DIR=home / "workspaces",
    ) as (url, token):
        yield Server(app, url, token)


class Notebook(pages.NotebookPage):
    """The notebook's page of JupyterLab's components; its pictures for the README."""

    CELL = ".jp-Notebook .jp-Cell"
    PROMPT = ".jp-InputPrompt"
    RUN = "[data-jp-item-name='run'] jp-button"
    INTERRUPT = "[data-jp-item-name='interrupt'] jp-button"
    OUTPUT = ".jp-OutputArea"

    def __init__(self, page, app: App, shots: Path | None, failures: Path) -> None:
        super().__init__(page, failures)
        self.app = app
        self.shots = shots  # None: no pictures wanted (a failure still takes its own)

    def theme(self, theme: str) -> None:
        self.page.evaluate(
            "theme => window.jupyterapp.commands.execute('apputils:change-theme', {theme})", theme
        )
        light = "true" if theme == LIGHT else "false"
        self.page.wait_for_selector(f"body[data-jp-theme-light='{light}']", state="attached")

    def shoot(self, what, name: str) -> Path | None:
        if self.shots is None:
            return None
        path = self.shots / f"{name}.png"
        what.screenshot(path=str(path))
        return path


# The open notebook's kernel has started and is connected: a cell run before then may be lost.
KERNEL_READY = """() => {
  const session = window.jupyterapp?.shell.currentWidget?.sessionContext?.session;
  const kernel = session?.kernel;
  return kernel?.connectionStatus === 'connected' && kernel?.status === 'idle';
}"""


def open_page(browser, server: Server, path: str, workspace: str):
    page = pages.new_page(browser)
    page.goto(f"{server.url}{server.app.page(path, workspace)}?token={server.token}")
    page.wait_for_function(KERNEL_READY)
    if server.app.left_area:
        page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
    return page


@pytest.fixture(scope="module")
def notebook(server, browser, tmp_path_factory):
    """The notebook's page on this server. JupyterLab's screenshots are the README's, taken
    when PARMAGIC_SCREENSHOTS names their folder (``make screenshots``); else none."""
    shots = None
    if server.app.name == "lab" and os.environ.get("PARMAGIC_SCREENSHOTS"):
        shots = Path(os.environ["PARMAGIC_SCREENSHOTS"])
        shots.mkdir(parents=True, exist_ok=True)
    page = open_page(browser, server, "parmagic.ipynb", "run-here")
    try:
        book = Notebook(
            page, server.app, shots, tmp_path_factory.mktemp(f"failed-{server.app.name}")
        )
        book.theme(LIGHT)
        book.run("load")
        yield book
    finally:
        page.close()


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_the_progress_widget_shows_during_a_run_and_is_gone_after_it(notebook, backend):
    with pages.running_with_a_bar(notebook, backend) as cell:
        if backend == "threads":  # the README's pictures
            notebook.shoot(cell, "progress-threads-light")
    pages.check_summary(cell, backend)
    if backend == "threads":
        notebook.shoot(cell, "summary-threads-light")


# Notebook 7's page shows outputs with JupyterLab's own renderers, theme and sanitiser: what
# its page alone does (the widget, the toolbar's interrupt, a kernel per page) is tested on
# both pages; how an output renders, on JupyterLab's only.
SAME_RENDERERS = "Notebook 7 renders outputs with JupyterLab's components: tested on lab's page"


def lab_only(app: App) -> None:
    if app.name != "lab":
        pytest.skip(SAME_RENDERERS)


def test_compare_plot_and_show_code_render(notebook):
    lab_only(notebook.app)
    notebook.shoot(pages.run_compare(notebook), "compare-light")
    plot = notebook.run("plot")
    pages.expect(plot.locator("img")).to_have_count(1, timeout=pages.SHOWN)  # after the summary
    notebook.shoot(plot, "plot-light")
    shown = notebook.run("show-code")
    notebook.shoot(shown, "show-code-light")
    pages.check_program(shown.locator(".jp-OutputArea-output pre"))


def test_the_toolbar_interrupt_stops_the_run_and_leaves_no_bar(notebook):
    pages.check_the_interrupt(notebook)


def test_the_dark_theme_gives_the_summary_no_light_background(notebook):
    lab_only(notebook.app)
    notebook.theme(DARK)
    try:
        notebook.start("threads")
        notebook.progress_bars("threads").first.wait_for(state="visible")
        notebook.shoot(notebook.cell("threads"), "progress-threads-dark")
        notebook.wait("threads")
        notebook.run("compare")
        notebook.run("plot")
        tables = notebook.page.locator("table.parmagic-summary, table.parmagic-compare")
        found = tables.evaluate_all(pages.BACKGROUNDS)
        assert found["bars"] >= 10  # 2 cores' and 3 backends' bars: a track and a fill each
        assert found["light"] == []
        for name in ("threads", "compare", "plot"):
            notebook.shoot(
                notebook.cell(name), f"{'summary-threads' if name == 'threads' else name}-dark"
            )
    finally:
        notebook.theme(LIGHT)


def test_a_notebook_run_elsewhere_keeps_its_bars_where_the_page_does_not_trust_it(server, browser):
    lab_only(server.app)
    page = open_page(browser, server, "executed.ipynb", "opened")
    try:
        summary = page.locator("table.parmagic-summary")
        summary.wait_for()
        assert summary.inner_text().startswith("parmagic: processes")
        untrusted = page.locator(
            ".jp-OutputArea-output:not(.jp-mod-trusted) table.parmagic-summary"
        )
        assert untrusted.count() == 1  # the page sanitised this HTML
        found = summary.evaluate_all(pages.BACKGROUNDS)
        assert found["spans"] > 0 and found["bars"] == found["spans"]  # every bar painted
        assert {"rgb(76, 120, 168)", "rgba(128, 128, 128, 0.25)"} <= set(found["colours"])
        assert page.locator("[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    finally:
        page.close()
