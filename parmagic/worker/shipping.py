"""What crosses to worker processes, and back, with cloudpickle.

The item function is pickled *by value* with the kernel names it reads (cloudpickle does this
for code from ``__main__``), so notebook functions, lambdas and classes work under every start
method; modules go by reference and are re-imported in the worker under the same alias.
The task is pickled once per run and sent once to each worker, whatever the item count.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import pickle
import sys
import types
from collections.abc import Iterator
from typing import Any

from .. import errors
from ..errors import NotPicklable
from .kernel_objects import (
    ChunkObjects,
    HeldObjects,
    Pickler,
    captured_names,
    dumped,
    loaded,
    referenced_globals,
)
from .shared_files import shared_file
from .task import ChunkResult, PackedResult

DIGEST_LIMIT = 1 << 20  # captured values larger than this are not watched for changes
SHARED_BUFFER = 1 << 20  # captured buffers (arrays) larger than this go through shared memory
_SHARED_MARK = "parmagic/shared-buffers"
_NOT_DATA = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def dumps(value: Any) -> bytes:
    file = io.BytesIO()
    Pickler(file, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return file.getvalue()


def reached_values(function: types.FunctionType) -> Iterator[object]:
    """The kernel values a function reads, and those the notebook functions it calls read
    (functions of the same namespace, followed), each once."""
    seen, todo = set(), [function]
    while todo:
        current = todo.pop()
        for name in referenced_globals(current):
            value = current.__globals__[name]
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, types.FunctionType) and value.__globals__ is function.__globals__:
                todo.append(value)
            yield value


def captured_bytes(function: types.FunctionType) -> int:
    """About how many bytes the kernel objects a function captures (through the notebook
    functions it calls too) weigh, without pickling them: a buffer by its size, anything
    else by its own size (``sys.getsizeof``, which pandas makes deep)."""
    total = 0
    for value in reached_values(function):
        if isinstance(value, types.ModuleType | types.FunctionType):
            continue
        size = getattr(value, "nbytes", None)
        total += size if isinstance(size, int) else sys.getsizeof(value)
    return total


def code_origins(function: types.FunctionType) -> dict[tuple[str, int], str]:
    """Where the code that travels by value was defined: the item function and the notebook
    functions and classes it reaches through its globals."""
    origins: dict[tuple[str, int], str] = {}
    seen: set[int] = set()
    todo: list = [function]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, type) and obj.__module__ == "__main__":
            todo += list(vars(obj).values())
        elif isinstance(obj, types.FunctionType) and obj.__module__ == "__main__":
            codes = [obj.__code__]
            while codes:
                code = codes.pop()
                origins[(code.co_name, code.co_firstlineno)] = code.co_filename
                codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
            todo += [obj.__globals__[n] for n in referenced_globals(obj)]
    return origins


def _refusal(name: str, value: object, reason: object) -> NotPicklable:
    kind = type(value).__name__
    return NotPicklable(errors.NOT_PICKLABLE.format(name=name, type=kind, reason=reason), name)


def pack_task(
    task, shared_files: list[str] | None = None, sent=None, generators_by_name: bool = True
) -> bytes:
    """Pickle a task, or say which kernel name cannot travel and what to do instead.

    With ``shared_files``, large buffers (NumPy arrays and the like, pickle protocol 5) are
    written once to a file in shared memory that every worker maps copy-on-write, instead of
    travelling down each worker's pipe; its path is added to the list, for the caller to
    remove when the run ends. ``sent`` (kernel_objects.SentObjects) learns which objects went.
    """
    task.origins = code_origins(task.function)
    captured = {n: task.function.__globals__[n] for n in referenced_globals(task.function)}
    for name, value in captured.items():
        if isinstance(value, io.IOBase):  # cloudpickle would copy a readable file's content
            raise _refusal(name, value, "an open file belongs to the process that opened it")
    try:
        if shared_files is None:
            data, memo = dumped(task, generators_by_name=generators_by_name)
        else:
            data, memo = _dumps_sharing(task, shared_files)
    except Exception as exc:
        for name, value in captured.items():
            try:
                dumps(value)
            except Exception as reason:
                raise _refusal(name, value, reason) from None
        raise _refusal("the loop body", task.function, exc) from None
    if sent is not None:
        sent.task_sent(memo, captured_names(task.function))
    return data


def _dumps_sharing(task, shared_files: list[str]) -> tuple[bytes, dict]:
    large: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: stays in the pickle
            return True
        if raw.nbytes < SHARED_BUFFER:
            return True
        large.append(raw)
        return False

    inner, memo = dumped(task, buffer_callback=out_of_band)
    if not large:
        return inner, memo
    spans, offset = [], 0
    with shared_file() as f:
        shared_files.append(f.name)
        for raw in large:
            padding = -offset % 64  # aligned, as NumPy prefers
            f.write(b"\0" * padding)
            offset += padding
            f.write(raw)
            spans.append((offset, raw.nbytes))
            offset += raw.nbytes
    return pickle.dumps((_SHARED_MARK, f.name, spans, inner), protocol=5), memo


def load_task(payload: bytes):
    """The task from :func:`pack_task`'s bytes, its large buffers mapped from shared memory,
    holding the worker's copies of the kernel's objects (``task.held``)."""
    task, memo = loaded(payload)
    if isinstance(task, tuple) and task[0] == _SHARED_MARK:
        _, path, spans, inner = task
        with open(path, "rb") as shared:
            mapped = mmap.mmap(shared.fileno(), 0, access=mmap.ACCESS_COPY)  # writes stay private
        view = memoryview(mapped)
        task, memo = loaded(inner, buffers=[view[start : start + size] for start, size in spans])
    task.held = HeldObjects(memo, task.function)
    return task


def dump_result(result, objects: ChunkObjects | None = None) -> bytes:
    """Pickle a chunk result, the kernel's objects in it as references (``objects``); what
    cannot travel fails its own item, or stays behind."""
    pickled = dumps if objects is None else objects.dumps
    try:
        data = _dumped_result(result, objects)
        if result.errors:  # an exception may pickle yet fail to rebuild (a custom __init__)
            pickle.loads(dumps(result.errors))
        return data
    except Exception:
        pass
    result.unflatten()
    for offset in range(len(result)):
        try:
            pickled((result.values[offset], result.ops[offset], result.outputs.get(offset)))
        except Exception as reason:
            result.values[offset], result.ops[offset] = None, []
            message = errors.RESULT_NOT_PICKLABLE.format(index=result.first + offset, reason=reason)
            result.errors.setdefault(offset, _error(TypeError(message), result.first + offset))
        error = result.errors.get(offset)
        while error is not None:  # the error, and the errors it was raised from
            error.exception = _travelling(error.exception)
            error = error.cause
        names = result.names[offset] or {}
        for name, value in list(names.items()):
            try:
                pickled(value)
            except Exception:
                result.dropped_names[name] = type(value).__name__
                del names[name]
    return _dumped_result(result, objects)


def _dumped_result(result: ChunkResult, objects: ChunkObjects | None) -> bytes:
    if objects is None:
        return dumps(PackedResult(result, values_apart=False))
    packed = PackedResult(result, values_apart=objects.looks_up)
    return objects.dumps(packed, own=packed.own)


def _rebuild_exception(cls: type, args: tuple, state: dict) -> BaseException:
    exception = cls.__new__(cls)
    exception.args = args
    exception.__dict__.update(state)
    return exception


class _ExceptionByParts:
    """Carries an exception whose class cannot be rebuilt by pickle (an ``__init__`` with other
    arguments than ``args``): rebuilt in the kernel from class, args and attributes, so the
    user still gets their own exception type. ``readable``: arguments and attributes that
    cannot travel (a lock, a socket) travel as their repr."""

    def __init__(self, exception: BaseException, readable: bool = False) -> None:
        self.exception, self.readable = exception, readable

    def __reduce__(self):
        exc = self.exception
        args, state = exc.args, dict(vars(exc))
        if self.readable:
            args = tuple(_or_repr(a) for a in args)
            state = {k: _or_repr(v) for k, v in state.items()}
        return _rebuild_exception, (type(exc), args, state)


def _or_repr(value: object) -> object:
    try:
        pickle.loads(dumps(value))
        return value
    except Exception:
        return repr(value)


def _travelling(exception: BaseException):
    candidates = (exception, _ExceptionByParts(exception), _ExceptionByParts(exception, True))
    for candidate in candidates:
        try:
            pickle.loads(dumps(candidate))
            return candidate
        except Exception:
            continue
    return RuntimeError(f"{type(exception).__name__}: {exception}")


def _error(exception: BaseException, index: int):
    from .task import ItemError

    return ItemError(exception, [], f"item {index}")


def captured_digests(namespace: dict, only: dict | None = None) -> dict[str, bytes]:
    """Digests of the captured data values, to tell whether the loop changed them in a worker."""
    digests = {}
    for name, value in namespace.items():
        if name.startswith("__") or isinstance(value, _NOT_DATA):
            continue
        if only is not None and name not in only:
            continue
        if getattr(value, "nbytes", 0) > DIGEST_LIMIT:  # an array: too big to watch, and to
            continue  # pickle just to find that out
        try:
            data = dumps(value)
        except Exception:
            continue
        if len(data) <= DIGEST_LIMIT:
            digests[name] = hashlib.blake2b(data, digest_size=16).digest()
    return digests
