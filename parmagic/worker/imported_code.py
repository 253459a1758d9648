"""What workers started earlier would not see: the user's own modules as the kernel has them.

A warm pool's workers imported (or, forked, copied) the kernel's modules when they started.
After ``importlib.reload``, ``%autoreload``, an edited file, ``mod.SETTING = ...`` in the
kernel, or a new ``sys.path`` entry, they would run stale code; the pool is restarted instead.
Installed packages and the standard library are left out: they do not change under a session.
"""

from __future__ import annotations

import ast
import os
import pickle
import sys
import sysconfig
import types

_PATHS = [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
_INSTALLED = tuple({*_PATHS, *map(os.path.realpath, _PATHS)})
_verdicts: dict[str, bool] = {}  # a module file -> whether it is the user's (realpath is slow)
_NOT_MODULES = ("__main__", "__mp_main__", "parmagic")


def is_users(module: object) -> bool:
    """A module of the user's own (not the standard library's, an installed package's, or
    parmagic's), loaded from a file."""
    if not isinstance(module, types.ModuleType):
        return False
    own = module.__dict__  # not getattr: a lazy module's __getattr__ would import things
    file, name = own.get("__file__"), own.get("__name__") or ""
    if not isinstance(file, str) or name.split(".")[0] in _NOT_MODULES:
        return False
    verdict = _verdicts.get(file)
    if verdict is None:
        installed = file.startswith(_INSTALLED) or os.path.realpath(file).startswith(_INSTALLED)
        verdict = _verdicts[file] = not installed
    return verdict


def values_read(nodes, ns: dict) -> dict[str, dict[str, object]]:
    """``mod.NAME`` values the code reads from the user's modules (data, not functions,
    classes or modules, which a worker imports as they are in the file)."""
    found: dict[str, dict[str, object]] = {}
    for top in nodes:
        for node in ast.walk(top):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
                continue
            module = ns.get(node.value.id)
            if not isinstance(module, types.ModuleType) or not is_users(module):
                continue
            value = getattr(module, node.attr, None)
            if callable(value) or isinstance(value, types.ModuleType):
                continue
            try:
                pickle.dumps(value)
            except Exception:
                continue
            found.setdefault(module.__name__, {})[node.attr] = value
    return found


_user_names: tuple[int, list[str]] = (-1, [])  # (len(sys.modules), the user's module names)


def _user_module_names() -> list[str]:
    """The user's modules' names, found again only when the set of modules has grown or
    shrunk (a thousand modules take a millisecond to walk; a run must not)."""
    global _user_names
    if _user_names[0] != len(sys.modules):
        names = [
            name
            for name, module in list(sys.modules.items())
            if name not in _NOT_MODULES and is_users(module)
        ]
        _user_names = (len(sys.modules), names)
    return _user_names[1]


def fingerprint(hashed: frozenset[str] | None = None) -> tuple[tuple[str, ...], dict[str, tuple]]:
    """``sys.path``, and per user module: which module object, its file's modification time,
    and (for the modules in ``hashed``, or all) which object each of its names holds."""
    modules = {}
    for name in _user_module_names():
        module = sys.modules.get(name)
        if module is None or not is_users(module):
            continue
        try:
            modified = os.stat(module.__file__).st_mtime_ns
        except OSError:
            modified = None
        names = None
        if hashed is None or name in hashed:
            names = hash(tuple((key, id(value)) for key, value in list(vars(module).items())))
        modules[name] = (id(module), modified, names)
    return tuple(sys.path), modules


def changes_since(earlier: tuple, now: tuple, read: frozenset[str] = frozenset()) -> str | None:
    """What changed, in words, or None: sys.path, a module reimported or its file edited,
    or, for the modules the body reads (``read``), what their names hold."""
    if earlier[0] != now[0]:
        return "sys.path"
    changed = []
    for name, seen in earlier[1].items():
        kept = 3 if name in read else 2  # (module object, file's time, what its names hold)
        if now[1].get(name, seen)[:kept] != seen[:kept]:
            changed.append(name)
    return ", ".join(f"`{name}`" for name in sorted(changed)[:3]) or None


def modules_read(nodes, ns: dict) -> frozenset[str]:
    """The user's modules the code names directly."""
    names = {n.id for top in nodes for n in ast.walk(top) if isinstance(n, ast.Name)}
    return frozenset(
        ns[name].__name__
        for name in names
        if isinstance(ns.get(name), types.ModuleType) and is_users(ns[name])
    )
