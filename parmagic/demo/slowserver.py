"""A slow web site on 127.0.0.1, for demos and tests that must not touch the internet.

Every request waits ``latency`` seconds before its answer, like a distant server; the server
records when each request started and ended, so a test can check that requests overlapped
(rather than trusting a wall clock). It runs an aiohttp application on a thread of its own.

    with SlowServer(latency=0.5) as site:
        site.url("/page/3")     # 'http://127.0.0.1:PORT/page/3'
"""

from __future__ import annotations

import asyncio
import threading
import time


class SlowServer:
    def __init__(self, latency: float = 0.05, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("SlowServer listens on the loopback interface only")
        self.latency = latency
        self.host = host
        self.port: int | None = None
        self.windows: list[tuple[float, float]] = []  # (start, end) per request, monotonic
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def _page(self, request):
        from aiohttp import web

        began = time.monotonic()
        await asyncio.sleep(self.latency)
        self.windows.append((began, time.monotonic()))
        name = request.match_info.get("name", "index")
        return web.Response(text=f"<html><title>{name}</title><body>page {name}</body></html>")

    def _serve(self) -> None:
        from aiohttp import web

        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/page/{name}", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> SlowServer:
        self._thread = threading.Thread(target=self._serve, name="slow-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def max_overlap(self) -> int:
        """How many requests were being served at the same moment, at most."""
        events = sorted([(s, 1) for s, _ in self.windows] + [(e, -1) for _, e in self.windows])
        current = peak = 0
        for _, step in events:
            current += step
            peak = max(peak, current)
        return peak

    def __enter__(self) -> SlowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
