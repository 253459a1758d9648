"""The baseline: items one after another on the kernel's own thread."""

from __future__ import annotations

from ..worker import ChunkResult, OutputCapture, Task, run_chunk
from . import Backend


class SerialBackend(Backend):
    name = "serial"

    def __init__(self, workers: int = 1) -> None:
        super().__init__(1)
        self._done: list[ChunkResult] = []

    @classmethod
    def default_workers(cls) -> int:
        return 1

    def begin(self, task: Task) -> None:
        self._task = task
        self._done = []
        self._capture = OutputCapture()

    def has_capacity(self) -> bool:
        return not self._done

    def submit(self, seq: int, start: int, items: list) -> None:
        self._done.append(run_chunk(self._task, seq, start, items, "kernel"))

    def wait(self, timeout: float) -> list[ChunkResult]:
        done, self._done = self._done, []
        return done

    def end(self, completed: bool) -> list[str]:
        self._capture.release()
        return []
