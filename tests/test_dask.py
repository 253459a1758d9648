"""The dask backend on real clusters: one started from the command line (conftest's shared
`dask_cluster`: `dask scheduler` and `dask worker` on 127.0.0.1), and the backend's own local
cluster. The semantic cases are the conformance suite's, in small; then faults and safety.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import HANG_GUARD, report
from IPython.core.error import UsageError
from test_semantics import SETUP, parallel

from parmagic.errors import WorkerDied

pytest.importorskip("distributed")

LOCAL = "-b dask -w 2"


def append_order(ip, run, options: str) -> None:
    run(SETUP)
    parallel(
        run, options, "results = []\nfor i in range(24):\n    nap(i)\n    results.append(i * i)\n"
    )
    assert ip.user_ns["results"] == [i * i for i in range(24)]


def reduction(ip, run, options: str) -> None:
    cell = (
        "total = 0\ntext = ''\nfor i in range(200):\n    total += i * i\n    text += str(i % 10)\n"
    )
    parallel(run, options, cell)
    assert ip.user_ns["total"] == sum(i * i for i in range(200))
    assert ip.user_ns["text"] == "".join(str(i % 10) for i in range(200))


def prints_in_item_order(ip, run, options: str) -> None:
    run(SETUP)
    outcome = parallel(run, options, "for i in range(12):\n    nap(i)\n    print('item', i)\n")
    lines = [line for line in outcome.out.splitlines() if line.startswith("item ")]
    assert lines == [f"item {i}" for i in range(12)]


def error_leaves_the_serial_prefix(ip, run, options: str) -> None:
    outcome = run(
        f"%%parallel {options}\ndone = []\nfor i in range(20):\n"
        "    if i == 7:\n        raise ValueError('bad item')\n    done.append(i)\n"
    )
    assert isinstance(outcome.error, ValueError)
    assert "raised by item 7 of the parallel loop" in "\n".join(outcome.error._render_traceback_())
    assert ip.user_ns["done"] == list(range(7))


def notebook_function(ip, run, options: str) -> None:
    run(
        "class Box:\n    def __init__(self, n):\n        self.n = n\ndef square(box):\n    return box.n ** 2\n"
    )
    parallel(run, options, "squares = [square(Box(n)) for n in range(30)]\n")
    assert ip.user_ns["squares"] == [n * n for n in range(30)]


def seeded_numbers(ip, run, options: str) -> None:
    """--seed: each item's numbers as on serial (the workers run one thread each)."""
    run("import numpy as np, random\n")
    cell = "xs = []\nfor i in range(9):\n    xs.append((np.random.rand(), random.random()))\n"
    parallel(run, "-b serial --seed 5 -q", cell)
    reference = ip.user_ns["xs"]
    parallel(run, f"{options} --seed 5 --chunksize 2 -q", cell)
    assert ip.user_ns["xs"] == reference


CASES = [
    seeded_numbers,
    append_order,
    reduction,
    prints_in_item_order,
    error_leaves_the_serial_prefix,
    notebook_function,
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_semantics_on_a_cluster_started_from_the_command_line(ip, run, dask_cluster, case):
    case(ip, run, f"-b dask --scheduler {dask_cluster}")
    assert report().backend == "dask" and report().workers == 2
    assert all(name.startswith("tcp://127.0.0.1:") for name in report().per_worker)


def _listening(process: psutil.Process) -> set[tuple[str, int]]:
    try:
        connections = getattr(process, "net_connections", None) or process.connections  # psutil 5
        connections = connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return set()
    return {c.laddr[:2] for c in connections if c.status == psutil.CONN_LISTEN}


def test_semantics_and_loopback_only_on_the_local_cluster(ip, run):
    kernel = psutil.Process()
    children_before = {p.pid for p in kernel.children(recursive=True)}
    kernel_before = _listening(kernel)
    for number, case in enumerate(CASES):  # one local cluster for every case: it stays warm
        case(ip, run, LOCAL)
        if number == 0:  # the cluster's start is part of the first run's wall time
            first = report()
            assert 0 < first.pool_start <= first.startup <= first.wall
    assert report().dashboard and report().dashboard.startswith("http://127.0.0.1:")
    started = [p for p in kernel.children(recursive=True) if p.pid not in children_before]
    assert len(started) >= 2  # the two worker processes
    sockets = _listening(kernel) - kernel_before  # scheduler, nannies, dashboard: in the kernel
    for process in started:
        sockets |= _listening(process)
    assert len(sockets) >= 4
    assert {host for host, _ in sockets} == {"127.0.0.1"}, sockets
    info = str(ip.run_line_magic("parallel_info", ""))
    assert "dask (local cluster, 2 worker threads, scheduler tcp://127.0.0.1:" in info
    assert "dashboard http://127.0.0.1:" in info


def test_an_unreachable_scheduler_is_a_clear_error_and_the_kernel_stays_usable(ip, run):
    address = f"tcp://127.0.0.1:{_free_port()}"
    began = time.monotonic()
    outcome = run(
        f"%%parallel -b dask --scheduler {address}\nbefore = 1\nfor i in range(3):\n    pass\n"
    )
    assert time.monotonic() - began < HANG_GUARD
    assert isinstance(outcome.error, UsageError)
    assert f"could not reach a dask scheduler at {address}" in str(outcome.error)
    assert "before" not in ip.user_ns  # refused before the statements before the loop ran
    parallel(run, "-b serial", "after = [k for k in range(3)]\n")
    assert ip.user_ns["after"] == [0, 1, 2]


def test_scheduler_belongs_to_dask(ip, run):
    outcome = run(
        "%%parallel -b threads --scheduler tcp://127.0.0.1:1\nfor i in range(3):\n    pass\n"
    )
    assert isinstance(outcome.error, UsageError) and "--backend dask" in str(outcome.error)


def test_a_killed_worker_is_retried_by_the_cluster_and_the_run_completes(ip, run, tmp_path):
    """dask's scheduler reschedules the tasks of a worker that died (its nanny starts a new
    one); effects are applied in the kernel only, so the run ends as the serial loop would."""
    marker = tmp_path / "pid-3"  # item 3's file (one file written by every item is refused)
    run(f"import os, time\nMARKER = {str(tmp_path / 'pid-')!r}\n")

    def kill_once() -> None:
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if marker.exists():  # else the run ended without item 3 sleeping: the test fails below
            time.sleep(0.1)
            psutil.Process(int(marker.read_text())).kill()

    killer = threading.Thread(target=kill_once)
    killer.start()
    outcome = run(
        f"%%parallel {LOCAL}\ndone = []\nfor i in range(8):\n"
        "    if i == 3 and not os.path.exists(f'{MARKER}{i}'):\n"
        "        with open(f'{MARKER}{i}', 'w') as f:\n            f.write(str(os.getpid()))\n"
        "        time.sleep(2)\n    done.append(i)\n"
    )
    killer.join()
    assert outcome.error is None, outcome.err
    assert ip.user_ns["done"] == list(range(8))


def test_an_item_that_kills_every_worker_fails_the_run_naming_it(ip, run):
    """Past dask's allowed failures (3 by default) the scheduler gives up with KilledWorker:
    the run fails with WorkerDied naming the item, after the serial prefix."""
    run("import os\n")
    outcome = run(
        f"%%parallel {LOCAL} --chunksize 1\ndone = []\nfor i in range(6):\n"
        "    if i == 2:\n        os._exit(1)\n    done.append(i)\n"
    )
    assert isinstance(outcome.error, WorkerDied), outcome.err
    assert "dask gave up on item 2:" in str(outcome.error)
    assert ip.user_ns["done"] == [0, 1]
    parallel(run, LOCAL, "after = [k * 2 for k in range(20)]\n")
    assert ip.user_ns["after"] == [k * 2 for k in range(20)]


def test_an_item_over_its_timeout_fails_and_its_worker_is_replaced(ip, run):
    run("import time\n")
    began = time.monotonic()
    outcome = run(
        f"%%parallel {LOCAL} --timeout 0.5\ndone = []\nfor i in range(6):\n"
        "    if i == 2:\n        time.sleep(30)\n    done.append(i)\n"
    )
    assert isinstance(outcome.error, TimeoutError)
    assert time.monotonic() - began < HANG_GUARD  # the item sleeps 30 s
    message = "\n".join(outcome.error._render_traceback_())
    assert "longer than the 0.5 s allowed by --timeout" in message
    assert "dask worker process was stopped" in message
    assert ip.user_ns["done"] == [0, 1]
    parallel(run, LOCAL, "after = [k * 2 for k in range(20)]\n")
    assert ip.user_ns["after"] == [k * 2 for k in range(20)]


def test_interrupt_stops_a_dask_run_with_the_serial_prefix(ip, run):
    import os
    import signal

    run("import time\n")
    parallel(run, LOCAL, "warm = [k for k in range(4)]\n")  # the cluster starts before the clock
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    began = time.monotonic()
    timer.start()
    try:
        outcome = run(
            f"%%parallel {LOCAL} --chunksize 1\ndone = []\nfor i in range(40):\n"
            "    time.sleep(0.2)\n    done.append(i)\n"
        )
    finally:
        timer.cancel()
    assert isinstance(outcome.error, KeyboardInterrupt)
    assert time.monotonic() - began < HANG_GUARD
    done = ip.user_ns["done"]
    assert 0 < len(done) < 40 and done == list(range(len(done)))  # a prefix, in order
    assert "the parallel run was interrupted" in "\n".join(outcome.error._render_traceback_())
    parallel(run, LOCAL, "after = [k * 2 for k in range(20)]\n")
    assert ip.user_ns["after"] == [k * 2 for k in range(20)]


def test_exported_dask_script_runs_and_prints_what_the_cell_printed(ip, run, tmp_path):
    script = tmp_path / "on_dask.py"
    outcome = run(
        f"%%parallel -q {LOCAL} --export {script}\ndef cube(n):\n    return n ** 3\n"
        "total = 0\nfor n in range(30):\n    total += cube(n)\nprint(total, n)\n"
    )
    assert outcome.error is None, outcome.err
    assert "Client(cluster)" in script.read_text()
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        done.stdout.strip() == outcome.out.splitlines()[0] == f"{sum(n**3 for n in range(30))} 29"
    )


def test_seed_gives_the_same_numbers_on_the_local_cluster(ip, run):
    seeded_numbers(ip, run, LOCAL)


def test_compare_with_dask_on_a_given_scheduler_runs_every_backend_named(ip, run, dask_cluster):
    outcome = run(
        f"%%parallel -q --compare serial,threads,dask --scheduler {dask_cluster} -o cmp\n"
        "squares = []\nfor i in range(20):\n    squares.append(i * i)\n"
    )
    assert outcome.error is None, outcome.err
    rows = {row.backend: row for row in ip.user_ns["cmp"].rows}
    assert list(rows) == ["serial", "threads", "dask"]
    assert all(row.same for row in rows.values()), [
        (r.refused, r.difference) for r in rows.values()
    ]
    assert ip.user_ns["squares"] == [i * i for i in range(20)]
