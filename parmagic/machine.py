"""What this machine lets a run use: the cores of this process's CPU affinity, within a
container's CPU quota. Light on purpose: worker processes ask it too."""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import signal


@functools.cache
def cgroup_cpu_limit() -> float | None:
    """The container's CPU quota in cores (cgroup v2 ``cpu.max``), or None when unlimited:
    read once (a container's quota is set when it starts; reading it costs every run)."""
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


def has_item_alarms() -> bool:
    """Whether a main thread can be stopped at an item's time limit: SIGALRM and its timer are
    POSIX's (not Windows')."""
    return hasattr(signal, "SIGALRM") and hasattr(signal, "setitimer")


def start_methods() -> list[str]:
    """The ways this platform can start worker processes (Windows: spawn only)."""
    return multiprocessing.get_all_start_methods()
