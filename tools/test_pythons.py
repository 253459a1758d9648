"""Run the test suite on every CPython 3.11+ on this machine, each in a venv of its own.

Finds pyenv's versions (``~/.pyenv/versions/3.*``) and ``python3.1x`` on PATH, one interpreter
per minor version; installs the project with its test extra into ``.venvs/pyX.Y``; runs pytest
with the arguments given (default: the whole suite); prints one line per version.

    python tools/test_pythons.py                       # every version, whole suite
    python tools/test_pythons.py --skip-current --oldest 3.12 -- tests/test_semantics.py
    python tools/test_pythons.py --stack colab -- tests/test_kernel.py

``--stack colab``: instead, one venv of a notebook service's pinned packages
(``tools/stacks/colab.txt``, IPython 7.34 and ipykernel 6.17 on CPython 3.13) with parmagic's
wheel installed beside them; fails if installing moved any pinned package.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST = (3, 11)
# A stack: its CPython, its pins, and the extra that brings the tests' own packages.
STACKS = {"colab": ((3, 13), os.path.join(ROOT, "tools", "stacks", "colab.txt"), "test-colab")}


def version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.implementation.name, *sys.version_info[:2])"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return (int(out[1]), int(out[2])) if out and out[0] == "cpython" else None


def interpreters() -> dict[tuple[int, int], str]:
    """One interpreter per CPython minor version from 3.11 on, pyenv's first."""
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(pyenv, "versions", "3.*", "bin", "python3")))
    for minor in range(OLDEST[1], 20):
        found = shutil.which(f"python3.{minor}")
        if found:
            candidates.append(found)
    found: dict[tuple[int, int], str] = {}
    for python in candidates:
        version = version_of(python)
        if version and version >= OLDEST and version not in found:
            found[version] = python
    return dict(sorted(found.items()))


def run_on(version: tuple[int, int], python: str, pytest_args: list[str]) -> tuple[bool, str]:
    venv = os.path.join(ROOT, ".venvs", f"py{version[0]}.{version[1]}")
    bin_python = os.path.join(venv, "bin", "python")
    installed = installed_in(venv, [
        [python, "-m", "venv", venv],
        [bin_python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [bin_python, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]"],
    ])  # fmt: skip
    return installed or run_pytest(venv, pytest_args)


def run_stack(name: str, python: str, pytest_args: list[str]) -> tuple[bool, str]:
    """The stack's pins first, then parmagic's wheel and its tests' packages beside them,
    held to the pins; then the pins are read back from the venv. The wheel proves the install;
    the tests run the clone's code, installed over it in place (kernels the tests start import
    parmagic from the venv, not from the clone)."""
    _, pins, extra = STACKS[name]
    venv = os.path.join(ROOT, ".venvs", name)
    bin_python = os.path.join(venv, "bin", "python")
    wheels = os.path.join(venv, "wheel")
    pip = [bin_python, "-m", "pip", "install", "--quiet"]
    installed = installed_in(venv, [
        [python, "-m", "venv", venv],
        [*pip, "--upgrade", "pip"],
        [*pip, "-r", pins],
        [bin_python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, ROOT],
        lambda: [*pip, "-c", pins, f"parmagic[{extra}] @ file://{glob.glob(wheels + '/*.whl')[0]}"],
        [*pip, "--no-deps", "-e", ROOT],  # then the clone's code itself, as kernels import it
        [bin_python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
    ], also=[pins])  # fmt: skip
    if installed:
        return installed
    moved = moved_pins(bin_python, pins)
    if moved:
        return False, f"installing parmagic moved pinned packages: {', '.join(moved)}"
    return run_pytest(venv, pytest_args)


def installed_in(venv: str, steps: list, also: list[str] = ()) -> tuple | None:
    """Runs the steps (commands, or functions that make one when its turn comes) unless the
    venv was made since pyproject.toml (and ``also``) changed; None when it is ready, else
    why not."""
    stamp = os.path.join(venv, ".installed")
    sources = [os.path.join(ROOT, "pyproject.toml"), *also]
    if os.path.exists(stamp) and all(
        os.path.getmtime(stamp) >= os.path.getmtime(source) for source in sources
    ):
        return None
    shutil.rmtree(venv, ignore_errors=True)
    os.makedirs(os.path.dirname(venv), exist_ok=True)
    with open(venv + ".install.log", "w") as log:
        for step in steps:
            step = step() if callable(step) else step
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT).returncode:
                return False, f"could not install the project (log: {log.name})"
    open(stamp, "w").close()
    return None


def moved_pins(bin_python: str, pins: str) -> list[str]:
    """Pinned packages whose installed version is not the pinned one."""
    wanted = {}
    with open(pins) as lines:
        for line in lines:
            if "==" in line and not line.startswith("#"):
                package, version = line.split("#")[0].strip().split("==")
                wanted[package] = version
    program = (
        "import importlib.metadata as m, json, sys\n"
        "print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    )
    found = subprocess.run([bin_python, "-c", program, *wanted], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    have = json.loads(found)
    return [f"{p} {wanted[p]} -> {have[p]}" for p in wanted if have[p] != wanted[p]]


BYTECODE_FOR = ("parmagic", "tests")


def run_pytest(venv: str, pytest_args: list[str]) -> tuple[bool, str]:
    bin_python = os.path.join(venv, "bin", "python")
    log = os.path.join(venv, "pytest.log")
    with open(log, "w") as out:
        compiled = [bin_python, "-m", "compileall", "-q", *BYTECODE_FOR]  # see the Makefile
        subprocess.run(compiled, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)
        result = subprocess.run(
            [bin_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    with open(log) as out:
        lines = [line.strip() for line in out if line.strip()]
    # The log may be gone with the machine: what failed is said where CI's output is kept.
    failures = [line for line in lines if re.match(r"(FAILED|ERROR) tests/", line)]
    last = lines[-1] if lines else "no output"
    return result.returncode == 0, "\n  ".join([f"{last} (log: {log})", *failures])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip-current", action="store_true", help="leave out this interpreter's version"
    )
    parser.add_argument(
        "--oldest", default="3.11", help="the oldest version to run on (default: 3.11)"
    )
    parser.add_argument("--stack", choices=STACKS, help="a pinned stack instead (see above)")
    parser.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --)")
    args = parser.parse_args()
    if args.stack:
        return main_stack(args.stack, args.pytest_args)
    oldest = tuple(int(part) for part in args.oldest.split("."))
    found = {version: python for version, python in interpreters().items() if version >= oldest}
    if args.skip_current:
        found.pop(sys.version_info[:2], None)
    if not found:
        print(f"test-pythons: no other CPython {args.oldest}+ found on this machine; skipped")
        return 0
    failed = False
    for version, python in found.items():
        began = time.monotonic()
        ok, last = run_on(version, python, args.pytest_args)
        failed |= not ok
        took = time.monotonic() - began
        print(f"Python {version[0]}.{version[1]} ({python}): {'ok' if ok else 'FAILED'} "
              f"in {took:.0f} s: {last}", flush=True)  # fmt: skip
    return 1 if failed else 0


def main_stack(name: str, pytest_args: list[str]) -> int:
    version = STACKS[name][0]
    python = interpreters().get(version)
    if python is None:
        print(f"test-pythons: the {name} stack needs CPython {version[0]}.{version[1]}, which "
              "this machine does not have")  # fmt: skip
        return 1
    began = time.monotonic()
    ok, last = run_stack(name, python, pytest_args)
    took = time.monotonic() - began
    print(f"{name} stack ({python}): {'ok' if ok else 'FAILED'} in {took:.0f} s: {last}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
