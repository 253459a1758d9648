"""The exceptions users see, the sentences they read, and how a failed item's traceback is shown.

Messages are named constants so tests can match them. Nothing here imports IPython: the
magics front turns :class:`ParmagicUsageError` into IPython's one-line ``UsageError``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterable

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
ITEM_FUNCTION_NAME = "__parmagic_item__"
# A frame of parmagic's own that plain Python does not have: a list, set or dict
# comprehension's, which Python 3.12 and later run in the enclosing frame (PEP 709).
INLINED_FRAME_NAME = "__parmagic_inlined__"

# Refusals: raised before anything in the cell runs, so a refused cell changes nothing.
NO_LOOP = (
    "found no loop to run in parallel: put one top-level `for` loop (or one list, set or "
    "dict comprehension or generator expression) in the cell; loops inside `if`, `def` or "
    "another loop are not considered"
)
SEVERAL_LOOPS = (
    "the cell has {count} top-level `for` loops (lines {lines}); %%parallel runs exactly one "
    "of them in parallel, so put that loop in a cell of its own"
)
SEVERAL_COMPREHENSIONS = (
    "the cell has comprehensions on several lines ({lines}) and no `for` loop; put the one to "
    "run in parallel in a cell of its own"
)
SEVERAL_IN_STATEMENT = (
    "line {line} holds {count} comprehensions side by side; split them over two statements "
    "so %%parallel knows which one to run in parallel"
)
BREAK_REFUSED = (
    "line {line}: `break` would make items stop each other, which parallel items cannot do; "
    "filter the items instead (e.g. `itertools.takewhile`) or run the loop without %%parallel"
)
ASYNC_FOR_REFUSED = (
    "line {line}: `async for` cannot be the parallel loop; iterate over a plain iterable and "
    "`await` inside the body instead"
)
AWAIT_REFUSED = (
    "line {line}: the loop body uses `{what}`, which needs an event loop; the {backend} "
    "backend runs plain functions, so use --backend asyncio (or auto), or remove the `await`"
)
NO_AWAIT = (
    "the loop body never awaits, so on the asyncio backend each item holds the event loop "
    "until it ends and the items run one after another; use --backend threads for blocking "
    "calls, or an async library (aiohttp, asyncio.sleep) with `await`"
)
MOVE_THE_READS = "Move the reads of"  # advice that needs work before the reads
_ORDERED_TAIL_ADVICE = (
    "parmagic runs statements that read state carried from item to item in the kernel, in "
    "item order, when they come last in the body, after the work that does not need that "
    f"state; here that work needs it. {MOVE_THE_READS} `{{name}}` after it, or run the loop "
    "without %%parallel"
)
NOTHING_PARALLEL = (
    "{why}; and the body's first statement already needs that state, so no part of any item "
    "can run before the items ahead of it are done: nothing could run in parallel (nothing "
    "has run). {rewrite}Or run the loop with --backend serial or auto, which run it as written "
    "in the kernel"
)
COUNTING_REWRITE = (
    "Count with a reduction instead: make `{name}` a `collections.Counter()` before the loop "
    "and write `{name}[{key}] += {amount}`, which parmagic applies in item order. "
)
SPELLED_OUT_REDUCTION = (
    "line {line}: `{name} = {name} {op} ...` reads the previous item's `{name}`; write "
    "`{name} {op}= {right}` instead, a reduction that parmagic applies in item order"
)
CARRIED_READ = (
    "line {line}: the body reads `{name}`, which it also changes (line {write_line}), so each "
    "item depends on the ones before it. " + _ORDERED_TAIL_ADVICE
)
CARRIED_NAME = (
    "line {line}: the body reads `{name}` before this item assigns it, so the value comes "
    "from the previous item. " + _ORDERED_TAIL_ADVICE
)
TAKES_CARRIED = (
    "line {line}: {what} takes from the kernel's `{name}` and the item uses what it took, so "
    "each item depends on the ones before it. " + _ORDERED_TAIL_ADVICE
)
ITEM_OBJECT_CHANGED_SHORT = "line {line}: {what} advances an iterator the loop hands its items"
ITEM_OBJECT_CHANGED = (
    "line {line}: {what} advances an iterator the loop hands its items (`{name}`); items in "
    "worker processes would advance a copy, and where a copy stopped cannot be carried back "
    "to the kernel's iterator (nothing has run). Run it with --backend threads or serial, or "
    "hand the items what they take (`for values in map(list, iterators)`)"
)
ITERABLE_CHANGED = (
    "line {line}: the loop iterates over `{name}` and also changes it (line {write_line}); a "
    "plain loop would see its own changes, parallel items cannot. Run it without %%parallel"
)
LATE_BINDING = (
    "line {line}: the {what} reads `{name}`, a name the loop changes; called later, a plain "
    "loop's {what} sees the last value, a parallel item's its own. Pass the value in "
    "(e.g. `lambda {name}={name}: ...`) or run the loop without %%parallel"
)
BAD_TARGET = "line {line}: the loop variable must be a name or a tuple of names, not `{target}`"
WALRUS_IN_COMPREHENSION = (
    "line {line}: `:=` inside the parallel comprehension assigns a name outside it, which "
    "parallel items cannot share; compute the value in a `for` loop instead"
)
CHAINED_STORE = (
    "line {line}: a chained or unpacking assignment into `{name}` cannot be replayed in the "
    "kernel; write one `{name}[key] = value` statement per target"
)

# Processes: what cannot travel to a worker process or back, and workers that die.
NOT_PICKLABLE = (
    "the loop uses `{name}` (a {type}), which cannot be sent to a worker process ({reason}). "
    "Create it inside the loop body, or use --backend threads"
)
ITEM_NOT_PICKLABLE = (
    "{items} cannot be sent to a worker process ({reason}); "
    "iterate over plain data (e.g. file names rather than open files), or use --backend threads"
)
RESULT_NOT_LOADABLE = "the worker's result for this item could not be read in the kernel ({reason})"
RESULT_NOT_PICKLABLE = (
    "item {index} produced a value that cannot be sent back from the worker process "
    "({reason}); return plain data, or use --backend threads"
)
COPY_WARNING = (
    "line {line}: {what} acts on a copy inside each worker process, so the kernel's "
    "`{name}` will not change; use --backend threads, or append results to a list"
)
UNORDERED_WARNING = (
    "line {line}: {what} changes the real `{name}` as items finish, which is not item order; "
    "to keep serial order, append results to a list or dict in the loop instead"
)
SHARED_FILE_UNORDERED = (
    "line {line}: every item writes to the file that {what} opens, so its lines land in the "
    "order the items finish (--unordered)"
)
CHANGED_IN_WORKER = (
    "the loop changed `{name}` inside the worker processes; those changes stayed there and "
    "the kernel's `{name}` is as before the loop. Use --backend threads, or collect the "
    "changes in a list the loop appends to"
)
NOT_CARRIED_BACK = (
    "the item changed the kernel's {type} in a worker process, and the change cannot be "
    "carried back to the kernel's object ({why}). Create the object inside the loop, or run "
    "it with --backend threads or serial"
)
SHARED_OBJECT_CHANGED = (
    "the item changed a {type} (`{object}`) that {holder} also holds: a plain loop shows "
    "later items the change, but in worker processes {holder} holds a copy made before it, so "
    "the run stopped after this item (it and the items before it are applied). Give each item "
    "objects of its own, or run it with --backend threads or serial"
)
CHANGED_MEANWHILE = (
    "the item changed a {type} (`{object}`) that the loop also changed another way meanwhile "
    "(by name, or through memory it shares with another object): a plain loop makes both "
    "changes in item order, but copies in worker processes cannot be merged, so the run "
    "stopped before this item's changes (the items before it are applied). Change the object "
    "one way only, or run it with --backend threads or serial"
)
NAME_NOT_RETURNED = (
    "`{name}` (a {type}) could not be sent back from the worker process, so the kernel keeps "
    "its value from before the loop"
)
HELD_NAME_LOST = (
    "the value the loop's last item left in `{name}` stayed in a worker process that is gone, "
    "so the kernel keeps the value `{name}` had before"
)
WORKER_DIED = (
    "a worker process died ({how}) while running {items}; nothing of what they did "
    "was applied. The pool has been replaced, so the next run starts fresh"
)
POOL_BROKEN = (
    "a worker process of the ProcessPoolExecutor died while the pool held this item (the "
    "executor does not say which worker, nor why); the pool has been replaced"
)
STOPPED_WITH_POOL = "the item was stopped because its ProcessPoolExecutor had to be replaced"
ITEM_TIMEOUT = "the item ran longer than the {seconds:g} s allowed by --timeout{fate}"
TIMEOUT_KILLED = "; its worker process was stopped and replaced"
TIMEOUT_ABANDONED = (
    "; a thread cannot be stopped, so it was abandoned and may still be running in the background"
)
DASK_MISSING = (
    "the dask backend needs dask.distributed, which is not installed here; install it with "
    "pip install 'parmagic[dask]' and run the cell again"
)
SCHEDULER_UNREACHABLE = (
    "could not reach a dask scheduler at {address} within {seconds:g} s ({reason}); start the "
    "scheduler (`dask scheduler`) or correct the address (tcp://HOST:PORT), or leave out "
    "--scheduler to run on a local cluster"
)
LOOP_NAME_AS_GLOBAL = (
    "{place}{what}: in a parallel item it would see the kernel's `{name}`, not the item's (the "
    "item's names are its own). Pass it as an argument instead: `{function}(..., {name})`"
)
ARGUMENT_CHANGED_IN_WORKER = (
    "{place}{what}: in a worker process it would change a copy, so the kernel's object would "
    "not change (nothing has run). Run it with --backend threads or serial, return the new "
    "value and store it in the loop, or accept changes to copies with --unordered"
)
CHANGED_READ_IN_FUNCTION = (
    "{place}{what}: in a plain loop it sees every earlier item's change, but parmagic applies "
    "an item's changes after the item, so it would see a stale `{name}` (nothing has run). "
    "Pass the value in as an argument, after the change, or run the loop without %%parallel"
)
CARRIED_ALIAS = (
    "line {line}: the body reads `{name}`, which is the kernel's `{other}` that the body also "
    "changes (line {write_line}), so each item depends on the ones before it (nothing has run). "
    "Run the loop without %%parallel"
)
WRITTEN_BY_COMPREHENSION = (
    "the comprehension writes to the kernel's file `{name}`, and its items record nothing "
    "(a `for` loop whose body writes to `{name}` has its writes made in item order)"
)
NATIVE_LIMIT = (
    "native thread pools (BLAS, OpenMP) were limited to {limit} per worker process, so that "
    "workers x threads fit the cores: threaded native reductions (np.dot, BLAS sums) add in "
    "another order than in the kernel, and results can differ in the last bits; "
    "--keep-native-threads keeps the kernel's settings"
)
WORKERS_RESTARTED = (
    "the worker processes were restarted: {changed} changed in the kernel since they started, "
    "and they would have run the old code"
)
TOO_MANY_WORKERS = (
    "-w {workers} would start {workers} worker processes, more than this machine can hold "
    "({limit}: four per usable core); each is a Python of its own. Use fewer, or raise the "
    "limit with %config ParallelMagics.max_workers = N"
)
UNREPLAYABLE = (
    "{place}{what}, which parmagic cannot replay in item order, so the cell could end "
    "differently from the plain loop (nothing has run). Make the loop itself do the change "
    "(return the value from the function and append it to a list, or set `d[k] = value`, in "
    "the loop), run it with --backend serial, or accept the change in any order with --unordered"
)
SHARED_FILE = (
    "{place}every item writes to the one file that {what} opens, so its lines would land in "
    "the order the items finish, not in item order (nothing has run). Open the file once, "
    'around the loop (`with open(path, "a") as f:`), and write to `f` in the body: '
    "parmagic makes those writes in item order. Or give each item its own file, or accept "
    "any order with --unordered"
)
GLOBAL_RANDOM = (
    "{place}{what}: parallel items would draw in another order than the plain loop (and "
    "forked workers would repeat one another's numbers), so nothing has run. Give every item "
    "its own reproducible stream with --seed N (on serial, processes, futures:processes or "
    "dask), or run it with --backend serial"
)
THREAD_BOUND = (
    "the loop uses `{name}` (a sqlite3 {what}), which sqlite lets only the thread that made it "
    "use, and items on {backend} run in other threads, so nothing has run. Open the "
    "connection inside the loop body, make it with `check_same_thread=False` if your code "
    "shares it safely, or run the loop with --backend serial"
)
HASH_ORDER = (
    "{place}: {what}, and {workers} hash strings with another salt than this kernel, so "
    "{consequence} than in the plain loop (nothing has run). {advice}"
)
HASH_ORDER_SHORT = "{place}: {what}, and {workers} hash strings with another salt"
HASH_ORDER_SETS = "sets of strings come out in another order"
HASH_ORDER_HASHES = "string hashes have other values"
HASH_ORDER_PROCESSES = (
    "Sort it (`sorted(...)`), run with --start-method fork, or use --backend threads"
)
HASH_ORDER_DASK = (
    "Sort it (`sorted(...)`), use --backend threads, or start the kernel with PYTHONHASHSEED "
    "set (a local cluster's workers then get the kernel's seed)"
)
THREAD_BOUND_SHORT = "`{name}` is a sqlite3 {what} that only the kernel's thread may use"
COMPARE_HIDDEN = "an item changed {what}, which the loop's lines do not name"
HIDDEN_CHANGE = (
    "{who} changed {what} while the loop ran on {backend}: state the loop's lines do not "
    "name, which a parallel run cannot keep as the plain loop keeps it. The run stopped before "
    "item {first}: the items before it were applied, nothing after, and {kept}. Run the loop "
    "with --backend serial, or with auto, which keeps such a loop in the kernel{seed}"
)
HIDDEN_IN_WORKER = "Item {first} ({item})"
HIDDEN_IN_WORKER_CHUNK = "One of items {first}-{last}, which ran together in one worker,"
HIDDEN_IN_KERNEL = "An item running side by side with others from item {first} on"
HIDDEN_KEPT_IN_WORKER = "the kernel's own state was not touched"
HIDDEN_PUT_BACK = "the kernel's state was put back as it was before the run"
HIDDEN_NOT_PUT_BACK = "what it changed in {lost} could not be put back"
HIDDEN_SEED = ", or give each item its own random stream with --seed N (processes, dask)"
AUTO_HIDDEN = "the first items changed {what}, which only a run in the kernel keeps as it is"
AUTO_HIDDEN_LATER = "{what} changed from item {first} on, so the rest of the loop ran in the kernel"
NO_PROGRAM_FOR_TAIL = (
    "--show-code and --export cannot yet write a loop with an ordered tail (lines "
    "{first}-{last}, which run in the kernel in item order); run it without them"
)
TASK_IN_ITEM = (
    "{place}{what}: it would run on parmagic's event loop, not the kernel's, after its item "
    "has ended, so nothing has run. Await the work in the loop body instead (`result = await "
    "fetch(session, url)`) and run it with --backend asyncio, or make and gather the tasks "
    "without %%parallel"
)
COROUTINE_NOT_AWAITED = (
    "{place}{what}; a coroutine object cannot come back from a worker process, so nothing has "
    "run. Await it in the body (`await ...`, with --backend asyncio), or run it with "
    "--backend serial or threads"
)
SHARED_GENERATOR = (
    "{place}{what}: parallel items would draw from it in another order (and forked workers "
    "would repeat one another's numbers; --seed reseeds the global state, not this generator), "
    "so nothing has run. Make one generator per item from the item, e.g. "
    "`rng = np.random.default_rng([7, i])` in the body, or run it with --backend serial"
)
SEED_NEEDS_PROCESSES = (
    "--seed gives every item its own random stream, which needs items in processes of their "
    "own; {backend}'s items share the kernel's one global random state. Use --backend "
    "processes (or serial)"
)
SCHEDULER_ONLY_FOR_DASK = "--scheduler is an option of --backend dask, not of {backend}"
START_METHOD_MISSING = (
    "--start-method {method}: this platform cannot start worker processes that way; it offers "
    "{offered}"
)
TIMEOUT_NEEDS_ALARM = (
    "--timeout on {backends} stops an item with SIGALRM, which this platform does not have: use "
    "--timeout with -b threads, futures, asyncio or dask, or leave it out"
)
START_METHOD_NOT_USED = (
    "--start-method applies to worker processes (processes, futures:processes), and "
    "{backend} starts none: leave it out, or choose --backend processes"
)
EXPORT_NOT_WRITABLE = (
    "--export cannot write {path!r}: the folder {folder!r} does not exist or is not writable "
    "(nothing was run); name a file in a folder that exists"
)
DASK_WORKER_DIED = (
    "dask gave up on {items}: {reason}. The cluster retried them on other workers and "
    "each worker died while running them (a crash, os._exit, out of memory); nothing of what "
    "they did was applied"
)
DASK_LOST = (
    "the dask cluster lost {items} each time they were sent ({reason}): the workers "
    "that ran them, or that held the run's data, died (a crash, os._exit, out of memory); "
    "nothing of what they did was applied"
)
TIMEOUT_DASK_RESTARTED = "; its dask worker process was stopped and the cluster started a new one"
TIMEOUT_DASK_ABANDONED = (
    "; dask cannot stop a running task, so it runs on in its worker until it ends (its result "
    "is dropped)"
)
INTERRUPTED = (
    "the parallel run was interrupted: {applied}, and nothing of the items that had not finished"
)
COMPARE_INTERRUPTED = (
    "the comparison was interrupted while {backend} ran: of the serial run, {applied}; "
    "nothing of any other backend's run"
)
ITEMS_ABANDONED = (
    "threads held {items} when the run stopped: the item each thread was running is "
    "abandoned (a thread cannot be stopped), the rest of its share never starts, and none of "
    "it is applied"
)
ITEMS_NEVER_STARTED = "{items}, queued, never started"
GENERATOR_CLOSED = (
    "a generator expression from an earlier %%parallel run was still half-consumed; it is "
    "closed now (its workers are needed), so iterating it further yields nothing more"
)
STATEMENTS_RAN = (
    " This was found when the loop was reached, so the cell's statements before it had run: "
    "{statements}; no item of the loop and nothing after it has run."
)
ITEM_NOTE = "raised by item {index} of the parallel loop ({item}); {fate}"
ITEMS_APPLIED = "the items before it were applied"
NOTHING_ASSIGNED = (
    "nothing was assigned: a comprehension gives its values only once every item has run"
)
VALUES_READ = "the items before it gave their values to the code reading the generator"


class ParmagicError(Exception):
    """Base of every error parmagic raises itself (a user's own exceptions keep their type)."""


class ParmagicUsageError(ParmagicError, ValueError):
    """The cell or the options cannot be run as asked; nothing has run yet."""


class LoopRefused(ParmagicUsageError):
    """The loop cannot run in parallel and end as the serial loop would. ``carried``: the reason
    is state carried from item to item, which an ordered tail may still serve (body.py)."""

    def __init__(self, message: str, line: int | None = None, carried: bool = False) -> None:
        super().__init__(message)
        self.line = line
        self.carried = carried


class NotPicklable(ParmagicUsageError, TypeError):
    """Something the body needs cannot travel to a worker process."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class SharedObjectChanged(ParmagicError, RuntimeError):
    """An item changed a kernel object that other items hold copies of: the run stops there,
    under --on-error continue too (those items would end with the old state)."""


class HiddenChange(ParmagicError, RuntimeError):
    """An item changed state the loop's lines do not name (a closure's cell, a class's or a
    module's attribute, a global random state, the environment): the run stopped before it.
    ``unapplied``: the items from there on, for auto to run in the kernel instead."""

    def __init__(self, what: str, first: int, unapplied: list, who: str, backend: str) -> None:
        self.what, self.first, self.unapplied = what, first, unapplied
        self.who, self.backend = who, backend
        super().__init__(self.explained(HIDDEN_KEPT_IN_WORKER))

    def explained(self, kept: str) -> str:
        seed = HIDDEN_SEED if "random state" in self.what else ""
        words = {"who": self.who, "what": self.what, "backend": self.backend, "seed": seed}
        return HIDDEN_CHANGE.format(first=self.first, kept=kept, **words)


class WorkerDied(ParmagicError, RuntimeError):
    """A worker process ended while it held items."""


def ran_before(refused: ParmagicUsageError, filename: str, ran: list) -> ParmagicUsageError:
    """A refusal found at the loop, saying which of the cell's statements (``ran``) had run."""
    import linecache

    if not ran:
        return refused
    texts = [(s.lineno, linecache.getline(filename, s.lineno).strip()) for s in ran]
    statements = ", ".join(
        f"line {line} `{text if len(text) <= 60 else text[:57] + '...'}`" for line, text in texts
    )
    message = str(refused).replace("nothing has run", "no item has run").rstrip(".") + "."
    return type(refused)(message + STATEMENTS_RAN.format(statements=statements))


def short_repr(value: object, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} (repr failed: {exc})>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 item``, ``2 items``: counts in messages read as sentences."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def item_note(index: int, item: str, kind: str) -> str:
    """Where a failed item leaves the run, truthfully for each kind of loop: a ``for`` loop's
    earlier items are applied, a comprehension binds nothing until it ends, and a generator
    expression has handed its earlier values to whatever reads it."""
    fate = {"for": ITEMS_APPLIED, "generator": VALUES_READ}.get(kind, NOTHING_ASSIGNED)
    return ITEM_NOTE.format(index=index, item=item, fate=fate)


def items_named(numbers: str) -> str:
    """``item 4``, ``items 2-3, 7``: the items of a message, from their numbers as text."""
    return f"item {numbers}" if numbers.isdigit() else f"items {numbers}"


def item_span(start: int, count: int) -> str:
    return items_named(str(start) if count == 1 else f"{start}-{start + count - 1}")


def first_applied(count: int) -> str:
    if count == 0:
        return "no item was applied"
    return "the first item was applied" if count == 1 else f"the first {count} items were applied"


def user_frames(tb, origins: dict | None = None) -> list[tuple[str, int, str]]:
    """The frames of a traceback that belong to the user's code, as picklable tuples.

    ``origins`` maps (name, first line) of code shipped by cloudpickle, which renames every
    file to ``<dynamic-code>``, back to the cell or file it came from.
    """
    frames = []
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code
        filename = code.co_filename
        if origins and filename == "<dynamic-code>":
            filename = origins.get((code.co_name, code.co_firstlineno), filename)
        if code.co_name == INLINED_FRAME_NAME:
            continue
        if os.path.abspath(filename).startswith(PACKAGE_DIR + os.sep):  # parmagic's own
            continue
        frames.append((filename, lineno, code.co_name))
    return frames


def render_traceback(exc: BaseException, frames: Iterable[tuple[str, int, str]]) -> list[str]:
    """Traceback text made of the user's frames only, looked up in the kernel's linecache.

    The kernel's linecache knows the cell's source and every notebook function, even when the
    frames were recorded in a worker process that never saw them.
    """
    summaries = traceback.StackSummary.from_list(
        [
            traceback.FrameSummary(
                filename, lineno, "<loop body>" if name == ITEM_FUNCTION_NAME else name
            )
            for filename, lineno, name in frames
        ]
    )
    shown = [_named_as_ipython_names_cells(text) for text in summaries.format()]
    lines = ["Traceback (most recent call last):\n", *shown] if summaries else []
    lines += traceback.format_exception_only(type(exc), exc)
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None and cause is not exc:  # as Python prints a chain: the cause first
        link = _CAUSE_LINK if exc.__cause__ is not None else _CONTEXT_LINK
        earlier = render_traceback(cause, getattr(cause, "parmagic_frames", []))
        lines = ["\n".join(earlier) + "\n", link, *lines]
    return "".join(lines).rstrip("\n").split("\n")


def _named_as_ipython_names_cells(frame_text: str) -> str:
    """``Cell In[53], line 4, in f`` where the frame is in a cell, as IPython 8 and later name
    cells in their own tracebacks (``<ipython-input-53-...>`` is only the cell's key in the
    line cache); other files keep Python's ``File "...", line 4``."""
    head, _, rest = frame_text.partition("\n")
    if not head.startswith('  File "'):
        return frame_text
    filename, quote, after = head[len('  File "') :].rpartition('", line ')
    label = cell_label(filename) if quote else None
    return f"  {label}, line {after}\n{rest}" if label else frame_text


def cell_label(filename: str) -> str | None:
    """How the running IPython names a cell's code in tracebacks ("Cell In[53]"), asked of its
    compiler as its own tracebacks ask (IPython 8.7 and later); None elsewhere. IPython is
    looked up, not imported: this module also runs in worker processes."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    naming = getattr(getattr(shell, "compile", None), "format_code_name", None)
    named = naming(filename) if naming is not None else None
    return " ".join(named) if named else None


_CAUSE_LINK = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT_LINK = "\nDuring handling of the above exception, another exception occurred:\n\n"


def shown_with_frames(exc: BaseException, frames: Iterable[tuple[str, int, str]]) -> BaseException:
    """Make IPython show ``exc`` with the user's frames only (IPython honours this hook)."""
    frames = list(frames)
    exc._render_traceback_ = lambda: render_traceback(exc, frames)  # type: ignore[attr-defined]
    return exc


def print_warning(message: str) -> None:
    print(f"parmagic warning: {message}", file=sys.stderr)


COMPARE_EVEN = "no backend was clearly fastest: {names} were even; {margin}"
COMPARE_BUSY = (
    "other programs used up to {share:.0f}% of the machine during these runs: the figures say "
    "more about them than about the loop"
)
COMPARE_ROUNDS = (
    "each backend ran the loop {rounds} times, in alternating order (one that differed, once): "
    "the table shows each one's median time, ± half the range"
)
BEYOND_IDEAL = (
    "* {backend}: {speedup:.2f}× is more than {workers} can give on {cores} (at most "
    "{ideal:.0f}×): not a figure of the loop; {why}"
)
SERIAL_SLOWED_BY_LOAD = (
    "the serial run was slowed (other programs used {share:.0f}% of the machine during it)"
)
NOISE = "the runs' times varied more than the loop's own cost"
TOO_SHORT = (
    "the run was too short to measure: speedup and per-core use need {wall:.1f} s or more "
    "(the CPU is sampled every {interval:.1f} s)"
)
COMPARE_LEADERS = "fastest with the serial results: {names}, even at about {speedup}; {margin}"
ABBREVIATED_OPTION = (
    "{given} is not an option of %%parallel; write it in full: {meant} (options are never "
    "taken from the start of their name)"
)
ROUNDS_NOT_REPEATED = (
    "--rounds {rounds}: each backend ran the loop once, as running it again could change the "
    "kernel or the world more than one run does: {why}"
)
SERIAL_NOT_REPEATABLE = (
    "--rounds: serial's second run differed from its first ({what}): the loop changes "
    "something its recording misses, so the rounds stopped there"
)
ROUNDS_NEED_COMPARE = "--rounds runs each backend of --compare several times: add --compare LIST"
