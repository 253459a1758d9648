"""200 URLs × 50 ms from the local slow server: parmagic's threads, futures and asyncio against
the hand-written standard-library and aiohttp code, alternating, median of several runs.

Usage: python bench/urls.py [COUNT] [REPEATS]     (defaults: 200, 5)
The ideal for N threads is ceil(COUNT / N) × latency; for asyncio, one latency.
The server runs in a process of its own, so that it does not share a GIL with the clients.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import aiohttp
import requests
from IPython.testing.globalipapp import start_ipython

SERVER = (
    "import sys\nfrom parmagic.demo import SlowServer\n"
    "site = SlowServer(latency=float(sys.argv[1])).start()\n"
    "print(site.url('/page/'), flush=True)\nsys.stdin.read()\n"
)


@contextmanager
def slow_server_process(latency: float):
    """The slow site in another process; yields its base URL. Stopped by a signal: the fork
    workers of the processes backend hold a copy of its stdin, so closing it ends nothing."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(latency)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield server.stdout.readline().strip()
    finally:
        server.terminate()
        server.wait(timeout=10)


LATENCY = 0.05
THREADS = 32


def by_hand_threads(urls: list[str]) -> list[int]:
    with requests.Session() as session, concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda u: len(session.get(u, timeout=10).content), urls))


def by_hand_asyncio(urls: list[str]) -> list[int]:
    async def main() -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def fetch(url: str) -> int:
                async with session.get(url) as response:
                    return len(await response.read())

            return await asyncio.gather(*(fetch(u) for u in urls))

    return asyncio.run(main())


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    ip = start_ipython()
    ip.run_line_magic("load_ext", "parmagic")
    with slow_server_process(LATENCY) as base:
        urls = [f"{base}{n}" for n in range(count)]
        ip.user_ns.update(urls=urls)
        ip.run_cell("import requests\nsession = requests.Session()")
        loop_body = (
            "sizes = []\nfor url in urls:\n"
            "    sizes.append(len(session.get(url, timeout=10).content))\n"
        )
        aio_cell = (
            "%%parallel -q -b asyncio -w {workers}\nimport aiohttp\nsizes = []\n"
            "async with aiohttp.ClientSession() as s:\n    for url in urls:\n"
            "        async with s.get(url) as r:\n            sizes.append(len(await r.read()))\n"
        )
        cases = {
            "parmagic threads": lambda: ip.run_cell(
                f"%%parallel -q -b threads -w {THREADS}\n{loop_body}"
            ),
            "by hand ThreadPoolExecutor": lambda: by_hand_threads(urls),
            "parmagic futures": lambda: ip.run_cell(
                f"%%parallel -q -b futures -w {THREADS}\n{loop_body}"
            ),
            "parmagic asyncio (default: 100 at once)": lambda: ip.run_cell(
                aio_cell.format(workers=100)
            ),
            "parmagic asyncio, all at once (as gather)": lambda: ip.run_cell(
                aio_cell.format(workers=count)
            ),
            "by hand aiohttp + gather": lambda: by_hand_asyncio(urls),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeats):
            for name, case in cases.items():
                began = time.perf_counter()
                case()
                times[name].append(time.perf_counter() - began)
    ideal_threads = -(-count // THREADS) * LATENCY
    print(
        f"{count} URLs × {LATENCY * 1000:.0f} ms, {repeats} runs each (median, min-max);"
        f" ideal: {ideal_threads:.2f} s for {THREADS} threads, {LATENCY:.2f} s for asyncio"
    )
    print("| code | median s | min-max s |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} |")
    ip.run_line_magic("unload_ext", "parmagic")


if __name__ == "__main__":
    main()
