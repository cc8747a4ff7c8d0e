"""`GET /healthz` on Tornado's IOLoop, so it never waits behind the web threads.

Flask routes (statistics, metrics) run on the WSGI thread pool, and their password checks on
the statistics auth's own pool; a flood of either must not make an orchestrator's liveness
probe time out and restart a relay that is fine. The answer is the same as the Flask route's
(`stats.metrics.health`: "ok", or 503 and a one-line reason). The database probe blocks, so it
runs on one thread of its own; concurrent health requests share the probe in progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from stats.metrics import health
from web.errorlog import RateLimitedLog
from web.handlers import PlainErrorsHandler

PATH = "/healthz"


class HealthProbe:
    def __init__(self, engine: Engine, dispatcher_alive: Callable[[], bool] | None) -> None:
        self._engine = engine
        self._dispatcher_alive = dispatcher_alive
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="healthz")
        self._running: asyncio.Future[tuple[int, str]] | None = None

    async def check(self) -> tuple[int, str]:
        """(200, "ok") or (503, reason); joins the probe already running, if any."""
        if self._running is None or self._running.done():
            self._running = asyncio.wrap_future(
                self._executor.submit(health, self._engine, self._dispatcher_alive)
            )
        return await asyncio.shield(self._running)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class HealthHandler(PlainErrorsHandler):
    SUPPORTED_METHODS = ("GET", "HEAD")

    def initialize(  # type: ignore[override]
        self, probe: HealthProbe, errors: RateLimitedLog
    ) -> None:
        super().initialize(errors)
        self._probe = probe

    async def get(self) -> None:
        status, reason = await self._probe.check()
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{reason}\n")

    async def head(self) -> None:
        await self.get()  # Tornado sends the headers (and Content-Length) without the body
