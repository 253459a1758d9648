"""``--backend auto``: the loop starts in the kernel and moves once its items say where to.

The first items run in the kernel, one after another, exactly as a serial run would run them,
and count as done: nothing is probed twice, and their times, taken with no other item
running, are what a serial run takes. After each chunk of them the lead-in weighs the rest
of the loop on each backend with a small cost model (:func:`forecast`) and moves it to the
first backend that would clearly beat the kernel. A loop whose first items are cheap (they
often are: ``range`` grows) keeps running in the kernel until its items get dear enough,
so the choice rests on what the loop costs where it has got to, not on its first items.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..backends import Backend, load_backend
from ..errors import AUTO_HIDDEN, AUTO_HIDDEN_LATER, HiddenChange, NotPicklable
from ..machine import usable_cores
from ..summary.report import RunReport, side_by_side
from ..worker.hidden_state import Guard
from ..worker.task import Task
from .context import RunContext
from .dispatch import Recording

LEAD_ITEMS = 2  # decide on no fewer items than this...
LEAD_SECONDS = 0.01  # ...unless the items so far took this long
WARM_START = 0.005  # seconds to hand a run to a warm process pool
COLD_START = {"fork": 0.05, "forkserver": 0.4, "spawn": 0.6}  # to start one (this machine)
SHIPPING_RATE = 1e9  # bytes per second, pickled and sent to a worker
KERNEL_PER_ITEM = 3e-6  # the kernel's own seconds per item on a parallel backend (applying)
# what an item costs beyond its own work where it is recorded (every backend but the kernel's
# serial, which runs the loop itself): bench/per_item.py measures about 1.6 µs
RECORDED_PER_ITEM = 2e-6
MIN_GAIN_SECONDS = 0.02  # move only when the backend saves at least this much...
MIN_GAIN_SHARE = 0.2  # ...and this share of what the kernel would take
TRIAL_WORTH = 0.15  # seconds of kernel work left that are worth a trial on threads
TRIAL_SECONDS = 0.1  # how long the trial lasts, at least
INSTALMENT_SHARE = 8  # the kernel takes at most 1/8 of the items left at a time (see Instalments)
MAX_WAITING_THREADS = 32  # see waiting_threads
CHANGED_PACE = 10  # the latest item cost this many times the earlier ones: the loop changed


@dataclass
class Outlook:
    """What the machine and the session offer the rest of the loop."""

    cores: int
    threads: int  # workers a thread pool would have
    processes: int  # workers a process pool would have
    process_start: float  # seconds until a process pool runs items (warm: almost none)
    captured_bytes: Callable[[], int]  # about what the task weighs (cheap: nothing pickled)
    processes_refused: Callable[[], str | None]  # why the task cannot go (it is pickled)
    threads_allowed: bool = True  # False under --seed (threads share one random state)
    workers_given: bool = False  # --workers: the user's count, never sized from the items


@dataclass
class Forecast:
    """Seconds the rest of the loop would take on each backend that can run it."""

    serial: float
    threads: float
    processes: float | None  # None: the body cannot go to processes, or one core

    def best(self) -> str:
        options = {"serial": self.serial, "threads": self.threads}
        if self.processes is not None:
            options["processes"] = self.processes
        name = min(options, key=options.__getitem__)
        gain = self.serial - options[name]
        if gain < max(MIN_GAIN_SECONDS, MIN_GAIN_SHARE * self.serial):
            return "serial"
        return name


def forecast(
    per_item: float, share: float, remaining: int, outlook: Outlook, shipping: float | None
) -> Forecast:
    """The rest of the loop on each backend: ``remaining`` items of ``per_item`` seconds
    each, of which ``share`` is CPU time. Threads run one item's Python at a time (the
    GIL); processes run as many as there are cores, after starting and shipping the task
    (``shipping``: seconds; None: the body cannot go); the kernel's own part of each item
    (showing output, replaying changes) takes a core's time on every parallel backend."""
    work = per_item * remaining

    def spread(workers: int, cpu_lanes: int) -> float:
        rounds = math.ceil(remaining / workers) * (per_item + RECORDED_PER_ITEM)
        busy_lanes = share * min(workers, remaining) / cpu_lanes
        return rounds * max(1.0, busy_lanes)

    kernel = KERNEL_PER_ITEM * remaining
    threads = max(spread(outlook.threads, 1), kernel)
    processes = None
    if shipping is not None and outlook.cores > 1:
        lanes = min(outlook.cores, outlook.processes)
        computing = spread(outlook.processes, outlook.cores) + kernel * share / lanes
        processes = outlook.process_start + shipping + max(computing, kernel)
    return Forecast(work, threads, processes)


class Lead:
    """Hands the kernel the loop's items until the forecast says another backend should take
    the rest; then :attr:`choice` names it (None: the loop ended in the kernel).

    Whether code that computes releases the GIL (NumPy's does) shows only on threads: when
    processes would not pay (the loop captures too much, or cannot be pickled) and enough
    work is left, the choice is threads :attr:`on_trial`, and :meth:`trial` hands threads the
    items until their times tell: if they ran side by side (``report.side_by_side``: more
    than one core busy), threads keep the rest (:attr:`kept`); if they took turns, the rest
    goes back to the kernel.
    """

    def __init__(self, report: RunReport, length: int, outlook: Outlook) -> None:
        self.report, self.length, self.outlook = report, length, outlook
        self.choice: str | None = None  # the backend that takes the rest
        self.on_trial = False  # threads take the rest until their items' times tell
        self.moved = ""  # why the rest went to ``choice``
        self.refused: str | None = None  # why processes cannot take the loop, once asked
        self._shipping: float | None = None  # seconds to ship the task, once weighed
        self._checked = False  # whether the task was pickled to see that it can go
        self._seen = (0, 0.0)  # items done and their own time, at the last decision
        self._per_item = 0.0
        self.kept = False  # the trial on threads showed the items run side by side
        self.led = 0  # items the kernel ran before the rest moved
        self._began: float | None = None
        self.guard: Guard | None = None  # the state items may change unnamed, as before them
        self._held = ""  # why the loop stays in the kernel whatever the forecast says
        self._kept_here = (0, 0.0)  # items done, and their mean own time, when the forecast last
        # kept the loop in the kernel
        self.threads = outlook.threads  # the pool a move to threads starts (waiting_threads)

    def _hold(self) -> bool:
        """Whether the first items changed state the loop's lines do not name: a parallel
        run could not keep it as the kernel does, so the loop stays here."""
        what = self.guard.changed() if self.guard is not None else None
        if what is not None:
            self._held, self.choice, self.moved = AUTO_HIDDEN.format(what=what), None, ""
        return bool(self._held)

    def moves(self) -> bool:
        """Asked before each chunk the kernel takes: True once the rest of the loop should go
        to :attr:`choice` (the kernel's items then come straight from the iterable, at no
        cost per item)."""
        if self._held:
            return False
        now = time.monotonic()
        if self._began is None:
            self._began = now
        done = self.report.item_count
        return done != self._seen[0] and self._decide(now - self._began) and not self._hold()

    @property
    def reason(self) -> str:
        """Why the rest of the loop went where it went (ask once the lead-in has ended)."""
        return self.moved if self.choice else self._held or self._stayed()

    def _decide(self, elapsed: float) -> bool:
        """Weigh the rest of the loop after a chunk; True when it moves elsewhere."""
        r = self.report
        done, own = r.item_count, r.own_time
        recent = (own - self._seen[1]) / (done - self._seen[0])
        self._seen = (done, own)
        self._per_item = max(own / done, recent)  # items often get dearer as a loop goes on
        if done < LEAD_ITEMS and elapsed < LEAD_SECONDS:
            return False
        remaining = self.length - done if self.length else done  # unknown: as many again
        if remaining <= 0:
            return False
        share = r.cpu_share
        if not self.outlook.workers_given:
            left = remaining if self.length else MAX_WAITING_THREADS  # unknown: not just "done"
            self.threads = self.outlook.threads = waiting_threads(share, left)
        outlook = self._weigh(share, remaining)
        choice = outlook.best()
        trial = choice == "serial" and self._worth_a_trial(outlook)
        if trial:
            choice = "threads"
        if choice == "serial":
            self._kept_here = (done, own / done)
            return False
        self.choice, self.on_trial, self.led = choice, trial, done
        self.moved = self._moved(choice, trial, share, remaining)
        r.auto_saw_computing = r.computing
        return True

    def _worth_a_trial(self, outlook: Forecast) -> bool:
        """Only where processes cannot beat the kernel at all (while they merely do not win
        by enough yet, more items in the kernel will tell), and where threads could: items
        cheaper than what recording them costs never gain, even side by side."""
        processes_lose = outlook.processes is None or outlook.processes >= outlook.serial
        lanes = min(self.outlook.cores, self.outlook.threads)
        at_best = (self._per_item + RECORDED_PER_ITEM) / lanes  # every thread busy, no GIL
        return (
            processes_lose
            and at_best < self._per_item * (1 - MIN_GAIN_SHARE)
            and self.report.computing
            and self.outlook.cores > 1
            and self.outlook.threads_allowed
            and outlook.serial >= TRIAL_WORTH
        )

    def trial(self, iterator: Iterator) -> Iterator:
        """The items for threads on trial: all of them if they turn out to run side by side,
        else only until that shows."""
        r = self.report
        began, first, records = time.monotonic(), r.item_count, len(r.timings)
        before = (r.shared_cpu, r.shared_queued)
        deciding = True
        while True:
            elapsed = time.monotonic() - began
            tried = r.item_count - first
            if deciding and elapsed >= TRIAL_SECONDS and tried >= 2 * self.outlook.cores:
                deciding = False
                applied = r.timings[records:]  # empty past 100,000 records: then up to now
                span = max((t[3] for t in applied), default=time.monotonic())
                span -= min((t[2] for t in applied), default=began)
                cpu, queued = r.shared_cpu - before[0], r.shared_queued - before[1]
                self.kept = side_by_side(cpu, queued, span)
                self.moved = self._tried((cpu + queued) / span if span > 0 else 0.0, elapsed)
                if not self.kept:
                    return
            try:
                item = next(iterator)
            except StopIteration:
                if deciding:  # the loop ended inside the trial: threads ran all of it
                    self.kept = True
                    self.moved = self._finished_on_trial(time.monotonic() - began)
                return
            yield item

    def _computing_seen(self) -> str:
        return f"items compute (CPU {self.report.cpu_share:.0%} of their time over {self._first()})"

    def _finished_on_trial(self, elapsed: float) -> str:
        seen = self._computing_seen()
        return (
            f"{seen}, and {self._why_not_processes()}: threads, tried for {elapsed:.2f} s, "
            "finished the loop before the trial could judge them"
        )

    def _tried(self, running: float, elapsed: float) -> str:
        seen = self._computing_seen()
        if self.kept:
            return (
                f"{seen}, in code that releases the GIL: on threads, tried for {elapsed:.2f} s, "
                f"they ran side by side ({running:.1f} cores busy)"
            )
        return (
            f"{seen}; threads, tried for {elapsed:.2f} s, ran one at a time ({running:.1f} "
            f"cores busy), so the rest ran in the kernel: {self._why_not_processes()}"
        )

    def _weigh(self, share: float, remaining: int) -> Forecast:
        """The forecast, with what shipping the task to processes costs weighed only once
        processes would win without it, and the task pickled (to see that it can go) only
        once they would win with it: both cost time, the pickling most."""

        def weighed(shipping: float | None) -> Forecast:
            return forecast(self._per_item, share, remaining, self.outlook, shipping)

        if self.refused:
            return weighed(None)
        outlook = weighed(self._shipping or 0.0)
        if outlook.best() != "processes" or self._checked:
            return outlook
        if self._shipping is None:
            weight = self.outlook.captured_bytes() * self.outlook.processes
            self._shipping = weight / SHIPPING_RATE
            outlook = weighed(self._shipping)
            if outlook.best() != "processes":
                return outlook
        self._checked = True
        self.refused = self.report.processes_refused = self.outlook.processes_refused()
        return weighed(None) if self.refused else outlook

    def _first(self) -> str:
        count = self.led
        return f"the first {count} items, run in the kernel" if count > 1 else "the first item"

    def _moved(self, choice: str, trial: bool, share: float, remaining: int) -> str:
        """Why the rest moved to ``choice`` (for a trial, until the trial tells)."""
        kind = "compute" if self.report.computing else "mostly wait"
        seen = f"items {kind} (CPU {share:.0%} of their time over {self._first()})"
        pace = f"{self._per_item * 1000:.3g} ms each lately"
        rest = f"{remaining} more to come ({pace})"
        if not self.length:
            rest = f"more to come ({pace}; the loop's length is unknown)"
        if kind != "compute" and self._changed_pace():
            seen = self._changed()
        if choice == "processes":
            cores = min(self.outlook.cores, self.outlook.processes)
            return f"{seen}; {rest}: {cores} cores share them"
        if trial:
            return f"{seen}; {rest}, and {self._why_not_processes()}: threads took them on trial"
        note = f"; processes cannot take it: {self.refused}" if self.refused else ""
        pool = f"{self.threads} threads overlap their waiting"
        if not self.outlook.workers_given:
            pool += f" ({_waiting_share(share)})"
        return f"{seen}; {rest}: {pool}{note}"

    def _latest(self) -> tuple[float, float]:
        """The latest item's time and CPU time in the kernel."""
        r = self.report
        if not r.timings:
            return self._per_item, self._per_item * r.cpu_share
        index, worker, start, end, cpu = r.timings[-1]
        return end - start, cpu

    def _changed_pace(self) -> bool:
        """Whether the latest items cost far more than those that had kept the loop in the
        kernel (not a loop whose items get dearer little by little)."""
        count, mean = self._kept_here
        return count > 0 and self._latest()[0] > CHANGED_PACE * max(mean, RECORDED_PER_ITEM)

    def _changed(self) -> str:
        """What the kernel's latest items showed, after earlier ones had kept the loop here:
        they began to wait (items that compute say so, with their CPU share)."""
        latest, _ = self._latest()
        return (
            f"moved to threads at item {self.led}: the first {self._kept_here[0]} items were too "
            f"cheap for workers, then items began to wait {latest:.2g} s each"
        )

    def _why_not_processes(self) -> str:
        if self.refused:
            return f"they cannot go to processes ({self.refused})"
        if self._shipping and self._shipping > MIN_GAIN_SECONDS:
            weight = self._shipping * SHIPPING_RATE / self.outlook.processes / 1e6
            return f"sending the {weight:.0f} MB it captures to processes costs more than they save"
        return "processes would not have paid for themselves"

    def _stayed(self) -> str:
        r = self.report
        if r.item_count == 0:
            return "the loop had no items"
        why = "workers would not have paid for themselves"
        if self.refused or (self._shipping and self._shipping > MIN_GAIN_SECONDS):
            why = self._why_not_processes()
            if r.computing:
                why += ", and threads run one item's Python at a time"
        elif r.computing and self.outlook.cores < 2:
            why = "the items compute and only one core is usable"
        return f"the whole loop ran in the kernel ({r.item_count} items in {r.wall:.3f} s): {why}"


def auto_run(
    run: RunContext, iterator: Iterator, length: int, replayed, report: RunReport,
    recording: Recording | None = None,
) -> Iterator[list]:  # fmt: skip
    """The loop under auto: its first items in the kernel until the rest should go
    elsewhere (:class:`Lead`), then the rest there; lazy throughout, like the loop it
    replaces. A trial on threads that shows items taking turns hands the rest back."""

    def phase(backend: Backend, task: Task, items: Iterator, until=None) -> Iterator[list]:
        if recording is not None:
            recording.task = task
        return run.run_on(backend, task, items, length, report, recording, until)

    compared = recording is not None  # --compare: every item's own names, nothing in place
    serial, task = run.start("serial", 1, report, replayed, compared)
    leader = Lead(report, length, outlook(run, task))
    if not run.options.unordered:
        leader.guard = run.guard(task.function)
    instalments = Instalments(iterator, report, length)
    yield from phase(serial, task, instalments, until=lambda: leader.moves() or instalments.begin())
    name, report.auto_reason = leader.choice, leader.reason
    if name is None:
        return
    if run.options.seed is not None and not load_backend(name).seedable:
        name = "serial"  # threads share one global random state
        report.auto_reason += "; serial, as --seed needs items in processes of their own"
    workers, items = run.options.workers, iterator
    if name == "threads" and leader.on_trial:  # as many threads as cores: the items compute
        workers, items = workers or usable_cores(), leader.trial(iterator)
    elif name == "threads":
        workers = leader.threads
    try:
        yield from phase(*run.start(name, workers, report, replayed, compared), items)
    except HiddenChange as stop:  # what the first items did not show: the rest in the kernel
        if recording is not None:
            raise
        report.stop_at(None)
        report.auto_reason = f"{leader.reason}; " + AUTO_HIDDEN_LATER.format(
            what=stop.what, first=stop.first
        )
        rest = itertools.chain(stop.unapplied, iterator)
        yield from phase(*run.start("serial", 1, report, replayed, compared), rest)
        return
    report.auto_reason = leader.reason
    if items is not iterator and not leader.kept:  # the trial: the rest in the kernel
        yield from phase(*run.start("serial", 1, report, replayed, compared), iterator)


class Instalments:
    """The iterable for the kernel's part of an auto run, handed out in instalments of at
    most 1/``INSTALMENT_SHARE`` of the items left (half as many as done, when the length is
    unknown), so that the lead-in weighs the loop again after each: chunks sized from cheap
    first items would otherwise take the whole rest at once, and a loop whose later items
    wait (or compute) could not move (issue 30). The dispatcher asks the lead-in before it
    takes each chunk (``until``), and :meth:`begin` is called then; a chunk that asks for
    more than the instalment holds gets StopIteration, and so ends there (the dispatcher
    takes each chunk with a fresh ``islice``)."""

    def __init__(self, iterator: Iterator, report: RunReport, length: int) -> None:
        self.iterator, self.report, self.length = iterator, report, length
        self.left = 0  # items left in the current instalment

    def begin(self) -> bool:
        """Start the next instalment (False: for ``until``, the run goes on)."""
        done = self.report.item_count
        rest = self.length - done if self.length else 2 * done
        self.left = max(1, rest // INSTALMENT_SHARE)
        return False

    def __iter__(self) -> Instalments:
        return self

    def __next__(self):
        if self.left <= 0:
            raise StopIteration
        self.left -= 1
        return next(self.iterator)


def _waiting_share(cpu_share: float) -> str:
    """How long items wait against how long they compute, in words that stay true."""
    ratio = (1 - cpu_share) / cpu_share if cpu_share > 0 else math.inf
    if ratio >= 1000:
        return "items hardly compute"
    if ratio >= 1.5:
        return f"items wait {ratio:.0f} times as long as they compute"
    return f"items compute {cpu_share:.0%} of their time"


def waiting_threads(cpu_share: float, remaining: int) -> int:
    """Threads for items that spend ``cpu_share`` of their time on a CPU, as a user who had
    timed them would size the pool: one item's Python runs at a time (the GIL), so about
    ``1 / cpu_share`` threads keep it busy, each waiting while the others run; never more
    than the items left, nor ``MAX_WAITING_THREADS``. That cap is what
    ``concurrent.futures.ThreadPoolExecutor`` allows by default (``min(32, cores + 4)``):
    past it every extra thread costs a stack, a connection to the server it waits on, and
    GIL hand-offs that the kernel's own applying thread queues behind, for waits already
    overlapped; a loop that wants more can say ``--workers``. At least the default pool."""
    from ..backends.threads import ThreadBackend

    wanted = math.ceil(1.0 / cpu_share) if cpu_share > 0 else MAX_WAITING_THREADS
    sized = min(remaining, wanted, MAX_WAITING_THREADS)
    return max(ThreadBackend.default_workers(), sized)


def outlook(run: RunContext, task: Task) -> Outlook:
    """What the rest of an auto run could have: cores, pools, warm or not. Whether the task
    can go to processes, and what it weighs, are asked only when processes are in view (both
    pickle the task)."""
    import multiprocessing

    from ..analysis.run_checks import hash_order_refusal, item_object_refusal
    from ..backends.threads import ThreadBackend

    def processes_refused() -> str | None:
        from ..worker.shipping import pack_task

        refused = item_object_refusal(run.plan, "processes") or (
            hash_order_refusal(run.plan, run.ns, run.options, "processes", short=True)
        )
        if refused:
            return refused
        try:
            pack_task(task)
        except NotPicklable as refused:
            return str(refused).split(" (")[0]
        return None

    def captured_bytes() -> int:
        from ..worker.shipping import captured_bytes

        return captured_bytes(task.function)

    options = run.options
    method = options.start_method or multiprocessing.get_start_method()
    native = options.native_threads
    warm = run.session.is_warm("processes", options.workers, options.start_method, native)
    return Outlook(
        cores=usable_cores(),
        threads=options.workers or ThreadBackend.default_workers(),
        processes=options.workers or usable_cores(),
        process_start=WARM_START if warm else COLD_START.get(method, 0.5),
        captured_bytes=captured_bytes,
        processes_refused=processes_refused,
        threads_allowed=options.seed is None,
        workers_given=options.workers is not None,
    )
