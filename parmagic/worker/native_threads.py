"""Keep worker processes × native threads (BLAS, OpenMP) within the usable cores.

NumPy's BLAS and OpenMP start one thread per core in *each* worker process; with several
workers that oversubscribes the machine. As loky does, each worker caps them: environment
variables for libraries loaded later, threadpoolctl for those already loaded (fork).
"""

from __future__ import annotations

import itertools
import os
import types

# Libraries whose native code runs thread pools (BLAS, OpenMP) that the cap limits
NATIVE_LIBRARIES = frozenset({
    "numpy", "scipy", "sklearn", "torch", "tensorflow", "jax", "numexpr", "cupy", "xgboost",
    "lightgbm", "statsmodels",
})  # fmt: skip

VARIABLES = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS", "BLIS_NUM_THREADS",
)  # fmt: skip


def threads_per_worker(cores: int, workers: int) -> int:
    return max(1, cores // max(1, workers))


def cap_environment(limit: int) -> None:
    """For libraries this process loads from now on."""
    for name in VARIABLES:
        current = os.environ.get(name, "")
        if not current.isdigit() or int(current) > limit:
            os.environ[name] = str(limit)


def cap_loaded_libraries(limit: int, cores: int) -> bool:
    """For libraries already loaded. True when native pools are loaded here and the limit is
    below the core count, i.e. when the cap changes anything worth telling the user."""
    from threadpoolctl import threadpool_info, threadpool_limits

    pools = threadpool_info()
    if any(pool.get("num_threads", 0) > limit for pool in pools):
        threadpool_limits(limits=limit)
    return bool(pools) and limit < cores


class CapWatch:
    """Whether a worker's cap holds back native pools: known only once they are loaded, which
    in a fresh interpreter (spawn, forkserver) is when the first item imports NumPy; so it is
    asked again after every chunk, and looks again whenever another native library loaded."""

    def __init__(self, limit: int | None = None, cores: int = 1) -> None:
        self.limit, self.cores, self.capped = limit, cores, False
        self._loaded: frozenset[str] | None = None

    def check(self) -> bool:
        if self.capped or self.limit is None:
            return self.capped
        import sys

        loaded = frozenset(name for name in NATIVE_LIBRARIES if name in sys.modules)
        if loaded != self._loaded:
            self._loaded = loaded
            self.capped = bool(loaded) and cap_loaded_libraries(self.limit, self.cores)
        return self.capped


def kernel_native_threads() -> int:
    """The native threads the kernel's code runs with: the most of its loaded pools (BLAS,
    OpenMP), else what a library loaded later would take (the environment's, or a core each)."""
    from threadpoolctl import threadpool_info

    counts = [pool.get("num_threads", 0) for pool in threadpool_info()]
    if any(counts):
        return max(counts)
    for name in VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def of_native_library(value: object) -> bool:
    """Whether ``value``, or one of the first members of a list, tuple or dict it is, comes
    from a library of NATIVE_LIBRARIES (``vs = [array, ...]``, an item ``(name, array)``)."""
    if isinstance(value, list | tuple):
        members = [value, *value[:3]]
    elif isinstance(value, dict):
        members = [value, *itertools.islice(value.values(), 3)]
    else:
        members = [value]
    return any(_native(member) for member in members)


def _native(value: object) -> bool:
    if isinstance(value, types.ModuleType):
        home = value.__name__
    elif isinstance(value, type | types.FunctionType | types.BuiltinFunctionType):
        home = value.__module__
    else:
        home = type(value).__module__
    return str(home).split(".")[0] in NATIVE_LIBRARIES
