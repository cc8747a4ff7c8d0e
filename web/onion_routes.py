"""The onion paths on Tornado's IOLoop, and the guard that keeps their aliases off the WSGI app.

`/loki/v2/lsrpc` and `/oxen/v4/lsrpc` are served here and only here: Flask behind Tornado's
WSGIContainer tops out near 1,100 requests/s on an empty body on this machine, below the
relay's 1,000 durable notifies/s target (ARCHITECTURE.md, "The onion fast path").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tornado.httputil import HTTPServerRequest
from tornado.web import FallbackHandler

from lsrpc.paths import is_onion_alias
from web.answers import HttpAnswer, plain, send
from web.errorlog import RateLimitedLog
from web.handlers import PlainErrorsHandler


class LsrpcHandler(PlainErrorsHandler):
    """POST /loki/v2/lsrpc or /oxen/v4/lsrpc on Tornado's IOLoop (`OnionCore.answer_v2`/`_v4`).

    Opening and sealing are CPU work of ~0.1 ms; the database write is awaited, never
    waited for, so the loop is not blocked. The core never raises (see OnionCore); if it
    ever did, PlainErrorsHandler answers a plain 500 and logs one line per kind.
    """

    SUPPORTED_METHODS = ("POST",)

    def initialize(  # type: ignore[override]
        self, answer: Callable[[bytes], Awaitable[HttpAnswer]], errors: RateLimitedLog
    ) -> None:
        super().initialize(errors)
        self._answer_body = answer

    async def post(self) -> None:
        send(self, await self._answer_body(self.request.body))


class GuardedFallbackHandler(PlainErrorsHandler, FallbackHandler):
    """Everything but the exact onion paths goes to the WSGI app, except aliases of them.

    `POST /loki/v2/%6Csrpc`, `//loki/v2/lsrpc`, `/LOKI/v2/lsrpc/` and the like miss the
    exact routes above; they are refused here, on the IOLoop, with the same plain 404 as
    any unknown path, so the (threaded) WSGI app never sees anything that looks like an
    onion request.
    """

    def initialize(  # type: ignore[override]
        self, fallback: Callable[[HTTPServerRequest], None], errors: RateLimitedLog
    ) -> None:
        PlainErrorsHandler.initialize(self, errors)
        FallbackHandler.initialize(self, fallback)

    def prepare(self) -> None:
        if is_onion_alias(self.request.path):
            send(self, plain(404, "Not Found"))
            return
        super().prepare()
