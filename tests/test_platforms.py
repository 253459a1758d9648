"""Platforms other than Linux: without fork, SIGALRM or /proc (Windows has none of them, macOS
has no /proc and spawns by default), `%load_ext` and every backend that can run there work, and
what cannot says so in a sentence.

A fresh interpreter takes those away before it imports IPython or parmagic: multiprocessing
offers spawn only, and spawn is its default; `signal` has no SIGALRM or timer; `os` has no
fork or CPU affinity; parmagic's own reads of /proc fail as files that do not exist.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import FRESH_SHELL

WITHOUT_FORK_ALARMS_AND_PROC = """
import builtins, multiprocessing, os, signal, sys
import multiprocessing.context as context
for method in ("fork", "forkserver"):
    context._concrete_contexts.pop(method)
context._default_context._default_context = context._concrete_contexts["spawn"]
multiprocessing.get_all_start_methods = lambda: ["spawn"]
for name in ("fork", "sched_getaffinity", "register_at_fork"):
    delattr(os, name)
for name in ("SIGALRM", "setitimer", "ITIMER_REAL"):
    delattr(signal, name)
opens = builtins.open, os.open


def refusing_proc(opener):
    def guarded(path, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if str(path).startswith("/proc") and caller.startswith("parmagic"):
            raise FileNotFoundError(path)
        return opener(path, *args, **kwargs)
    return guarded


builtins.open, os.open = map(refusing_proc, opens)
"""

CELLS = """
import json
import parmagic
ip.run_line_magic("load_ext", "parmagic")
ip.run_cell("def square(x):\\n    return x * x\\n")
outcomes = {}


def outcome(key, cell):
    ip.user_ns.pop("out", None)
    result = ip.run_cell(cell)
    error = result.error_in_exec or result.error_before_exec
    outcomes[key] = [type(error).__name__ if error else None, str(error or ""), ip.user_ns.get("out")]


for backend in ("serial", "threads", "futures", "processes", "futures:processes", "auto"):
    outcome(backend, f"%%parallel -q -b {backend} -w 2\\nout = []\\nfor i in range(6):\\n    out.append(square(i))\\n")
    if backend == "processes":
        outcomes["start method"] = parmagic.last_report().start_method
outcome("line magic", "%parallel -q -b processes -w 2 out = [square(i) for i in range(6)]")
for backend in ("serial", "processes", "auto", "threads"):
    outcome(f"timeout {backend}", f"%%parallel -q -b {backend} --timeout 5\\nout = [square(i) for i in range(6)]\\n")
outcome("compare timeout", "%%parallel -q --compare threads --timeout 5\\nout = [square(i) for i in range(6)]\\n")
outcome("fork", "%%parallel -q -b processes --start-method fork\\nout = [square(i) for i in range(6)]\\n")
print(json.dumps(outcomes))
"""
SQUARES = [i * i for i in range(6)]


@pytest.fixture(scope="module")
def outcomes() -> dict:
    program = WITHOUT_FORK_ALARMS_AND_PROC + FRESH_SHELL + CELLS
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "backend",
    ["serial", "threads", "futures", "processes", "futures:processes", "auto", "line magic"],
)
def test_every_backend_runs_without_fork_alarms_or_proc(outcomes, backend):
    assert outcomes[backend] == [None, "", SQUARES]


@pytest.mark.parametrize("backend", ["serial", "processes", "auto", "compare timeout"])
def test_a_time_limit_that_needs_sigalrm_is_refused_in_a_sentence(outcomes, backend):
    error, message, out = outcomes[f"timeout {backend}" if " " not in backend else backend]
    assert error == "UsageError" and out is None  # refused before anything ran
    assert "stops an item with SIGALRM, which this platform does not have" in message
    assert "--timeout with -b threads, futures, asyncio or dask" in message


def test_a_time_limit_on_threads_needs_no_alarm(outcomes):
    assert outcomes["timeout threads"] == [None, "", SQUARES]


def test_fork_is_refused_where_the_platform_has_none(outcomes):
    error, message, out = outcomes["fork"]
    assert error == "UsageError" and out is None
    assert message == (
        "--start-method fork: this platform cannot start worker processes that way; it offers spawn"
    )


def test_worker_processes_start_by_the_platforms_default(outcomes):
    assert outcomes["start method"] == "spawn"
