"""A worker's malloc, told to keep the memory of the large values it frees while it keeps
others for the kernel (held_names.py). Worker side; imports nothing heavy.

In a plain loop, ``blob = bytearray(30_000_000)`` reuses the memory of the buffer it
replaces: glibc serves it from the heap, where the freed one went. A worker that keeps the
last value of each chunk frees them later, several at once, and glibc then hands all that
memory back to the system (it trims the heap once more than twice the block's size is free at
its top), so the next items' buffers get fresh pages, and writing to those costs four times
as much. So once a worker has kept large values, its heap keeps up to four of them freed, for
this run and the next (128 MB at most). Linux with glibc only; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import sys

M_TOP_PAD, M_MMAP_THRESHOLD = -2, -3  # mallopt's parameters (malloc.h)
MMAP_LARGEST = 32 << 20  # glibc's own ceiling for serving a block from the heap (64-bit)
KEPT = 4  # freed values of the largest kept size that a worker's heap keeps


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # musl's mallopt: a no-op


class FreedMemory:
    """How much freed memory this worker's heap keeps: more once large values were kept."""

    def __init__(self) -> None:
        self._libc = _glibc()
        self._kept = 0

    def keep_for(self, size: int) -> None:
        """Room for four freed values of ``size`` bytes (one that large comes from the heap)."""
        wanted = KEPT * size
        if self._libc is None or size > MMAP_LARGEST or wanted <= self._kept:
            return
        self._libc.mallopt(M_MMAP_THRESHOLD, MMAP_LARGEST)
        self._libc.mallopt(M_TOP_PAD, wanted)  # what a trim leaves at the top of the heap
        self._kept = wanted
