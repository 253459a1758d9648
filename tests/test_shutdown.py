"""Clean shutdown: leaving the interpreter leaves no worker process behind."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest
from conftest import FRESH_SHELL

SCRIPT = (
    FRESH_SHELL
    + """
ip.run_line_magic("load_ext", "parmagic")
ip.run_cell("import os")
ip.run_cell("%%parallel -q -b processes -w 2 --start-method {method}\\npids = [os.getpid() for _ in range(40)]\\n")
ip.run_cell("%%parallel -q -b threads -w 3\\nsquares = [n * n for n in range(40)]\\n")
print(sorted(set(ip.user_ns["pids"])))
"""
)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_interpreter_exit_stops_every_worker(method):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(method=method)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.strip().strip("[]").split(",")]
    assert len(pids) == 2 and os_pid_not_ours(pids)
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) for p in pids)
    assert "leaked" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def os_pid_not_ours(pids: list[int]) -> bool:
    import os

    return os.getpid() not in pids
