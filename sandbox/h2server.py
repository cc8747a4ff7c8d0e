"""The HTTP/2 server side the fakes share (sandbox/apns.py on an asyncio transport,
sandbox/fcm_h2.py on a Tornado IOStream): one `H2ServerSession` per connection.

It speaks the protocol and leaves the answers to the fake: SETTINGS_MAX_CONCURRENT_STREAMS
(a stream beyond it is refused with RST_STREAM(REFUSED_STREAM), as RFC 9113 section 5.1.2
allows, instead of h2's connection error), a request gathered until its END_STREAM, flow
control both ways (an answer's DATA waits for the client's window: push/h2flow.py; received
DATA is acknowledged at once, or, `strict_flow_control`, once the request is read), delayed
answers on timers cancelled with the connection. A protocol error from the client ends the
connection with the GOAWAY h2 queued for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings
from hpack import Encoder

from push.h2flow import WaitingBodies, raw_headers_config

# Our receive window for the whole connection when it is widened: large, so clients rarely
# wait on us.
CONNECTION_WINDOW = 1 << 24
DEFAULT_WINDOW = 65535  # RFC 9113's initial window, for the connection and for each stream


class PlainEncoder(Encoder):
    """HPACK encoder that skips Huffman coding of literals (cheaper; still valid HPACK)."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return bytes(super().encode(headers, huffman=huffman))


class _ServerConnection(H2Connection):
    """h2 recounts (and purges) its whole stream table on every new inbound stream, O(open
    streams) per request; here the purge runs only once the table reaches twice the limit,
    and the session counts and limits streams itself (refusing one stream too many rather
    than killing the connection, which h2 does)."""

    @property
    def open_inbound_streams(self) -> int:
        if len(self.streams) >= 2 * max(self.local_settings.max_concurrent_streams, 100):
            _ = super().open_inbound_streams  # purges closed streams
        return 0


@dataclass(slots=True)
class Request:
    """A request being received: its headers (names lower-case) and the body so far."""

    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    unconsumed: int = 0  # flow-controlled bytes received, not yet given back (strict mode)


class H2ServerSession:
    """One HTTP/2 connection of a fake. A fake's session says where bytes go (`write`,
    `close`, `abort`), its stream limit and what a whole request gets (`on_request`)."""

    strict_flow_control = False  # give received DATA's window back only once it is read

    def __init__(self, connection_id: int) -> None:
        self.connection_id = connection_id
        self.conn = _ServerConnection(raw_headers_config(client_side=False))
        self.conn.encoder = PlainEncoder()
        self.requests: dict[int, Request] = {}
        self.bodies = WaitingBodies(self.conn, sent=self._finished, failed=self._finished)
        # Streams opened by the client and not yet fully answered (for MAX_CONCURRENT_STREAMS).
        self.active: set[int] = set()
        self.timers: set[asyncio.TimerHandle] = set()
        self.draining = False  # a GOAWAY was sent; the streams below it are still answered
        self.closed = False

    # -- what a fake's session says --------------------------------------------------------
    def stream_limit(self) -> int:
        raise NotImplementedError

    def on_request(self, stream_id: int, request: Request) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def on_refused(self, stream_id: int) -> None:
        """A stream beyond the limit was refused."""

    def on_reset(self, event: StreamReset, request: Request | None) -> None:
        """The client reset a stream (`request`: its body had not ended)."""

    def on_protocol_error(self, exc: ProtocolError) -> None:
        """The client broke the protocol; the connection closes after this."""

    def consume(self, stream_id: int, size: int) -> None:
        """`size` bytes of `stream_id` are read: hand the window back (h2 sends WINDOW_UPDATE
        once half a window is consumed)."""
        self.conn.acknowledge_received_data(size, stream_id)

    # -- the connection --------------------------------------------------------------------
    def open(self, *, initial_window: int = DEFAULT_WINDOW, wide_window: bool = True) -> None:
        """Send our preface: SETTINGS, and a WINDOW_UPDATE to CONNECTION_WINDOW if `wide_window`."""
        conn = self.conn
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self.stream_limit(),
                SettingCodes.INITIAL_WINDOW_SIZE: initial_window,
                SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        conn.initiate_connection()
        if wide_window:
            conn.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_WINDOW)
        self.flush()

    def closed_down(self) -> None:
        """The connection is gone: no answer goes out any more."""
        self.closed = True
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()

    def flush(self) -> None:
        if self.closed:
            return
        data = self.conn.data_to_send()
        if data:
            self.write(data)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except ProtocolError as exc:
            self.on_protocol_error(exc)  # h2 has queued the GOAWAY that says why
            self.flush()
            self.close()
            return
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                assert isinstance(event, DataReceived)
                sid = event.stream_id
                request = self.requests.get(sid)
                if request is not None:
                    request.body += event.data
                    if self.strict_flow_control:  # given back once read (StreamEnded)
                        request.unconsumed += event.flow_controlled_length
                        continue
                if event.flow_controlled_length:
                    self.consume(sid, event.flow_controlled_length)
            elif kind is RequestReceived:
                assert isinstance(event, RequestReceived)
                self._opened(event)
            elif kind is StreamEnded:
                assert isinstance(event, StreamEnded)
                request = self.requests.pop(event.stream_id, None)
                if request is not None:
                    if request.unconsumed:
                        self.consume(event.stream_id, request.unconsumed)
                    self.on_request(event.stream_id, request)
                    if self.closed:
                        return
            elif kind is WindowUpdated:
                assert isinstance(event, WindowUpdated)
                if event.stream_id:
                    self.bodies.drain(event.stream_id)
                else:
                    self.bodies.drain_all()
            elif kind is RemoteSettingsChanged:
                assert isinstance(event, RemoteSettingsChanged)
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self.bodies.drain_all()
            elif kind is StreamReset:
                assert isinstance(event, StreamReset)
                self._reset(event)
            elif kind is ConnectionTerminated:
                self.flush()
                self.close()
                return
        self.flush()

    # -- answering -------------------------------------------------------------------------
    def later(self, delay: float, answer: Callable[[], None]) -> None:
        """Run `answer` after `delay` seconds (unless the connection is gone by then)."""

        def run() -> None:
            self.timers.discard(handle)
            answer()
            self.flush()

        handle = asyncio.get_running_loop().call_later(delay, run)
        self.timers.add(handle)

    def respond(self, stream_id: int, headers: list[Any], body: bytes) -> None:
        """Send a response; DATA beyond the client's flow-control window waits for it."""
        if self.closed:
            return
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not body)
        except H2Error:
            self._finished(stream_id)  # the client reset the stream meanwhile
            return
        if body:
            self.bodies.send(stream_id, body)
        else:
            self._finished(stream_id)

    # -- internals -------------------------------------------------------------------------
    def _opened(self, event: RequestReceived) -> None:
        sid = event.stream_id
        if self.draining:
            return  # above the GOAWAY's last stream id: ignored, as RFC 9113 says
        if len(self.active) >= self.stream_limit():
            with contextlib.suppress(H2Error):
                self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            self.on_refused(sid)
            return
        self.active.add(sid)
        self.requests[sid] = Request({_text(k).lower(): _text(v) for k, v in event.headers or ()})

    def _reset(self, event: StreamReset) -> None:
        sid = event.stream_id
        request = self.requests.pop(sid, None)
        self.on_reset(event, request)
        if request is not None and request.unconsumed:
            self.consume(sid, request.unconsumed)  # discarded: give the window back
        self.bodies.drop(sid)
        self._finished(sid)

    def _finished(self, stream_id: int) -> None:
        self.active.discard(stream_id)
        if self.draining and not self.active and not self.closed:
            self.flush()
            self.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def reset_on_close(sock: Any) -> None:
    """Make the socket's close an RST (SO_LINGER 0) rather than a FIN: an abrupt loss."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
