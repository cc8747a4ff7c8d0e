"""The fake FCM's HTTP/2 side: one connection (TLS, ALPN "h2") served on a Tornado IOStream.

Requests are answered by the fake (sandbox/fcm.py) exactly as over HTTP/1.1. The protocol
is the sandbox's common server session (sandbox/h2server.py: SETTINGS_MAX_CONCURRENT_STREAMS,
streams beyond it refused, flow control both ways); this module adds the IOStream, a small
`receive_window` that makes clients wait for ours, the counters of refused and reset
streams, and GOAWAY as Google sends it: streams up to its last stream id are still
answered, then the connection closes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from h2.events import StreamReset
from h2.exceptions import ProtocolError
from tornado import iostream

from push.hpack_cache import CachingDecoder
from sandbox.h2server import DEFAULT_WINDOW, H2ServerSession, Request, reset_on_close

if TYPE_CHECKING:
    from sandbox.fcm import FakeFcm


@dataclass(frozen=True, slots=True)
class Reply:
    """How to answer one request: a response, or (``action``) ``drop`` / ``goaway``."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    action: str = ""


class H2Session(H2ServerSession):
    """One HTTP/2 connection of the fake FCM."""

    def __init__(
        self,
        fake: FakeFcm,
        stream: iostream.IOStream,
        handle: Callable[[dict[str, str], bytes, int], Reply],
        connection_id: int = 0,
    ) -> None:
        super().__init__(connection_id)
        self.fake = fake
        self.stream = stream
        self.handle = handle
        # The relay's own caching decoder (push/hpack_cache.py, checked against hpack's there).
        self.conn.decoder = CachingDecoder(self.conn.decoder.max_header_list_size)

    async def run(self) -> None:
        receive_window = self.fake.receive_window
        self.open(initial_window=receive_window, wide_window=receive_window >= DEFAULT_WINDOW)
        try:
            while not self.closed:
                data = await self.stream.read_bytes(65536, partial=True)
                self.data_received(data)
        except iostream.StreamClosedError:
            pass
        finally:
            self.closed_down()

    # -- H2ServerSession -------------------------------------------------------------------
    def stream_limit(self) -> int:
        return self.fake.max_concurrent_streams

    def on_refused(self, stream_id: int) -> None:
        self.fake.streams_refused += 1

    def on_reset(self, event: StreamReset, request: Request | None) -> None:
        self.fake.streams_reset += 1

    def on_request(self, stream_id: int, request: Request) -> None:
        reply = self.handle(request.headers, bytes(request.body), self.connection_id)
        if reply.delay > 0:
            self.later(reply.delay, lambda: self._reply(stream_id, reply))
        else:
            self._reply(stream_id, reply)

    def write(self, data: bytes) -> None:
        if not self.stream.closed():
            self.stream.write(data)

    def close(self) -> None:
        self.closed = True
        self.stream.close()

    def abort(self) -> None:
        self.closed = True
        abort_stream(self.stream)

    # -- answering -------------------------------------------------------------------------
    def _reply(self, stream_id: int, reply: Reply) -> None:
        if self.closed:
            return
        if reply.action == "drop":
            self.abort()
            return
        if reply.action == "goaway":
            self.goaway(last_stream_id=max(stream_id - 2, 0))
            self._finished(stream_id)
            return
        headers: list[Any] = [(":status", str(reply.status))]
        headers += [(name.lower(), value) for name, value in reply.headers.items()]
        if reply.body:
            headers.append(("content-length", str(len(reply.body))))
        self.respond(stream_id, headers, reply.body)

    def goaway(self, last_stream_id: int | None = None, error_code: int = 0) -> None:
        """Send GOAWAY as Google does: streams up to `last_stream_id` (default: all open) are
        still answered, then the connection closes."""
        if self.closed or self.draining:
            return
        last = max(self.active, default=0) if last_stream_id is None else last_stream_id
        state = self.conn.state_machine.state
        with contextlib.suppress(ProtocolError):
            self.conn.close_connection(error_code=error_code, last_stream_id=last)
        self.draining = True
        for stream_id in [s for s in self.active if s > last]:
            self.requests.pop(stream_id, None)
            self.bodies.drop(stream_id)
            self.active.discard(stream_id)
        if error_code == 0 and self.active:
            # h2 refuses to send anything after its GOAWAY; the streams it lets finish must.
            self.conn.state_machine.state = state
        else:
            self.active.clear()
        self.flush()
        if not self.active:
            self.close()


def abort_stream(stream: iostream.IOStream) -> None:
    """Close with RST (SO_LINGER 0) rather than a FIN: an abrupt connection loss."""
    reset_on_close(stream.socket)
    stream.close()
