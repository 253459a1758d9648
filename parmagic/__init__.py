"""parmagic: ``%%parallel`` runs a notebook loop on threads or processes, with serial results.

Importing this package is cheap and imports no IPython: worker processes import it too.
"""

from __future__ import annotations

import atexit

__version__ = "0.1.0"

_loaded: dict[int, object] = {}


def load_ipython_extension(ipython) -> None:
    """``%load_ext parmagic``: register the magics and make them configurable."""
    from .magics import ParallelMagics
    from .shared_files import sweep_leftovers

    if id(ipython) in _loaded:
        return
    sweep_leftovers()  # shared-memory files of kernels killed mid-run
    magics = ParallelMagics(shell=ipython)
    atexit.register(magics.close)  # a kernel that shuts down closes its pools first
    ipython.register_magics(magics)
    ipython.configurables.append(magics)
    _loaded[id(ipython)] = magics


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext parmagic``: remove the magics and stop every pool they started."""
    magics = _loaded.pop(id(ipython), None)
    if magics is None:
        return
    magics.close()
    atexit.unregister(magics.close)
    manager = ipython.magics_manager
    for kind in ("line", "cell"):
        manager.magics[kind].pop("parallel", None)
    manager.registry.pop(type(magics).__name__, None)
    if magics in ipython.configurables:
        ipython.configurables.remove(magics)


def last_report():
    """The report of the most recent run in this kernel (None before the first run)."""
    for magics in reversed(list(_loaded.values())):
        return magics.session.last_report
    return None
