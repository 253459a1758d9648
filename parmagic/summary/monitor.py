"""How busy each core was during a run, and how much of the machine went to this kernel and
its workers versus other programs: psutil samples on a background thread, about ten a second.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

INTERVAL = 0.1
# Seconds before the first reading: reading /proc takes a core from the run's workers for a
# moment, and a run this short is too short for figures anyway (MEASURABLE in render.py).
FIRST_READING_AFTER = 0.02
STOP_WAIT = 1.0  # seconds the sampling threads get to end when the extension is unloaded
_CPUS = psutil.cpu_count() or 1


class _Samplers:
    """The threads that sample, kept between runs: starting a thread costs more than a short
    run's items. One per monitor running at once (auto's probe and its run, say). Daemon
    threads, unlike an executor's: a monitor left running cannot hold up the kernel's exit."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads: list[threading.Thread] = []

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                thread = threading.Thread(target=self._serve, name="parmagic-monitor", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._jobs.put(job)

    def finished(self) -> None:
        """A job's monitor has stopped: its thread is free for the next job from now, even
        before the job has returned (the next waits in the queue for that moment), so that
        runs in quick succession never start a thread more."""
        with self._lock:
            self._idle = min(self._idle + 1, len(self._threads))

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def stop(self, wait: float = STOP_WAIT) -> None:
        """Each thread ends once its monitor has stopped (waited for a moment: they are)."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


@functools.cache
def _samplers() -> _Samplers:
    return _Samplers()


def stop_samplers() -> None:
    """The sampling threads end (the extension is unloaded); a later run starts new ones."""
    if _samplers.cache_info().currsize:
        _samplers().stop()
        _samplers.cache_clear()


@functools.lru_cache(maxsize=64)
def _process(pid: int) -> psutil.Process:
    """The process of a pid, made once: the kernel and its warm workers serve run after run.
    Its CPU times are read from the pid's process of the moment: the one asked about."""
    return psutil.Process(pid)


@dataclass
class Usage:
    """Samples of one run. ``cores[i]`` is core i's busy percentage over each interval."""

    started: float = 0.0  # time.monotonic() when sampling began; 0: it never began
    times: list[float] = field(default_factory=list)  # time.monotonic() at each sample's end
    cores: list[list[float]] = field(default_factory=list)  # per core: one value per sample
    ours: list[float] = field(default_factory=list)  # % of the machine: kernel and its workers
    machine: list[float] = field(default_factory=list)  # % of the machine: everything
    # where a part joined on (auto's probe, then its run) began: sample index -> its start
    parts: dict[int, float] = field(default_factory=dict)

    def joined(self, earlier: Usage | None) -> Usage:
        """These samples after an earlier part of the same run (auto's probe); the time
        between the two parts, unsampled, weighs nothing."""
        if earlier is None or not earlier.started:  # it ended before its first reading
            return self
        after = len(earlier.times)
        parts = {**earlier.parts, **{after + k: start for k, start in self.parts.items()}}
        if self.started and self.times:
            parts[after] = self.started
        cores = [a + b for a, b in zip(earlier.cores, self.cores, strict=False)]
        return Usage(earlier.started, earlier.times + self.times, cores, earlier.ours + self.ours,
                     earlier.machine + self.machine, parts)  # fmt: skip

    def _weights(self) -> list[float]:
        """Each sample's interval length: a short last interval must not count as much."""
        edges = [self.started, *self.times]
        return [
            max(end - self.parts.get(index, start), 0.0)
            for index, (start, end) in enumerate(zip(edges, edges[1:], strict=False))
        ]

    def _mean(self, values: list[float]) -> float:
        weights = self._weights()
        total = sum(weights)
        if not values or total <= 0:
            return 0.0
        return sum(v * w for v, w in zip(values, weights, strict=False)) / total

    def core_means(self) -> list[float]:
        """Rounding in psutil's deltas can put a mean a hair outside 0–100."""
        return [min(100.0, max(0.0, self._mean(values))) for values in self.cores if values]

    @property
    def ours_mean(self) -> float:
        return self._mean(self.ours)

    @property
    def others_mean(self) -> float:
        return max(0.0, self._mean(self.machine) - self.ours_mean)


class Monitor:
    """Samples until stopped; the last partial interval is sampled on stop."""

    def __init__(self, interval: float = INTERVAL, pids: list[int] | None = None) -> None:
        """``pids``: the processes items run in besides the kernel, whose CPU time counts as
        ours; None: the kernel's child processes, found by walking /proc every tenth sample
        (which holds the GIL, that items in the kernel then wait for)."""
        self.interval, self.pids = interval, pids
        self.usage = Usage()
        self._stop = threading.Event()
        self._me = _process(os.getpid())
        self._cpus = _CPUS
        self._lock = threading.Lock()  # one sample at a time: the sampling thread's, or stop's
        self._samples = 0
        self._family: list[psutil.Process] = []
        self._last: tuple[float, float] | None = None  # the latest reading: (when, CPU time)
        self._samplers: _Samplers | None = None

    def _tree_cpu(self) -> float:
        self._samples += 1
        if self.pids is not None:
            if self._samples == 1:
                self._family = [self._me, *self._processes(self.pids)]
        elif self._samples % 10 == 1:  # walking /proc for children costs more than reading them
            self._family = [self._me, *self._children()]
        total = 0.0
        for process in self._family:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    @staticmethod
    def _core_times() -> list[tuple[float, float]]:
        """(busy, total) seconds per core since boot."""
        result = []
        for times in psutil.cpu_times(percpu=True):
            total = sum(times)
            result.append((total - times.idle - getattr(times, "iowait", 0.0), total))
        return result

    @staticmethod
    def _processes(pids: list[int]) -> list[psutil.Process]:
        found = []
        for pid in pids:
            try:
                found.append(_process(pid))
            except psutil.Error:  # a worker that died: the run will say so
                continue
        return found

    def _children(self) -> list[psutil.Process]:
        try:
            return self._me.children(recursive=True)
        except psutil.Error:
            return []

    def start(self) -> Monitor:
        """Sampling starts on a thread of its own, its first reading included, a moment
        after the run's first chunks left (``FIRST_READING_AFTER``): its window starts then.
        A run that ends sooner has no samples."""
        self.usage.cores = [[] for _ in range(self._cpus)]
        self._samplers = _samplers()  # the ones to tell when it stops (see stop_samplers)
        self._samplers.run(self._run)
        return self

    def _first_reading(self) -> None:
        self._last_cores = self._core_times()
        self._last = (time.monotonic(), self._tree_cpu())
        self.usage.started = self._last[0]

    def _sample(self) -> None:
        now, cpu = time.monotonic(), self._tree_cpu()
        elapsed = now - self._last[0]
        if elapsed <= 0:
            return
        now_cores = self._core_times()
        cores = [
            100 * (b_busy - a_busy) / (b_all - a_all) if b_all > a_all else 0.0
            for (a_busy, a_all), (b_busy, b_all) in zip(self._last_cores, now_cores, strict=False)
        ]
        self._last_cores = now_cores
        ours = max(0.0, cpu - self._last[1]) / (elapsed * self._cpus) * 100
        self._last = (now, cpu)
        self.usage.times.append(now)
        for values, busy in zip(self.usage.cores, cores, strict=False):
            values.append(busy)
        self.usage.ours.append(min(ours, 100.0))
        self.usage.machine.append(sum(cores) / len(cores))

    def _run(self) -> None:
        if self._stop.wait(FIRST_READING_AFTER):
            return
        with self._lock:
            if self._stop.is_set():
                return
            self._first_reading()
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._stop.is_set():
                    return
                self._sample()

    def stop(self) -> Usage:
        """The samples; no other is taken after this returns. The last stretch is sampled if
        it lasted a quarter interval or more: the counters count in ticks of 10 ms, so a
        shorter one tells nothing (a run that short has no samples)."""
        if self._stop.is_set():
            return self.usage
        self._stop.set()
        with self._lock:  # a sample being taken is finished first
            if self._last is not None and time.monotonic() - self._last[0] > self.interval / 4:
                self._sample()
        if self._samplers is not None:
            self._samplers.finished()
        return self.usage
