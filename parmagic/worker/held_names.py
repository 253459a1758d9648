"""Large values of the loop's names, kept by the worker process that made them (``processes``).

The kernel needs only the value each name had after the last item that bound it. A chunk
that binds a large buffer (a 30 MB ``bytearray``, a bootstrap's index array) therefore does
not send it: the worker keeps it and sends a :class:`Held` in its place, and when the run
ends, however it ends, the kernel asks each worker for the values it still needs. So a large
value crosses once, not once per chunk. The worker forgets a kept value as soon as the kernel
has applied a later chunk of the same worker that bound the name (each chunk's header says
how many chunks the kernel has applied), so it keeps at most a few per name.

Only values that hold nothing of the kernel's are kept: buffers of bytes and strings, and
NumPy arrays that own their numbers. Everything else travels with its chunk, as before, so
that the kernel's own objects in it come back as themselves. Worker side; imports nothing heavy.
"""

from __future__ import annotations

import array
import gc
import os
import pickle
import sys
import threading
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from .effects import SCALARS
from .memory import FreedMemory
from .shared_files import shared_file

if TYPE_CHECKING:
    from .kernel_objects import ChunkObjects
    from .task import ChunkResult

HELD_BYTES = 1 << 20  # values at least this large stay in the worker until the run ends
NAMES_REPLY = b"N"  # starts a worker's reply to "names" (a chunk result starts as a pickle)


REACH_BUDGET = 100_000  # objects looked through for references to a value worth keeping


class Held:
    """What a chunk's names hold in place of a value its worker kept, under ``name`` (the
    first of the names bound to it: ``b = a`` keeps one value, for both)."""

    __slots__ = ("seq", "name")

    def __init__(self, seq: int, name: str) -> None:
        self.seq, self.name = seq, name

    def __reduce__(self):
        return Held, (self.seq, self.name)


def _size(value: Any) -> int:
    """Bytes of a value worth holding."""
    if type(value) is array.array:
        return len(value) * value.itemsize
    return getattr(value, "nbytes", None) or len(value)


def worth_holding(value: object) -> bool:
    """A large value that holds no other object (so none of the kernel's)."""
    kind = type(value)
    if kind in (bytes, bytearray, str, array.array):
        return _size(value) >= HELD_BYTES
    numpy = sys.modules.get("numpy")
    if numpy is None or kind is not numpy.ndarray:
        return False
    return value.base is None and not value.dtype.hasobject and _size(value) >= HELD_BYTES


class NameStore:
    """A worker's kept values, by (chunk, name). The worker's main thread keeps them; the
    thread that reads its pipe answers the kernel's request at once, even while items run."""

    def __init__(self) -> None:
        self._values: dict[tuple[int, str], Any] = {}
        self._lock = threading.Lock()
        self._memory = FreedMemory()

    def keep(self, result: ChunkResult, objects: ChunkObjects) -> None:
        """Take the chunk's large values out of its names (Task.merge_names: one dict), but
        those its other names or its changes hold too, which must stay one object with them."""
        if not result.names_merged:
            return
        names = next(n for n in reversed(result.names) if n is not None)
        kept = {
            id(value): value
            for value in names.values()
            if worth_holding(value) and not objects.is_kernels(value)
        }
        others = [value for value in names.values() if id(value) not in kept]
        for shared in _reached(kept, [*others, *result.ops]):
            del kept[shared]
        under: dict[int, str] = {}
        for name, value in names.items():
            if id(value) in kept:
                first = under.setdefault(id(value), name)
                if first == name:
                    with self._lock:
                        self._values[(result.seq, name)] = value
                    self._memory.keep_for(_size(value))
                names[name] = Held(result.seq, first)
                result.held_names.append(name)

    def applied(self, count: int) -> None:
        """The kernel has applied chunks 0 to ``count - 1``: of this worker's values for a
        name from those chunks, only the latest can still be the name's last."""
        with self._lock:
            latest: dict[str, int] = {}
            for seq, name in self._values:
                if seq < count:
                    latest[name] = max(seq, latest.get(name, -1))
            for seq, name in list(self._values):
                if seq < latest.get(name, -1):
                    del self._values[(seq, name)]

    def send(self, wanted: list[tuple[int, str]], conn) -> None:
        """Send the values asked for (the run is over: forget them all). A buffer's memory
        goes as it is through a file in shared memory, which the kernel reads straight into
        the value's own memory (:func:`received`): copied twice on its way, not five times
        through pickles and a pipe."""
        with self._lock:
            found = {key: self._values[key] for key in wanted if key in self._values}
            self._values.clear()
        header = {}
        for key, value in found.items():
            shape = _shape(value)
            if shape[0] == PICKLED:
                header[key] = (PICKLED, pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
                continue
            with shared_file() as file:
                file.write(_memory(value))
            header[key] = (*shape, file.name)
        conn.send_bytes(NAMES_REPLY + pickle.dumps(header, pickle.HIGHEST_PROTOCOL))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


def _reached(kept: dict[int, object], holders: list) -> set[int]:
    """The ids of ``kept`` that objects in ``holders`` hold, however deep; all of them if
    there are too many objects to look through."""
    if not kept:
        return set()
    found, seen, todo, budget = set(), set(kept), list(holders), REACH_BUDGET
    while todo and budget > 0:
        obj = todo.pop()
        if id(obj) in kept:
            found.add(id(obj))
            continue
        if id(obj) in seen or type(obj) in SCALARS:
            continue
        seen.add(id(obj))
        budget -= 1
        todo += gc.get_referents(obj)
    return set(kept) if todo else found


PICKLED = "pickled"


def _shape(value: object) -> tuple:
    """How the kernel makes room for the value: its kind and size (an array's dtype and
    shape), or PICKLED for what has no memory of its own to send (a string)."""
    kind = type(value)
    if kind is bytearray or kind is bytes:
        return (kind.__name__,)
    flags = getattr(value, "flags", None)
    if flags is not None and (flags.c_contiguous or flags.f_contiguous):
        order = "C" if flags.c_contiguous else "F"
        return "ndarray", value.dtype, value.shape, order, flags.writeable  # type: ignore[attr-defined]
    return (PICKLED,)


def _memory(value: Any) -> memoryview:
    """The value's memory as bytes, in its own order (a Fortran array's transpose is C's)."""
    if type(value) is bytearray or type(value) is bytes:
        return memoryview(value)
    contiguous = value if value.flags.c_contiguous else value.T
    return memoryview(contiguous.reshape(-1).view("uint8"))


def received(header: bytes) -> dict[tuple[int, str], Any]:
    """The kernel's side of :meth:`NameStore.send`: the values; every file is removed."""
    shapes = pickle.loads(memoryview(header)[len(NAMES_REPLY) :])
    try:
        return {key: _value(*shape) for key, shape in shapes.items()}
    finally:
        for _, *shape in shapes.values():
            if shape and isinstance(shape[-1], str):
                with suppress(FileNotFoundError):
                    os.unlink(shape[-1])


def _value(kind: str, *shape) -> Any:
    if kind == PICKLED:
        return pickle.loads(shape[0])
    with open(shape[-1], "rb", buffering=0) as file:
        if kind == "bytes":
            return file.read()
        if kind == "bytearray":
            value = bytearray(os.fstat(file.fileno()).st_size)
            file.readinto(value)
            return value
        dtype, dimensions, order, writeable = shape[:-1]
        import numpy

        array = numpy.empty(dimensions, dtype, order=order)
        file.readinto(_memory(array))
        array.flags.writeable = writeable
        return array
