"""What every backend whose items run in other processes shares (``processes``,
``futures:processes``, ``dask``), kept apart so that those backends import it, not each other."""

from __future__ import annotations

import multiprocessing
import os
import sys
import types
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from .. import errors
from ..machine import usable_cores
from ..worker import imported_code
from ..worker.hash_seeds import keeps_kernel_hashing, seeded_environment
from ..worker.kernel_objects import SentObjects
from ..worker.native_threads import threads_per_worker
from ..worker.shipping import pack_task
from ..worker.task import ChunkResult, Task
from .base import Backend, BackendSettings, failed_chunk

KILL_GRACE = 1.0  # seconds past --timeout before a worker that ignores its alarm is killed


@contextmanager
def plain_main():
    """Start workers without the kernel's ``__main__``.

    ``spawn`` and ``forkserver`` re-run the parent's main script in each child, which is why
    scripts need the ``if __name__ == "__main__":`` guard. A notebook's main is the kernel
    itself (or a test runner, or the ``ipython`` script): its children must not import it.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        with seeded_environment():  # the kernel's string hashing, where it can be handed on
            yield
    finally:
        sys.modules["__main__"] = main


@dataclass
class SentChunk:
    """A chunk handed to a worker, kept until its result is back."""

    seq: int
    start: int
    items: list
    payload: bytes  # the pickled items: sent again if a worker dies with this chunk queued

    @property
    def named(self) -> str:
        """``item 4``, ``items 8-4095``: a chunk's items are consecutive."""
        return errors.item_span(self.start, len(self.items))


def result_not_loadable(
    reason: Exception, seq: int, start: int, items: list, worker: str
) -> ChunkResult:
    """The chunk's items fail: its result never became a ChunkResult in the kernel, so which
    of its items ran, and what they did, is unknown."""
    error = TypeError(errors.RESULT_NOT_LOADABLE.format(reason=reason))
    return failed_chunk(seq, start, items, error, worker)


class PickledItems(Backend):
    """What every backend whose items run in other processes shares (both process backends
    and dask): items travel pickled, and items that cannot be pickled are refused as failed
    items (the serial prefix still applies); what the kernel sent is remembered, so that its
    objects come back as themselves (``kernel_objects``)."""

    copies_kernel_objects = True
    times_out_by_alarm = True
    starts_processes = True
    seedable = True  # one process per running item
    chunk_seconds, chunk_shares = 0.08, 2  # see Backend

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        self._refused: list[ChunkResult] = []
        self.kernel_objects = SentObjects()

    def load_result(
        self, data: bytes, seq: int, start: int, items: list, worker: str
    ) -> ChunkResult:
        """A worker's result bytes, loaded in the kernel with its own objects in it; a result
        the kernel cannot read (e.g. an object of a class the kernel no longer has) fails the
        chunk rather than the run."""
        try:
            result = self.kernel_objects.load(data, seq)
            self.kernel_objects.thaw(result)
            return result
        except Exception as reason:
            return result_not_loadable(reason, seq, start, items, worker)

    def _items_bytes(self, seq: int, start: int, items: list) -> bytes | None:
        """The items pickled, or None once they are queued as failed items (never half a
        message to a worker)."""
        try:
            return self.kernel_objects.chunk_bytes(seq, start, items)
        except Exception as reason:
            named = errors.item_span(start, len(items))
            error = TypeError(errors.ITEM_NOT_PICKLABLE.format(items=named, reason=reason))
            self._refused.append(failed_chunk(seq, start, items, error, "kernel"))
            return None

    def _take_refused(self) -> list[ChunkResult]:
        refused, self._refused = self._refused, []
        return refused


class WorkerProcesses(PickledItems):
    """What both process backends share: the start method, native thread caps, and large
    captured buffers in shared memory (workers on this machine can map them)."""

    takes_start_method = True
    maps_shared_memory = True
    hash_order_advice = errors.HASH_ORDER_PROCESSES

    @classmethod
    def hashes_otherwise(cls, start_method: str | None, scheduler: str | None) -> str | None:
        method = start_method or multiprocessing.get_start_method()
        return None if keeps_kernel_hashing(method) else f"worker processes started by {method}"

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(settings)
        self.start_method = settings.start_method or multiprocessing.get_start_method()
        self._context = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            self._context.set_forkserver_preload(["parmagic.worker.process"])
        cap = threads_per_worker(usable_cores(), self.workers)
        self.native_threads = settings.native_threads or cap
        self._shared_files: list[str] = []
        self.started_with = imported_code.fingerprint()

    def _pack(self, task: Task) -> bytes:
        """The task's bytes (raises NotPicklable before any item runs); large captured
        buffers go once to shared memory, counted once in ``bytes_sent``."""
        payload = pack_task(task, self._shared_files, self.kernel_objects)
        self.bytes_sent = sum(os.path.getsize(path) for path in self._shared_files)
        return payload

    def _remove_shared_files(self) -> None:
        for path in self._shared_files:
            with suppress(FileNotFoundError):
                os.unlink(path)
        self._shared_files.clear()
