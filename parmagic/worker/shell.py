"""``!cmd``, ``x = !cmd`` and ``display(...)`` in items that run in worker processes, which
have no IPython.

IPython turns ``!echo {i}`` into ``get_ipython().system("echo {i}")``; the kernel's shell
cannot travel to a worker, so items there get this stand-in, which expands ``{expression}``
and ``$name`` from the calling item's names, as IPython does, and runs the command. What an
item displays travels back with its printed output and is displayed in the kernel, in item
order. Imports nothing heavy: it runs on the worker side.
"""

from __future__ import annotations

import re
import subprocess
import sys

_FIELD = re.compile(r"\{([^{}]+)\}|\$(\w+)")


def _expand(command: str, frame) -> str:
    names = {**frame.f_globals, **frame.f_locals}

    def value(match: re.Match) -> str:
        expression = match.group(1) or match.group(2)
        try:
            return str(eval(expression, frame.f_globals, names))
        except Exception:
            return match.group(0)  # left as written, as IPython leaves it

    return _FIELD.sub(value, command)


def _run(command: str, frame) -> subprocess.CompletedProcess:
    return subprocess.run(_expand(command, frame), shell=True, capture_output=True, text=True)


class WorkerShell:
    def system(self, command: str) -> None:
        done = _run(command, sys._getframe(1))
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)

    def getoutput(self, command: str, split: bool = True, depth: int = 0) -> list[str] | str:
        done = _run(command, sys._getframe(1 + depth))
        return done.stdout.splitlines() if split else done.stdout

    def __getattr__(self, name: str):
        raise RuntimeError(
            f"`get_ipython().{name}` (a magic in the loop body) runs only in the kernel: "
            "run the loop with --backend threads or serial"
        )


_SHELL = WorkerShell()
DISPLAYED = 3  # an item output's stream number for objects to display (1, 2: stdout, stderr)


def display(*objects, **options) -> None:
    """Keep the objects with the item's output; the kernel displays them in item order."""
    from .item_output import current_output

    sink = current_output.get()
    if sink is None:
        print(*objects)
    else:
        sink.add((DISPLAYED, (objects, options)))


def get_ipython() -> WorkerShell:
    return _SHELL
