"""The dask backend's local cluster against the processes backend, on CPU-bound items.

200 items, each a 50 ms busy loop, through a real in-process IPython shell as a user types
the cell; both backends warm (one run first, not timed), then alternating runs. Prints a small
table of medians. Usage: python bench/cluster.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import time

from IPython.testing.globalipapp import start_ipython

ITEMS, SECONDS = 200, 0.05
REPEATS = 1 if "--quick" in sys.argv else 3
SETUP = (
    "import time\n"
    "def busy(seconds):\n"
    "    end = time.thread_time() + seconds\n"
    "    while time.thread_time() < end:\n"
    "        pass\n"
)
CELL = "%%parallel -q {options}\ndone = []\nfor i in range({items}):\n    busy({seconds})\n    done.append(i)\n"
VARIANTS = {"dask (local cluster)": "-b dask", "processes": "-b processes"}


def main() -> None:
    ip = start_ipython()
    ip.run_line_magic("load_ext", "parmagic")
    ip.run_cell(SETUP)
    cells = {
        name: CELL.format(options=o, items=ITEMS, seconds=SECONDS) for name, o in VARIANTS.items()
    }
    for cell in cells.values():  # warm: start the pool and the cluster
        ip.run_cell(cell.replace(f"range({ITEMS})", "range(4)"))
    times: dict[str, list[float]] = {name: [] for name in cells}
    for _ in range(REPEATS):
        for name, cell in cells.items():
            began = time.perf_counter()
            result = ip.run_cell(cell)
            times[name].append(time.perf_counter() - began)
            assert result.success and ip.user_ns["done"] == list(range(ITEMS)), name
    serial = ITEMS * SECONDS
    print(
        f"{ITEMS} items × {SECONDS * 1000:.0f} ms of CPU each (serial ≈ {serial:.1f} s), median of {REPEATS}"
    )
    print("| backend | wall (s) | speedup over serial |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {serial / median:.2f}× |")
    ip.run_line_magic("unload_ext", "parmagic")


if __name__ == "__main__":
    main()
