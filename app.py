"""`create_app(parts) -> Flask`: the WSGI application, built from parts made in relay.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response
from sqlalchemy import Engine
from werkzeug.exceptions import HTTPException

from handlers.endpoints import HandlerContext, Outcome, handle
from handlers.runner import OutcomeRunner
from lsrpc.endpoint import OnionEndpoint, plain
from lsrpc.keys import ServerKeypair
from lsrpc.route import ONION_BLUEPRINT, create_lsrpc_blueprint
from lsrpc.v2 import ClientCall
from stats.auth import StatsAuth
from stats.dashboard import create_dashboard_blueprint
from stats.endpoint import create_stats_blueprint
from stats.healthz import create_health_blueprint
from stats.metrics import RelayMetrics, create_metrics_blueprint
from web.errorlog import RateLimitedLog

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class AppParts:
    keypair: ServerKeypair
    handlers: HandlerContext
    runner: OutcomeRunner
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


def plain_error(status: int, reason: str) -> Response:
    answer = plain(status, reason)  # the same short plain answer as the onion layer's
    return Response(answer.body, status=answer.status, content_type=answer.content_type)


def create_onion_endpoint(parts: AppParts) -> OnionEndpoint:
    def route(call: ClientCall) -> Outcome:
        return handle(parts.handlers, call.endpoint, call.params)

    return OnionEndpoint(
        parts.keypair, route, parts.runner, parts.max_body_bytes, errors=parts.errors
    )


def create_app(parts: AppParts, onion: OnionEndpoint | None = None) -> Flask:
    app = Flask("pn_relay")
    app.config["MAX_CONTENT_LENGTH"] = parts.max_body_bytes
    app.register_blueprint(create_lsrpc_blueprint(onion or create_onion_endpoint(parts)))

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
            return Response("ok\n", mimetype="text/plain")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # 404, 405, 413 ...: a short plain answer, no HTML page.
        return plain_error(exc.code or 400, exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # Never a traceback to the client; the log names the exception type and where it was
        # raised only (its message could quote request data), once per kind and minute.
        parts.errors.unexpected(exc, "answering a request")
        return plain_error(500, "Internal error")

    return app


def without_onion_routes(app: Flask) -> WSGIApp:
    """`app` as a WSGI callable that answers 404 to whatever it would route to its onion
    blueprint: in a running relay the onion paths are served on the IOLoop
    (lsrpc/route.py), and an alias reaching this (blocking) route would hold a web thread
    for the whole database write. Decided by the app's own URL map, so no spelling that
    Flask would route there (escaped, merged slashes, an absolute URI) gets through."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            endpoint, _ = app.url_map.bind_to_environ(environ).match()
        except HTTPException:  # 404, 405, a redirect: the app answers those itself
            endpoint = ""
        except Exception:  # noqa: BLE001 - unroutable: Flask's own handlers answer it
            endpoint = ""
        if isinstance(endpoint, str) and endpoint.startswith(f"{ONION_BLUEPRINT}."):
            response: Iterable[bytes] = plain_error(404, "Not Found")(environ, start_response)
            return response
        return app.wsgi_app(environ, start_response)

    return guarded
