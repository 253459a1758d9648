"""Files and items: what an item writes to a file the kernel opened is made in the kernel, in
item order, like printed output; a file an item opened and closed comes back as its like.

A kernel file (or ``csv`` writer) that the body only writes to is, inside the item, a
:class:`Sink`: its writes are recorded in the item's log (effects.py) and replayed on the real
file once the items before have been applied. So ``f.write(...)``, ``print(..., file=f)`` and
``csv.writer(f).writerow(...)`` give the plain loop's file on every backend, worker processes
included, where an open file could not go.

Worker side and kernel side both import this module, so it imports nothing heavy.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

# The methods of a sink the body may call: each one's call is replayed on the kernel's object
SINK_METHODS = frozenset({"write", "writelines", "flush", "writerow", "writerows", "writeheader"})
CSV_WRITERS = frozenset({"writer", "DictWriter"})  # csv's, handed the file to write to


def is_sink(value: object) -> bool:
    """A file open for writing, or a ``csv`` writer: what items write to through a Sink."""
    if isinstance(value, io.IOBase):
        try:
            return not value.closed and value.writable()
        except (ValueError, OSError):
            return False
    import csv

    return (
        isinstance(value, csv.DictWriter)
        or type(value).__name__ == "writer"
        and (type(value).__module__ == "_csv")
    )


class Sink:
    """Stands in, inside an item, for a kernel file or csv writer: records the item's writes
    where the item runs. ``write`` returns what a text file's would (the length)."""

    __slots__ = ("_calls", "_name", "_line")

    def __init__(self, calls: Callable[..., None], name: str, line: int) -> None:
        """``calls``: the item log's ``call``, which records a method call on a kernel name."""
        self._calls, self._name, self._line = calls, name, line

    def _record(self, method: str, *args: Any) -> None:
        self._calls(self._line, self._name, (), method, *args)

    def write(self, data):
        self._record("write", data)
        return len(data)

    def writelines(self, lines) -> None:
        self._record("writelines", list(lines))

    def flush(self) -> None:
        self._record("flush")

    def writerow(self, row) -> None:
        self._record("writerow", row if isinstance(row, dict) else list(row))

    def writerows(self, rows) -> None:
        self._record("writerows", [r if isinstance(r, dict) else list(r) for r in rows])

    def writeheader(self) -> None:
        self._record("writeheader")

    def __repr__(self) -> str:
        return f"<the kernel's {self._name!r}, written in item order>"


def closed_file_reducer(obj: object):
    """How a closed file travels (pickle's ``reducer_override``): as a description the kernel
    rebuilds it from, an equally closed file of the same type, name and mode, where pickle
    would refuse (``with open(p) as f`` in the body leaves the plain loop's ``f`` closed)."""
    if type(obj) in (io.StringIO, io.BytesIO):
        return (_closed, (type(obj), None, None, None)) if obj.closed else None
    if not isinstance(obj, io.TextIOWrapper | io.BufferedIOBase | io.FileIO) or not obj.closed:
        return None
    mode = getattr(obj, "mode", None)
    name = getattr(obj, "name", None)
    encoding = getattr(obj, "encoding", None) if isinstance(obj, io.TextIOWrapper) else None
    if not isinstance(mode, str) or not isinstance(name, str | int):
        return None
    return _closed, (type(obj), name, mode, encoding)


def _closed(kind: type, name, mode: str | None, encoding: str | None):
    if mode is None:
        like = kind()
    else:
        opened = mode.replace("x", "w")
        buffering = 0 if kind is io.FileIO else -1
        like = open(os.devnull, opened, buffering=buffering, encoding=encoding)  # noqa: SIM115
        raw = like if kind is io.FileIO else getattr(like, "buffer", like)
        raw = getattr(raw, "raw", raw)
        raw.name = name
        if isinstance(like, io.TextIOWrapper):
            like.mode = mode
    like.close()
    return like
