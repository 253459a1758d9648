"""Execute every demo notebook through a real kernel and write each executed copy as HTML.

Run by ``make demo`` from the project root::

    .venv/bin/python demo_notebooks/run_demos.py

Notebooks run in sorted order, each in a fresh ``python3`` kernel whose working directory
is this folder. A cell may raise only if it is tagged ``raises-exception``. The executed
copies go to ``build/demo/<name>.html``; the terminal shows each code cell's first line and
its text output. The executed notebooks themselves go beside the HTML, as
``build/demo/<name>.ipynb``, to open in JupyterLab. The exit status is 1 if any notebook
failed.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbconvert import HTMLExporter

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE.parent / "build" / "demo"
CELL_TIMEOUT = 120  # seconds per cell
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def output_text(output) -> tuple[str, str]:
    """An output's text and its CSS class: streams, plain-text results, and errors."""
    kind = output.get("output_type")
    if kind == "stream":
        return output.get("text", ""), "err" if output.get("name") == "stderr" else "out"
    if kind in ("execute_result", "display_data"):
        return output.get("data", {}).get("text/plain", ""), "out"
    if kind == "error":
        return ANSI.sub("", "\n".join(output.get("traceback", []))), "err"
    return "", "out"


def to_html(nb) -> str:
    """The executed notebook as nbconvert renders it: HTML summaries and plots included."""
    body, _ = HTMLExporter().from_notebook_node(nb)
    return body


def echo(nb) -> None:
    """Each code cell's first source line, then its text output, indented."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        print(f">>> {cell.source.splitlines()[0] if cell.source else ''}")
        for output in cell.get("outputs", []):
            text, _ = output_text(output)
            for line in text.rstrip("\n").splitlines():
                print(f"    {line}")


def run_notebook(path: Path) -> bool:
    """Execute one notebook, echo it, write its HTML; True if every cell behaved."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        allow_errors=False,  # except in cells tagged raises-exception (nbclient honours it)
        resources={"metadata": {"path": str(path.parent)}},
    )
    began = time.monotonic()
    ok = True
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        ok = False
        reason = f"{exc.ename}: {exc.evalue}" if isinstance(exc, CellExecutionError) else exc
        print(f"FAILED: {path.name}: {reason} (the cell's traceback is below)", file=sys.stderr)
    echo(nb)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    target = OUT_DIR / f"{path.stem}.html"
    target.write_text(to_html(nb), encoding="utf-8")
    nbformat.write(nb, OUT_DIR / path.name)
    status = "ok" if ok else "FAILED"
    print(f"=== {path.name}: {status} in {time.monotonic() - began:.1f} s -> {target}\n")
    return ok


def print_how_to_open(built: str, demos: str) -> None:
    """The two commands a user types next, with this venv's JupyterLab."""
    lab = f"{os.path.relpath(sys.prefix)}/bin/jupyter lab"
    print("\nTo open them in JupyterLab (make installed it with the test extra):")
    print(f"  {lab + ' ' + built:<40}  the executed copies, with their outputs")
    print(f"  {lab + ' ' + demos:<40}  the demos, to run cell by cell")
    print(f"(as root, add --allow-root), or open {built}/*.html in a browser.")


def main() -> int:
    began = time.monotonic()
    notebooks = sorted(HERE.glob("*.ipynb"))
    failed = []
    for number, path in enumerate(notebooks, 1):
        print(f"=== {path.name} ({number} of {len(notebooks)}): running", flush=True)
        if not run_notebook(path):
            failed.append(path.name)
    total = time.monotonic() - began
    print(f"{len(notebooks)} notebook(s), {len(failed)} failed, total {total:.1f} s")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    print_how_to_open(os.path.relpath(OUT_DIR), os.path.relpath(HERE))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
