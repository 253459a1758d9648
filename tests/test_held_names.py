"""Held names (``-b processes``): a loop name bound to a large self-contained value stays in
the worker that made it; the kernel fetches each such name's last value once, when the run
ends, however it ends, through a file in shared memory that it removes after reading.

Each case checks the kernel against what the plain loop leaves, that the values really were
held (the kernel's fetch saw them), and, where files are made, that none is left behind.
"""

from __future__ import annotations

import array
import glob
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import psutil
import pytest
from conftest import BACKENDS, PROCESS_BACKENDS, parallel, report, serial_state

from parmagic import errors
from parmagic.errors import WorkerDied
from parmagic.run.dispatch import Applier
from parmagic.worker import held_names
from parmagic.worker.held_names import HELD_BYTES, Held, NameStore, received, worth_holding
from parmagic.worker.shared_files import PREFIX, folder
from parmagic.worker.task import ChunkResult

FORK = BACKENDS["fork"]


@pytest.fixture
def fetched(monkeypatch) -> list[set[str]]:
    """The names whose values the kernel fetched from workers, per run of this test."""
    runs: list[set[str]] = []
    fetch = Applier.fetch_held

    def spy(self, backend):
        runs.append(set(self.held))
        return fetch(self, backend)

    monkeypatch.setattr(Applier, "fetch_held", spy)
    return runs


def shared_files() -> set[str]:
    return set(glob.glob(os.path.join(folder(), f"{PREFIX}*")))


def ours(paths: set[str]) -> set[str]:
    """The files made by this process or by its workers, living or dead (the workers' pids
    from the last run's report): others' (another test process) are not this test's."""
    pids = {os.getpid(), *(c.pid for c in psutil.Process().children(recursive=True))}
    last = report()
    workers = [w.split()[-1] for w in (last.worker_ids if last is not None else ())]
    pids |= {int(pid) for pid in workers if pid.isdigit()}
    return {p for p in paths if int(os.path.basename(p)[len(PREFIX) :].split("-")[0]) in pids}


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
def test_a_large_bytearray_ends_as_the_last_item_left_it(ip, run, fetched, name):
    """Ten chunks each bind a 3 MB buffer: only the last one's comes to the kernel."""
    before = shared_files()
    cell = "for i in range(40):\n    blob = bytearray(3_000_000)\n    blob[0] = i\n"
    parallel(run, f"{BACKENDS[name]} --chunksize 4", cell)
    blob = ip.user_ns["blob"]
    assert type(blob) is bytearray and len(blob) == 3_000_000
    assert blob[0] == 39 and not any(blob[1:])
    assert ip.user_ns["i"] == 39
    assert fetched == [{"blob"}]
    assert not ours(shared_files() - before)


NUMPY_CASES = {
    "1-d": "np.full(300_000, i)",
    "2-d": "np.full((600, 500), i)",
    "float32": "np.full((1000, 300), i, dtype=np.float32)",
    "big-endian": "np.full(300_000, i, dtype='>i8')",
    "structured": "np.array([(i, -i)] * 100_000, dtype=[('a', 'i4'), ('b', 'f8')])",
    "fortran": "np.asfortranarray(np.full((600, 500), i))",
}


def test_a_read_only_array_stays_read_only(ip, run):
    run("import numpy as np\n")
    cell = "for i in range(20):\n    idx = np.full(300_000, i)\n    idx.flags.writeable = False\n"
    parallel(run, f"{FORK} --chunksize 3", cell)
    assert not ip.user_ns["idx"].flags.writeable


LARGE_VALUES = {
    "bytes": "bytes([i]) * 2_000_000",
    "str": "chr(65 + i) * 2_000_000",
    "array.array": "array.array('d', [i]) * 200_000",
}


@pytest.mark.parametrize(
    "expression",
    [*NUMPY_CASES.values(), *LARGE_VALUES.values()],
    ids=[*NUMPY_CASES, *LARGE_VALUES],
)
def test_a_large_value_ends_as_the_serial_value(ip, run, fetched, expression):
    """Fetched once, as its type; an array with its dtype, shape and order, owning its memory."""
    run("import array\nimport numpy as np\n")
    cell = f"for i in range(20):\n    value = {expression}\n"
    parallel(run, f"{FORK} --chunksize 3", cell)
    expected = serial_state(ip, cell, ["value"])["value"]
    value = ip.user_ns["value"]
    assert type(value) is type(expected) and fetched == [{"value"}]
    if not isinstance(value, np.ndarray):
        assert value == expected
        return
    assert value.nbytes >= HELD_BYTES and value.base is None and value.flags.writeable
    assert value.dtype == expected.dtype and value.shape == expected.shape
    assert np.array_equal(value, expected)
    order = ("C_CONTIGUOUS", "F_CONTIGUOUS")
    assert [value.flags[o] for o in order] == [expected.flags[o] for o in order]


@pytest.mark.parametrize(
    "cell, expected, held",
    [
        ("for i in range(40):\n    v = bytearray(2_000_000) if i < 30 else None\n", None, set()),
        ("for i in range(40):\n    v = bytearray(2_000_000) if i < 38 else 0\n", 0, set()),
        ("for i in range(40):\n    v = None if i < 30 else bytearray([i]) * 2_000_000\n",
         bytearray([39]) * 2_000_000, {"v"}),
        ("for i in range(40):\n    if i < 30:\n        v = bytearray([i]) * 2_000_000\n",
         bytearray([29]) * 2_000_000, {"v"}),
    ],
    ids=["large-then-none", "large-then-zero-in-last-chunk", "small-then-large", "only-early-items"],
)  # fmt: skip
def test_a_later_binding_supersedes_a_held_value(ip, run, fetched, cell, expected, held):
    """A name large in early items and small in the last ones ends small, and the reverse;
    a name only early items bind ends as the last of them left it."""
    parallel(run, f"{FORK} --chunksize 5", cell)
    assert ip.user_ns["v"] == expected
    assert fetched == [held]


def test_a_held_name_deleted_by_later_items_ends_unbound(ip, run):
    cell = (
        "for i in range(40):\n    blob = bytearray(3_000_000)\n    blob[0] = i\n"
        "    if i >= 30:\n        del blob\n"
    )
    parallel(run, f"{FORK} --chunksize 10", cell)
    assert "blob" not in ip.user_ns


def test_names_sharing_a_held_value_share_it_in_the_kernel(ip, run):
    cell = "for i in range(20):\n    a = bytearray(3_000_000)\n    b = a\n    c = [a]\n"
    parallel(run, f"{FORK} --chunksize 5", cell)
    ns = ip.user_ns
    assert ns["a"] is ns["b"] and ns["c"][0] is ns["a"]


def test_two_names_of_one_held_value_fetch_it_once(ip, run, fetched):
    """Kept once, under the first name; both names get the one object."""
    cell = "for i in range(20):\n    a = bytearray(3_000_000)\n    a[0] = i\n    b = a\n"
    parallel(run, f"{FORK} --chunksize 5", cell)
    ns = ip.user_ns
    assert ns["a"] is ns["b"] and ns["a"][0] == 19
    assert fetched == [{"a", "b"}]


def test_a_value_a_change_holds_is_not_kept_apart(ip, run, fetched):
    """``out.append(blob)`` sends the buffer with the chunk's changes: the name must be the
    same object as the list's last element, as in the plain loop."""
    run("out = []")
    cell = "for i in range(6):\n    blob = bytearray(2_000_000)\n    blob[0] = i\n    out.append(blob)\n"
    parallel(run, f"{FORK} --chunksize 2", cell)
    ns = ip.user_ns
    assert ns["out"][-1] is ns["blob"] and [b[0] for b in ns["out"]] == list(range(6))
    assert fetched == [set()]


@pytest.mark.parametrize("name", PROCESS_BACKENDS)
@pytest.mark.parametrize(
    "failing, binds_first, expected",
    [(22, True, 22), (22, False, 21), (25, False, 24), (25, True, 25)],
    ids=["mid-chunk-bound", "mid-chunk-unbound", "first-of-chunk-unbound", "first-of-chunk-bound"],
)
def test_an_item_error_leaves_the_name_as_serial_and_no_files(
    ip, run, fetched, name, failing, binds_first, expected
):
    """The failing item's own binding if it bound before raising, else the previous item's
    (from its own chunk, or a held one from the chunk before); every file is removed."""
    before = shared_files()
    bind = "    blob = bytearray(2_000_000)\n    blob[0] = i\n"
    fail = f"    if i == {failing}:\n        raise ValueError(i)\n"
    cell = "for i in range(40):\n" + (bind + fail if binds_first else fail + bind)
    outcome = run(f"%%parallel {BACKENDS[name]} --chunksize 5\n{cell}")
    assert isinstance(outcome.error, ValueError)
    assert f"raised by item {failing} of the parallel loop" in "\n".join(
        outcome.error._render_traceback_()
    )
    blob = ip.user_ns["blob"]
    assert len(blob) == 2_000_000 and blob[0] == expected
    assert fetched == [{"blob"}]
    assert not ours(shared_files() - before)


def test_a_kernel_array_as_the_item_keeps_its_identity(ip, run, fetched):
    """The worker's copy of a kernel array is never held: it comes back as the kernel's."""
    run(
        "import numpy as np\narrays = [np.full(200_000, k) for k in range(6)]\nbig = bytearray(2_000_000)\n"
    )
    parallel(run, f"{FORK} --chunksize 2", "for arr in arrays:\n    last = arr\n    same = big\n")
    ns = ip.user_ns
    assert ns["last"] is ns["arrays"][-1] and ns["arr"] is ns["arrays"][-1]
    assert ns["same"] is ns["big"]
    assert fetched == [set()]


def test_a_worker_killed_after_keeping_a_value_warns_it_is_lost(ip, run, fetched):
    """One worker, one item a chunk: item 0's chunk keeps the buffer in the worker, item 1
    kills that worker. Item 0 is applied, but its buffer died with the worker: the kernel
    keeps the name's earlier value and says so (HELD_NAME_LOST)."""
    before = shared_files()
    run("import os, signal\nblob = 'before'\n")
    outcome = run(
        "%%parallel -b processes -w 1 --start-method fork --chunksize 1\n"
        "for i in range(4):\n    blob = bytearray(3_000_000)\n    blob[0] = i\n"
        "    if i == 1:\n        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert isinstance(outcome.error, WorkerDied)
    assert "killed by SIGKILL" in str(outcome.error)
    assert "running item 1;" in str(outcome.error)
    assert ip.user_ns["blob"] == "before"
    assert ip.user_ns["i"] == 0  # item 0's names were applied, its buffer's is lost
    lost = errors.HELD_NAME_LOST.format(name="blob")
    assert lost in report().warnings
    assert lost in outcome.err
    assert fetched == [{"blob"}]
    assert not ours(shared_files() - before)
    parallel(run, FORK, "for i in range(4):\n    blob = bytearray(3_000_000)\n    blob[0] = i\n")
    assert ip.user_ns["blob"][0] == 3  # the healed pool holds and sends again


def test_worth_holding_takes_only_large_self_contained_values():
    half = HELD_BYTES // 2
    owned = np.zeros(HELD_BYTES // 8)
    assert worth_holding(bytes(HELD_BYTES)) and worth_holding(bytearray(HELD_BYTES))
    assert worth_holding("x" * HELD_BYTES)
    assert worth_holding(array.array("d", bytes(HELD_BYTES)))
    assert worth_holding(owned)
    assert worth_holding(np.zeros((512, 256), order="F"))  # owns its memory: 1 MiB
    small = [bytes(HELD_BYTES - 1), bytearray(half), "x" * (HELD_BYTES - 1)]
    small += [array.array("d", bytes(HELD_BYTES - 8)), np.zeros(HELD_BYTES // 8 - 1)]
    assert not any(map(worth_holding, small))
    views = [owned[:], owned.reshape(2, -1), np.frombuffer(bytearray(HELD_BYTES), "u1")]
    assert not any(map(worth_holding, views))  # memory of another object
    others = [
        np.empty(HELD_BYTES // 8, dtype=object),  # holds objects, maybe the kernel's
        np.recarray((HELD_BYTES // 8,), dtype=[("a", "f8")]),  # a subclass
        memoryview(bytes(HELD_BYTES)),
        [bytes(HELD_BYTES)],
        type("Bytes", (bytes,), {})(HELD_BYTES),
    ]
    assert not any(map(worth_holding, others))


class _NotTheKernels:
    def is_kernels(self, value) -> bool:
        return False


def _keep(store: NameStore, seq: int, names: dict) -> ChunkResult:
    result = ChunkResult(seq, seq * 10, "worker", names=[None, names], names_merged=True)
    store.keep(result, _NotTheKernels())
    return result


def _sent(store: NameStore, wanted: list) -> dict:
    """What the store sends the kernel for ``wanted``, through a real pipe and file."""
    kernel, worker = multiprocessing.Pipe()
    with kernel, worker:
        store.send(wanted, worker)
        return received(kernel.recv_bytes())


def test_name_store_keeps_large_values_and_replaces_them_with_markers():
    store = NameStore()
    names = {"big": bytearray(HELD_BYTES), "small": b"x", "n": 3}
    result = _keep(store, 4, names)
    assert result.held_names == ["big"]
    assert type(names["big"]) is Held and names["big"].seq == 4
    assert names["small"] == b"x" and names["n"] == 3
    unmerged = ChunkResult(5, 50, "worker", names=[{"big": bytearray(HELD_BYTES)}])
    store.keep(unmerged, _NotTheKernels())  # one dict per item: nothing is kept
    assert unmerged.held_names == [] and type(unmerged.names[0]["big"]) is bytearray
    before = shared_files()
    assert _sent(store, [(4, "big")]) == {(4, "big"): bytearray(HELD_BYTES)}
    assert not ours(shared_files() - before)
    assert _sent(store, [(4, "big")]) == {}  # sending forgets every value


def test_name_store_applied_keeps_the_latest_below_the_count_and_all_above():
    """Per name: of the entries from chunks the kernel applied, only the latest can still be
    the name's last value; entries from chunks not yet applied all stay."""
    store = NameStore()
    for seq in (0, 1, 3, 5, 6):
        _keep(store, seq, {"a": bytearray([seq]) * HELD_BYTES})
    _keep(store, 2, {"b": bytearray([2]) * HELD_BYTES})
    _keep(store, 7, {"c": bytearray([7]) * HELD_BYTES})
    store.applied(4)
    store.applied(4)  # again: nothing more goes
    every = [(seq, name) for seq in range(8) for name in "abc"]
    sent = _sent(store, every)
    assert sorted(sent) == [(2, "b"), (3, "a"), (5, "a"), (6, "a"), (7, "c")]
    assert all(value == bytearray([seq]) * HELD_BYTES for (seq, _), value in sent.items())


def test_name_store_applied_prunes_as_chunks_are_applied():
    store = NameStore()
    for seq in range(4):
        _keep(store, seq, {"a": bytearray([seq]) * HELD_BYTES})
    store.applied(0)
    store.applied(2)
    assert sorted(_sent_keys(store)) == [(1, "a"), (2, "a"), (3, "a")]
    for seq in range(4):
        _keep(store, seq, {"a": bytearray([seq]) * HELD_BYTES})
    store.applied(10)
    assert _sent_keys(store) == [(3, "a")]


def _sent_keys(store: NameStore) -> list:
    return list(_sent(store, [(seq, "a") for seq in range(10)]))


def test_received_removes_its_files_even_when_a_value_cannot_be_read():
    """The kernel's side removes every file it was told of, whatever happens to the rest."""
    store = NameStore()
    _keep(store, 0, {"a": bytearray(HELD_BYTES)})
    _keep(store, 1, {"b": np.zeros(HELD_BYTES // 8)})
    kernel, worker = multiprocessing.Pipe()
    before = shared_files()
    with kernel, worker:
        store.send([(0, "a"), (1, "b")], worker)
        reply = kernel.recv_bytes()
    made = ours(shared_files() - before)
    assert len(made) == 2
    os.unlink(sorted(made)[0])  # one file gone before the kernel reads it
    with pytest.raises(FileNotFoundError):
        received(reply)
    assert not ours(shared_files() - before)


def test_held_marker_pickles_as_itself_and_replies_are_told_from_results():
    """The marker travels in a chunk's names; a reply to "names" must never be taken for a
    chunk result the worker sent before it (or the reverse)."""
    import pickle

    from parmagic.worker.shipping import dump_result

    marker = pickle.loads(pickle.dumps(Held(7, "big")))
    assert type(marker) is Held and (marker.seq, marker.name) == (7, "big")
    result = ChunkResult(0, 0, "worker", names=[{"big": Held(0, "big")}], names_merged=True)
    data = dump_result(result)
    assert not data.startswith(held_names.NAMES_REPLY)
    assert type(pickle.loads(data).names[0]["big"]) is Held


_HEAP_AFTER_FREEING = """
import os, sys
from parmagic.worker.memory import FreedMemory

if sys.argv[1] == "keeps":
    FreedMemory().keep_for(30_000_000)
blobs = [bytearray(30_000_000) for _ in range(3)]  # written: every page resident
del blobs
print(int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, on Linux")
def test_a_worker_that_keeps_large_values_keeps_their_freed_memory_for_the_next():
    """Freed buffers of a kept value's size stay in the heap (up to four), so that the next
    item's buffer reuses pages already there, as in the plain loop; a process that did not
    keep one gives them back to the system."""
    resident = {
        how: int(subprocess.check_output([sys.executable, "-c", _HEAP_AFTER_FREEING, how]))
        for how in ("keeps", "plain")
    }
    assert resident["keeps"] > resident["plain"] + 60_000_000, resident
