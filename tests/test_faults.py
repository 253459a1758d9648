"""The fault matrix: every backend against what users and machines do to a run.

Each case ends in the promised error within its time bound, leaves the kernel holding what a
serial run would have left (a prefix of the items), and lets the next run work at once. The
autouse leak check in conftest.py then finds no thread or process left behind.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time

import pytest
from conftest import BACKENDS, HANG_GUARD, PROCESS_BACKENDS, report

from parmagic.errors import WorkerDied
from parmagic.summary.render import item_ranges

PARALLEL = [name for name in BACKENDS if name != "serial"]


def sleep(name: str) -> str:
    """How an item waits on this backend: asyncio items must await to be interruptible."""
    return "await asyncio.sleep" if name == "asyncio" else "time.sleep"


def assert_prefix(values: list, minimum: int = 0) -> None:
    assert values == list(range(len(values))) and len(values) >= minimum, values


def assert_next_run_works(ip, run, options: str) -> None:
    outcome = run(f"%%parallel {options}\nafter = [k * 2 for k in range(20)]\n")
    assert outcome.error is None and ip.user_ns["after"] == [k * 2 for k in range(20)]


class InterruptOnceItemsRan(threading.Thread):
    """SIGINT to this process once ``count`` items wrote their file ``marker``-i (a file each:
    one file written by every item is refused): items are surely running, however slowly a
    loaded machine starts the workers. Never sends one after :meth:`stop` (a late interrupt
    would land in another test)."""

    def __init__(self, marker, count: int = 3) -> None:
        super().__init__()
        self.marker, self.count, self.stopped = marker, count, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            if len(list(self.marker.parent.glob(self.marker.name + "-*"))) >= self.count:
                os.kill(os.getpid(), signal.SIGINT)
                return

    def stop(self) -> None:
        self.stopped.set()
        self.join()


# Ctrl-C may land while multiprocessing pickles a call into a BytesIO whose buffer is still
# exported; CPython then reports a BufferError as unraisable when it frees it (3.13), in
# whichever test collects it. That is the interrupted pickling's own garbage, not something
# the run left changed.
INTERRUPTED_PICKLING = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@INTERRUPTED_PICKLING
@pytest.mark.parametrize("name", list(BACKENDS))
def test_interrupt_stops_the_run_within_two_seconds(ip, run, name, tmp_path):
    options = BACKENDS[name] + (" -w 2" if name == "asyncio" else "")  # still running then
    marker = tmp_path / "ran"
    run(f"import asyncio, time\ndone = []\nmarker = r'{marker}'\n")
    watcher = InterruptOnceItemsRan(marker)
    outcome = run(
        f"%%parallel {options}\nfor i in range(200):\n    {sleep(name)}(0.05)\n"
        "    with open(f'{marker}-{i}', 'w') as f:\n        print(i, file=f)\n    done.append(i)\n"
    )
    watcher.stop()
    assert isinstance(outcome.error, KeyboardInterrupt)  # the 2 s promise: bench/faults.py
    assert_prefix(ip.user_ns["done"])
    assert len(ip.user_ns["done"]) < 200
    assert "the parallel run was interrupted" in "\n".join(outcome.error._render_traceback_())
    if name != "serial":
        assert report().unfinished  # items handed out and dropped, never applied
    assert_next_run_works(ip, run, options)


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
@pytest.mark.parametrize(
    "death, how",
    [
        ("os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL"),
        # faulthandler (pytest turns it on; forked workers inherit it) would print the
        # worker's stack on the test's terminal: a deliberate crash must not look like one
        ("faulthandler.disable(); ctypes.string_at(0)", "killed by SIGSEGV"),
        ("os._exit(3)", "exit code 3"),
    ],
    ids=["sigkill", "segfault", "exit"],
)
def test_a_dying_worker_fails_the_run_and_the_pool_heals(ip, run, name, death, how):
    run("import ctypes, faulthandler, os, signal, time\ndone = []\n")
    began = time.monotonic()
    outcome = run(
        f"%%parallel {BACKENDS[name]} --chunksize 1\nfor i in range(8):\n"
        f"    if i == 4:\n        {death}\n    time.sleep(0.01)\n    done.append(i)\n"
    )
    assert isinstance(outcome.error, WorkerDied)
    assert time.monotonic() - began < HANG_GUARD
    assert how in str(outcome.error) and "running item 4;" in str(outcome.error)
    assert ip.user_ns["done"] == [0, 1, 2, 3]
    assert_next_run_works(ip, run, BACKENDS[name])


@pytest.mark.parametrize("name", list(BACKENDS))
def test_an_item_over_its_timeout_fails_with_timeout_error(ip, run, name):
    run("import asyncio, time\ndone = []\n")
    outcome = run(
        f"%%parallel {BACKENDS[name]} --timeout 0.5\nfor i in range(6):\n"
        f"    if i == 2:\n        {sleep(name)}(2.5)\n    done.append(i)\n"
    )
    assert isinstance(outcome.error, TimeoutError)
    message = "\n".join(outcome.error._render_traceback_())
    assert "longer than the 0.5 s allowed by --timeout" in message
    assert "raised by item 2 of the parallel loop" in message
    assert ip.user_ns["done"] == [0, 1]
    if name == "threads":
        assert "abandoned" in message
    assert_next_run_works(ip, run, BACKENDS[name])


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
def test_an_item_that_blocks_its_alarm_gets_its_worker_killed(ip, run, name):
    run("import signal, time\ndone = []\n")
    began = time.monotonic()
    outcome = run(
        f"%%parallel {BACKENDS[name]} --timeout 0.3 --on-error continue\nfor i in range(4):\n"
        "    if i == 1:\n        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})\n"
        "        time.sleep(30)\n    done.append(i)\n"
    )
    assert outcome.error is None
    assert time.monotonic() - began < HANG_GUARD  # the item sleeps 30 s
    assert ip.user_ns["done"] == [0, 2, 3]
    [(index, _, error)] = report().failures
    assert index == 1 and "worker process was stopped and replaced" in error
    assert_next_run_works(ip, run, BACKENDS[name])


@INTERRUPTED_PICKLING
@pytest.mark.parametrize("name", ["serial", "threads", "fork", "futures-fork"])
def test_an_interrupt_leaves_every_item_whole_and_counts_exactly(ip, run, name, tmp_path):
    """Many cheap items with printed output and several changes each: wherever the interrupt
    lands, every applied item is whole and the message counts them."""
    marker = tmp_path / "ran"
    run(f"import time\nout, total, marker = [], 0, r'{marker}'\n")
    watcher = InterruptOnceItemsRan(marker, count=1)
    outcome = run(
        f"%%parallel {BACKENDS[name]}\nfor i in range(400_000):\n"
        "    if i == 2000:\n        with open(f'{marker}-{i}', 'w') as f:\n            f.write('0')\n"
        "    out.append(i)\n    total += 1\n    last = i\n    print(i)\n"
    )
    watcher.stop()
    assert isinstance(outcome.error, KeyboardInterrupt)
    ns = ip.user_ns
    printed = [int(ln) for ln in outcome.out.splitlines() if ln.isdigit()]
    assert_prefix(printed, minimum=1)
    shown = "\n".join(outcome.error._render_traceback_())
    said = re.search(r"(no item|the first item|the first (\d+) items) w", shown)
    applied = int(said.group(2) or said.group(1) == "the first item")
    assert ns["out"][:applied] == printed[:applied] == list(range(applied))
    if name == "serial":  # the loop runs in place: the interrupt may land inside an item,
        # which stops there, as in the plain loop (its line may be printed, its changes made)
        assert len(printed) - applied in (0, 1), (len(printed), applied)
        assert len(ns["out"]) - applied in (0, 1) and ns["total"] - applied in (0, 1)
    else:  # items that ran elsewhere are applied whole or not at all
        assert len(printed) == applied, (len(printed), applied)
        assert ns["total"] == len(ns["out"]) == applied and ns["last"] == applied - 1


@pytest.mark.parametrize("name", list(BACKENDS))
def test_an_endless_iterable_stops_at_the_failing_item(ip, run, name):
    run("import itertools\nclass Enough(Exception):\n    pass\npulled = []\n")
    run(
        "def endless():\n    for n in itertools.count():\n        pulled.append(n)\n        yield n\n"
    )
    outcome = run(
        f"%%parallel {BACKENDS[name]}\nseen = []\nfor n in endless():\n"
        "    if n == 300:\n        raise Enough(n)\n    seen.append(n)\n"
    )
    assert type(outcome.error).__name__ == "Enough"
    assert ip.user_ns["seen"] == list(range(300))
    assert len(ip.user_ns["pulled"]) < 100_000  # read lazily, a bounded window ahead


@pytest.mark.parametrize("name", ["fork", "futures-fork"])
def test_a_pool_stopped_with_full_pipes_leaves_no_thread_behind(ip, run, name):
    """Big items and results fill the pipes when a failing item stops the run: a pool's
    helper threads blocked on them must still end, before the next pool forks."""
    run("import itertools, threading\nclass Enough(Exception):\n    pass\nblob = 'x' * 20_000\n")
    cell = (
        f"%%parallel -q {BACKENDS[name]}\nsizes = []\n"
        "for text in (blob + str(k) for k in itertools.count()):\n"
        "    if text.endswith('300'):\n        raise Enough(text[-3:])\n"
        "    sizes.append(len(text))\n"
    )
    counts = []
    for _ in range(3):
        assert type(run(cell).error).__name__ == "Enough"
        assert ip.user_ns["sizes"] == [20_000 + len(str(k)) for k in range(300)]
        counts.append(threading.active_count())
    assert counts[2] <= counts[0], f"threads after each run: {counts}"


@pytest.mark.parametrize("name", list(BACKENDS))
def test_islice_of_an_endless_iterable_runs_to_its_end(ip, run, name):
    run("import itertools\n")
    outcome = run(
        f"%%parallel {BACKENDS[name]}\ntotal = 0\nfor n in itertools.islice(itertools.count(), 1000):\n    total += n\n"
    )
    assert outcome.error is None and ip.user_ns["total"] == sum(range(1000))


def test_a_long_run_keeps_totals_for_every_item_but_bounded_records(ip, run, monkeypatch):
    import parmagic.summary.report

    monkeypatch.setattr(parmagic.summary.report, "MAX_ITEM_RECORDS", 1000)
    outcome = run("%%parallel -b threads -q\ntotal = 0\nfor n in range(20_000):\n    total += n\n")
    assert outcome.error is None and ip.user_ns["total"] == sum(range(20_000))
    assert report().item_count == 20_000 and len(report().items) == 1000
    assert sum(report().per_worker.values()) == 20_000


@INTERRUPTED_PICKLING  # the fork variant's, collected in the next variant's teardown
@pytest.mark.parametrize("name", ["threads", "futures", "serial", "fork", "asyncio"])
def test_an_interrupt_leaves_the_kernels_streams_as_they_were(ip, run, name):
    streams = sys.stdout, sys.stderr
    run("import asyncio, time\n")
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    outcome = run(
        f"%%parallel {BACKENDS[name]} -w 4\nfor i in range(100):\n    {sleep(name)}(0.2)\n"
    )
    timer.join()
    assert isinstance(outcome.error, KeyboardInterrupt)
    assert (sys.stdout, sys.stderr) == streams
    assert sys.stdout.encoding  # ItemOutput stand-ins have none


def test_a_summary_after_a_failure_or_an_interrupt_gives_no_advice(ip, run):
    outcome = run("%%parallel -b threads -w 4\nfor i in range(40):\n    1 / (i - 30)\n")
    assert isinstance(outcome.error, ZeroDivisionError)
    assert report().stopped_at == 30
    assert "stopped at item 30" in outcome.out
    assert "advice" not in outcome.out


def test_a_warning_repeated_by_every_chunk_is_shown_once(ip, run, tmp_path):
    run(
        f"paths = []\nfor i in range(40):\n    p = r'{tmp_path}/f%d' % i\n    with open(p, 'w') as f:\n        f.write('x')\n    paths.append(p)\n"
    )
    outcome = run(
        "%%parallel -b processes -w 2 --chunksize 2 -q\nimport threading\nsizes = []\n"
        "for p in paths:\n    lk = threading.Lock()\n    with open(p) as f:\n"
        "        sizes.append(len(f.read()))\n"
    )
    assert outcome.error is None and ip.user_ns["sizes"] == [1] * 40
    assert outcome.err.count("`lk` (a lock) could not be sent back") == 1


@pytest.mark.parametrize("name", ["threads", "futures", "fork"])
def test_a_consumer_that_stops_early_gets_no_warning_about_items_run_ahead(ip, run, name):
    run("import time\n")
    outcome = run(
        f"%%parallel {BACKENDS[name]} -q\ngen = (time.sleep(0.2) or i for i in range(30))\n"
        "found = [next(gen), next(gen)]\ndel gen\n"
    )
    assert outcome.error is None and ip.user_ns["found"] == [0, 1]
    assert outcome.err == ""  # items still running were read ahead, not abandoned work


def test_an_interrupted_threads_run_tells_running_items_from_queued_ones(ip, run, tmp_path):
    marker = tmp_path / "ran"
    run(f"import time\nmarker = r'{marker}'\n")
    watcher = InterruptOnceItemsRan(marker, count=2)
    outcome = run(
        "%%parallel -b threads -w 2 --chunksize 1\nfor i in range(20):\n"
        "    with open(f'{marker}-{i}', 'w') as f:\n        print(i, file=f)\n    time.sleep(1.5)\n"
    )
    watcher.stop()
    assert isinstance(outcome.error, KeyboardInterrupt)
    said = outcome.out + outcome.err + "\n".join(outcome.error._render_traceback_())
    assert "threads held items 0-1 when the run stopped" in said  # each was sleeping
    assert "items 2-3, queued, never started" in said  # two threads, four in hand
    r = report()  # the summary names the unfinished items too, and gives no advice on a part
    head = outcome.out.splitlines()[0]
    assert f"interrupted: items {item_ranges(r.unfinished)} unfinished" in head, outcome.out
    assert "advice" not in outcome.out
    assert_next_run_works(ip, run, "-b threads")
