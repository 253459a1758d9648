"""What the cell's statements before its loop will have made, known from their source before
the cell runs: so that a refusal comes before the cell's first statement, with nothing done.

The checks that need objects (which notebook functions the body calls, what a name holds) run
on a copy of the kernel's namespace in which the statements that can be known without doing
anything have been made: definitions (``def``, plain ``class`` bodies), names bound to
literals and empty containers, imports of modules already imported, and ``with open(...) as
f`` around the loop (``f``: the same kind of file, on ``os.devnull``). A name any other
statement binds is left out, unknown until the loop is reached, where the checks run again.
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import csv
import dataclasses
import functools
import io
import os
import sys
import types

# Callables that make an object and do nothing else, for names, defaults and decorators
_MAKERS = (
    list, dict, set, tuple, frozenset, int, float, complex, str, bytes, bytearray, range, bool,
    object, property, staticmethod, classmethod, collections.Counter, collections.defaultdict,
    collections.deque, collections.OrderedDict, collections.namedtuple, io.StringIO, io.BytesIO,
    csv.writer, csv.DictWriter, functools.cache, functools.lru_cache, functools.wraps,
    functools.partial, dataclasses.dataclass, dataclasses.field,
)  # fmt: skip
_SAFE_MAKERS = {id(maker) for maker in _MAKERS}
_UNKNOWN = object()  # what a name or attribute holds, where the preview cannot tell
_OPERATIONS = (ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare)
_ARITHMETIC = (ast.Constant, ast.operator, ast.cmpop, ast.boolop, ast.unaryop, *_OPERATIONS)


class Previewed(dict):
    """The kernel's namespace as the loop will find it; ``kernel``: the namespace itself, the
    globals of the notebook's functions defined before this cell."""

    def __init__(self, kernel: dict) -> None:
        super().__init__(kernel)
        self.kernel = kernel


class Preview:
    """The namespace as the loop will find it, as far as the source shows; ``files``: the
    stand-in files it opened, closed by :meth:`close`."""

    def __init__(self, ns: dict, statements: list[ast.stmt], loop_line: int, filename: str):
        self.ns, self.files, self.filename = Previewed(ns), [], filename
        # the cell's functions that only define and return, with their bodies
        self.factories: dict[int, tuple[types.FunctionType, list[ast.stmt]]] = {}
        self.complete = True  # every statement before the loop was made here
        for stmt in statements:
            if stmt.lineno < loop_line <= (stmt.end_lineno or 0):  # a block around the loop
                self._header(stmt)
            elif not self._made(stmt):
                self._forget(stmt)  # unknown until the loop is reached
                self.complete = False

    def close(self) -> None:
        for file in self.files:
            with contextlib.suppress(Exception):
                file.close()

    def _made(self, stmt: ast.stmt) -> bool:
        try:
            if not self._knowable(stmt):
                return False
            code = compile(ast.Module([stmt], []), self.filename, "exec", dont_inherit=True)
            exec(code, self.ns)
        except Exception:
            return False
        made = self.ns.get(getattr(stmt, "name", ""))
        definition = isinstance(stmt, ast.FunctionDef) and isinstance(made, types.FunctionType)
        if definition and self._only_makes(stmt.body):
            self.factories[id(made)] = (made, stmt.body)
        return True

    def _only_makes(self, body: list[ast.stmt]) -> bool:
        """A function body that only binds names to what it makes and returns one: calling
        it (``inc = make()``, a closure's factory) does nothing else."""
        for stmt in body:
            if isinstance(stmt, ast.Return):
                if stmt.value is not None and not self._pure(stmt.value):
                    return False
            elif isinstance(stmt, ast.Global | ast.Nonlocal) or not self._knowable(stmt):
                return False
        return True

    def _forget(self, stmt: ast.stmt) -> None:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
                self.ns.pop(node.id, None)
            elif isinstance(node, ast.alias):
                self.ns.pop((node.asname or node.name).split(".")[0], None)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.ns.pop(node.name, None)

    def _header(self, block: ast.stmt) -> None:
        """``with open(path, mode) as f:`` around the loop: ``f`` is a file of that kind."""
        if not isinstance(block, ast.With | ast.AsyncWith):
            return
        for item in block.items:
            target, made = item.optional_vars, None
            if isinstance(target, ast.Name) and isinstance(block, ast.With):
                made = self._stand_in_file(item.context_expr)
                self.ns.pop(target.id, None)
            if made is not None:
                self.ns[target.id] = made
            elif target is not None:
                self._forget(ast.Assign([target], ast.Constant(None)))
                self.complete = False

    def _stand_in_file(self, call: ast.expr):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
            return None
        if self.ns.get(call.func.id, builtins.__dict__.get(call.func.id)) is not builtins.open:
            return None
        arguments = [*call.args[1:], *(k.value for k in call.keywords if k.arg != "file")]
        if not all(isinstance(a, ast.Constant) for a in arguments):
            return None
        keywords = {k.arg: k.value.value for k in call.keywords if k.arg not in ("file", None)}
        mode = call.args[1].value if len(call.args) > 1 else keywords.pop("mode", "r")
        try:
            file = open(os.devnull, str(mode).replace("x", "w"), **keywords)  # noqa: SIM115
        except Exception:
            return None
        self.files.append(file)
        return file

    def _knowable(self, stmt: ast.stmt) -> bool:
        """Whether making ``stmt`` does nothing but bind names: it evaluates nothing that
        touches an object (:meth:`_pure`), imports no module not yet imported, is no block."""
        if isinstance(stmt, ast.Import):
            return all(alias.name in sys.modules for alias in stmt.names)
        if isinstance(stmt, ast.ImportFrom):
            module = sys.modules.get(stmt.module or "") if not stmt.level else None
            return module is not None and all(
                alias.name == "*"
                or alias.name in vars(module)  # not hasattr: a lazy submodule would import
                or f"{stmt.module}.{alias.name}" in sys.modules
                for alias in stmt.names
            )
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = stmt.args
            evaluated = [*arguments.defaults, *(d for d in arguments.kw_defaults if d)]
            evaluated += [a.annotation for a in _arguments(stmt) if a.annotation]
            evaluated += [stmt.returns] if stmt.returns else []
            return all(self._pure(e) for e in evaluated) and self._decorators(stmt)
        if isinstance(stmt, ast.ClassDef):
            return (
                not stmt.keywords
                and all(self._plain_base(b) for b in stmt.bases)
                and self._decorators(stmt)
                and all(isinstance(s, ast.Pass) or self._knowable(s) for s in stmt.body)
            )
        if isinstance(stmt, ast.Assign):
            return all(_unpacks_nothing(t, stmt.value) for t in stmt.targets) and self._pure(
                stmt.value
            )
        if isinstance(stmt, ast.AnnAssign):
            return isinstance(stmt.target, ast.Name) and (
                stmt.value is None or self._pure(stmt.value)
            )
        if isinstance(stmt, ast.Expr):
            return isinstance(stmt.value, ast.Constant)  # a docstring
        return isinstance(stmt, ast.Pass)

    def _pure(self, expr: ast.expr, argument: bool = False) -> bool:  # noqa: C901
        """Whether evaluating ``expr`` touches no object: constants; names and module
        attributes (a reference is bound, nothing is called); containers of those; calls of
        _MAKERS whose ``argument``s are constants, makers or types (``list(it)`` would run
        an iterator of the kernel's); arithmetic on constants; ``list[int]``."""
        if isinstance(expr, ast.Constant):
            return True
        if isinstance(expr, ast.Name | ast.Attribute):
            found = self._static(expr)
            if found is _UNKNOWN:
                return isinstance(expr, ast.Name) and not argument
            return not argument or id(found) in _SAFE_MAKERS or isinstance(found, type)
        if isinstance(expr, ast.Tuple | ast.List | ast.Set):
            return all(self._pure(e, argument) for e in expr.elts)
        if isinstance(expr, ast.Dict):
            parts = [*expr.keys, *expr.values]
            return None not in expr.keys and all(self._pure(p, argument) for p in parts)
        if isinstance(expr, ast.Call):
            values = [*expr.args, *(k.value for k in expr.keywords)]
            return (
                self._maker(expr.func)
                and all(k.arg is not None for k in expr.keywords)
                and all(self._pure(v, argument=True) for v in values)
            )
        if isinstance(expr, _OPERATIONS):  # on constants only: an object's operator may do anything
            return all(isinstance(n, _ARITHMETIC) for n in ast.walk(expr))
        if isinstance(expr, ast.Subscript):  # only `list[int]`: `df[mask]` may copy a frame
            return self._a_type(expr.value) and self._pure(expr.slice, argument=True)
        if isinstance(expr, ast.JoinedStr):
            return all(isinstance(v, ast.Constant) for v in expr.values)
        if isinstance(expr, ast.Lambda):  # its body runs when called, not now
            arguments = expr.args
            return all(self._pure(d) for d in [*arguments.defaults, *arguments.kw_defaults] if d)
        return False

    def _decorators(self, definition: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        """Decorators are called with what they decorate: makers only (or what one makes)."""
        return all(
            self._pure(d) if isinstance(d, ast.Call) else self._maker(d)
            for d in definition.decorator_list
        )

    def _static(self, expr: ast.expr):
        """What a name or a module's attribute holds, read without running anything (no
        property, no module ``__getattr__``); _UNKNOWN otherwise."""
        if isinstance(expr, ast.Name):
            if expr.id in self.ns:
                return self.ns[expr.id]
            return builtins.__dict__.get(expr.id, _UNKNOWN)
        if isinstance(expr, ast.Attribute):
            owner = self._static(expr.value)
            if isinstance(owner, types.ModuleType):
                return vars(owner).get(expr.attr, _UNKNOWN)
        return _UNKNOWN

    def _a_type(self, expr: ast.expr) -> bool:
        found = self._static(expr)
        return isinstance(found, type) or getattr(found, "__module__", None) == "typing"

    def _plain_base(self, base: ast.expr) -> bool:
        """A base class that a subclass cannot notice (no metaclass, no __init_subclass__):
        making a class with it registers nothing anywhere."""
        found = self._static(base)
        return (
            isinstance(found, type)
            and type(found) is type
            and not any("__init_subclass__" in vars(c) for c in found.__mro__[:-1])
        )

    def _maker(self, func: ast.expr) -> bool:
        found = self._static(func)
        if found is _UNKNOWN:
            return False
        factory = self.factories.get(id(found))
        if factory is not None and factory[0] is found:  # its body checked again: now
            return self._only_makes(factory[1])
        return id(found) in _SAFE_MAKERS


def _unpacks_nothing(target: ast.expr, value: ast.expr) -> bool:
    """A name, or names taking a literal tuple's parts one for one (unpacking anything
    else would iterate it)."""
    if isinstance(target, ast.Name):
        return True
    if not isinstance(target, ast.Tuple | ast.List) or not isinstance(value, ast.Tuple | ast.List):
        return False
    return len(target.elts) == len(value.elts) and all(
        _unpacks_nothing(t, v) for t, v in zip(target.elts, value.elts, strict=True)
    )


def _arguments(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    arguments = function.args
    extra = [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, *extra]
