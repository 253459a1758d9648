"""``%parallel_info``: what this machine offers a parallel loop, and what parmagic has running."""

from __future__ import annotations

import html
import multiprocessing
import sys
from dataclasses import dataclass, field

from .machine import affinity_cores, cgroup_cpu_limit, usable_cores


@dataclass
class MachineInfo:
    usable_cores: int
    affinity: int
    cgroup_limit: float | None
    logical: int
    physical: int | None
    start_methods: list[str]
    default_start_method: str
    gil: str
    warm: list[str] = field(default_factory=list)
    defaults: dict = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str]]:
        quota = f", CPU quota {self.cgroup_limit:g} cores" if self.cgroup_limit else ""
        return [
            ("usable cores", f"{self.usable_cores} (affinity {self.affinity}{quota})"),
            ("cores", f"{self.logical} logical, {self.physical or '?'} physical"),
            (
                "start methods",
                f"{', '.join(self.start_methods)} (default {self.default_start_method})",
            ),
            ("GIL", self.gil),
            ("warm pools", ", ".join(self.warm) or "none"),
            ("defaults", ", ".join(f"{k}={v!r}" for k, v in sorted(self.defaults.items()))),
        ]

    def __str__(self) -> str:
        return "\n".join(f"{label:<14} {text}" for label, text in self.rows())

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self.rows()
        )
        return f"<table class='parmagic-info'>{cells}</table>"


def machine_info(session, defaults: dict) -> MachineInfo:
    import psutil

    gil_check = getattr(sys, "_is_gil_enabled", None)
    gil = "disabled (free-threaded build)" if gil_check and not gil_check() else "enabled"
    return MachineInfo(
        usable_cores=usable_cores(),
        affinity=affinity_cores(),
        cgroup_limit=cgroup_cpu_limit(),
        logical=psutil.cpu_count() or 1,
        physical=psutil.cpu_count(logical=False),
        start_methods=multiprocessing.get_all_start_methods(),
        default_start_method=multiprocessing.get_start_method(),
        gil=gil,
        warm=session.warm_pools(),
        defaults=defaults,
    )
