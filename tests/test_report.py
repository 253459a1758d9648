"""The summary and the report object: figures that agree by construction and by
measurement, their text and HTML forms, the plot, progress, and %parallel_info."""

from __future__ import annotations

import os
import re
import sys
import time
from html.parser import HTMLParser

import pytest
from conftest import BACKENDS, in_a_fresh_shell, report

import parmagic
from parmagic.summary.render import MEASURABLE, advice, html_summary, text_summary
from parmagic.summary.report import RunReport

# Items that sleep: a run at least as long as the naps, whatever the machine
LONG_ENOUGH = "import time\n"
SPIN = "def spin(n):\n    t = 0\n    for k in range(300_000):\n        t += k % (n + 1)\n    return t\n"


def test_a_computing_loop_on_processes_counts_the_items_cpu_time(ip, run):
    """CPU time, not wall time: what a loaded machine cannot inflate or shrink much."""
    run(SPIN)
    outcome = run(f"%%parallel {BACKENDS['fork']}\nfor i in range(30):\n    spin(i)\n")
    assert outcome.error is None
    began = time.thread_time()
    run("for i in range(30):\n    spin(i)\n")  # the same items here, on this thread
    expected = time.thread_time() - began
    r = report()
    assert r.cpu > 0.5 * expected, (r.cpu, expected)  # every item's CPU time came back
    assert r.usage.times and r.usage.ours_mean > 0  # the monitor saw the workers run
    measured = r.wall >= MEASURABLE  # a shorter run's per-core figures are left out
    assert ("cores    0 " in outcome.out) is measured
    assert ("too short to measure" in outcome.out) is not measured


@pytest.mark.parametrize(
    "cpu, busy, label", [(1.9, 2.0, "computing"), (0.1, 2.0, "mostly waiting")]
)
def test_the_cpu_label_follows_the_items_cpu_share(cpu, busy, label):
    r = _measured("processes", True, item_count=10, cpu=cpu, busy=busy, wall=1.0)
    assert f"of their own time: {label}" in text_summary(r)


def test_a_waiting_loop_on_threads_shows_little_cpu(ip, run):
    outcome = run(
        "%%parallel -b threads -w 8\nimport time\nfor i in range(24):\n    time.sleep(0.05)\n"
    )
    assert outcome.error is None
    assert report().cpu_share < 0.2 and "mostly waiting" in outcome.out


@pytest.mark.parametrize("name", ["threads", "fork"])
def test_items_cheaper_than_their_recording_get_a_bound_not_an_estimate(ip, run, name):
    """serial runs the loop itself; items that cost less than recording them elsewhere give
    no measure of what they cost there: the summary says "at most", never a figure that
    flatters."""
    outcome = run(
        f"%%parallel {BACKENDS[name]}\ntotal = 0\nfor i in range(100_000):\n    total += i\n"
    )
    r = report()
    assert outcome.error is None and r.serial_is_bound
    if r.wall >= MEASURABLE:
        assert f"at most {r.speedup:.2f}" in outcome.out
    else:  # too short to measure: no speedup at all
        assert "too short to measure" in outcome.out and "  speedup " not in outcome.out


@pytest.mark.parametrize("name", ["serial", "fork"])
def test_a_comprehension_records_nothing_so_nothing_is_taken_off_its_items_times(ip, run, name):
    """A comprehension's chunk runs in one call of its own code, as serial runs the loop
    itself: its items' times are what they cost, with no recording to leave out."""
    outcome = run(f"%%parallel {BACKENDS[name]} -q\nys = [i * 2 for i in range(20_000)]\n")
    r = report()
    assert outcome.error is None and ip.user_ns["ys"] == [i * 2 for i in range(20_000)]
    assert r.item_count == 20_000 and r.recorded_items == 0 and r.recording == 0


@pytest.mark.parametrize("name", ["serial", "threads", "fork", "asyncio"])
def test_figures_agree_with_each_other(ip, run, name):
    run("import time, asyncio\n")
    nap = "await asyncio.sleep(0.01)" if name == "asyncio" else "time.sleep(0.01)"
    run(f"%%parallel {BACKENDS[name]} -q\nfor i in range(37):\n    {nap}\n")
    r = report()
    assert sorted(t.index for t in r.items) == list(range(37))  # every item, exactly once
    assert sum(r.per_worker.values()) == r.item_count == 37
    assert r.busy == pytest.approx(sum(t.end - t.start for t in r.items))
    assert r.speedup == pytest.approx(r.serial_estimate / r.wall)
    if name == "serial":
        assert r.speedup == pytest.approx(1.0)  # serial against itself, by definition
    else:
        measured = r.own_time + r.kernel_cpu  # less what serial, run in place, never pays
        assert 0 < r.recording < measured and not r.serial_is_bound
        assert r.serial_estimate == pytest.approx(measured - r.recording)
        assert r.cpu <= r.own_time <= r.busy  # waiting for a core or the GIL is not theirs
    assert r.efficiency == pytest.approx(min(1.0, r.speedup / r.ideal))
    assert 0 <= r.cpu_share <= 1 and 0 <= r.efficiency <= 1
    assert sum(r.worker_busy.values()) == pytest.approx(r.busy)
    assert r.startup + r.sending + r.waiting + r.applying == pytest.approx(r.wall)
    if name == "asyncio":  # one thread ran every coroutine: its CPU time fits in the wall
        assert r.cpu <= r.wall


def test_text_falls_back_to_ascii_and_html_parses(ip, run):
    run(LONG_ENOUGH)  # to measure: the summary's every row
    run(f"%%parallel {BACKENDS['fork']} -q\nfor i in range(8):\n    time.sleep(0.1)\n")
    ascii_text = text_summary(report(), unicode=False)
    ascii_text.encode("ascii")  # raises if anything is left that a plain terminal cannot show
    assert "#" in ascii_text and ascii_text.count("\n") <= 7
    cells: list[str] = []

    class Cells(HTMLParser):
        def handle_data(self, data):
            cells.append(data.strip())

    Cells().feed(html_summary(report()))
    assert {"time", "speedup", "cores", "workers"} <= set(cells)
    formatters = ip.display_formatter.formatters  # how a kernel shows the report
    assert formatters["text/html"].lookup(report())(report()) == html_summary(report())
    assert formatters["text/plain"](report()) == text_summary(report())


def test_html_bars_carry_a_plain_colour_for_pages_without_jupyterlab_variables(ip, run):
    """Each bar's colour comes twice: plain, then JupyterLab's variable with the same plain
    colour as its fallback (classic Notebook, VS Code and nbconvert lack the variables; an
    untrusted notebook in JupyterLab loses var() altogether)."""
    run(LONG_ENOUGH)  # to measure: the cores' bars
    run(f"%%parallel {BACKENDS['threads']} -q\nfor i in range(16):\n    time.sleep(0.1)\n")
    summary = html_summary(report())
    run("%%parallel -q --compare threads -o cmp\nx = [i for i in range(8)]\n")
    page = summary + ip.user_ns["cmp"]._repr_html_()
    backgrounds = re.findall(r"background:([^;']+);background:([^;']+)", page)
    assert len(backgrounds) >= 6  # the cores' tracks and fills, the backends' tracks and fills
    for plain, themed in backgrounds:
        assert re.fullmatch(rf"var\(--jp-[\w-]+, {re.escape(plain)}\)", themed)
    assert "#eee" not in page


def test_the_html_headline_spans_the_table(ip, run):
    run(f"%%parallel {BACKENDS['threads']} -q\nfor i in range(8):\n    pass\n")
    first_row = html_summary(report()).split("</tr>")[0]
    assert (
        "<th" not in first_row and "colspan='2'" in first_row and "parmagic: threads" in first_row
    )


@pytest.mark.parametrize("allow_stdin, shown", [(True, True), (False, False), (None, True)])
def test_the_progress_bar_shows_only_where_someone_watches(
    ip, run, monkeypatch, allow_stdin, shown
):
    """A kernel request that does not allow input() comes from a program that executes the
    notebook and saves it (nbclient): a bar would stay in it as frozen text."""
    content = {} if allow_stdin is None else {"allow_stdin": allow_stdin}

    class Kernel:
        def get_parent(self, channel):
            return {"content": content}

    monkeypatch.setattr(ip, "kernel", Kernel(), raising=False)
    run("import time")
    outcome = run("%%parallel -b serial\nfor i in range(30):\n    time.sleep(0.05)\n")
    assert ("item/s" in outcome.err or "it/s" in outcome.err) is shown, outcome.err


def test_output_option_and_report_magic_return_the_report(ip, run):
    run("%%parallel -b threads -q -o stored\nsquares = [n * n for n in range(9)]\n")
    assert ip.user_ns["stored"] is parmagic.last_report()
    outcome = run("again = %parallel_report")
    assert outcome.error is None and ip.user_ns["again"] is ip.user_ns["stored"]


def test_plot_renders_to_a_png_without_a_display(ip, run, tmp_path, monkeypatch):
    run(SPIN)
    run(f"%%parallel {BACKENDS['fork']} -q\nfor i in range(20):\n    spin(i)\n")
    from parmagic.summary.plot import draw

    figure = draw(report())
    figure.savefig(tmp_path / "run.png")
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(figure.axes) == 2 and figure.axes[1].get_yticklabels()  # one row per worker
    monkeypatch.chdir(tmp_path)
    outcome = run("%parallel_report --plot")
    assert outcome.error is None and "plot written to" in outcome.out
    written = outcome.out.split("plot written to ")[1].strip()
    assert os.listdir(tmp_path) == ["run.png"]  # the test's own: nothing in the working folder
    with open(written, "rb") as png:
        assert png.read(4) == b"\x89PNG"


def test_progress_shows_on_long_runs_only(ip, run):
    long_cell = "import time\nfor i in range(30):\n    time.sleep(0.05)\n"
    shown = run(f"%%parallel -b serial\n{long_cell}")
    assert "parmagic:" in shown.err and "item" in shown.err  # tqdm, on stderr, after ~1 s
    hidden = run(f"%%parallel -b serial --no-progress\n{long_cell}")
    assert "it/s" not in hidden.err and "item/s" not in hidden.err
    short = run("%%parallel -b serial\nfor i in range(30):\n    pass\n")
    assert short.err == ""


def test_info_respects_cpu_affinity():
    printed = in_a_fresh_shell(
        "info = ip.run_line_magic('parallel_info', '')\nprint(info.usable_cores, info.affinity)\n"
        "print(info)\n",
        before="import os\nos.sched_setaffinity(0, {0})\n",
    )
    first, *rest = printed.splitlines()
    assert first == "1 1"
    assert any(line.startswith("usable cores   1 (affinity 1") for line in rest)
    assert any(line.startswith("start methods") and "fork" in line for line in rest)


def test_summary_on_a_stdout_that_only_encodes_ascii(ip, run, monkeypatch):
    import io

    run(
        f"%%parallel {BACKENDS['threads']} -q\nimport time\nfor i in range(8):\n    time.sleep(0.02)\n"
    )
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="ascii"))
    text = text_summary(report())
    text.encode("ascii")
    assert text.startswith("parmagic: threads | 4 workers | 8 items")


# 30 MB sent, and start-up (packing them) three quarters of the run
SENDING_MOST = dict(item_count=40, wall=0.2, busy=0.15, cpu=0.15, startup=0.15, bytes_sent=3e7)


def _measured(backend: str, copies: bool, **figures) -> RunReport:
    """A report with given figures: the advice rules tested apart from any machine's load.
    Items in other processes had their Python to themselves; threads shared the kernel's."""
    r = RunReport(backend, 2, cores=2, copies_objects=copies)
    r.plain_loop, r.event_loop = backend == "serial", backend == "asyncio"
    for name, value in figures.items():
        setattr(r, name, value)
    if copies or backend == "serial":
        r.alone = r.busy - r.queued
    else:
        r.shared_busy, r.shared_cpu, r.shared_wall = r.busy, r.cpu, r.wall
        r.shared_queued = r.queued
    return r


@pytest.mark.parametrize(
    "r, expected",
    [
        (
            _measured("threads", False, item_count=12, wall=1.0, busy=6.0, cpu=0.95),
            "items compute, and one thread runs Python at a time: try --backend processes",
        ),
        (
            _measured("threads", False, item_count=12, wall=1.0, busy=3.5, cpu=0.6, queued=0.35),
            "items compute, and one thread runs Python at a time: try --backend processes",
        ),
        (_measured("threads", False, item_count=12, wall=1.0, busy=2.0, cpu=1.9), None),
        (
            _measured("processes", True, item_count=3, wall=0.05, busy=0.001, cpu=0.001),
            "the loop is too small to pay for worker processes",
        ),
        (
            _measured("processes", True, **SENDING_MOST),
            "sending the data to the workers took most of the run",
        ),
        (
            _measured(
                "processes",
                True,
                item_count=9,
                wall=0.8,
                busy=0.1,
                cpu=0.1,
                pool_start=0.7,
                startup=0.7,
            ),
            "starting the workers took most of this run",
        ),
        (
            _measured("processes", True, item_count=30, wall=1.0, busy=1.6, cpu=1.5, workers=8),
            "8 workers compute on 2 cores: --workers 2 is enough",
        ),
        (
            _measured(
                "processes", True, item_count=30, wall=1.0, busy=6.4, cpu=1.5, queued=4.8, workers=8
            ),
            "8 workers compute on 2 cores: --workers 2 is enough",
        ),
        (_measured("threads", False, item_count=30, wall=1.0, busy=8.0, cpu=0.05), None),
        (_measured("threads", False, item_count=30, wall=1.0, busy=8.0, cpu=0.3), None),
        (
            _measured("threads", False, item_count=12, wall=1.0, busy=2.0, cpu=1.9, stopped_at=5),
            None,
        ),
    ],
    ids=[
        "threads-on-computing-loop",
        "threads-on-computing-loop-busy-machine",
        "threads-with-the-gil-released",
        "processes-on-tiny-loop",
        "processes-sending-most",
        "processes-starting-most",
        "oversubscribed",
        "oversubscribed-queued-for-cores",
        "waiting-on-threads",
        "waiting-on-threads-some-cpu",
        "after-a-failure",
    ],
)
def test_advice_names_the_likely_mistake(r, expected):
    hint = advice(r)
    assert hint == expected or (expected and hint and hint.startswith(expected))


@pytest.mark.parametrize(
    "options, cell",
    [
        ("-b threads -w 2", "for i in range(12):\n    spin(i)\n"),
        (BACKENDS["fork"], "for i in range(3):\n    pass\n"),
    ],
    ids=["threads-on-computing-loop", "processes-on-tiny-loop"],
)
def test_the_summary_shows_the_advice_its_figures_give(ip, run, options, cell):
    run(SPIN)
    run(f"%%parallel {options} -q\nfor i in range(2):\n    pass\n")  # a warm pool first
    outcome = run(f"%%parallel {options}\n{cell}")
    assert outcome.error is None
    hint = advice(report())
    assert (f"advice   {hint}" in outcome.out) if hint else ("advice" not in outcome.out)


@pytest.mark.parametrize("name", ["serial", "fork"])
def test_a_computing_loop_is_labelled_computing_on_a_busy_machine(ip, run, busy_machine, name):
    """Time spent waiting for a core (the scheduler's run queue) is not waiting on I/O."""
    run(SPIN)
    outcome = run(f"%%parallel {BACKENDS[name]}\nfor i in range(16):\n    spin(i)\n")
    assert outcome.error is None
    r = report()
    assert r.queued > 0  # the items did wait for a core
    assert r.cpu_share >= 0.7, (r.cpu, r.busy, r.queued)
    assert "of their own time: computing" in outcome.out


@pytest.mark.parametrize(
    "cpu, queued, expected",
    [
        (1.9, 0.02, True),  # NumPy threads on two idle cores
        (1.3, 0.6, True),  # the same beside one other busy program
        (1.0, 0.0, False),  # threads taking turns at the GIL on an idle machine
        (0.94, 0.46, False),  # a loop that holds a lock, on a busy machine: GIL waiters queue
        (1.0, 1.0, False),  # a crowded machine: no more CPU than turns give, so no claim
    ],
)
def test_threads_count_as_side_by_side_only_past_what_taking_turns_can_use(cpu, queued, expected):
    from parmagic.summary.report import side_by_side

    assert side_by_side(cpu, queued, 1.0) is expected


def test_a_monitor_stopped_before_its_first_reading_has_no_samples_and_takes_none_later(
    monkeypatch,
):
    """A run too short for figures: the monitor never read /proc (which would have taken a
    core from its workers), nothing is sampled after it stopped, and joined to a later part
    of the same run (auto's probe, then its run) it leaves the later part's window alone."""
    from parmagic.summary import monitor

    first_reading_after = monitor.FIRST_READING_AFTER
    try:
        monkeypatch.setattr(monitor, "FIRST_READING_AFTER", 10.0)  # stopped well before it
        usage = monitor.Monitor(pids=[os.getpid()]).start().stop()
        monkeypatch.setattr(monitor, "FIRST_READING_AFTER", first_reading_after)
        later = monitor.Monitor(pids=[os.getpid()]).start()
        time.sleep(first_reading_after + 0.5)  # a moment even on a busy machine
        sampled = later.stop()
        time.sleep(0.15)  # a sampling thread left running would have sampled by now
    finally:
        monitor.stop_samplers()  # the sampling threads, kept for the next run: none comes
    assert usage.started == 0.0 and usage.times == [] and usage.cores[0] == []
    assert sampled.started > 0 and len(sampled.times) == len(sampled.ours) >= 1
    assert sampled.times[-1] < time.monotonic() - 0.1  # none after stop()
    assert sampled.joined(usage) is sampled


def test_two_parts_of_a_run_joined_weigh_only_their_sampled_time():
    """Auto's probe, then its run: the unsampled time between them (the run's monitor reads
    first after a moment) weighs nothing in the cores' means."""
    from parmagic.summary.monitor import Usage

    probe = Usage(10.0, [11.0], [[100.0]], [100.0], [100.0])
    rest = Usage(15.0, [16.0, 17.0], [[0.0, 0.0]], [0.0, 0.0], [0.0, 0.0])
    both = rest.joined(probe)
    assert both.times == [11.0, 16.0, 17.0] and both.cores == [[100.0, 0.0, 0.0]]
    assert both.core_means() == pytest.approx([100 / 3])
    assert both.ours_mean == pytest.approx(100 / 3)
    assert Usage(20.0, [21.0], [[50.0]], [50.0], [50.0]).joined(both).core_means() == (
        pytest.approx([150 / 4])
    )


def test_runs_in_quick_succession_share_one_sampling_thread():
    """A stopped monitor frees its thread at once, not when the thread has come round to
    returning: fifty short runs one after another start one sampling thread, not more."""
    from parmagic.summary import monitor

    monitor.stop_samplers()
    try:
        for _ in range(50):
            monitor.Monitor(pids=[os.getpid()]).start().stop()
        assert len(monitor._samplers()._threads) == 1
    finally:
        monitor.stop_samplers()
