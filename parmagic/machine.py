"""What this machine lets a run use: the cores of this process's CPU affinity, within a
container's CPU quota. Light on purpose: worker processes ask it too."""

from __future__ import annotations

import math
import os


def cgroup_cpu_limit() -> float | None:
    """The container's CPU quota in cores (cgroup v2 ``cpu.max``), or None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as limits:
            quota, period = limits.read().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def affinity_cores() -> int:
    """The cores this process may be scheduled on (``os.cpu_count()`` where Python cannot
    tell: not on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def usable_cores() -> int:
    """Cores this process may really use: its CPU affinity, and a container's CPU quota
    (``os.cpu_count()`` counts the host's cores, which is wrong in a container)."""
    cores = affinity_cores()
    limit = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit))) if limit else cores
