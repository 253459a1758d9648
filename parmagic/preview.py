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

from .scopes import COMPREHENSIONS

# Callables that make an object and do nothing else, for names, defaults and decorators
_MAKERS = (
    list, dict, set, tuple, frozenset, int, float, complex, str, bytes, bytearray, range, bool,
    object, property, staticmethod, classmethod, collections.Counter, collections.defaultdict,
    collections.deque, collections.OrderedDict, collections.namedtuple, io.StringIO, io.BytesIO,
    csv.writer, csv.DictWriter, functools.cache, functools.lru_cache, functools.wraps,
    functools.partial, dataclasses.dataclass, dataclasses.field,
)  # fmt: skip
_SAFE_MAKERS = {id(maker) for maker in _MAKERS}
_LEAVES = (ast.Constant, ast.Name, ast.Attribute, ast.Subscript, ast.Slice, ast.Load)
_CONTAINERS = (ast.Tuple, ast.List, ast.Set, ast.Dict, ast.JoinedStr, ast.FormattedValue)
_OPERATIONS = (ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare)
_ARITHMETIC = (ast.Constant, ast.operator, ast.cmpop, ast.boolop, ast.unaryop, *_OPERATIONS)
_HARMLESS = (*_LEAVES, *_CONTAINERS, ast.keyword, ast.Starred, ast.expr_context, ast.arguments,
             ast.arg, ast.operator)  # fmt: skip


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
        self.factories: set[int] = set()  # the cell's functions that only define and return
        for stmt in statements:
            if stmt.lineno < loop_line <= (stmt.end_lineno or 0):  # a block around the loop
                self._header(stmt)
            elif not self._made(stmt):
                self._forget(stmt)  # unknown until the loop is reached

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
        if isinstance(stmt, ast.FunctionDef) and self._only_makes(stmt.body):
            self.factories.add(id(self.ns.get(stmt.name)))
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
        if not isinstance(block, ast.With):
            return
        for item in block.items:
            target, made = item.optional_vars, None
            if isinstance(target, ast.Name):
                made = self._stand_in_file(item.context_expr)
                self.ns.pop(target.id, None)
            if made is not None:
                self.ns[target.id] = made
            elif target is not None:
                self._forget(ast.Assign([target], ast.Constant(None)))

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
        """Whether making ``stmt`` does nothing but bind names: no call but to _MAKERS, no
        import of a module not yet imported, no block."""
        if isinstance(stmt, ast.Import):
            return all(alias.name in sys.modules for alias in stmt.names)
        if isinstance(stmt, ast.ImportFrom):
            module = sys.modules.get(stmt.module or "") if not stmt.level else None
            return module is not None and all(
                alias.name == "*"
                or hasattr(module, alias.name)
                or f"{stmt.module}.{alias.name}" in sys.modules
                for alias in stmt.names
            )
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = stmt.args
            evaluated = [*arguments.defaults, *(d for d in arguments.kw_defaults if d)]
            annotations = [a.annotation for a in _arguments(stmt) if a.annotation]
            evaluated += [*annotations, *([stmt.returns] if stmt.returns else [])]
            return all(self._pure(e) for e in [*evaluated, *stmt.decorator_list])
        if isinstance(stmt, ast.ClassDef):
            heads = [*stmt.bases, *stmt.decorator_list]
            return (
                not stmt.keywords
                and all(self._pure(e) for e in heads)
                and all(self._plain_base(b) for b in stmt.bases)
                and all(isinstance(s, ast.Pass) or self._knowable(s) for s in stmt.body)
            )
        if isinstance(stmt, ast.Assign):
            return all(_names_only(t) for t in stmt.targets) and self._pure(stmt.value)
        if isinstance(stmt, ast.AnnAssign):
            return isinstance(stmt.target, ast.Name) and (
                stmt.value is None or self._pure(stmt.value)
            )
        if isinstance(stmt, ast.Expr):
            return isinstance(stmt.value, ast.Constant)  # a docstring
        return isinstance(stmt, ast.Pass)

    def _pure(self, expr: ast.expr) -> bool:
        """Whether evaluating ``expr`` only reads names and makes objects."""
        for node in ast.walk(expr):
            if isinstance(node, ast.Call):
                if not self._maker(node.func):
                    return False
            elif isinstance(node, ast.Lambda):
                continue
            elif isinstance(node, (*COMPREHENSIONS, ast.NamedExpr, ast.Await, ast.Yield)):
                return False
            elif isinstance(node, _OPERATIONS):
                if not all(isinstance(n, _ARITHMETIC) for n in ast.walk(node)):
                    return False  # on constants only: an operator of an object may do anything
            elif isinstance(node, ast.Subscript):
                if not self._a_type(node.value):
                    return False  # `df[mask]` may copy a large frame: only `list[int]` here
            elif not isinstance(node, _HARMLESS):
                return False
        return True

    def _a_type(self, expr: ast.expr) -> bool:
        found = self._value(expr)
        return isinstance(found, type) or getattr(found, "__module__", None) == "typing"

    def _plain_base(self, base: ast.expr) -> bool:
        """A base class that a subclass cannot notice (no metaclass, no __init_subclass__):
        making a class with it registers nothing anywhere."""
        found = self._value(base)
        return (
            isinstance(found, type)
            and type(found) is type
            and not any("__init_subclass__" in vars(c) for c in found.__mro__[:-1])
        )

    def _value(self, expr: ast.expr):
        if not all(isinstance(n, ast.Name | ast.Attribute | ast.Load) for n in ast.walk(expr)):
            return None
        try:
            return eval(compile(ast.Expression(expr), "<preview>", "eval"), self.ns)
        except Exception:
            return None

    def _maker(self, func: ast.expr) -> bool:
        found = self._value(func)
        return found is not None and (id(found) in _SAFE_MAKERS or id(found) in self.factories)


def _names_only(target: ast.expr) -> bool:
    if isinstance(target, ast.Name):
        return True
    return isinstance(target, ast.Tuple | ast.List) and all(_names_only(e) for e in target.elts)


def _arguments(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    arguments = function.args
    extra = [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, *extra]
