"""The fake FCM's HTTP/2 side: one connection (TLS, ALPN "h2") served on a Tornado IOStream.

Requests are answered by the fake (sandbox/fcm.py) exactly as over HTTP/1.1; this module
only speaks the protocol: SETTINGS_MAX_CONCURRENT_STREAMS (streams beyond it are refused with
RST_STREAM(REFUSED_STREAM)), flow control both ways (answers wait for the client's window; a
small `receive_window` makes clients wait for ours), and GOAWAY as Google sends it: streams
up to its last stream id are still answered, then the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from h2.config import H2Configuration
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
from tornado import iostream

from push.hpack_cache import CachingDecoder

if TYPE_CHECKING:
    from sandbox.fcm import FakeFcm

CONNECTION_WINDOW = 1 << 24


@dataclass(frozen=True, slots=True)
class Reply:
    """How to answer one request: a response, or (``action``) ``drop`` / ``goaway``."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    action: str = ""


class _PlainEncoder(Encoder):
    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return bytes(super().encode(headers, huffman=False))


class _ServerConnection(H2Connection):
    """h2 counts open streams by walking them all, per new stream: purge only now and then
    (the session counts and limits streams itself)."""

    @property
    def open_inbound_streams(self) -> int:
        if len(self.streams) >= 512:
            super().open_inbound_streams  # noqa: B018 - purges closed streams
        return 0


@dataclass(slots=True)
class _Request:
    headers: dict[str, str]
    body: bytearray


class H2Session:
    """One HTTP/2 connection of the fake FCM."""

    def __init__(
        self,
        fake: FakeFcm,
        stream: iostream.IOStream,
        handle: Callable[[dict[str, str], bytes, int], Reply],
        connection_id: int = 0,
    ) -> None:
        self.fake = fake
        self.stream = stream
        self.handle = handle
        self.connection_id = connection_id
        self.conn = _ServerConnection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=False,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.conn.encoder = _PlainEncoder()
        # The relay's own caching decoder (push/hpack_cache.py, checked against hpack's there).
        self.conn.decoder = CachingDecoder(self.conn.decoder.max_header_list_size)
        self.requests: dict[int, _Request] = {}
        self.pending: dict[int, bytes] = {}
        self.active: set[int] = set()  # streams opened and not yet fully answered
        self.timers: set[asyncio.TimerHandle] = set()
        self.draining = False  # a GOAWAY was sent
        self.last_stream_id = 0
        self.closed = False

    async def run(self) -> None:
        fake = self.fake
        conn = self.conn
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: fake.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: fake.receive_window,
                SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        conn.initiate_connection()
        if fake.receive_window >= 65535:
            conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        try:
            while not self.closed:
                data = await self.stream.read_bytes(65536, partial=True)
                self.data_received(data)
        except iostream.StreamClosedError:
            pass
        finally:
            self.closed = True
            for timer in self.timers:
                timer.cancel()
            self.timers.clear()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except ProtocolError:
            self.flush()
            self.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                stream_id = event.stream_id
                if self.draining:
                    continue  # above the GOAWAY's last stream id: ignored, as RFC 9113 says
                if len(self.active) >= self.fake.max_concurrent_streams:
                    with contextlib.suppress(H2Error):
                        conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
                    self.fake.streams_refused += 1
                    continue
                self.active.add(stream_id)
                headers = {_text(k).lower(): _text(v) for k, v in event.headers or ()}
                self.requests[stream_id] = _Request(headers, bytearray())
            elif isinstance(event, DataReceived):
                request = self.requests.get(event.stream_id)
                if request is not None and event.data:
                    request.body += event.data
                if event.flow_controlled_length:
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                request = self.requests.pop(event.stream_id, None)
                if request is not None:
                    self._on_request(event.stream_id, request)
                    if self.closed:
                        return
            elif isinstance(event, WindowUpdated):
                if event.stream_id:
                    self._drain(event.stream_id)
                else:
                    self._drain_all()
            elif isinstance(event, RemoteSettingsChanged):
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._drain_all()
            elif isinstance(event, StreamReset):
                self.fake.streams_reset += 1
                self.requests.pop(event.stream_id, None)
                self.pending.pop(event.stream_id, None)
                self._finished(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                self.flush()
                self.close()
                return
        self.flush()

    # -- answering -------------------------------------------------------------------------
    def _on_request(self, stream_id: int, request: _Request) -> None:
        reply = self.handle(request.headers, bytes(request.body), self.connection_id)
        if reply.delay > 0:
            holder: list[asyncio.TimerHandle] = []

            def later() -> None:
                self.timers.discard(holder[0])
                self._reply(stream_id, reply)
                self.flush()

            handle = asyncio.get_running_loop().call_later(reply.delay, later)
            holder.append(handle)
            self.timers.add(handle)
        else:
            self._reply(stream_id, reply)

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
        headers = [(":status", str(reply.status))]
        headers += [(name.lower(), value) for name, value in reply.headers.items()]
        if reply.body:
            headers.append(("content-length", str(len(reply.body))))
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not reply.body)
        except H2Error:
            self._finished(stream_id)  # the client reset the stream meanwhile
            return
        if reply.body:
            self.pending[stream_id] = reply.body
            self._drain(stream_id)
        else:
            self._finished(stream_id)

    def _drain(self, stream_id: int) -> None:
        data = self.pending.get(stream_id)
        if data is None:
            return
        conn = self.conn
        try:
            window = conn.local_flow_control_window(stream_id)
            frame = conn.max_outbound_frame_size
            while data and window > 0:
                size = min(window, frame, len(data))
                conn.send_data(stream_id, data[:size], end_stream=size == len(data))
                data = data[size:]
                window -= size
        except H2Error:
            self.pending.pop(stream_id, None)
            self._finished(stream_id)
            return
        if data:
            self.pending[stream_id] = data
        else:
            del self.pending[stream_id]
            self._finished(stream_id)

    def _drain_all(self) -> None:
        for stream_id in list(self.pending):
            if self.conn.outbound_flow_control_window <= 0:
                break
            self._drain(stream_id)

    def _finished(self, stream_id: int) -> None:
        self.active.discard(stream_id)
        if self.draining and not self.active and not self.closed:
            self.flush()
            self.close()

    # -- the connection --------------------------------------------------------------------
    def goaway(self, last_stream_id: int | None = None, error_code: int = 0) -> None:
        """Send GOAWAY; streams up to `last_stream_id` (default: all open) are still answered."""
        if self.closed or self.draining:
            return
        last = max(self.active, default=0) if last_stream_id is None else last_stream_id
        state = self.conn.state_machine.state
        with contextlib.suppress(ProtocolError):
            self.conn.close_connection(error_code=error_code, last_stream_id=last)
        self.draining = True
        for stream_id in [s for s in self.active if s > last]:
            self.requests.pop(stream_id, None)
            self.pending.pop(stream_id, None)
            self.active.discard(stream_id)
        if error_code == 0 and self.active:
            # h2 refuses to send anything after its GOAWAY; the streams it lets finish must.
            self.conn.state_machine.state = state
        else:
            self.active.clear()
        self.flush()
        if not self.active:
            self.close()

    def flush(self) -> None:
        if self.closed or self.stream.closed():
            return
        data = self.conn.data_to_send()
        if data:
            self.stream.write(data)

    def close(self) -> None:
        self.closed = True
        self.stream.close()

    def abort(self) -> None:
        self.closed = True
        abort_stream(self.stream)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def abort_stream(stream: iostream.IOStream) -> None:
    """Close with RST (SO_LINGER 0) rather than a FIN: an abrupt connection loss."""
    sock = stream.socket
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.close()
