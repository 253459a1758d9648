"""``--backend auto`` says what it measured, moves when later items make workers pay, sizes
a thread pool for items that wait, and the serial estimate of waiting items on threads
holds (issue 30). Timings of the estimate are measured in bench/honesty.py, not here: the
arithmetic is tested on figures filled in by hand."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import report

from parmagic.backends.threads import ThreadBackend
from parmagic.run.auto import MAX_WAITING_THREADS, _waiting_share
from parmagic.summary.report import ProcessProfile, RunReport

LATE_WAIT = "for i in {source}:\n    if i >= 20:\n        time.sleep(0.2)\n    out.append(i)\n"


@pytest.mark.parametrize("source", ["range(40)", "iter(range(40))"], ids=["length", "no-length"])
def test_auto_moves_when_later_items_begin_to_wait(ip, run, source):
    run("import time\nout = []")
    outcome = run("%%parallel -q -b auto\n" + LATE_WAIT.format(source=source))
    assert outcome.error is None
    r = report()
    assert r.backend == "threads"
    assert r.auto_reason.startswith("moved to threads at item ")
    assert "items began to wait" in r.auto_reason
    moved_at = int(r.auto_reason.split("at item ")[1].split(":")[0])
    assert 20 <= moved_at < 40
    assert r.per_worker.get("kernel", 0) == moved_at  # the kernel ran the first ones
    assert sum(r.per_worker.values()) == 40
    assert ip.user_ns["out"] == list(range(40))  # in order, as the plain loop leaves it
    assert ip.user_ns["i"] == 39


@pytest.mark.parametrize("items", ["range(60)", "(n for n in range(60))"])  # length unknown
def test_auto_gives_waiting_items_more_threads_than_cores(ip, run, items):
    run("import time\nslept = []")
    outcome = run(
        f"%%parallel -q -b auto\nfor i in {items}:\n    time.sleep(0.05)\n    slept.append(i)"
    )
    assert outcome.error is None
    r = report()
    assert r.backend == "threads"
    assert r.workers > min(ThreadBackend.default_workers(), MAX_WAITING_THREADS - 1)
    assert f"{r.workers} threads overlap their waiting" in r.auto_reason
    assert ip.user_ns["slept"] == list(range(60))


def test_workers_given_by_the_user_win(ip, run):
    run("import time")
    outcome = run("%%parallel -q -b auto -w 3\nfor i in range(40):\n    time.sleep(0.05)")
    assert outcome.error is None
    r = report()
    assert (r.backend, r.workers) == ("threads", 3)
    assert "3 threads overlap their waiting" in r.auto_reason


def test_the_profile_thread_ends_with_the_run(ip, run):
    run("import time")
    run("%%parallel -q -b threads -w 4\nfor i in range(8):\n    time.sleep(0.01)")
    profiles = [t for t in threading.enumerate() if t.name == "parmagic-profile"]
    for thread in profiles:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in profiles)


def _profile(*steps: tuple[float, float, float]) -> ProcessProfile:
    """A profile read from figures: per step (seconds, process CPU seconds, lateness)."""
    profile = ProcessProfile()
    profile.stop()
    moment, cpu = time.monotonic() - 100, 0.0
    profile.samples = [(moment, cpu, 0.0)]
    for seconds, used, late in steps:
        moment, cpu = moment + seconds, cpu + used
        profile.samples.append((moment, cpu, late))
    return profile


def test_idle_share_follows_the_process_cpu_and_late_readings():
    busy, idle, late = (0.1, 0.1, 0.0), (0.1, 0.0, 0.0), (0.1, 0.0, 0.1)
    begin = lambda profile: profile.samples[0][0]  # noqa: E731
    profile = _profile(busy, idle, late)
    assert profile.idle_between(begin(profile), begin(profile) + 0.3) == pytest.approx(1 / 3)
    profile = _profile(busy, idle, late)
    assert profile.idle_between(begin(profile) + 0.1, begin(profile) + 0.2) == pytest.approx(1)
    profile = _profile(busy, idle, late)
    assert profile.idle_between(begin(profile) + 0.05, begin(profile) + 0.15) == pytest.approx(0.5)
    profile = _profile((0.1, 0.05, 0.0))  # half a core: half the time idle
    assert profile.idle_between(begin(profile), begin(profile) + 0.1) == pytest.approx(0.5)


def _threads_report(cpu: float, blocked: float, idle: float) -> RunReport:
    r = RunReport("threads", 32, cores=2)
    r.item_count, r.turns_cpu, r.turns_blocked, r.turns_idle = 60, cpu, blocked, idle
    r.cpu, r.shared_cpu, r.shared_busy = cpu, cpu, cpu + blocked
    return r


def test_blocked_time_while_the_process_was_idle_counts_whole():
    assert _threads_report(0.002, 6.0, 6.0).own_time == pytest.approx(6.002)


def test_a_computing_loop_on_threads_is_never_flattered():
    """The process was busy the whole time: blocked time was waiting for the GIL."""
    assert _threads_report(0.4, 1.2, 0.0).own_time == pytest.approx(0.4)
    nearly_always_busy = _threads_report(0.4, 1.2, 0.012)  # 1% idle
    assert nearly_always_busy.own_time == pytest.approx(0.4 + 0.012)


def test_waiting_while_busy_counts_less_the_gil_waits_a_queue_predicts():
    r = _threads_report(0.06, 6.4, 4.8)  # idle 75% of the items' blocked time
    for_the_gil = 0.06 * 0.25 / 0.75
    assert r.own_time == pytest.approx(0.06 + 4.8 + (6.4 - 4.8 - for_the_gil))
    assert r.cpu + 4.8 < r.own_time < r.cpu + 6.4


def test_figures_without_a_profile_keep_the_average_rule():
    r = RunReport("threads", 4, cores=2)
    r.shared_busy, r.shared_cpu, r.shared_wall, r.shared_process_cpu = 8.0, 0.3, 1.0, 0.3
    assert r.own_time == pytest.approx(0.3 + 7.7 * 0.7)


@pytest.mark.parametrize(
    "share, words",
    [(0.02, "items wait 49 times as long as they compute"), (0.6, "items compute 60% of their time"),
     (0.0001, "items hardly compute")],
)  # fmt: skip
def test_autos_reason_says_how_items_wait_in_words_that_stay_true(share, words):
    assert _waiting_share(share) == words
