"""Kernel memory during a long run: a generator of N items with a `total +=` reduction.

Usage: python bench/memory.py [N] [backend options]   (defaults: 10_000_000, -b processes)
Prints the kernel's resident memory before the run and its peak during it (sampled by a
thread every 50 ms), and the wall time. The promise (issue 3): growth < 100 MB.
"""

from __future__ import annotations

import sys
import threading
import time

import psutil
from IPython.testing.globalipapp import start_ipython


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    options = " ".join(sys.argv[2:]) or "-b processes"
    ip = start_ipython()
    ip.run_line_magic("load_ext", "parmagic")
    ip.run_cell(f"%%parallel -q {options}\nwarm = [i for i in range(1000)]\n")
    ip.run_cell(f"def numbers():\n    yield from range({count})\n")
    process = psutil.Process()
    before = peak = process.memory_info().rss
    running = True

    def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    began = time.perf_counter()
    cell = f"%%parallel -q {options}\ntotal = 0\nfor n in numbers():\n    total += n\n"
    result = ip.run_cell(cell)
    wall = time.perf_counter() - began
    running = False
    sampler.join()
    assert result.success and ip.user_ns["total"] == count * (count - 1) // 2
    mb = 1 << 20
    print(
        f"{count:,} items, {options}: wall {wall:.1f} s, RSS before {before / mb:.0f} MB, "
        f"peak growth {(peak - before) / mb:.1f} MB"
    )
    ip.run_line_magic("unload_ext", "parmagic")


if __name__ == "__main__":
    main()
