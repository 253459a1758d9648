"""Run the test suite on every CPython 3.11+ on this machine, each in a venv of its own.

Finds pyenv's versions (``~/.pyenv/versions/3.*``) and ``python3.1x`` on PATH, one interpreter
per minor version; installs the project with its test extra into ``.venvs/pyX.Y``; runs pytest
with the arguments given (default: the whole suite); prints one line per version.

    python tools/test_pythons.py                       # every version, whole suite
    python tools/test_pythons.py --skip-current --oldest 3.12 -- tests/test_semantics.py
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST = (3, 11)


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
    os.makedirs(os.path.join(ROOT, ".venvs"), exist_ok=True)
    venv = os.path.join(ROOT, ".venvs", f"py{version[0]}.{version[1]}")
    bin_python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".installed")
    if not os.path.exists(stamp) or os.path.getmtime(stamp) < os.path.getmtime(
        os.path.join(ROOT, "pyproject.toml")
    ):
        with open(os.path.join(venv + ".install.log"), "w") as log:
            for step in (
                [python, "-m", "venv", venv],
                [bin_python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                [bin_python, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]"],
            ):
                if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT).returncode:
                    return False, f"could not install the project (log: {log.name})"
        open(stamp, "w").close()
    log = os.path.join(venv, "pytest.log")
    with open(log, "w") as out:
        result = subprocess.run(
            [bin_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    with open(log) as out:
        tail = [line.strip() for line in out if line.strip()]
    return result.returncode == 0, (tail[-1] if tail else "no output") + f" (log: {log})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip-current", action="store_true", help="leave out this interpreter's version"
    )
    parser.add_argument(
        "--oldest", default="3.11", help="the oldest version to run on (default: 3.11)"
    )
    parser.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --)")
    args = parser.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
