"""The fault matrix as a table: each backend against each fault, with how long the failing
cell took and how long the next (healthy) run took to finish.

Usage: python bench/faults.py      Prints a Markdown table. Not a test: tests/test_faults.py
holds the assertions; this measures.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time

from IPython.testing.globalipapp import start_ipython

BACKENDS = {
    "serial": "-b serial",
    "threads": "-b threads -w 4",
    "fork": "-b processes -w 2 --start-method fork",
    "spawn": "-b processes -w 2 --start-method spawn",
    "forkserver": "-b processes -w 2 --start-method forkserver",
    "futures": "-b futures -w 4",
    "futures:processes": "-b futures:processes -w 2",
}
BODY = "for i in range(200):\n    {fault}\n    time.sleep(0.02)\n    done.append(i)\n"
FAULTS = {
    "exception": ("if i == 20:\n        raise ValueError(i)", ""),
    "interrupt": ("pass", "interrupt"),
    "killed worker": ("if i == 20:\n        os.kill(os.getpid(), signal.SIGKILL)", "processes"),
    "timeout 0.3 s": ("if i == 20:\n        time.sleep(3)", "--timeout 0.3"),
    "unpicklable capture": ("lock.acquire(False) and lock.release()", "processes"),
}


def measure(ip, options: str, fault: str, extra: str) -> str:
    if extra == "processes" and "processes" not in options:
        return "n/a"
    ip.run_cell("import os, signal, time, threading\ndone = []\nlock = threading.Lock()\n")
    cell = f"%%parallel -q {options} {extra if extra.startswith('--') else ''}\n"
    cell += BODY.format(fault=fault)
    timer = None
    if extra == "interrupt":
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
    began = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):  # the cell's traceback
        result = ip.run_cell(cell)
    failed_after = time.monotonic() - began
    if timer:
        timer.join()
    error = type(result.error_in_exec).__name__ if result.error_in_exec else "none"
    done = ip.user_ns["done"]
    prefix = done == list(range(len(done)))
    began = time.monotonic()
    ip.run_cell(f"%%parallel -q {options}\nafter = [k for k in range(100)]\n")
    recovered = time.monotonic() - began
    kept = f"prefix {len(done)}" if prefix else f"{len(done)} items, NOT a prefix"
    return f"{error} after {failed_after:.2f} s, {kept}, next run {recovered:.2f} s"


def main() -> None:
    ip = start_ipython()
    ip.run_line_magic("load_ext", "parmagic")
    print("| fault | " + " | ".join(BACKENDS) + " |")
    print("|---" * (len(BACKENDS) + 1) + "|")
    for name, (fault, extra) in FAULTS.items():
        cells = [measure(ip, options, fault, extra) for options in BACKENDS.values()]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    ip.run_line_magic("unload_ext", "parmagic")


if __name__ == "__main__":
    main()
