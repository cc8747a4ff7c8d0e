"""Adapters that put the OnionEndpoint on the web: a Flask blueprint and a Tornado handler.

The Flask blueprint makes `create_app()` a complete WSGI application on its own. `server.py`
serves the same paths with the Tornado handler in front, because Flask behind Tornado's
WSGIContainer tops out near 1,100 requests/s on an empty body on this machine, below the
relay's 1,000 durable notifies/s target (ARCHITECTURE.md, "The onion fast path").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from flask import Blueprint, Response, request
from tornado.web import RequestHandler

from lsrpc.endpoint import V2_PATH, V4_PATH, HttpAnswer, OnionEndpoint


def create_lsrpc_blueprint(endpoint: OnionEndpoint) -> Blueprint:
    blueprint = Blueprint("lsrpc", __name__)

    def respond(answer: HttpAnswer) -> Response:
        return Response(answer.body, status=answer.status, content_type=answer.content_type)

    @blueprint.post(V2_PATH)
    def lsrpc_v2() -> Response:
        return respond(endpoint.answer_v2(request.get_data(cache=False)))

    @blueprint.post(V4_PATH)
    def lsrpc_v4() -> Response:
        return respond(endpoint.answer_v4(request.get_data(cache=False)))

    return blueprint


class LsrpcHandler(RequestHandler):
    """POST /loki/v2/lsrpc and /oxen/v4/lsrpc on Tornado's IOLoop.

    Opening and sealing are CPU work of ~0.1 ms; the database write is awaited, never
    waited for, so the loop is not blocked.
    """

    SUPPORTED_METHODS = ("POST",)

    def initialize(self, answer: Callable[[bytes], Awaitable[HttpAnswer]]) -> None:
        self._answer_body = answer

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    async def post(self) -> None:
        answer = await self._answer_body(self.request.body)
        self.set_status(answer.status)
        self.set_header("Content-Type", answer.content_type)
        self.finish(answer.body)

    def write_error(self, status_code: int, **kwargs: object) -> None:
        # Tornado's own errors (405, a body it could not read): short and plain, no trace.
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"{self._reason}\n")
