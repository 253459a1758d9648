"""The baseline: items one after another on the kernel's own thread."""

from __future__ import annotations

from dataclasses import replace

from ..worker.chunk import run_chunk, run_chunk_in_place
from ..worker.item_output import OutputCapture
from ..worker.kernel_state import HeldInterrupt
from ..worker.task import ChunkResult, Task
from .base import Backend, BackendSettings


class SerialBackend(Backend):
    name = "serial"
    times_out_by_alarm = True
    seedable = True
    is_the_plain_loop = True

    def __init__(self, settings: BackendSettings) -> None:
        super().__init__(replace(settings, workers=1))  # the kernel's one thread, whatever asked
        self._chunk: tuple | None = None

    @classmethod
    def default_workers(cls) -> int:
        return 1

    def begin(self, task: Task) -> None:
        self._task = task
        self._chunk = None
        self._capture = OutputCapture()
        # items that run in place are applied as they run: Ctrl-C between chunks waits for
        # the next chunk, which then stops the run before its first item (exact counts)
        self._held = HeldInterrupt(task.in_place is not None)

    def has_capacity(self) -> bool:
        return self._chunk is None

    def submit(self, seq: int, start: int, items: list) -> None:
        self._chunk = (seq, start, items)

    def wait(self, timeout: float) -> list[ChunkResult]:
        """Runs the chunk: the items' time counts as running, not as sending."""
        if self._chunk is None:
            return []
        (seq, start, items), self._chunk = self._chunk, None
        if self._task.in_place is not None:
            return [run_chunk_in_place(self._task, seq, start, items, self._held)]
        return [run_chunk(self._task, seq, start, items, "kernel")]

    def end(self, completed: bool) -> list[str]:
        self._capture.release()
        self._held.release(raise_pressed=False)  # a run that ended has nothing to stop
        return []
