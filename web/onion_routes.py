"""The onion paths on Tornado's IOLoop, and the guard that keeps their aliases off the WSGI app.

`/loki/v2/lsrpc` and `/oxen/v4/lsrpc` are answered by `OnionFront`, a bare Tornado
`HTTPServerConnectionDelegate` placed in front of the `Application`: it decides from the start
line (method and path) whether a request is its own, and hands every other request to the
Application, unchanged. A RequestHandler costs ~130 us more CPU per request than this on
this machine (ARCHITECTURE.md, "The onion fast path"; bench/README.md); Flask behind
Tornado's WSGIContainer tops out near 1,100 requests/s on an empty body, below the relay's
1,000 durable notifies/s target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    HTTPServerRequest,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.web import FallbackHandler

from lsrpc.paths import is_onion_alias
from web.answers import HttpAnswer, HttpDate, plain, send, write_to
from web.errorlog import RateLimitedLog
from web.handlers import PlainErrorsHandler
from web.onion import TOO_LARGE

Answer = Callable[[bytes], Awaitable[HttpAnswer]]
#: Told of every onion answer: (method, path, status, seconds since its headers arrived).
Answered = Callable[[str, str, int, float], None]

METHOD_NOT_ALLOWED = plain(405, "Method Not Allowed")
SERVER_ERROR = plain(500, "Internal Server Error")

#: Host headers (with the HTTP version) already found valid; cleared when it grows past this.
_VALID_HOSTS_KEPT = 64


class OnionFront(HTTPServerConnectionDelegate):
    """POST /loki/v2/lsrpc or /oxen/v4/lsrpc answered here (`OnionCore.answer_v2`/`_v4`,
    through `routes`); every other request goes to `fallback` (the Application).

    What a RequestHandler did for these paths and clients see, kept: a plain 405 for any
    other method (no body for HEAD), a plain 413 past `max_body_bytes` (the rest of such a
    body is read and dropped, not held), a plain 500 and one rate-limited log line if an
    answer ever raised (the core never does), Tornado's bare 400 for a missing, invalid or
    repeated Host header, the Date header and no Server header. Keep-alive, `Connection:
    close`, HTTP/1.0, chunked bodies, `Expect: 100-continue`, the body size and timeouts
    are the HTTP connection's, as for every other path.
    """

    def __init__(
        self,
        routes: Mapping[str, Answer],
        fallback: HTTPServerConnectionDelegate,
        *,
        max_body_bytes: int,
        errors: RateLimitedLog,
        answered: Answered | None = None,
    ) -> None:
        self.routes = dict(routes)
        self.fallback = fallback
        self.max_body_bytes = max_body_bytes
        self.errors = errors
        self.answered = answered
        self.date = HttpDate()
        self._valid_hosts: set[tuple[str, str | None]] = set()

    def start_request(
        self, server_conn: object, request_conn: HTTPConnection
    ) -> HTTPMessageDelegate:
        return _Exchange(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.fallback.on_close(server_conn)

    def check_host(self, start_line: RequestStartLine, headers: HTTPHeaders) -> None:
        """Raises HTTPInputError (Tornado answers a bare 400 and closes) where the
        Application would have: Tornado's own checks of the Host header and the query
        string, as it makes them building an HTTPServerRequest (~9 us, so a valid Host is
        remembered; a request with a query string is checked in full each time)."""
        key = (start_line.version, headers.get("Host"))
        if key in self._valid_hosts and "?" not in start_line.path:
            return
        HTTPServerRequest(start_line=start_line, headers=headers)
        if "?" not in start_line.path:
            if len(self._valid_hosts) >= _VALID_HOSTS_KEPT:
                self._valid_hosts.clear()
            self._valid_hosts.add(key)


class _Exchange(HTTPMessageDelegate):
    """One request of a connection: once its start line is in, either an `OnionRequest` or
    the Application's own delegate takes it, and is handed every later event."""

    def __init__(
        self, front: OnionFront, server_conn: object, request_conn: HTTPConnection
    ) -> None:
        self._front = front
        self._server_conn = server_conn
        self._request_conn = request_conn
        self._target: HTTPMessageDelegate | None = None

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        request_line = cast(RequestStartLine, start_line)
        front = self._front
        answer = front.routes.get(request_line.path.partition("?")[0])
        if answer is None:
            self._target = front.fallback.start_request(self._server_conn, self._request_conn)
        else:
            front.check_host(request_line, headers)
            self._target = OnionRequest(front, self._request_conn, request_line, answer)
        return self._target.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        assert self._target is not None
        return self._target.data_received(chunk)

    def finish(self) -> None:
        assert self._target is not None
        self._target.finish()

    def on_connection_close(self) -> None:
        if self._target is not None:
            self._target.on_connection_close()


class OnionRequest(HTTPMessageDelegate):
    """One request to an onion path: its body collected, answered, written."""

    def __init__(
        self,
        front: OnionFront,
        connection: HTTPConnection,
        start_line: RequestStartLine,
        answer: Answer,
    ) -> None:
        self._front = front
        self._connection = connection
        self._method = start_line.method
        self._path = start_line.path.partition("?")[0]
        self._answer = answer
        self._posted = start_line.method == "POST"
        self._chunks: list[bytes] = []
        self._size = 0
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._posted and self._size <= self._front.max_body_bytes:
            self._chunks.append(chunk)

    def finish(self) -> None:
        if not self._posted:
            self._send(METHOD_NOT_ALLOWED)
        elif self._size > self._front.max_body_bytes:
            self._send(TOO_LARGE)
        else:
            body = b"".join(self._chunks)
            self._chunks = []
            self._task = asyncio.ensure_future(self._respond(body))

    def on_connection_close(self) -> None:
        self._chunks = []  # the client left mid-body: nothing to answer

    async def _respond(self, body: bytes) -> None:
        try:
            answer = await self._answer(body)
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            self._front.errors.unexpected(exc, "answering an onion path")
            answer = SERVER_ERROR
        try:
            self._send(answer)
        except Exception as exc:  # noqa: BLE001 - a task's error would be a traceback
            self._front.errors.unexpected(exc, "writing an onion answer")

    def _send(self, answer: HttpAnswer) -> None:
        front = self._front
        write_to(self._connection, answer, front.date(), head=self._method == "HEAD")
        if front.answered is not None:
            seconds = time.monotonic() - self._started
            front.answered(self._method, self._path, answer.status, seconds)


class GuardedFallbackHandler(PlainErrorsHandler, FallbackHandler):
    """Everything but the exact onion paths goes to the WSGI app, except aliases of them.

    `POST /loki/v2/%6Csrpc`, `//loki/v2/lsrpc`, `/LOKI/v2/lsrpc/` and the like miss the
    exact paths of `OnionFront`; they are refused here, on the IOLoop, with the same plain
    404 as any unknown path, so the (threaded) WSGI app never sees anything that looks like
    an onion request.
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
