"""Loading, configuration and help."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import FRESH_SHELL, report

import parmagic


def test_loading_is_cheap_and_imports_nothing_heavy():
    code = (
        f"import sys\n{FRESH_SHELL}before = set(sys.modules)\n"
        "ip.run_line_magic('load_ext', 'parmagic')\n"
        "heavy = ['aiohttp', 'cloudpickle', 'dask', 'matplotlib', 'numpy', 'psutil', 'requests']\n"
        "print(sorted(m for m in heavy if m in set(sys.modules) - before))\n"
        "print('parallel' in ip.magics_manager.magics['cell'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


def test_unload_removes_the_magics_and_the_reports_formats(ip):
    from parmagic.summary.report import RunReport

    html = ip.display_formatter.formatters["text/html"]
    assert "parallel" in ip.magics_manager.magics["line"] and RunReport in html.type_printers
    ip.run_line_magic("unload_ext", "parmagic")
    assert "parallel" not in ip.magics_manager.magics["cell"]
    assert "parallel" not in ip.magics_manager.magics["line"]
    assert RunReport not in html.type_printers
    ip.run_line_magic("load_ext", "parmagic")
    assert "parallel" in ip.magics_manager.magics["cell"] and RunReport in html.type_printers


def test_config_sets_the_defaults(ip, run):
    run("%config ParallelMagics.backend = 'serial'")
    outcome = run("%%parallel\nvalues = [v for v in range(3)]\n")
    assert outcome.error is None and report().backend == "serial"
    run("%config ParallelMagics.quiet = True")
    outcome = run("%%parallel -b threads\nvalues = [v for v in range(3)]\n")
    assert report().backend == "threads" and "parmagic:" not in outcome.out


def test_help_lists_every_option(ip):
    doc = ip.find_cell_magic("parallel").__doc__
    for option in (
        "--backend",
        "--workers",
        "--chunksize",
        "--start-method",
        "--on-error",
        "--quiet",
    ):
        assert option in doc


def test_summary_line_and_report_object(ip, run):
    outcome = run("%%parallel -b threads -w 3\nfor i in range(7):\n    pass\n")
    assert "parmagic: threads · 3 workers · 7 items in" in outcome.out
    latest = parmagic.last_report()
    assert latest.backend == "threads" and latest.workers == 3 and latest.item_count == 7
    assert sorted(t.index for t in latest.items) == list(range(7))
    assert latest.wall >= latest.busy * 0  # a number, not None
    quiet = run("%%parallel -b threads -q\nfor i in range(7):\n    pass\n")
    assert "parmagic:" not in quiet.out


def test_every_option_of_the_magic_is_in_the_readme(ip):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    options = set(re.findall(r"(--[a-z][a-z-]+)", ip.find_cell_magic("parallel").__doc__))
    assert options, "no options found in %%parallel?"
    missing = sorted(o for o in options if f"`{o}" not in readme and f" {o} " not in readme)
    assert not missing, f"options of %%parallel? missing from the README: {missing}"


def test_loading_sweeps_shared_files_that_dead_kernels_left(_ipython):
    from parmagic.worker.shared_files import PREFIX, folder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs (reaped)
    leftover = os.path.join(folder(), f"{PREFIX}{dead.pid}-left")
    ours = os.path.join(folder(), f"{PREFIX}{os.getpid()}-ours")
    for path in (leftover, ours):
        with open(path, "wb") as f:
            f.write(b"x")
    try:
        _ipython.run_line_magic("load_ext", "parmagic")
        _ipython.run_line_magic("unload_ext", "parmagic")
        assert not os.path.exists(leftover)
        assert os.path.exists(ours)  # a live kernel's file is its own to remove
    finally:
        for path in (leftover, ours):
            if os.path.exists(path):
                os.unlink(path)
