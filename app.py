"""`create_app(parts) -> Flask`: the WSGI application (statistics, /stats, metrics), and the
onion core (`create_onion_core`), both built from parts made in relay.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask, Response
from sqlalchemy import Engine
from werkzeug.exceptions import HTTPException

from handlers.endpoints import HandlerContext, HandlerResult, handle
from handlers.runner import WriteRunner
from lsrpc.call import ClientCall
from lsrpc.keys import ServerKeypair
from stats.auth import StatsAuth
from stats.dashboard import create_dashboard_blueprint
from stats.healthz import create_health_blueprint
from stats.metrics import RelayMetrics, create_metrics_blueprint
from stats.query import create_stats_blueprint
from web.answers import plain, to_flask
from web.errorlog import RateLimitedLog
from web.onion import OnionCore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppParts:
    keypair: ServerKeypair
    handlers: HandlerContext
    runner: WriteRunner
    max_body_bytes: int
    # Statistics, metrics and health (stats/). Without an engine, /healthz only says "ok".
    engine: Engine | None = None
    stats_auth: StatsAuth = field(default_factory=lambda: StatsAuth(None))
    metrics: RelayMetrics | None = None
    metrics_public: bool = False
    dispatcher_alive: Callable[[], bool] | None = None
    clock_ms: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    # One rate-limited log of unexpected errors, shared by every route of the process.
    errors: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))
    # (depth, age in s of the oldest) of the delivery queue now, for the /stats page.
    queue_stats: Callable[[], tuple[int, float]] | None = None


def create_onion_core(parts: AppParts) -> OnionCore:
    """The onion endpoint's core, served on the IOLoop by web/onion_routes.py (never by Flask)."""

    def route(call: ClientCall) -> HandlerResult:
        return handle(parts.handlers, call.endpoint, call.params)

    return OnionCore(parts.keypair, route, parts.runner, parts.max_body_bytes, errors=parts.errors)


def create_app(parts: AppParts) -> Flask:
    """Statistics, the /stats page, /metrics (and /healthz without an engine). The onion
    paths are not here: a running relay serves them on the IOLoop (web/onion_routes.py)."""
    app = Flask("pn_relay")
    app.config["MAX_CONTENT_LENGTH"] = parts.max_body_bytes

    if parts.engine is not None:
        app.register_blueprint(
            create_stats_blueprint(parts.engine, parts.stats_auth, parts.clock_ms)
        )
        app.register_blueprint(
            create_dashboard_blueprint(
                parts.engine, parts.stats_auth, parts.clock_ms, queue_stats=parts.queue_stats
            )
        )
        app.register_blueprint(create_health_blueprint(parts.engine, parts.dispatcher_alive))
        app.register_blueprint(
            create_metrics_blueprint(
                parts.metrics, auth=None if parts.metrics_public else parts.stats_auth
            )
        )
    else:

        @app.get("/healthz")
        def healthz() -> Response:
            return to_flask(plain(200, "ok"))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # 404, 405, 413 ...: a short plain answer, no HTML page.
        return to_flask(plain(exc.code or 400, exc.name))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # Never a traceback to the client; the log names the exception type and where it was
        # raised only (its message could quote request data), once per kind and minute.
        parts.errors.unexpected(exc, "answering a request")
        return to_flask(plain(500, "Internal error"))

    return app
