"""Where parmagic's backends are found: a registry of names, each module imported only when a run
first asks for its backend, so that loading the extension costs nothing for backends a notebook
never uses (dask, for one, is slow to import).

The contract every backend keeps is :class:`Backend`, in ``base.py``. To add a backend:

1. write one module here with one :class:`Backend` subclass, built from one
   :class:`BackendSettings` (``__init__(self, settings)``), that runs chunks with
   :func:`parmagic.worker.chunk.run_chunk` and hands back their results in any order;
2. add one line to ``REGISTRY``: the name ``-b`` takes, and ``module:Class``;
3. declare what it does as :class:`Backend`'s class attributes (copies kernel objects, starts
   processes, takes a start method or a scheduler, maps shared memory, seedable, runs
   coroutines, is the plain loop...) and how its interpreters hash strings
   (``hashes_otherwise``): the checks, the refusals (``analysis/policy.py``), the summary and
   ``--show-code`` ask those (:func:`may`), never a backend's name.
"""

from __future__ import annotations

import importlib

from .base import Backend, BackendSettings

__all__ = ["CHOICES", "CHOOSERS", "REGISTRY", "Backend", "BackendSettings", "load_backend", "may"]

REGISTRY = {
    "serial": "serial:SerialBackend",
    "threads": "threads:ThreadBackend",
    "futures": "threads:FuturesBackend",
    "processes": "processes:ProcessBackend",
    "futures:processes": "process_futures:ProcessFuturesBackend",
    "asyncio": "coroutines:AsyncioBackend",
    "dask": "dask_cluster:DaskBackend",
}
CHOICES = (*REGISTRY, "auto")
CHOOSERS = ("auto", "all")  # not backends: they choose among them (auto; --compare all)


def load_backend(name: str) -> type[Backend]:
    module_name, class_name = REGISTRY[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)


def may(name: str, fact: str) -> bool:
    """Whether the backend ``name`` does what ``fact`` (a :class:`Backend` attribute) says:
    policy asks this instead of naming backends. A chooser may do what any backend does; a
    name that is no backend does nothing (it is refused elsewhere)."""
    if name in CHOOSERS:
        return True
    return name in REGISTRY and bool(getattr(load_backend(name), fact))
