"""Shared fixtures: one in-process IPython shell, backends to stamp suites out over, leak checks."""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from IPython.testing.globalipapp import start_ipython

import parmagic
from parmagic.worker import item_clock

# The names a conformance test is stamped out over: backend plus process start method.
BACKENDS = {
    "serial": "-b serial",
    "threads": "-b threads -w 4",
    "futures": "-b futures -w 4",
    "fork": "-b processes -w 2 --start-method fork",
    "spawn": "-b processes -w 2 --start-method spawn",
    "forkserver": "-b processes -w 2 --start-method forkserver",
    "futures-fork": "-b futures:processes -w 2 --start-method fork",
    "futures-spawn": "-b futures:processes -w 2 --start-method spawn",
    "asyncio": "-b asyncio",
}
PROCESS_BACKENDS = ("fork", "spawn", "forkserver")
# CI runs the conformance suites again with this start method as the platform's default
# (macOS's spawn, Linux's forkserver from Python 3.14): the `default` variants name none.
PLATFORM_START_METHOD = os.environ.get("PARMAGIC_TEST_PLATFORM_START_METHOD")
if PLATFORM_START_METHOD:
    multiprocessing.set_start_method(PLATFORM_START_METHOD, force=True)
    BACKENDS |= {"default": "-b processes -w 2", "futures-default": "-b futures:processes -w 2"}
# The `backend` fixture's one parameter outside BACKENDS: its options name the scheduler of the
# test process's shared cluster (`dask_cluster`), whose port is known only once it has started.
# Tests that name backends (BACKENDS[name], list(BACKENDS)) leave dask out.
DASK = "dask"
# Seconds: a bound that tells a stop from a hang, whatever else the machine is doing. How fast
# runs stop (the spec's two seconds) is measured in bench/faults.py, not asserted here.
HANG_GUARD = 20.0
REPLY_TIMEOUT = 110  # seconds for one cell of a real kernel; pytest-timeout stops a test at 120
# Started once by multiprocessing and kept for the interpreter's life; not ours to close.
# their command lines (a pytest run's own may name a forkserver test)
_MULTIPROCESSING_HELPERS = (
    "from multiprocessing.forkserver import main",
    "from multiprocessing.resource_tracker import main",
)
# Threads kept for the interpreter's life, not ours to close: tqdm's one monitor thread for
# all its bars (TMonitor, by type), and dask's two single-thread executors (for offloaded work,
# distributed.utils._offload_executor, and for future callbacks, Future._cb_executor).
_INTERPRETER_LIFE_THREADS = ("Dask-Offload", "Dask-Callback-Thread")


# `make test-fast` leaves these out (`-m "not slow"`); `make test` runs everything. Slow: a real
# kernel, a terminal, a cluster, fuzzing, the stress matrix, fresh interpreters per worker, and
# the concurrent.futures variants (their pools' twins, threads and fork, stay in the fast set).
# The `backend` fixture's dask parameter is marked `dask` and `slow` where it is declared.
SLOW_MODULES = {
    "test_kernel", "test_terminal", "test_dask", "test_fuzz_rewriter", "test_shutdown",
    "test_stress", "test_kernel_death", "test_jupyterlab", "test_classic_notebook",
}  # fmt: skip
SLOW_VARIANTS = ("spawn", "forkserver", "futures")


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject.toml): one test process more than the usable cores. Most tests
    wait (on worker processes, kernels, sleeps, a slow server), and a third process on two
    cores fills those waits: the suite takes about a fifth less time, loaded or not."""
    from parmagic.machine import usable_cores

    return usable_cores() + 1


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        variant = item.callspec.id if hasattr(item, "callspec") else ""
        if item.module.__name__ in SLOW_MODULES or any(v in variant for v in SLOW_VARIANTS):
            item.add_marker(pytest.mark.slow)


@dataclass
class CellRun:
    result: object  # IPython's ExecutionResult
    out: str
    err: str

    @property
    def error(self) -> BaseException | None:
        return self.result.error_in_exec or self.result.error_before_exec


@pytest.fixture(scope="session")
def _ipython():
    """The shell, with everything imported so far frozen out of the garbage collector (as a
    long-lived process may do): each test resets the shell twice, and each reset collects,
    which walked the whole heap of pytest, NumPy, pandas and dask (70 ms a reset)."""
    shell = start_ipython()
    shell.run_line_magic("load_ext", "parmagic")  # its modules, imported once
    shell.run_line_magic("unload_ext", "parmagic")
    gc.collect()
    gc.freeze()
    return shell


@pytest.fixture
def ip(_ipython):
    """A fresh namespace with parmagic loaded; unloading it closes every pool it started."""
    _ipython.reset(new_session=False)
    _ipython.run_line_magic("load_ext", "parmagic")
    try:
        yield _ipython
    finally:
        _ipython.run_line_magic("unload_ext", "parmagic")
        _ipython.config.pop("ParallelMagics", None)  # %config settings of this test
        _ipython.reset(new_session=False)


@pytest.fixture
def run(ip, capsys):
    """Run a cell in the shell and return its result with what it printed."""

    def run_cell(source: str) -> CellRun:
        capsys.readouterr()
        result = ip.run_cell(source)
        captured = capsys.readouterr()
        return CellRun(result, captured.out, captured.err)

    return run_cell


@pytest.fixture(params=[*BACKENDS, pytest.param(DASK, marks=(pytest.mark.dask, pytest.mark.slow))])
def backend(request) -> str:
    """The magic's options for each backend (and each process start method); for dask, the
    shared cluster's scheduler, which starts when the first test of this process needs it."""
    if request.param == DASK:
        return f"-b dask --scheduler {request.getfixturevalue('dask_cluster')} -w 2"
    return BACKENDS[request.param]


# The processes started by `dask_cluster` (scheduler, worker nannies): they and their children
# (the workers) outlive tests on purpose, so the leak check leaves them out.
_DASK_CLUSTER: list[subprocess.Popen] = []
# Runs its arguments (execv) with SIGTERM asked for should this test process die first: the
# cluster then ends with it even if the session's teardown never runs (a crashed xdist worker).
_ENDS_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() == int(sys.argv[1]):\n    os.execv(sys.argv[2], sys.argv[2:])\n"
)


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory) -> str:
    """A dask scheduler and two workers of one thread each, started from the command line on
    127.0.0.1 only, once per test process and only if a test asks for it; the scheduler's
    address. Each test's own client (parmagic's) connects and closes; the cluster stays."""
    pytest.importorskip("distributed")
    from distributed import Client

    dask = str(Path(sys.executable).with_name("dask"))
    folder = tmp_path_factory.mktemp("dask-cluster")
    file, log = folder / "scheduler.json", folder / "cluster.log"
    # --dashboard-address too: a worker started with --no-dashboard still serves its HTTP
    # routes, on every interface by default
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    commands = [
        [dask, "scheduler", *loopback, "--port", "0"],
        [dask, "worker", "--nworkers", "2", "--nthreads", "1", *loopback, "--no-dashboard"],
    ]
    try:
        with open(log, "wb") as output:
            for command in commands:
                _DASK_CLUSTER.append(
                    subprocess.Popen(
                        [sys.executable, "-c", _ENDS_WITH_PARENT, str(psutil.Process().pid),
                         *command, "--scheduler-file", str(file)],
                        stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
                deadline = time.monotonic() + 60  # the scheduler's file, before any worker
                while not file.exists() and time.monotonic() < deadline:
                    assert _DASK_CLUSTER[0].poll() is None, log.read_text()[-2000:]
                    time.sleep(0.05)
        with Client(scheduler_file=str(file), timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield json.loads(file.read_text())["address"]
    finally:
        _stop_dask_cluster()


def _stop_dask_cluster() -> None:
    workers = []  # the nannies' children, which outlive a nanny killed before them
    for process in _DASK_CLUSTER:
        try:
            workers += psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
    for process in reversed(_DASK_CLUSTER):  # the workers first, then the scheduler
        process.terminate()
    for process in _DASK_CLUSTER:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    _, alive = psutil.wait_procs(workers, timeout=10)
    for worker in alive:
        worker.kill()
    _DASK_CLUSTER.clear()


def _dask_cluster_pids() -> set[int]:
    pids = set()
    for process in _DASK_CLUSTER:
        pids.add(process.pid)
        try:
            pids |= {child.pid for child in psutil.Process(process.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    return pids


def _is_helper(process: psutil.Process) -> bool:
    return any(h in " ".join(process.cmdline()) for h in _MULTIPROCESSING_HELPERS)


def _our_children() -> set[int]:
    """Every descendant but multiprocessing's own helpers and the shared dask cluster. A
    forkserver's children (workers) carry its command line: they count, being a helper's
    children."""
    children = set()
    cluster = _dask_cluster_pids()
    for child in psutil.Process().children(recursive=True):
        if child.pid in cluster:
            continue
        try:
            parent = child.parent()
            if not (_is_helper(child) and not (parent and _is_helper(parent))):
                children.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return children


def _kernel_hooks() -> dict[str, object]:
    """What a run may swap in the kernel and must put back (the objects themselves)."""
    hooks = {name: getattr(sys, name) for name in ("stdout", "stderr", "excepthook", "displayhook")}
    hooks["SIGINT handler"] = signal.getsignal(signal.SIGINT)
    # pytest-timeout owns SIGALRM around each test (and resets it when a test fails): only
    # parmagic's own alarm handler, left in place, is a leak
    hooks["parmagic's SIGALRM handler"] = signal.getsignal(signal.SIGALRM) is item_clock.expire
    return hooks


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves the kernel's streams, hooks or signal handlers replaced, or
    threads or child processes behind once the shell is closed."""
    threads_before = set(threading.enumerate())
    children_before = _our_children()
    hooks_before = _kernel_hooks()
    yield
    replaced = [name for name, now in _kernel_hooks().items() if now is not hooks_before[name]]
    assert not hooks_before["parmagic's SIGALRM handler"]
    assert not replaced, f"left replaced in the kernel: {replaced}"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        threads = [
            t
            for t in threading.enumerate()
            if t not in threads_before
            and t.is_alive()
            and type(t).__name__ != "TMonitor"
            and not t.name.startswith(_INTERPRETER_LIFE_THREADS)
        ]
        children = _our_children() - children_before
        if not threads and not children:
            return
        time.sleep(0.05)
    pytest.fail(f"left behind: threads {threads}, child processes {sorted(children)}")


# A shell (``ip``) in a new interpreter, whose output a test reads. IPython 7 (Colab's) sets
# the terminal's title as the shell starts, where TERM names an xterm: escapes in the output.
FRESH_SHELL = (
    "import os\nos.environ['TERM'] = 'dumb'\n"
    "from IPython.testing.globalipapp import start_ipython\nip = start_ipython()\n"
)


def in_a_fresh_shell(code: str, before: str = "") -> str:
    """What ``code`` prints in a new interpreter, run after ``before`` and a shell (``ip``)
    with parmagic loaded: for what the suite's own shell cannot show (affinity, the heap)."""
    shell = FRESH_SHELL + "ip.run_line_magic('load_ext', 'parmagic')\n"
    program = before + shell + code
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextmanager
def a_kernel(cwd: str, now: bool = False):
    """A real kernel of this venv and its client, shut down after (``now``: without asking).
    jupyter_client 7 (Colab's) runs its blocking calls on this thread's event loop, making one
    it never closes where there is none, and leaves its client's zmq context to the garbage
    collector: here it gets a loop, and both are closed with the kernel."""
    from jupyter_client.manager import start_new_kernel

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        km, kc = start_new_kernel(kernel_name="python3", cwd=cwd)
        try:
            yield km, kc
        finally:
            try:
                kc.stop_channels()
            finally:
                km.shutdown_kernel(now=now)
                if kc.context is not km.context:  # jupyter_client 7: the client's own
                    kc.context.destroy(linger=0)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def execute_notebook(nb, folder) -> None:
    """Execute a notebook as nbclient (nbconvert, papermill, make demo) does: no one watches."""
    from nbclient import NotebookClient

    handler = signal.getsignal(signal.SIGINT)  # nbclient's event loop may leave its own here
    try:
        NotebookClient(nb, kernel_name="python3", timeout=REPLY_TIMEOUT,
                       resources={"metadata": {"path": str(folder)}}).execute()  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, handler)


def report():
    return parmagic.last_report()


@pytest.fixture
def busy_machine():
    """Every core kept busy by another program, as on a shared machine."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    yield
    for spinner in spinners:
        spinner.kill()
        spinner.wait()


UNBOUND = "<unbound>"  # what serial_state says of a name the plain loop leaves unbound


def parallel(run, options: str, cell: str):
    """Run the cell under ``%%parallel options``; it must succeed."""
    outcome = run(f"%%parallel {options}\n{cell}")
    assert outcome.error is None, outcome.out + outcome.err
    return outcome


def serial_state(ip, cell: str, names: list[str]) -> dict:
    """Run the cell as plain Python in a scratch namespace copied from the shell's."""
    namespace = {k: v for k, v in ip.user_ns.items() if not k.startswith("_")}
    exec(cell, namespace)
    return {name: namespace.get(name, UNBOUND) for name in names}
