"""Where parmagic's backends are found: a registry of names, each module imported only when a run
first asks for its backend, so that loading the extension costs nothing for backends a notebook
never uses (dask, for one, is slow to import).

The contract every backend keeps is :class:`Backend`, in ``base.py``. To add a backend:

1. write one module here with one :class:`Backend` subclass, built from one
   :class:`BackendSettings` (``__init__(self, settings)``), that runs chunks with
   :func:`parmagic.chunk.run_chunk` and hands back their results in any order;
2. add one line to ``REGISTRY``: the name ``-b`` takes, and ``module:Class``.
"""

from __future__ import annotations

import importlib

from .base import Backend, BackendSettings

__all__ = ["CHOICES", "REGISTRY", "Backend", "BackendSettings", "load_backend"]

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


def load_backend(name: str) -> type[Backend]:
    module_name, class_name = REGISTRY[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)
