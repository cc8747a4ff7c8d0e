"""`create_app(parts) -> Flask`: the WSGI application, built from parts made in server.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from handlers.endpoints import HandlerContext, handle
from handlers.reply import Reply
from lsrpc.keys import ServerKeypair
from lsrpc.route import create_lsrpc_blueprint, plain_error
from lsrpc.v2 import ClientCall

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppParts:
    keypair: ServerKeypair
    handlers: HandlerContext
    max_body_bytes: int


def create_app(parts: AppParts) -> Flask:
    app = Flask("pn_relay")
    app.config["MAX_CONTENT_LENGTH"] = parts.max_body_bytes

    def answer(call: ClientCall) -> Reply:
        return handle(parts.handlers, call.endpoint, call.params)

    app.register_blueprint(create_lsrpc_blueprint(parts.keypair, answer))

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
