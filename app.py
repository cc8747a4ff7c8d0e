"""`create_app(parts) -> Flask`: the WSGI application, built from parts made in server.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from handlers.endpoints import HandlerContext, Outcome, handle
from handlers.runner import OutcomeRunner
from lsrpc.endpoint import OnionEndpoint
from lsrpc.keys import ServerKeypair
from lsrpc.route import create_lsrpc_blueprint
from lsrpc.v2 import ClientCall

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppParts:
    keypair: ServerKeypair
    handlers: HandlerContext
    runner: OutcomeRunner
    max_body_bytes: int


def plain_error(status: int, reason: str) -> Response:
    return Response(reason + "\n", status=status, mimetype="text/plain")


def create_onion_endpoint(parts: AppParts) -> OnionEndpoint:
    def route(call: ClientCall) -> Outcome:
        return handle(parts.handlers, call.endpoint, call.params)

    return OnionEndpoint(parts.keypair, route, parts.runner, parts.max_body_bytes)


def create_app(parts: AppParts, onion: OnionEndpoint | None = None) -> Flask:
    app = Flask("pn_relay")
    app.config["MAX_CONTENT_LENGTH"] = parts.max_body_bytes
    app.register_blueprint(create_lsrpc_blueprint(onion or create_onion_endpoint(parts)))

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # 404, 405, 413 ...: a short plain answer, no HTML page.
        return plain_error(exc.code or 400, exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # Never a traceback to the client; the log names the exception type only, because
        # its message could quote request data.
        log.error("unexpected %s while answering a request", type(exc).__name__)
        return plain_error(500, "Internal error")

    return app
