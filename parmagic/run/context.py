"""What ``auto`` and ``--compare`` ask of the loop run that calls them: the cell's plan and
namespace, the options, the session, and three steps (start a backend, run items on it, watch
the kernel's state). A face of :class:`~parmagic.run.loop_run.LoopRun`, so that the modules
it calls need not import it back."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import CodeType, FunctionType
from typing import Protocol

from ..analysis.cell import CellPlan
from ..backends import Backend
from ..options import Options
from ..summary.report import RunReport
from ..worker.hidden_state import Guard
from ..worker.task import Task
from .dispatch import Recording
from .session import Session


class RunContext(Protocol):
    plan: CellPlan
    ns: dict
    options: Options
    session: Session
    tail: CodeType | None  # the loop's ordered tail, run in the kernel in item order
    lazy: bool  # a generator expression: values go out one at a time

    def start(
        self, name: str, workers: int | None, report: RunReport, replayed, recording: bool = False
    ) -> tuple[Backend, Task]: ...

    def run_on(
        self, backend: Backend, task: Task, iterator: Iterable, length: int, report: RunReport,
        recording: Recording | None = None, until: Callable[[], bool] | None = None,
    ) -> Iterator[list]: ...  # fmt: skip

    def guard(self, function: FunctionType) -> Guard: ...
