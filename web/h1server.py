"""Our HTTP/1.1 server connections: one asyncio Protocol per TCP connection, in place of
Tornado's IOStream + HTTP1Connection + HTTPServer (ARCHITECTURE.md, "Our HTTP/1.1 server").

What a client sees is Tornado's: the same parsing (Tornado's own start-line and header
parsers), the same bare `HTTP/1.1 400 Bad Request` and close for a malformed request, the
same limits (`max_header_size`, `max_body_size`, `idle_connection_timeout`, `body_timeout`),
`Expect: 100-continue`, HTTP/1.0 keep-alive, `Connection: close`, chunked bodies and
pipelined requests answered in order. Behind it, the `HTTPServerConnectionDelegate`
(`OnionFront`, the Application) is driven through Tornado's `HTTPConnection` and
`HTTPMessageDelegate` interfaces exactly as Tornado's server drives it. The difference is
the cost per request: no IOStream futures or coroutines per read, no reader added and
removed per request, no TCP_NODELAY toggled twice per answer (asyncio sets it once), one
lazily re-armed timer per connection instead of a timeout future per read.

Not supported (the relay uses none of them): TLS, `xheaders`, `decompress_request`,
`detach()` (websockets).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from tornado.http1connection import is_transfer_encoding_chunked, parse_hex_int, parse_int
from tornado.httputil import (
    HTTPHeaders,
    HTTPInputError,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    parse_request_start_line,
)
from tornado.iostream import StreamClosedError
from tornado.log import app_log, gen_log

from web.connections import REFUSAL, Capped, ConnectionCap
from web.h1headers import parse_headers
from web.h1request import RequestConnection, RequestContext, quietly

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_CR_OR_LF = re.compile(b"\r|\n")
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 (Continue)\r\n\r\n"
#: Tornado's defaults (HTTP1ConnectionParameters, IOStream, netutil.bind_sockets).
DEFAULT_MAX_HEADER_SIZE = 65536
DEFAULT_MAX_BODY_SIZE = 100 * 1024 * 1024
_CHUNK_SIZE_LINE_MAX = 64
_CRLF = b"\r\n"
_CHUNK_SIZE_TOO_LONG = f"delimiter {_CRLF!r} not found within {_CHUNK_SIZE_LINE_MAX} bytes"
_BACKLOG = 128
#: Bytes kept from a client while its request is being answered; reading pauses beyond.
_HELD_WHILE_ANSWERING = 1024 * 1024

# What a connection is doing.
_HEADERS = 0  # waiting for a request's headers (the idle timeout runs)
_BODY = 1  # reading a body (the body timeout runs)
_ANSWERING = 2  # the request is read; its answer is not finished
_CLOSED = 3

# How a body is framed.
_FIXED = 0
_CHUNK_SIZE = 1
_CHUNK_DATA = 2
_CHUNK_END = 3
_LAST_CHUNK_END = 4


class _Quiet(Exception):
    """A delegate raised (logged already, as Tornado logs it): close the connection."""


class _Unsatisfiable(Exception):
    """A line longer than allowed (headers, a chunk size): closed without an answer, as
    Tornado's IOStream closes on an UnsatisfiableReadError."""


class H1Server(Capped):
    """The HTTP/1.1 server: `await listen(sockets)`, `stop()` (no new connections),
    `await close_all_connections()`; at most `max_connections` open (0: no cap), a connection
    beyond it gets web/connections.py's 503 REFUSAL and is closed unread."""

    def __init__(
        self,
        delegate: HTTPServerConnectionDelegate,
        *,
        idle_connection_timeout: float | None = None,
        body_timeout: float | None = None,
        max_body_size: int | None = None,
        max_header_size: int | None = None,
        max_connections: int = 0,
    ) -> None:
        self.delegate = delegate
        self.header_timeout = idle_connection_timeout or 3600.0
        self.body_timeout = body_timeout
        self.max_body_size = max_body_size if max_body_size is not None else DEFAULT_MAX_BODY_SIZE
        self.max_header_size = max_header_size or DEFAULT_MAX_HEADER_SIZE
        self.cap = ConnectionCap(max_connections)
        self.connections: set[ServerConnection] = set()
        self.servers: list[asyncio.Server] = []

    async def listen(self, sockets: Iterable[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            server = await loop.create_server(
                lambda: ServerConnection(self), sock=sock, backlog=_BACKLOG
            )
            self.servers.append(server)

    @property
    def port(self) -> int | None:
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return None

    def stop(self) -> None:
        """Stop accepting: the listening sockets are closed, open connections stay."""
        for server in self.servers:
            server.close()

    async def close_all_connections(self, grace_seconds: float = 1.0) -> None:
        """Close every connection (after what was written to it is sent, for at most
        `grace_seconds`) and wait until each has been closed."""
        for connection in list(self.connections):
            connection.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.abort()
        while self.connections:
            await asyncio.sleep(0.01)

    def on_close(self, connection: ServerConnection) -> None:
        self.cap.release()
        self.connections.discard(connection)
        self.delegate.on_close(connection)


class ServerConnection(asyncio.Protocol):
    """One client's TCP connection: its requests read one after another (a pipelined one
    waits in the buffer until the answer before it is finished), each handed to the server's
    delegate through a `RequestConnection`."""

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.context: RequestContext | None = None
        self.buffer = bytearray()
        self.state = _HEADERS
        self.request: RequestConnection | None = None
        self.delegate: HTTPMessageDelegate | None = None
        self.framing = _FIXED
        self.remaining = 0  # body bytes (fixed) or chunk bytes still to read
        self.body_size = 0
        self.blocked = False  # a delegate's awaitable is pending
        self.processing = False
        self.writing_paused = False
        self.reading_paused = False
        self.drained: list[asyncio.Future[None]] = []
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.refused = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        if not self.server.cap.admit():
            self.refused = True
            self.state = _CLOSED
            transport.write(REFUSAL)
            transport.close()
            return
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        family = sock.family if sock is not None else None
        self.context = RequestContext(transport.get_extra_info("peername"), family)
        self._expect_headers()

    def data_received(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        self.buffer += data
        if self.state != _ANSWERING and not self.blocked:
            self._process()
        self._hold_back()

    def _hold_back(self) -> None:
        """Read no more while over _HELD_WHILE_ANSWERING bytes wait in the buffer (pipelined
        requests behind an answer, or a client that does not read its answers)."""
        over = len(self.buffer) > _HELD_WHILE_ANSWERING
        transport = self.transport
        if transport is None or self.state == _CLOSED or over == self.reading_paused:
            return
        self.reading_paused = over
        if over:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close, as Tornado's IOStream does when its client closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        previous = self.state
        self.state = _CLOSED
        self._cancel_timer()
        for waiter in self.drained:
            if not waiter.done():
                waiter.set_exception(StreamClosedError())
                waiter.exception()
        self.drained = []
        request, delegate = self.request, self.delegate
        self.request = self.delegate = None
        if request is not None:
            if previous == _ANSWERING:
                request.connection_closed()
            elif delegate is not None:
                quietly(delegate.on_connection_close)
        self.server.on_close(self)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiters, self.drained = self.drained, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self.state == _HEADERS and self.request is None and self.buffer:
            self._process()

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close once what was written is sent."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if self.state != _CLOSED and transport is not None and not transport.is_closing():
            transport.write(data)

    def closed(self) -> bool:
        return self.state == _CLOSED or self.transport is None or self.transport.is_closing()

    def written(self) -> asyncio.Future[None]:
        """A future done when what was written has left our buffer (at once, unless the
        transport asked to pause writing)."""
        future: asyncio.Future[None] = self.loop.create_future()
        if self.closed():
            future.set_exception(StreamClosedError())
            future.exception()
        elif self.writing_paused:
            self.drained.append(future)
        else:
            future.set_result(None)
        return future

    # -- timeouts --------------------------------------------------------------------------

    def _set_deadline(self, seconds: float | None) -> None:
        if seconds is None:
            self.deadline = None
            return
        deadline = self.loop.time() + seconds
        self.deadline = deadline
        timer = self.timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadline = None

    def _on_timer(self) -> None:
        self.timer = None
        deadline = self.deadline
        if deadline is None or self.state == _CLOSED:
            return
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._on_timer)
            return
        if self.state == _BODY:
            gen_log.info("Timeout reading body from %s", self.context)
        self.close_now()

    def close_now(self) -> None:
        """Close (what was written is sent first; a delegate with a request is told): a
        timeout, a malformed request, a delegate's error, an answer with `Connection: close`."""
        self.deadline = None
        if self.transport is not None:
            self.transport.close()

    # -- reading requests ------------------------------------------------------------------

    def _expect_headers(self) -> None:
        self.state = _HEADERS
        self._set_deadline(self.server.header_timeout)

    def _process(self) -> None:
        """Read what the buffer holds, as far as the current request lets us."""
        if self.processing:
            return
        self.processing = True
        try:
            while not self.blocked and self.state != _CLOSED:
                if self.state == _HEADERS:
                    if self.writing_paused or not self._read_headers():
                        break
                elif self.state == _BODY:
                    if not self._read_body():
                        break
                else:
                    break
        except HTTPInputError as exc:
            self._bad_request(exc)
        except _Unsatisfiable as exc:
            gen_log.info("Unsatisfiable read, closing connection: %s", exc)
            self.close_now()
        except _Quiet:
            self.close_now()
        finally:
            self.processing = False
        self._hold_back()

    def _read_headers(self) -> bool:
        buffer = self.buffer
        if not buffer:
            return False
        limit = self.server.max_header_size
        match = _HEADER_END.search(buffer)
        if match is None:
            if len(buffer) > limit:
                raise _Unsatisfiable(f"delimiter not found within {limit} bytes")
            return False
        end = match.end()
        if end > limit:
            raise _Unsatisfiable(f"delimiter not found within {limit} bytes")
        text = buffer[:end].decode("latin1").lstrip("\r\n")
        del buffer[:end]
        eol = text.find("\n")
        start_line = parse_request_start_line(text[:eol].rstrip("\r"))
        headers = parse_headers(text, eol)
        request = RequestConnection(self, start_line, headers)
        self.request = request
        self.delegate = delegate = self.server.delegate.start_request(self, request)
        self.state = _BODY  # from here on the delegate is told if the connection closes
        self.deadline = None
        pending = _call(delegate.headers_received, start_line, headers)
        if headers.get("Expect") == "100-continue" and not request.write_finished:
            self.write(_CONTINUE)
        self._frame_body(headers)
        if pending is not None:
            self._wait_for(pending)
            return False
        return True

    def _frame_body(self, headers: HTTPHeaders) -> None:
        """As Tornado's HTTP1Connection._read_body frames a request's body."""
        content_length: int | None = None
        if "Content-Length" in headers:
            value = headers["Content-Length"]
            if "," in value:
                pieces = re.split(r",[ \t]*", value)
                if any(piece != pieces[0] for piece in pieces):
                    raise HTTPInputError(f"Multiple unequal Content-Lengths: {value!r}")
                headers["Content-Length"] = value = pieces[0]
            try:
                content_length = parse_int(value)
            except ValueError:
                raise HTTPInputError(f"Only integer Content-Length is allowed: {value}") from None
            if content_length > self._max_body_size():
                raise HTTPInputError("Content-Length too long")
        self.body_size = 0
        if is_transfer_encoding_chunked(headers):
            self.framing = _CHUNK_SIZE
        else:
            self.framing = _FIXED
            self.remaining = content_length or 0

    def _max_body_size(self) -> int:
        request = self.request
        if request is not None and request.max_body_size is not None:
            return request.max_body_size
        return self.server.max_body_size

    def _read_body(self) -> bool:
        """Hands the delegate what the buffer holds of the body; True once it is whole
        (the delegate's `finish` called) or a delegate's awaitable must be waited for."""
        buffer = self.buffer
        while True:
            framing = self.framing
            if framing in (_FIXED, _CHUNK_DATA):
                if self.remaining:
                    if not buffer:
                        return self._wait_for_body()
                    take = min(self.remaining, len(buffer))
                    chunk = bytes(buffer[:take]) if take < len(buffer) else bytes(buffer)
                    del buffer[:take]
                    self.remaining -= take
                    if self._deliver(chunk):
                        return False
                    continue
                if framing == _FIXED:
                    self._body_read()
                    return True
                self.framing = _CHUNK_END
            elif framing == _CHUNK_SIZE:
                end = buffer.find(b"\r\n", 0, _CHUNK_SIZE_LINE_MAX + 1)
                if end < 0 or end + 2 > _CHUNK_SIZE_LINE_MAX:
                    if len(buffer) > _CHUNK_SIZE_LINE_MAX or (
                        end >= 0 and end + 2 > _CHUNK_SIZE_LINE_MAX
                    ):
                        raise _Unsatisfiable(_CHUNK_SIZE_TOO_LONG)
                    return self._wait_for_body()
                line = buffer[:end].decode("latin1")
                del buffer[: end + 2]
                try:
                    size = parse_hex_int(line)
                except ValueError:
                    raise HTTPInputError("invalid chunk size") from None
                if size == 0:
                    self.framing = _LAST_CHUNK_END
                    continue
                self.body_size += size
                if self.body_size > self._max_body_size():
                    raise HTTPInputError("chunked body too large")
                self.remaining = size
                self.framing = _CHUNK_DATA
            else:  # the CRLF after a chunk, or after the last (size 0) one
                if len(buffer) < 2:
                    return self._wait_for_body()
                if buffer[:2] != b"\r\n":
                    if framing == _LAST_CHUNK_END:
                        raise HTTPInputError("improperly terminated chunked request")
                    raise HTTPInputError("improperly terminated chunk")
                del buffer[:2]
                if framing == _LAST_CHUNK_END:
                    self._body_read()
                    return True
                self.framing = _CHUNK_SIZE

    def _wait_for_body(self) -> bool:
        if self.deadline is None:
            request = self.request
            timeout = request.body_timeout if request is not None else None
            self._set_deadline(timeout if timeout is not None else self.server.body_timeout)
        return False

    def _deliver(self, chunk: bytes) -> bool:
        """The chunk to the delegate; True if its awaitable must be waited for."""
        request, delegate = self.request, self.delegate
        assert request is not None and delegate is not None
        if request.write_finished:
            return False
        pending = _call(delegate.data_received, chunk)
        if pending is None:
            return False
        self._wait_for(pending)
        return True

    def _body_read(self) -> None:
        request, delegate = self.request, self.delegate
        assert request is not None and delegate is not None
        self.deadline = None
        request.read_finished = True
        self.state = _ANSWERING
        if not request.write_finished:
            _call(delegate.finish)
        if request.write_finished and self.request is request:
            request.done()

    def _wait_for(self, pending: Awaitable[None]) -> None:
        """A delegate's method returned an awaitable: read no further until it is done."""
        self.blocked = True
        future = asyncio.ensure_future(pending)
        future.add_done_callback(self._waited)

    def _waited(self, future: asyncio.Future[None]) -> None:
        self.blocked = False
        if self.state == _CLOSED:
            return
        exc = None if future.cancelled() else future.exception()
        if isinstance(exc, HTTPInputError):
            self._bad_request(exc)
            return
        if exc is not None or future.cancelled():
            if exc is not None:
                app_log.error("Uncaught exception", exc_info=exc)
            self.close_now()
            return
        self._process()

    def _bad_request(self, exc: HTTPInputError) -> None:
        gen_log.info("Malformed HTTP message from %s: %s", self.context, exc)
        self.write(_BAD_REQUEST)
        self.close_now()

    # -- answers ---------------------------------------------------------------------------

    def answered(self, request: RequestConnection) -> None:
        """`request`'s answer is finished: close, or read the next request."""
        if self.request is not request or self.state == _CLOSED:
            return
        if request.disconnect_on_finish:
            self.close_now()
            return
        if not request.read_finished:
            return  # _body_read calls done() once the body is in
        self.request = self.delegate = None
        self._expect_headers()
        if self.reading_paused or self.buffer:
            self._process()


def _call(method: Callable[..., Any], *args: Any) -> Any:
    """A delegate's method, its errors handled as Tornado's _ExceptionLoggingContext does:
    HTTPInputError passes (a 400), anything else is logged and closes the connection."""
    try:
        return method(*args)
    except HTTPInputError:
        raise
    except Exception:  # noqa: BLE001 - logged, the connection closed: Tornado's handling
        app_log.error("Uncaught exception", exc_info=True)
        raise _Quiet from None
