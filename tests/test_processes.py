"""The process backend's promises: shipping, warm pools, copies, dead workers."""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys

import pytest
from conftest import BACKENDS, PROCESS_BACKENDS, in_a_fresh_shell, report
from IPython.core.error import UsageError

import parmagic

process_backend = pytest.mark.parametrize("method", PROCESS_BACKENDS)
# the same promises through concurrent.futures.ProcessPoolExecutor
all_process_backends = pytest.mark.parametrize(
    "method", [*PROCESS_BACKENDS, "futures-fork", "futures-spawn"]
)


def run_ok(run, options: str, cell: str):
    outcome = run(f"%%parallel {options}\n{cell}")
    assert outcome.error is None, outcome.out + outcome.err
    return outcome


@pytest.mark.parametrize("method", ["spawn", "forkserver", "futures-spawn"])
def test_workers_never_import_ipython(ip, run, method):
    run("import sys\n")
    run_ok(run, BACKENDS[method], "flags = ['IPython' in sys.modules for _ in range(6)]\n")
    assert ip.user_ns["flags"] == [False] * 6


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux's scheduling policies")
@process_backend
def test_a_worker_waits_under_the_batch_policy_and_runs_items_under_the_kernels(ip, run, method):
    """Woken by a chunk, a worker does not preempt the kernel (worker/process.py); its items,
    and what they start, run under the kernel's own policy, as in the plain loop."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode:
        pytest.skip("this machine does not let a process choose the batch policy")
    run("import os\n")
    run_ok(
        run,
        BACKENDS[method],
        "seen = [(os.getpid(), os.sched_getscheduler(0)) for _ in range(6)]\n",
    )
    seen = ip.user_ns["seen"]
    assert {policy for _, policy in seen} == {os.sched_getscheduler(0)}
    for pid in {pid for pid, _ in seen}:  # its pipe-reading thread, and its main thread now
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
        assert os.SCHED_BATCH in {os.sched_getscheduler(tid) for tid in threads}


@all_process_backends
def test_captured_data_is_pickled_once_and_loaded_once_per_worker(ip, run, method):
    import probes

    probes.PICKLED = 0
    run("import probes\nbig = probes.CountedPickles(list(range(10_000)))\n")
    run_ok(
        run, BACKENDS[method] + " --chunksize 1",
        "loads = []\nfor i in range(40):\n    loads.append((len(big.payload), probes.loads_here()))\n",
    )  # fmt: skip
    assert probes.PICKLED == 1  # once per run in the kernel, not once per item
    assert ip.user_ns["loads"] == [(10_000, 1)] * 40  # each worker unpickled it once


@all_process_backends
def test_pool_stays_warm_until_its_shape_changes(ip, run, method):
    run("import os\n")
    options = BACKENDS[method]
    cell = "pids = {os.getpid() for _ in range(20)}\n"
    run_ok(run, options, cell)
    first = ip.user_ns["pids"]
    run_ok(run, options, cell)
    second = ip.user_ns["pids"]
    assert len(first | second) <= 2  # two workers in all: the pool stayed warm
    run_ok(run, options.replace("-w 2", "-w 1"), cell)
    assert not ip.user_ns["pids"] & (first | second)  # one worker: a new pool


def test_changes_parmagic_cannot_replay_are_refused_unless_accepted(ip, run):
    run("class Box:\n    count = 0\nbox = Box()\nran = []\n")
    for name in ("fork", "threads"):
        refused = run(
            f"%%parallel {BACKENDS[name]}\nfor i in range(3):\n    ran.append(i)\n    box.count = i\n"
        )
        assert isinstance(refused.error, UsageError)
        assert str(refused.error).startswith("line 4: `box.count = ...`, which parmagic cannot")
        assert "--unordered" in str(refused.error)
        assert ip.user_ns["ran"] == []  # refused before any item ran
    outcome = run_ok(
        run, BACKENDS["fork"] + " --unordered", "for i in range(3):\n    box.count = i\n"
    )
    assert "line 3: `box.count = ...` acts on a copy inside each worker process" in outcome.err
    assert ip.user_ns["box"].count == 0
    threads = run_ok(
        run,
        BACKENDS["threads"] + " --chunksize 3 --unordered",
        "for i in range(3):\n    box.count = i\n",
    )
    assert "changes the real `box` as items finish, which is not item order" in threads.err
    assert ip.user_ns["box"].count == 2  # one chunk: in order
    serial = run_ok(run, BACKENDS["serial"], "for i in range(3):\n    box.count = -i\n")
    assert "parmagic warning" not in serial.err and ip.user_ns["box"].count == -2


def test_changes_made_through_notebook_functions_are_refused_unless_accepted(ip, run):
    run("cache = {}\ndef remember(k):\n    cache[k] = k * 2\n    return k\n")
    refused = run(f"%%parallel {BACKENDS['fork']}\nfor i in range(4):\n    remember(i)\n")
    assert isinstance(refused.error, UsageError)
    assert (
        "the notebook function `remember` (line 3 of its cell) changes the kernel's `cache`"
        in str(refused.error)
    )
    outcome = run_ok(
        run, BACKENDS["spawn"] + " --unordered", "for i in range(4):\n    remember(i)\n"
    )
    assert "the loop changed `cache` inside the worker processes" in outcome.err  # still checked
    assert ip.user_ns["cache"] == {}


def test_names_that_cannot_come_back_keep_their_old_value(ip, run):
    run("import threading\nlk = 'old'\n")
    outcome = run_ok(
        run, BACKENDS["fork"],
        "sizes = []\nfor i in range(3):\n    lk = threading.Lock()\n    sizes.append(i)\n",
    )  # fmt: skip
    assert ip.user_ns["sizes"] == [0, 1, 2] and ip.user_ns["lk"] == "old"
    assert "`lk` (a lock) could not be sent back" in outcome.err


@pytest.mark.parametrize("name", ["fork", "spawn", "futures-fork"])
def test_a_file_the_last_item_closed_is_a_closed_file_in_the_kernel(ip, run, name, tmp_path):
    """``with open(p) as f`` in the body: the plain loop leaves ``f`` bound to the last item's
    closed file; so does a run on worker processes, where no open file could travel."""
    run(f"folder = {str(tmp_path)!r}\n")
    outcome = run_ok(
        run, BACKENDS[name],
        "for i in range(3):\n    with open(f'{folder}/f{i}.txt', 'w') as f:\n        f.write(str(i))\n",
    )  # fmt: skip
    f = ip.user_ns["f"]
    assert type(f).__name__ == "TextIOWrapper" and f.closed and f.mode == "w"
    assert f.name == f"{tmp_path}/f2.txt" and "could not be sent back" not in outcome.err
    assert (tmp_path / "f2.txt").read_text() == "2"


@process_backend
def test_a_dead_worker_fails_the_run_naming_its_item_and_the_pool_heals(ip, run, method):
    run("import os\n")
    outcome = run(
        f"%%parallel {BACKENDS[method]} --chunksize 1\ndone = []\nfor i in range(6):\n"
        "    if i == 3:\n        os._exit(7)\n    done.append(i)\n"
    )
    assert isinstance(outcome.error, parmagic.errors.WorkerDied)
    assert "exit code 7" in str(outcome.error) and "running item 3;" in str(outcome.error)
    assert ip.user_ns["done"] == [0, 1, 2]
    run_ok(run, BACKENDS[method], "again = [i for i in range(10)]\n")
    assert ip.user_ns["again"] == list(range(10))


def test_code_that_cannot_load_in_a_worker_fails_its_items_clearly(ip, run, tmp_path, monkeypatch):
    (tmp_path / "kernel_only_module.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run("import kernel_only_module\n")
    (tmp_path / "kernel_only_module.py").unlink()
    outcome = run(
        f"%%parallel {BACKENDS['spawn']}\nout = []\nfor i in range(3):\n    out.append(kernel_only_module.VALUE + i)\n"
    )
    assert isinstance(outcome.error, ModuleNotFoundError)
    assert "while loading the loop's code in a worker process" in "\n".join(outcome.error.__notes__)
    assert ip.user_ns["out"] == []


@process_backend
def test_native_thread_pools_are_capped_in_workers(ip, run, method):
    run("import numpy as np\nfrom threadpoolctl import threadpool_info\n")
    cell = "threads = []\nfor i in range(4):\n    np.dot(np.ones(3), np.ones(3))\n    threads.append(max(p['num_threads'] for p in threadpool_info()))\n"
    outcome = run_ok(run, BACKENDS[method], cell)  # two workers on this machine's cores
    from parmagic.machine import usable_cores

    limit = max(1, usable_cores() // 2)
    assert ip.user_ns["threads"] == [limit] * 4
    if limit < usable_cores():
        assert report().native_limit == limit
        assert f"limited to {limit} per worker process" in outcome.out


@pytest.mark.parametrize("name", ["fork", "futures-fork"])
def test_items_that_cannot_travel_fail_and_leave_the_pool_healthy(ip, run, name):
    run("gens = [[1], (j for j in range(3)), [2]]\n")
    outcome = run(
        f"%%parallel {BACKENDS[name]} --chunksize 1\nsums = []\nfor g in gens:\n    sums.append(sum(g))\n"
    )
    assert isinstance(outcome.error, TypeError)
    assert "cannot be sent to a worker process" in str(outcome.error)
    assert ip.user_ns["sums"] == [1]
    run_ok(run, BACKENDS[name], "after = [i + 1 for i in range(6)]\n")
    assert ip.user_ns["after"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", ["fork", "futures-spawn"])
def test_exceptions_with_their_own_init_keep_their_type(ip, run, name):
    run(
        "class Odd(Exception):\n    def __init__(self, a, b):\n        super().__init__(f'{a}-{b}')\n        self.a = a\n"
    )
    outcome = run(
        f"%%parallel {BACKENDS[name]}\nout = []\nfor i in range(6):\n    out.append(i)\n    if i == 3:\n        raise Odd(i, 'x')\n"
    )
    assert type(outcome.error).__name__ == "Odd" and outcome.error.a == 3
    assert str(outcome.error) == "3-x" and ip.user_ns["out"] == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["fork", "futures-fork"])
def test_a_captured_array_goes_once_through_shared_memory(ip, run, name):
    run("import numpy as np\nbig = np.arange(2_000_000, dtype=float)\n")  # 16 MB
    before = set(os.listdir("/dev/shm"))
    run_ok(
        run,
        BACKENDS[name] + " --chunksize 1 -q",
        "sums = []\nfor i in range(40):\n    sums.append(float(big[i * 1000]))\n",
    )
    assert ip.user_ns["sums"] == [float(i * 1000) for i in range(40)]
    sent = report().bytes_sent
    assert 16e6 <= sent <= 16e6 + 1e6  # written once for every worker, never per item
    left = set(os.listdir("/dev/shm")) - before
    ours = f"parmagic-{os.getpid()}-"  # the kernel writes them (another test's may come and go)
    assert not [f for f in left if f.startswith(ours)]  # removed after the run


def test_a_worker_changing_a_shared_array_changes_its_own_copy(ip, run):
    run(
        "import numpy as np\nbig = np.zeros(1_000_000)\ndef poke(a, i):\n    a[i] = 1\n    return float(a.sum())\n"
    )
    # poke changes the array it is handed: refused on processes unless copies are accepted
    run_ok(run, BACKENDS["fork"] + " -q --unordered", "seen = [poke(big, i) for i in range(6)]\n")
    assert ip.user_ns["big"].sum() == 0  # the kernel's array is untouched
    assert all(1 <= s <= 6 for s in ip.user_ns["seen"])


def test_a_chunk_queued_behind_a_dying_item_runs_on_the_replacement(ip, run):
    run("import os, time\n")
    outcome = run(
        f"%%parallel {BACKENDS['fork']} --chunksize 1 --on-error continue\ndone = []\n"
        "for i in range(12):\n    time.sleep(0.05)\n    if i == 4:\n        os._exit(9)\n    done.append(i)\n"
    )
    assert outcome.error is None, outcome.err
    r = report()
    assert [index for index, *_ in r.failures] == [4]  # only the item that was running
    assert "exit code 9" in r.failures[0][2]
    assert ip.user_ns["done"] == [i for i in range(12) if i != 4]
    assert len(r.per_worker) == 3  # the dead worker's queued chunk ran on its replacement


@pytest.mark.parametrize("backend", ["processes", "futures:processes"])
def test_forkserver_as_the_platforms_default_start_method(ip, run, monkeypatch, backend):
    """Python 3.14 makes forkserver the default on Linux: nothing may assume fork."""
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "forkserver")
    run("def triple(x):\n    return x * 3\n")
    outcome = run(f"%%parallel -b {backend} -w 2\nout = [triple(i) for i in range(10)]\n")
    assert outcome.error is None, outcome.err
    assert ip.user_ns["out"] == [i * 3 for i in range(10)]
    assert report().start_method == "forkserver" and "(forkserver)" in outcome.out


def test_forked_workers_freeze_the_heap_they_start_with_and_the_kernel_does_not():
    printed = in_a_fresh_shell(
        "import gc\nip.run_cell('import gc')\nbefore = gc.get_freeze_count()\n"
        "ip.run_cell('%%parallel -b processes -w 2 --start-method fork -q\\n"
        "seen = []\\nfor i in range(4):\\n    seen.append(gc.get_freeze_count())')\n"
        "print(before, min(ip.user_ns['seen']), gc.get_freeze_count())\n"
    )
    before, in_workers, after = map(int, printed.split())
    assert after == before  # the kernel's collections go on as they did
    assert in_workers > before  # the kernel's heap, frozen in each worker


def test_a_fork_run_leaves_a_heap_someone_froze_frozen(ip, run):
    frozen = gc.get_freeze_count()
    assert frozen > 0  # conftest freezes the session's start-up objects
    outcome = run(
        "%%parallel -b processes -w 2 --start-method fork -q\nsquares = [i * i for i in range(8)]\n"
    )
    assert outcome.error is None
    assert gc.get_freeze_count() > 0  # some frozen objects may have been freed since; not all
