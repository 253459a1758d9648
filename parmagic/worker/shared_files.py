"""Temporary files in shared memory that worker processes read or map (the run's task for
``futures:processes``, large captured buffers), and the sweep of those a dead kernel left."""

from __future__ import annotations

import glob
import os
import tempfile
from contextlib import suppress

SHARED_MEMORY = "/dev/shm"  # RAM on Linux; elsewhere, the temporary folder
PREFIX = "parmagic-"


def folder() -> str:
    return SHARED_MEMORY if os.path.isdir(SHARED_MEMORY) else tempfile.gettempdir()


def shared_file():
    """A new file for workers to read or map; whoever makes one removes it. Its name carries
    the maker's pid, so that the files of a kernel killed before it could remove them are
    known as leftovers."""
    prefix = f"{PREFIX}{os.getpid()}-"
    return tempfile.NamedTemporaryFile("wb", prefix=prefix, dir=folder(), delete=False)


def sweep_leftovers() -> list[str]:
    """Remove the files of kernels that died before removing their own; returns their paths."""
    swept = []
    for path in glob.glob(os.path.join(folder(), f"{PREFIX}*-*")):
        pid = os.path.basename(path)[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            with suppress(OSError):
                os.unlink(path)
                swept.append(path)
    return swept


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a dead process that its parent has not reaped yet does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):  # not Linux
        return True
