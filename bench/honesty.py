"""Does the summary tell the truth, and does ``auto`` pick right? (``make bench`` runs this.)

For each workload, every backend that can run it runs the loop through a real in-process
IPython shell, alternating, several times; the wall time is measured around the cell, so a
pool's start and auto's lead-in count. Per backend it prints the median wall time, the
speedup measured against the median serial run, and the speedup the summary printed; per
workload, auto's choice next to the fastest backend. Goals: auto within 10% of the fastest,
printed speedup within 15% of measured. Benchmarks never fail: they measure.

The "waiting" workloads (issue 30) call a slow local server, run in a process of its own as
bench/urls.py runs it, on threads with 32 workers and on asyncio: their printed speedup rests
on the serial estimate of items that wait while sharing one process's Python.

Usage: python bench/honesty.py [--quick] [--only TEXT]   (writes bench/honesty.md, unless
--only picks some workloads: then it only prints)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from IPython.testing.globalipapp import start_ipython

HERE = Path(__file__).resolve().parent
QUICK = "--quick" in sys.argv
REPEATS = 2 if QUICK else 5

SETUP = """
import asyncio, time
import aiohttp, requests
import numpy as np

def digit_count(number):
    value = number**number
    count = int(value.bit_length() * 0.30103)
    while 10**count <= value:
        count += 1
    return count

def spin(n):
    total = 0
    for k in range(100_000):
        total += k % (n + 1)
    return total

def sorted_top(seed):
    values = np.random.default_rng(seed).random(1_000_000)
    return float(np.sort(values)[-10])

big = np.random.default_rng(0).random(40_000_000)  # 320 MB the items read
"""

WORKLOADS = {
    "README: digit_count over range(4000)": (
        "digits = []\nfor number in range(4000):\n    digits.append(digit_count(number))",
        ["serial", "threads", "processes"],
    ),
    "pure-Python CPU, 200 even items": (
        "totals = [spin(i) for i in range(200)]",
        ["serial", "threads", "processes"],
    ),
    "NumPy that releases the GIL, 40 sorts": (
        "tops = []\nfor seed in range(40):\n    tops.append(sorted_top(seed))",
        ["serial", "threads", "processes"],
    ),
    "blocking sleep, 100 × 20 ms": (
        "slept = []\nfor i in range(100):\n    time.sleep(0.02)\n    slept.append(i)",
        ["serial", "threads", "processes"],
    ),
    "asyncio sleep, 200 × 20 ms": (
        "woke = []\nfor i in range(200):\n    await asyncio.sleep(0.02)\n    woke.append(i)",
        ["serial", "asyncio"],  # serial: one coroutine at a time, as --compare's reference
    ),
    "waiting: requests to a 100 ms server, 60 items": (
        "for i in range(60):\n    requests.get(URL + str(i), timeout=10)",
        ["serial", "threads -w 32", "threads"],
    ),
    "waiting: blocking sleep, 60 × 100 ms": (
        "for i in range(60):\n    time.sleep(0.1)",
        ["serial", "threads -w 32"],
    ),
    "waiting: aiohttp to a 100 ms server, 60 items": (
        "for i in range(60):\n    async with aiohttp.ClientSession() as s:\n"
        "        async with s.get(URL + str(i)) as r:\n            await r.text()",
        ["serial", "asyncio"],
    ),
    "waiting: 20 instant items, then 20 × sleep(0.2)": (
        "for i in range(40):\n    if i >= 20:\n        time.sleep(0.2)",
        ["serial", "threads -w 8"],
    ),
    "tiny items, 200,000 additions": (
        "total = 0\nfor i in range(200_000):\n    total += i * i",
        ["serial", "threads", "processes"],
    ),
    "data-heavy items: slices of a 320 MB array": (
        "sums = []\nfor i in range(2000):\n    sums.append(float(big[i::2000].sum()))",
        ["serial", "threads", "processes"],
    ),
}


def run_cell(ip, source: str) -> float:
    began = time.perf_counter()
    result = ip.run_cell(source)
    wall = time.perf_counter() - began
    if not result.success:
        raise RuntimeError(f"benchmark cell failed: {result.error_in_exec!r}\n{source}")
    return wall


def measure(ip, body: str, backends: list[str]) -> dict[str, tuple[list, list, list]]:
    """backend -> (wall times, printed speedups, auto's choices), alternating backends."""
    import parmagic

    found = {name: ([], [], []) for name in [*backends, "auto"]}
    run_cell(ip, "%%parallel -q -b processes\nfor i in range(4):\n    pass")  # warm pools
    awaits = "await" in body
    for _ in range(REPEATS):
        for name in found:
            walls, printed, choices = found[name]
            options = "-b asyncio -w 1" if awaits and name == "serial" else f"-b {name}"
            walls.append(run_cell(ip, f"%%parallel -q {options}\n{body}"))
            report = parmagic.last_report()
            printed.append(report.speedup)
            choices.append(report.backend)
    return found


def table(ip) -> list[str]:
    lines = [
        "| workload | backend | median wall s | measured speedup | printed speedup | printed / measured |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else ""
    for label, (body, backends) in WORKLOADS.items():
        if only not in label:
            continue
        print(f"running: {label}", flush=True)
        found = measure(ip, body, backends)
        serial = statistics.median(found["serial"][0])
        walls = {name: statistics.median(values[0]) for name, values in found.items()}
        for name, (_, printed, choices) in found.items():
            measured = serial / walls[name]
            shown = statistics.median(printed)
            tag = name
            if name == "auto":
                picks = sorted(set(choices))
                tag = f"auto → {', '.join(picks)}"
            lines.append(
                f"| {label} | {tag} | {walls[name]:.3f} | {measured:.2f}× | {shown:.2f}× "
                f"| {shown / measured:.2f} |"
            )
        fastest = min((n for n in walls if n != "auto"), key=walls.__getitem__)
        ratio = walls["auto"] / walls[fastest]
        verdicts.append(
            f"- {label}: auto {walls['auto']:.3f} s, fastest {fastest} {walls[fastest]:.3f} s: "
            f"auto / fastest = {ratio:.2f}"
        )
    return lines + ["", "Auto against the fastest backend (goal: at most 1.10):", "", *verdicts]


def main() -> None:
    from urls import slow_server_process  # bench/urls.py, beside this file

    ip = start_ipython()
    ip.run_line_magic("load_ext", "parmagic")
    ip.run_cell(SETUP)
    with slow_server_process(0.1) as url:
        ip.user_ns["URL"] = url
        lines = ["## Honest figures, and auto's choice", "", *table(ip)]
    text = "\n".join(lines) + "\n"
    if "--only" not in sys.argv:
        (HERE / "honesty.md").write_text(text)
    print(text)
    ip.run_line_magic("unload_ext", "parmagic")


if __name__ == "__main__":
    main()
