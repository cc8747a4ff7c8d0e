"""One request's side of our HTTP/1.1 server connection (web/h1server.py), as Tornado's
HTTP1Connection gives it to a delegate: `write_headers`, `write`, `finish`,
`set_close_callback` and the `context` (`remote_ip`, `protocol`) HTTPServerRequest reads. The
answer's framing (Content-Length or chunked, `Connection: close` / `Keep-Alive`, no body for
HEAD) is Tornado's. `write_answer` writes a whole short answer (web/answers.py `write_to`)
with the bytes `write_headers` + `finish` would write, formatted in one go."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable, Sequence
from http.client import responses
from typing import TYPE_CHECKING, Any, cast

from tornado.http1connection import is_transfer_encoding_chunked, parse_int
from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPOutputError,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.log import app_log

if TYPE_CHECKING:
    from web.h1server import ServerConnection

_CR_OR_LF = re.compile(b"\r|\n")
#: (status, content type) -> the answer's first bytes, up to the Date header's value.
_ANSWER_STARTS: dict[tuple[int, str], bytes] = {}
_ANSWER_STARTS_KEPT = 256
#: The headers `write_answer` writes itself (an answer's own header with one of these names
#: replaces it in place in `write_headers`, so such an answer goes that way).
_ANSWER_HEADERS = frozenset({"Content-Type", "Date", "Content-Length", "Connection"})
_CONNECTION_CLOSE = b"Connection: close\r\n"
_CONNECTION_KEEP_ALIVE = b"Connection: Keep-Alive\r\n"


def reason_phrase(status: int) -> str:
    return responses.get(status, "Unknown")


class RequestContext:
    """`connection.context` for HTTPServerRequest: `remote_ip` and `protocol`, as Tornado's
    _HTTPRequestContext gives them (no xheaders)."""

    __slots__ = ("address", "address_family", "protocol", "remote_ip")

    def __init__(self, address: Any, family: int | None) -> None:
        self.address = address
        self.address_family = family
        if family in (socket.AF_INET, socket.AF_INET6) and address is not None:
            self.remote_ip: str = address[0]
        else:
            self.remote_ip = "0.0.0.0"  # noqa: S104 - Tornado's stand-in, not a bind
        self.protocol = "http"

    def __str__(self) -> str:
        if self.address_family in (socket.AF_INET, socket.AF_INET6):
            return self.remote_ip
        if isinstance(self.address, bytes):
            return self.address.decode("latin1")
        return str(self.address)


class RequestConnection(HTTPConnection):
    """One request's side of a connection, as Tornado's HTTP1Connection (server side) gives
    it to a delegate: `write_headers`, `write`, `finish`, `set_close_callback`, `context`."""

    def __init__(
        self, connection: ServerConnection, start_line: RequestStartLine, headers: HTTPHeaders
    ) -> None:
        self.connection = connection
        self.context = connection.context
        self.start_line = start_line
        self.request_headers = headers
        self.disconnect_on_finish = not _can_keep_alive(start_line, headers)
        self.write_finished = False
        self.read_finished = False
        self.chunking_output = False
        self.expected_remaining: int | None = None
        self.close_callback: Callable[[], None] | None = None
        self.max_body_size: int | None = None
        self.body_timeout: float | None = None

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self.close_callback = callback

    def set_max_body_size(self, max_body_size: int) -> None:
        self.max_body_size = max_body_size

    def set_body_timeout(self, timeout: float) -> None:
        self.body_timeout = timeout

    def connection_closed(self) -> None:
        callback, self.close_callback = self.close_callback, None
        if callback is not None:
            quietly(callback)

    def write_headers(
        self,
        start_line: RequestStartLine | ResponseStartLine,
        headers: HTTPHeaders,
        chunk: bytes | None = None,
    ) -> asyncio.Future[None]:
        answer = cast(ResponseStartLine, start_line)
        request = self.start_line
        lines = [b"HTTP/1.1 %d %s" % (answer.code, answer.reason.encode())]
        self.chunking_output = (
            request.version == "HTTP/1.1"
            and request.method != "HEAD"
            and answer.code not in (204, 304)
            and (answer.code < 100 or answer.code >= 200)
            and "Content-Length" not in headers
        )
        if request.version == "HTTP/1.1" and self.disconnect_on_finish:
            headers["Connection"] = "close"
        if (
            request.version == "HTTP/1.0"
            and self.request_headers.get("Connection", "").lower() == "keep-alive"
        ):
            headers["Connection"] = "Keep-Alive"
        if self.chunking_output:
            headers["Transfer-Encoding"] = "chunked"
        if request.method == "HEAD" or answer.code == 304:
            self.expected_remaining = 0
        elif "Content-Length" in headers:
            self.expected_remaining = parse_int(headers["Content-Length"])
        else:
            self.expected_remaining = None
        lines.extend(f"{name}: {value}".encode("latin1") for name, value in headers.get_all())
        for line in lines:
            if _CR_OR_LF.search(line):
                raise ValueError(f"Illegal characters (CR or LF) in header: {line!r}")
        connection = self.connection
        if not connection.closed():
            data = b"\r\n".join(lines) + b"\r\n\r\n"
            if chunk:
                data += self._format_chunk(chunk)
            connection.write(data)
        return connection.written()

    def write_answer(
        self,
        status: int,
        content_type: str,
        date: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        head: bool,
    ) -> bool:
        """A whole answer, finished: the status line, `Content-Type`, `Date`, `headers`,
        `Content-Length`, `Connection` as `write_headers` gives it, then `body` (not for a
        HEAD request). The same bytes as `write_headers` with an HTTPHeaders of them and
        `finish`, formatted without one. False, nothing done, for what this does not
        format (a 304, `head` not the request's method, a header with a CR, LF or
        non-latin-1 character or named as one of ours or twice): `write_headers` writes
        that one, or raises its error."""
        request = self.start_line
        if status == 304 or head != (request.method == "HEAD"):
            return False
        start = _ANSWER_STARTS.get((status, content_type))
        if start is None:
            start = _answer_start(status, content_type)
            if start is None:
                return False
        if "\r" in date or "\n" in date:
            return False
        try:
            date_bytes = date.encode("latin1")
        except UnicodeEncodeError:
            return False
        own = _header_lines(headers) if headers else b""
        if own is None:
            return False
        version = request.version
        if version == "HTTP/1.1":
            connection_line = _CONNECTION_CLOSE if self.disconnect_on_finish else b""
        elif (
            version == "HTTP/1.0"
            and self.request_headers.get("Connection", "").lower() == "keep-alive"
        ):
            connection_line = _CONNECTION_KEEP_ALIVE
        else:
            connection_line = b""
        self.chunking_output = False
        self.expected_remaining = 0
        connection = self.connection
        if not connection.closed():
            connection.write(
                b"%b%b\r\n%bContent-Length: %d\r\n%b\r\n%b"
                % (start, date_bytes, own, len(body), connection_line, b"" if head else body)
            )
        self.finish()
        return True

    def _format_chunk(self, chunk: bytes) -> bytes:
        if self.expected_remaining is not None:
            self.expected_remaining -= len(chunk)
            if self.expected_remaining < 0:
                self.connection.abort()
                raise HTTPOutputError("Tried to write more data than Content-Length")
        if self.chunking_output and chunk:
            return b"%x\r\n%s\r\n" % (len(chunk), chunk)
        return chunk

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        connection = self.connection
        if not connection.closed():
            connection.write(self._format_chunk(chunk))
        return connection.written()

    def finish(self) -> None:
        connection = self.connection
        remaining = self.expected_remaining
        if remaining is not None and remaining != 0 and not connection.closed():
            connection.abort()
            raise HTTPOutputError(f"Tried to write {remaining} bytes less than Content-Length")
        if self.chunking_output and not connection.closed():
            connection.write(b"0\r\n\r\n")
        self.write_finished = True
        self.close_callback = None
        if not self.read_finished:
            # Answered before the body was read: the rest of it is not read, the
            # connection closes once the answer is sent (as Tornado does).
            self.disconnect_on_finish = True
        connection.answered(self)

    def done(self) -> None:
        self.connection.answered(self)


def _answer_start(status: int, content_type: str) -> bytes | None:
    """b"HTTP/1.1 200 OK\\r\\nContent-Type: ...\\r\\nDate: ", kept for the next answer; None
    if the content type has a CR, LF or a character beyond latin-1."""
    try:
        content_type_line = f"Content-Type: {content_type}".encode("latin1")
    except UnicodeEncodeError:
        return None
    if _CR_OR_LF.search(content_type_line):
        return None
    status_line = b"HTTP/1.1 %d %s" % (status, reason_phrase(status).encode())
    start = b"%b\r\n%b\r\nDate: " % (status_line, content_type_line)
    if len(_ANSWER_STARTS) < _ANSWER_STARTS_KEPT:
        _ANSWER_STARTS[status, content_type] = start
    return start


def _header_lines(headers: Sequence[tuple[str, str]]) -> bytes | None:
    """An answer's own headers as lines (names in Http-Header-Case, as HTTPHeaders keeps
    them); None if one has a CR, LF or a character beyond latin-1, or a name twice or one
    of `_ANSWER_HEADERS`."""
    lines = []
    names = set()
    for given_name, value in headers:
        name = "-".join([word.capitalize() for word in given_name.split("-")])
        if name in _ANSWER_HEADERS or name in names:
            return None
        names.add(name)
        try:
            line = f"{name}: {value}\r\n".encode("latin1")
        except UnicodeEncodeError:
            return None
        if _CR_OR_LF.search(line, 0, len(line) - 2):
            return None
        lines.append(line)
    return b"".join(lines)


def _can_keep_alive(start_line: RequestStartLine, headers: HTTPHeaders) -> bool:
    connection_header = headers.get("Connection")
    if connection_header is not None:
        connection_header = connection_header.lower()
    if start_line.version == "HTTP/1.1":
        return connection_header != "close"
    if (
        "Content-Length" in headers
        or is_transfer_encoding_chunked(headers)
        or start_line.method in ("HEAD", "GET")
    ):
        return connection_header == "keep-alive"
    return False


def quietly(method: Callable[[], Any]) -> None:
    """`method()`, an error logged as Tornado logs a delegate's."""
    try:
        method()
    except Exception:  # noqa: BLE001 - logged, as Tornado logs a delegate's error
        app_log.error("Uncaught exception", exc_info=True)
