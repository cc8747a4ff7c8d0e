"""Every short answer of the HTTP layer, whichever framework sends it: one value, two adapters.

`plain(status, reason)` is a one-line `text/plain` answer (the onion layer's 400/413/500, the
unknown paths, /stats and /metrics refusals); `json_error(status, message)` is the statistics
endpoint's `{"code":1,"message":...}`. `to_flask`, `send` and `write_to` put an `HttpAnswer`
on the wire through Flask, a Tornado handler or a bare Tornado HTTP connection (the onion
paths, web/onion_routes.py), so the bytes are the same whichever carries them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flask import Response
from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    ResponseStartLine,
    format_timestamp,
)
from tornado.web import RequestHandler

from web.h1request import RequestConnection, reason_phrase

PLAIN = "text/plain; charset=utf-8"
JSON = "application/json"

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    content_type: str
    body: bytes
    headers: Headers = ()


def plain(status: int, reason: str, headers: Sequence[tuple[str, str]] = ()) -> HttpAnswer:
    return HttpAnswer(status, PLAIN, reason.encode() + b"\n", tuple(headers))


def json_error(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> HttpAnswer:
    body = json.dumps({"code": 1, "message": message}, separators=(",", ":")).encode()
    return HttpAnswer(status, JSON, body, tuple(headers))


def to_flask(answer: HttpAnswer) -> Response:
    return Response(
        answer.body,
        status=answer.status,
        content_type=answer.content_type,
        headers=list(answer.headers),
    )


def send(handler: RequestHandler, answer: HttpAnswer) -> None:
    if handler.get_status() != answer.status:  # keep a reason phrase Tornado already set
        handler.set_status(answer.status)
    handler.set_header("Content-Type", answer.content_type)
    for name, value in answer.headers:
        handler.set_header(name, value)
    handler.finish(answer.body)


def write_to(connection: HTTPConnection, answer: HttpAnswer, date: str, *, head: bool) -> None:
    """`answer` on a Tornado HTTP connection, with the headers `send` gives it through a
    RequestHandler (Content-Type, Date, its own, Content-Length; no Server), and no body
    for a HEAD request. Tornado's connection adds `Connection: close`/`Keep-Alive` itself.
    On our own server's connection the same bytes are formatted in one go (`write_answer`)."""
    if isinstance(connection, RequestConnection) and connection.write_answer(
        answer.status, answer.content_type, date, answer.headers, answer.body, head=head
    ):
        return
    write_through_headers(connection, answer, date, head=head)


def write_through_headers(
    connection: HTTPConnection, answer: HttpAnswer, date: str, *, head: bool
) -> None:
    """`write_to` through Tornado's HTTPHeaders and `write_headers`, as any connection takes
    it (and bench/h1_micro.py measures against `write_answer`)."""
    headers = HTTPHeaders()
    headers["Content-Type"] = answer.content_type
    headers["Date"] = date
    for name, value in answer.headers:
        headers[name] = value
    headers["Content-Length"] = str(len(answer.body))
    start_line = ResponseStartLine("HTTP/1.1", answer.status, reason_phrase(answer.status))
    connection.write_headers(start_line, headers, None if head else answer.body)
    connection.finish()


class HttpDate:
    """The Date header's value now, formatted once a second (formatting costs ~5 us)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._text = ""

    def __call__(self) -> str:
        second = int(self._clock())
        if second != self._second:
            self._second = second
            self._text = format_timestamp(second)
        return self._text
