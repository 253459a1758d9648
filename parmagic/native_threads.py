"""Keep worker processes × native threads (BLAS, OpenMP) within the usable cores.

NumPy's BLAS and OpenMP start one thread per core in *each* worker process; with several
workers that oversubscribes the machine. As loky does, each worker caps them: environment
variables for libraries loaded later, threadpoolctl for those already loaded (fork).
"""

from __future__ import annotations

import os

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
