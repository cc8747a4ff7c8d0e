"""Every short answer of the HTTP layer, whichever framework sends it: one value, two adapters.

`plain(status, reason)` is a one-line `text/plain` answer (the onion layer's 400/413/500, the
unknown paths, /stats and /metrics refusals); `json_error(status, message)` is the statistics
endpoint's `{"code":1,"message":...}`. `to_flask` and `send` put an `HttpAnswer` on the wire
through Flask or a Tornado handler, so the bytes are the same whichever carries them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from flask import Response
from tornado.web import RequestHandler

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
