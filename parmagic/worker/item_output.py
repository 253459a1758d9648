"""What an item prints goes to that item: ``sys.stdout`` and ``sys.stderr`` stand-ins that
write under the running item of the chunk running in this thread (or asyncio task), shown in
item order when the chunk is applied. Worker side too; imports nothing heavy.
"""

from __future__ import annotations

import contextvars
import io
import sys
from collections.abc import Callable


class ChunkOutput:
    """Where the items of the chunk running in this thread (or asyncio task) write: under the
    running item's offset. Set once per chunk, so an item that prints nothing costs nothing.
    ``running``: where items are handed over without a step between them (chunk.TimedItems),
    what tells the running item's offset instead."""

    __slots__ = ("outputs", "offset", "running")

    def __init__(self, outputs: dict[int, list]) -> None:
        self.outputs, self.offset = outputs, 0
        self.running: Callable[[], int] | None = None

    def add(self, entry: tuple) -> None:
        offset = self.offset if self.running is None else self.running()
        self.outputs.setdefault(offset, []).append(entry)


# The output of the chunk running in this thread (or asyncio task): each thread, and each
# task, has its own context, so concurrent chunks never share a buffer.
current_output: contextvars.ContextVar[ChunkOutput | None] = contextvars.ContextVar(
    "parmagic_item_output", default=None
)


class ItemOutput(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: text written while an item runs goes to that item."""

    def __init__(self, original, stream: int) -> None:
        self.original = original
        self.stream = stream

    def write(self, text: str) -> int:
        sink = current_output.get()
        if sink is None:
            return self.original.write(text)
        sink.add((self.stream, text))
        return len(text)

    def flush(self) -> None:
        if current_output.get() is None and not self.original.closed:
            self.original.flush()

    def __getattr__(self, name: str):
        return getattr(self.original, name)


class OutputCapture:
    """Route item output to the item's record for items run in this process's threads.

    Installs the stand-ins once; :meth:`release` puts the process's own streams back. An item
    abandoned on a pool thread that prints after its run has ended prints to the cell then
    running: the kernel's streams must never be left replaced.
    """

    def __init__(self) -> None:
        self.saved = sys.stdout, sys.stderr
        self.installed = not isinstance(sys.stdout, ItemOutput)
        if self.installed:
            sys.stdout, sys.stderr = ItemOutput(self.saved[0], 1), ItemOutput(self.saved[1], 2)

    def release(self) -> None:
        if self.installed and isinstance(sys.stdout, ItemOutput):
            sys.stdout, sys.stderr = self.saved
