"""One HTTP request/answer on a pooled connection (push/httppool.py), as plain state.

Connections fill it in and call `on_done` exactly once: with the answer (`status` > 0), or
with a `failure` word. `refused` says the server did not process the request (HTTP/2
REFUSED_STREAM, a stream above a GOAWAY's last stream id, or a body that never went out
whole before its connection ended): sending it again cannot duplicate it.

`headers`, when given, is the request's whole HTTP/2 header list (pseudo-headers first);
without it the connection sends its own (FCM's: the same for every request, bar the
`authorization`). `response_headers`, when given as a dict, receives every header of the
answer; without it only `:status` and `retry-after` are read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _ignore(_: Exchange) -> None:
    return None


class Exchange:
    __slots__ = (
        "authorization",
        "body",
        "connection",
        "done",
        "failure",
        "headers",
        "index",
        "on_done",
        "refused",
        "response",
        "response_headers",
        "retry_after",
        "status",
        "stream_id",
    )

    def __init__(
        self,
        body: bytes,
        authorization: str,
        index: int,
        on_done: Callable[[Exchange], None] = _ignore,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        response_headers: dict[bytes, bytes] | None = None,
    ) -> None:
        self.body = body
        self.authorization = authorization
        self.index = index  # the caller's: where the answer goes
        self.on_done = on_done
        self.headers = headers
        self.response_headers = response_headers
        self.status = 0
        self.retry_after: str | None = None
        self.response = bytearray()
        self.failure = ""
        self.refused = False
        self.done = False
        self.connection: Any = None  # the connection carrying it, while it does
        self.stream_id = 0

    def answered(self) -> None:
        if not self.done:
            self.done = True
            self.connection = None
            self.on_done(self)

    def fail(self, reason: str, *, refused: bool = False) -> None:
        if not self.done:
            self.done = True
            self.connection = None
            self.failure = reason
            self.refused = refused
            self.on_done(self)
