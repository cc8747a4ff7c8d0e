"""Adapters that put the OnionEndpoint on the web: a Flask blueprint and a Tornado handler.

The Flask blueprint makes `create_app()` a complete WSGI application on its own. `server.py`
serves the same paths with the Tornado handler in front, because Flask behind Tornado's
WSGIContainer tops out near 1,100 requests/s on an empty body on this machine, below the
relay's 1,000 durable notifies/s target (ARCHITECTURE.md, "The onion fast path").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from flask import Blueprint, Response, request
from tornado.httputil import HTTPServerRequest
from tornado.web import FallbackHandler

from lsrpc.endpoint import HttpAnswer, OnionEndpoint
from lsrpc.paths import V2_PATH, V4_PATH, is_onion_alias
from web.errorlog import RateLimitedLog
from web.handlers import PlainErrorsHandler

ONION_BLUEPRINT = "lsrpc"


def create_lsrpc_blueprint(endpoint: OnionEndpoint) -> Blueprint:
    blueprint = Blueprint(ONION_BLUEPRINT, __name__)

    def respond(answer: HttpAnswer) -> Response:
        return Response(answer.body, status=answer.status, content_type=answer.content_type)

    @blueprint.post(V2_PATH)
    def lsrpc_v2() -> Response:
        return respond(endpoint.answer_v2(request.get_data(cache=False)))

    @blueprint.post(V4_PATH)
    def lsrpc_v4() -> Response:
        return respond(endpoint.answer_v4(request.get_data(cache=False)))

    return blueprint


class LsrpcHandler(PlainErrorsHandler):
    """POST /loki/v2/lsrpc and /oxen/v4/lsrpc on Tornado's IOLoop.

    Opening and sealing are CPU work of ~0.1 ms; the database write is awaited, never
    waited for, so the loop is not blocked. The endpoint never raises (see OnionEndpoint);
    if it ever did, PlainErrorsHandler answers a plain 500 and logs one line per kind.
    """

    SUPPORTED_METHODS = ("POST",)

    def initialize(  # type: ignore[override]
        self, answer: Callable[[bytes], Awaitable[HttpAnswer]], errors: RateLimitedLog
    ) -> None:
        super().initialize(errors)
        self._answer_body = answer

    async def post(self) -> None:
        answer = await self._answer_body(self.request.body)
        self.set_status(answer.status)
        self.set_header("Content-Type", answer.content_type)
        self.finish(answer.body)


class GuardedFallbackHandler(PlainErrorsHandler, FallbackHandler):
    """Everything but the exact onion paths goes to the WSGI app, except aliases of them.

    `POST /loki/v2/%6Csrpc`, `//loki/v2/lsrpc`, `/LOKI/v2/lsrpc/` and the like miss the fast
    path's exact routes; the WSGI app would unescape or merge some of them into its own
    (blocking) onion route and hold a web thread for the whole write. They are refused here,
    on the IOLoop, with the same plain 404 as any unknown path.
    """

    def initialize(  # type: ignore[override]
        self, fallback: Callable[[HTTPServerRequest], None], errors: RateLimitedLog
    ) -> None:
        PlainErrorsHandler.initialize(self, errors)
        FallbackHandler.initialize(self, fallback)

    def prepare(self) -> None:
        if is_onion_alias(self.request.path):
            self.set_status(404)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish("Not Found\n")
            return
        super().prepare()
