"""Whether worker interpreters hash strings as the kernel does. Each interpreter salts its
string hashes when it starts; a forked worker keeps the kernel's salt, a spawned one (spawn,
forkserver, dask's nannies) draws its own unless ``PYTHONHASHSEED`` gives it the kernel's.
A kernel's salt can be handed on only when it came from a known seed."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from contextlib import contextmanager

PROBE = "parmagic-probe"
SEED_VARIABLE = "PYTHONHASHSEED"
_seeded_forkserver: list[bool] = []  # True once parmagic started the forkserver seeded


@functools.cache
def kernel_hash_seed() -> str | None:
    """The seed this interpreter's string hashing came from, or None when it is random (the
    usual kernel). ``PYTHONHASHSEED`` is believed only once an interpreter started with it,
    as multiprocessing starts one, hashes as this one does: it may have been set after start."""
    if sys.flags.hash_randomization == 0:
        return "0"
    candidate = os.environ.get(SEED_VARIABLE)
    if not candidate or candidate == "random":
        return None
    return candidate if _probe_hash(candidate) == hash(PROBE) else None


def _probe_hash(seed: str) -> int | None:
    flags = subprocess._args_from_interpreter_flags()  # as multiprocessing's spawn starts one
    command = [sys.executable, *flags, "-c", f"print(hash({PROBE!r}))"]
    try:
        done = subprocess.run(
            command, env={**os.environ, SEED_VARIABLE: seed}, capture_output=True,
            text=True, timeout=30, check=True,
        )  # fmt: skip
        return int(done.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def keeps_kernel_hashing(start_method: str) -> bool:
    """Whether worker processes started by ``start_method`` hash strings as the kernel does.
    Spawned workers get the kernel's seed in their environment (``seeded_environment``); a
    forkserver does only if it starts now, was started seeded here, or has inherited the seed
    from the kernel's own environment."""
    if start_method == "fork":
        return True
    seed = kernel_hash_seed()
    if seed is None:
        return False
    if start_method == "forkserver":
        inherited = os.environ.get(SEED_VARIABLE) == seed
        return inherited or not _forkserver_running() or bool(_seeded_forkserver)
    return True


def dask_keeps_kernel_hashing() -> bool:
    """A local cluster's nannies start workers with the seed parmagic gives them; they replace
    seed 0 (no salt) by their own, so that one cannot be handed on."""
    return kernel_hash_seed() not in (None, "0")


def _forkserver_running() -> bool:
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None) is not None


@contextmanager
def seeded_environment():
    """Around starting worker interpreters: the kernel's seed in the environment they
    inherit, when it is known; the kernel's environment as it was afterwards."""
    seed = kernel_hash_seed()
    if seed is None:
        yield
        return
    before = os.environ.get(SEED_VARIABLE)
    starting_forkserver = not _forkserver_running()
    os.environ[SEED_VARIABLE] = seed
    try:
        yield
    finally:
        if starting_forkserver and _forkserver_running():
            _seeded_forkserver.append(True)
        if before is None:
            os.environ.pop(SEED_VARIABLE, None)
        else:
            os.environ[SEED_VARIABLE] = before


def dask_seed_config() -> dict:
    """dask config for nannies to start workers with the kernel's seed (set before the
    worker interpreter starts: a nanny's ``env`` is applied only once it runs)."""
    seed = kernel_hash_seed()
    if seed in (None, "0"):
        return {}
    return {f"distributed.nanny.pre-spawn-environ.{SEED_VARIABLE}": seed}


def cluster_keeps_kernel_hashing(client) -> bool:
    """Whether every worker of an existing dask cluster hashes strings as the kernel does."""
    try:
        hashes = client.run(hash, PROBE)
    except Exception:
        return False
    return bool(hashes) and all(value == hash(PROBE) for value in hashes.values())
