"""The run's figures as an object (``parmagic.last_report()``); render.py draws them."""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..worker.task import worked_out_times

if TYPE_CHECKING:
    from ..backends import Backend
    from .monitor import Usage


CPU_BOUND_SHARE = 0.7  # the items' CPU share from which a loop counts as computing
IN_TURNS_AT_MOST = 1.05  # cores' worth of CPU time threads that take turns at the GIL can use
SIDE_BY_SIDE = 1.4  # cores' worth of time items sharing a process spent on a core (or queued
# for one) per second of the run: more, and their code releases the GIL; taking turns, one


@dataclass
class ItemTiming:
    index: int
    worker: str
    start: float  # time.monotonic(), comparable across the kernel and its workers
    end: float
    cpu: float


BOUND_SHARE = 0.1  # recording's share of the items' time above which serial is a bound
MAX_ITEM_RECORDS = 100_000  # per-item timings kept; the totals count every item
PROFILE_STEP = 0.005  # seconds between readings of the process's CPU time (ProcessProfile)
MOST_SAMPLES = 12_000  # readings kept (a minute's worth): older ones are not looked at
LATE_SLACK = 0.0005  # seconds a reading may come late on an idle process (waking up)
FORGET_MARGIN = 1.0  # seconds of readings kept before the start of the last item counted


@dataclass(frozen=True)
class RecordingCosts:
    """What recording costs on this machine (calibration.py measures it)."""

    per_item: float  # seconds recording and replaying add to an item
    per_change: float  # ...and to each change it records
    in_place: float  # seconds serial spends on an item that does nothing (a serial floor)


NOTHING_MEASURED = RecordingCosts(0.0, 0.0, 0.0)


class ItemTimings:
    """Per-item rows (index, worker, start, end, CPU time) of the first ``MAX_ITEM_RECORDS``
    items, kept as each chunk's columns and made into rows only when read: a run of cheap
    items would otherwise spend more time building rows than running its items."""

    def __init__(self) -> None:
        self._columns: list[tuple] = []
        self._count = 0
        self._rows: list[tuple] = []

    def add(self, result, count: int) -> None:
        """The first ``count`` items of a chunk result. Items run in one call keep only
        their starts until read (``spread``: their ends and CPU times follow from them)."""
        count = min(count, MAX_ITEM_RECORDS - self._count)
        if count <= 0:
            return
        if result.spread_only:
            times = result.deferred_times()
        else:
            times = (result.starts, result.ends, result.cpus)
        self._columns.append((result.first, result.worker, count, times))
        self._count += count

    def _all(self) -> list[tuple]:
        for first, worker, count, times in self._columns:
            if isinstance(times[-1], tuple):  # worked out only now: see deferred_times
                times = worked_out_times(*times)
            starts, ends, cpus = (column[:count] for column in times)
            indices = range(first, first + count)
            self._rows += zip(indices, [worker] * count, starts, ends, cpus, strict=True)
        self._columns.clear()
        return self._rows

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        return self._all()[index]

    def __iter__(self):
        return iter(self._all())


@dataclass
class RunReport:
    """What one run did. ``parmagic.last_report()`` returns the latest one."""

    backend: str
    workers: int
    start_method: str | None = None
    chunks: int = 0
    wall: float = 0.0
    startup: float = 0.0  # preparing the run: pickling the task, a pool's first start
    pool_start: float = 0.0  # of startup: starting worker processes or a cluster
    sending: float = 0.0  # reading the iterable and handing chunks to the backend
    waiting: float = 0.0  # waiting for results while the items run
    bytes_sent: int = 0  # pickled task and items sent to worker processes
    timings: ItemTimings = field(default_factory=lambda: ItemTimings())  # the first items'
    item_count: int = 0
    busy: float = 0.0  # the items' spans added up (overlapping waits for a core, the GIL...)
    cpu: float = 0.0
    queued: float = 0.0  # of busy: items ready to run, waiting for a core (a loaded machine)
    alone: float = 0.0  # busy - queued of items that had their thread of Python to themselves
    shared_busy: float = 0.0  # the same figures for items that shared one process's Python
    shared_cpu: float = 0.0  # (threads, asyncio): they also waited for each other, and
    shared_queued: float = 0.0  # that waiting is not theirs (see own_time)
    shared_wall: float = 0.0  # the wall time of the runs in which items shared a process
    shared_process_cpu: float = 0.0  # the kernel process's CPU time during those runs
    kernel_cpu: float = 0.0  # the kernel thread's CPU time applying results
    turns_cpu: float = 0.0  # items that took turns at the GIL on threads, timed against
    turns_blocked: float = 0.0  # a ProcessProfile: their CPU time, blocked time, and
    turns_idle: float = 0.0  # blocked time while the process was idle
    sharing: bool = False  # the items now arriving share one process's Python
    _profile: ProcessProfile | None = field(default=None, repr=False)
    per_worker: dict[str, int] = field(default_factory=dict)
    unfinished: list[int] = field(default_factory=list)  # handed out, never applied (interrupt)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # index, item, error
    auto_reason: str | None = None  # why --backend auto chose this backend
    as_written: str | None = None  # why serial ran the cell as written, not item by item
    auto_saw_computing: bool | None = None  # what auto's lead-in items did, when it moved
    native_limit: int | None = None  # BLAS/OpenMP threads per worker, when a cap applied
    native_code: bool = False  # the items use a library with native thread pools
    stopped_at: int | None = None  # the failing item that stopped the run (--on-error raise)
    interrupted: bool = False
    started: bool = False  # False: refused before any item ran (no summary to show)
    warnings: list[str] = field(default_factory=list)
    worker_busy: dict[str, float] = field(default_factory=dict)
    cores: int = 1  # usable cores during the run
    costs: RecordingCosts = NOTHING_MEASURED  # given by a run whose figures leave them out
    copies_objects: bool = False  # items ran in other processes, on copies of kernel objects
    plain_loop: bool = False  # the kernel ran the loop itself, item after item (serial)
    event_loop: bool = False  # items were coroutines, taking turns at one event loop
    usage: Usage | None = None  # per-core and machine samples (monitor.py)
    dashboard: str | None = None  # a link to the cluster's dashboard (dask)
    recorded_items: int = 0  # items recorded and replayed rather than run in place (see recording)
    changes: int = 0  # recorded changes replayed

    def __repr__(self) -> str:
        """One line: the summary itself shows where IPython displays the report."""
        return (
            f"<RunReport: {self.backend}, {self.workers} workers, {self.item_count} items, "
            f"wall {self.wall:.3f} s>"
        )

    # The run's figures add up here, as the run goes: each stretch on one backend (auto
    # moves a run), each round of sending and waiting, each chunk applied.

    def ran_on(self, backend: Backend, startup: float, pool_start: float) -> None:
        """The run goes on on ``backend``; preparing it (a pool started for it) took
        ``startup`` seconds of the wall time, ``pool_start`` of them starting the pool."""
        self.startup += startup
        self.pool_start += pool_start
        self.wall += startup
        self.backend, self.workers = backend.name, backend.workers
        self.copies_objects = backend.copies_kernel_objects
        self.plain_loop, self.event_loop = backend.is_the_plain_loop, backend.runs_coroutines
        self.start_method, self.dashboard = backend.start_method, backend.dashboard

    def ran_as_written(self) -> None:
        """The kernel runs the cell itself: the plain loop, on no backend's workers."""
        self.backend, self.workers, self.started, self.plain_loop = "serial", 1, True, True

    def stretch_began(self, backend: Backend, startup: float) -> None:
        """The backend's part of the run begins (its task sent in ``startup`` seconds). Items
        that take turns at one process's Python (threads) or one event loop get a
        :class:`ProcessProfile`, which tells their waiting for each other from their own."""
        self.startup += startup
        self.started = True
        self.sharing = backend.items_share_a_process
        self.end_profile()
        if self.sharing or self.event_loop:
            self._profile = ProcessProfile()

    def sent(self, seconds: float, blocked: float) -> None:
        """A round of handing out chunks: ``blocked`` of it waited for busy workers."""
        self.sending += seconds - blocked
        self.waiting += blocked

    def waited(self, seconds: float) -> None:
        self.waiting += seconds

    def applied(self, kernel_cpu: float) -> None:
        """A round of applying results, which took the kernel's thread ``kernel_cpu``."""
        self.kernel_cpu += kernel_cpu

    def chunk_applied(self) -> None:
        self.chunks += 1

    def stop_at(self, index: int | None) -> None:
        """The item whose failure stopped the run (None: the run went on elsewhere)."""
        self.stopped_at = index

    def capped(self, native_limit: int, items: list | None) -> None:
        """Workers capped the native thread pools of these items at ``native_limit``."""
        self.native_limit = native_limit
        if items and not self.native_code:
            from ..worker.native_threads import of_native_library

            self.native_code = of_native_library(items[0])

    def interrupt(self, unfinished: list[int]) -> None:
        self.unfinished, self.interrupted = unfinished, True

    def stretch_ended(
        self, elapsed: float, process_cpu: float, bytes_sent: int, usage: Usage | None
    ) -> None:
        """The backend's part ended after ``elapsed`` seconds, the kernel process having used
        ``process_cpu``; ``usage``: the cores' samples meanwhile."""
        self.bytes_sent += bytes_sent
        self.wall += elapsed
        if self.sharing:
            self.shared_wall += elapsed
            self.shared_process_cpu += process_cpu
        self.end_profile()
        if usage is not None:
            self.usage = usage.joined(self.usage)

    def end_profile(self) -> None:
        """The backend run has ended: its items are applied, the profile's thread stops."""
        if self._profile is not None:
            self._profile.stop()
            self._profile = None

    def add(self, result, count: int) -> None:
        """Count the first ``count`` items of a chunk result."""
        busy, cpu = result.busy_and_cpu(count)
        queued = result.queued * count / len(result) if len(result) else 0.0
        idle = None  # the share of the chunk's time the process used no core, if profiled
        if self._profile is not None and count:
            idle = self._profile.idle_between(result.starts[0], result.ends[count - 1])
            blocked = max(0.0, busy - queued - cpu)
            if self.sharing:
                self.turns_cpu += cpu
                self.turns_blocked += blocked
                self.turns_idle += blocked * idle
        self.item_count += count
        if result.logged:
            self.recorded_items += count
            ops = itertools.islice(result.ops, count)
            self.changes += sum(map(len, filter(None, ops)))  # most are empty: at C speed
        self.busy += busy
        self.cpu += cpu
        self.queued += queued
        if self.sharing:
            self.shared_busy += busy
            self.shared_cpu += cpu
            self.shared_queued += queued
        elif idle is not None:  # coroutines: see own_time
            self.alone += cpu + max(0.0, busy - queued - cpu) * idle
        else:
            self.alone += max(busy - queued, min(cpu, busy))  # native threads: cpu > busy
        self.per_worker[result.worker] = self.per_worker.get(result.worker, 0) + count
        self.worker_busy[result.worker] = self.worker_busy.get(result.worker, 0.0) + busy
        self.timings.add(result, count)

    @property
    def items(self) -> list[ItemTiming]:
        """Per-item records (index, worker, start, end, CPU time) of the first items."""
        return [ItemTiming(*timing) for timing in self.timings]

    @property
    def worker_ids(self) -> set[str]:
        return set(self.per_worker)

    @property
    def applying(self) -> float:
        """The rest of the wall time: results shown, changes replayed, names bound."""
        return max(0.0, self.wall - self.startup - self.sending - self.waiting)

    @property
    def own_time(self) -> float:
        """What the items would take one after another in the kernel: their time on a CPU
        plus their waiting on the world (I/O, sleep), without the waiting a parallel run adds.

        Time queued for a core is left out (Linux's scheduler accounting, chunk.py). Items
        that took turns at one process's Python (threads, coroutines) also waited for each
        other, which no clock tells apart from I/O. What tells is the process's profile: a
        coroutine's time blocked while the process used no core counts, the rest does not
        (the event loop's own work for a coroutine, aiohttp's parsing, is not in its CPU
        time, so how much of the rest was its own cannot be judged); for threads, see
        :meth:`_turns_own`.
        """
        own = self.alone
        if self.turns_cpu or self.turns_blocked:
            own += self._turns_own()
        elif self.shared_busy or self.shared_cpu:  # figures without a profile
            used = max(self.shared_cpu, self.shared_process_cpu) + self.shared_queued
            busy_python = min(1.0, used / self.shared_wall) if self.shared_wall else 1.0
            blocked = max(0.0, self.shared_busy - self.shared_queued - self.shared_cpu)
            own += self.shared_cpu + blocked * (1.0 - busy_python)
        return own

    def _turns_own(self) -> float:
        """The own time of items that took turns at the GIL on threads, from the process's
        profile. Time blocked while the process used no core was their own (nobody held
        the GIL): it counts whole. Time blocked while it was busy was either waiting for
        the GIL or on the world. The GIL is one server: items asking it for ``turns_cpu``
        seconds waited about ``turns_cpu * busy / (1 - busy)`` for it (a queue's mean wait,
        M/M/1), ``busy`` being the share of their blocked time the process was busy; the
        rest of that time was waiting on the world. Items that mostly wait (on a server)
        leave the process mostly idle, and keep nearly all of it; items that compute keep
        it busy (``busy`` near 1): their wait for the GIL takes all of it, and a computing
        loop on threads is never flattered. Nor on a busy machine: a thread handed the GIL
        may wait for a core, and meanwhile the process uses none while the others wait for
        it, so the items' time queued for a core is not counted as the process idle.
        """
        idle = max(0.0, self.turns_idle - self.shared_queued)
        ambiguous = max(0.0, self.turns_blocked - idle)
        idle_share = idle / self.turns_blocked if self.turns_blocked else 0.0
        if idle_share <= 0.0:
            return self.turns_cpu
        for_the_gil = self.turns_cpu * (1.0 - idle_share) / idle_share
        return self.turns_cpu + idle + max(0.0, ambiguous - for_the_gil)

    @property
    def serial_estimate(self) -> float:
        """What a serial run of the same items would take: their own time, plus the kernel's
        work that a serial run does too (showing output, replaying changes), as CPU time: on
        threads its wall time includes waiting for the GIL."""
        if self.plain_loop:
            return self.wall
        floor = self.item_count * self.costs.in_place  # serial's items cost no less
        return max(self.own_time + self.kernel_cpu - self.recording, floor)

    @property
    def serial_is_bound(self) -> bool:
        """Whether the items cost under ten times what recording them costs: what they cost
        without it is then too uncertain to estimate (on threads, items that contend for the
        GIL also take more CPU time), and the serial estimate is only an upper bound."""
        measured = self.own_time + self.kernel_cpu
        return not self.plain_loop and self.recording > BOUND_SHARE * measured

    @property
    def recording(self) -> float:
        """Seconds of this run's item and kernel time that went to recording and replaying
        what items did, which serial, running the loop itself, never pays (calibration.py)."""
        costs = self.costs
        return self.recorded_items * costs.per_item + self.changes * costs.per_change

    @property
    def cpu_share(self) -> float:
        """The items' CPU time over their own time: near 1 they compute, near 0 they wait
        (I/O, sleep, locks)."""
        own = self.own_time
        return min(1.0, self.cpu / own) if own > 0 else 0.0

    @property
    def computing(self) -> bool:
        """The one classification the summary's CPU line, its advice and auto's note use."""
        return self.cpu_share >= CPU_BOUND_SHARE

    @property
    def speedup(self) -> float:
        """Over the serial estimate: how many times faster than the plain loop, about."""
        return self.serial_estimate / self.wall if self.wall > 0 else 0.0

    @property
    def ideal(self) -> float:
        """The best speedup this backend could reach on this machine for this loop."""
        parallel = max(1, min(self.workers, self.item_count))
        if self.plain_loop or self.one_at_a_time:
            return 1.0
        if self.computing:
            if self.copies_objects or self.releases_the_gil:
                return float(min(parallel, self.cores))
            return 1.0  # one thread runs Python at a time (the GIL)
        return float(parallel)

    @property
    def releases_the_gil(self) -> bool:
        """Items sharing a process that ran on more than one core at once: they did not take
        turns at the GIL (NumPy's code lets go of it)."""
        return side_by_side(self.shared_cpu, self.shared_queued, self.shared_wall)

    @property
    def efficiency(self) -> float:
        """The speedup over the ideal, at most 1: both are estimates near the top."""
        return min(1.0, self.speedup / self.ideal) if self.ideal else 0.0

    # Set by the run and the magic, read by the summary (render.py):
    one_at_a_time: bool = False  # the items cannot overlap (an asyncio body that never awaits)
    tells_native_limit: bool = False  # this summary tells of the cap (once a session)
    processes_refused: str | None = None  # why auto found processes could not take the loop


def side_by_side(cpu: float, queued: float, wall: float) -> bool:
    """Whether threads ran side by side rather than in turns, from their CPU and run-queue
    times over ``wall`` seconds. A busy machine's queueing counts as running (it says nothing
    of the GIL), but only once the threads used more CPU between them than threads taking
    turns can: on a busy machine a thread waiting for the GIL queues too, each time it wakes
    to ask for it, and that alone once made a loop that holds a lock look side by side."""
    return wall > 0 and (cpu + queued) >= SIDE_BY_SIDE * wall and cpu > IN_TURNS_AT_MOST * wall


class ProcessProfile:
    """The kernel process's CPU time, read every ``PROFILE_STEP`` seconds on a thread of its
    own while items share its Python (threads, coroutines): how busy the process was when.

    Items that share a process wait for each other's Python (the GIL, the event loop) only
    while some of them run it: time an item was blocked while the process used no core was
    its own waiting, on the world. A run's average cannot tell the two apart: items that
    call a server send their requests, and read the answers, in bursts, all waiting for the
    GIL at once, and in between all wait for the server while the process idles; counting
    each item's blocked time by the process's average business dropped up to half their
    waiting on the server (issue 30). Time blocked while the process was busy stays
    ambiguous: :attr:`RunReport.own_time` says how much of it counts.
    """

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time.monotonic(), process CPU
        # time, how late the reading came: the profile's thread waited for the GIL, or a core)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # readings from two threads stay in time order
        self.mark()
        threading.Thread(target=self._run, name="parmagic-profile", daemon=True).start()

    def mark(self, due: float | None = None) -> None:
        with self._lock:
            now = time.monotonic()
            late = max(0.0, now - due - LATE_SLACK) if due is not None else 0.0
            self.samples.append((now, time.process_time(), late))
            if len(self.samples) > MOST_SAMPLES:  # a lazy run left half-consumed keeps going
                del self.samples[: MOST_SAMPLES // 2]

    def _run(self) -> None:
        due = time.monotonic() + PROFILE_STEP
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self.mark(due)
            due = time.monotonic() + PROFILE_STEP

    def stop(self) -> None:
        self._stop.set()

    def idle_between(self, start: float, end: float) -> float:
        """The share of ``start``..``end`` in which the process used no core, as sampled
        (a reading taken now closes the last interval). A reading that came late counts
        its delay as busy: its thread waited for the GIL, held by a thread that may itself
        wait for a core on a busy machine, using none."""
        self.mark()
        with self._lock:
            samples = list(self.samples)
        if end <= start:
            return 0.0
        k = max(1, bisect.bisect_right(samples, start, key=_when))
        idle = 0.0
        while k < len(samples) and samples[k - 1][0] < end:
            (t0, c0, _), (t1, c1, late) = samples[k - 1], samples[k]
            overlap = min(end, t1) - max(start, t0)
            if t1 > t0 and overlap > 0:
                busy = max(c1 - c0, late) / (t1 - t0)
                idle += overlap * max(0.0, 1.0 - busy)
            k += 1
        self._forget_before(start - FORGET_MARGIN)
        return min(1.0, idle / (end - start))

    def _forget_before(self, moment: float) -> None:
        """Items are applied in order, and later ones started later: readings from well
        before the item just counted are not needed again (a long run stays small)."""
        with self._lock:
            old = bisect.bisect_right(self.samples, moment, key=_when) - 1
            if old > 0:
                del self.samples[:old]


def _when(sample: tuple) -> float:
    return sample[0]
