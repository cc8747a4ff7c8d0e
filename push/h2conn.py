"""An HTTP/2 client connection (h2 on an asyncio transport) carrying many exchanges at once.

Made for one kind of request repeated (POST of a small body: FCM's JSON to one path, or an
APNs notification to `/3/device/<token>`), fast:

- no task or future per request: an `Exchange` is started with a few h2 calls and answered
  from `data_received`; writes are coalesced once per loop iteration;
- a request's HEADERS (+ CONTINUATION) and its one DATA frame are framed here
  (`_Client.send_request`), h2's stream opened and moved through its own states, its windows
  charged: the same bytes and state as h2's `send_headers` and `send_data`, for less CPU;
- h2's header validation and normalisation are off (our headers are fixed names and checked
  values, and we read two or three), HPACK reuses the last header block while the table is
  unchanged, and each indexed field's bytes when only never-indexed values change
  (push/hpack_cache.py), and h2's count of open streams (a walk over every stream, per new
  stream) is replaced by ours;
- answers are read by push/h2receive.py: the frames of a plain answer (HEADERS, DATA) without
  h2's general path, every other frame by h2, in order;
- flow control both ways: a body larger than the stream's or the connection's window, or
  than the peer's frame size, waits and goes as WINDOW_UPDATEs arrive (push/h2flow.py, shared
  with the sandbox's fakes); received DATA is acknowledged at once, so the server never
  stalls on us;
- at most `min(max_streams, the server's SETTINGS_MAX_CONCURRENT_STREAMS)` streams;
- GOAWAY: no new streams; those above its last stream id fail as `refused` (never processed,
  safe to send again elsewhere); after a graceful GOAWAY (NO_ERROR) the others still get their
  answers (h2 would refuse every frame after a GOAWAY: see `_Client._receive_goaway_frame`);
- a stream that fails or is cancelled is reset and released; a lost connection fails
  everything it carried, as `refused` those whose body had not all gone out (a server acts
  on a whole request only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any, cast

from h2.connection import AllowedStreamIDs, ConnectionState
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    RemoteSettingsChanged,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes
from h2.stream import StreamInputs
from h2.utilities import authority_from_headers, extract_method_header

from push.exchange import Exchange
from push.h2flow import Outbox, WaitingBodies, raw_headers_config
from push.h2receive import ReceivingClient, tell_answer
from push.hpack_cache import CachingDecoder, CachingEncoder
from push.poolconn import MAX_RESPONSE_BYTES, PooledConnection, PoolListener

# hpack logs every header it encodes or decodes at DEBUG, the bearer token included: never.
logging.getLogger("hpack").setLevel(logging.WARNING)

# Our receive windows: large, so the server never waits for our WINDOW_UPDATEs.
RECEIVE_WINDOW = 1 << 20
CONNECTION_RECEIVE_WINDOW = 1 << 24
LAST_STREAM_ID = (1 << 31) - 1

# A frame's 9-byte header (RFC 9113 section 4.1): 24-bit length (as 16 + 8 bits), type, flags,
# stream id.
_FRAME_HEAD = struct.Struct(">HBBBL")
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4


def _frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _FRAME_HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


class _Client(ReceivingClient):
    def send_request(self, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """Open `stream_id` with `headers` and send `body` on it, ending the stream, if the
        stream's and the connection's windows and the peer's frame size take it whole; return
        whether it went (False: only the headers did; the caller sends the body as the windows
        open, through h2).

        The same frames, bytes and h2 state as `send_headers` then `send_data`, without their
        general machinery (header encoding to bytes, frame objects, checks that cannot fail
        here): the HEADERS (+ CONTINUATION) and DATA frames are written here, h2's stream is
        created and driven through its own state machine, and both windows are charged, so
        answers, resets, WINDOW_UPDATEs and GOAWAY are handled by h2 as for any stream.
        Anything else (the connection's first request, which opens it in h2's state machine;
        a connection closed; the stream known; header checks configured on) goes through h2's
        own calls."""
        config = self.config
        if (
            self.state_machine.state is not ConnectionState.CLIENT_OPEN
            or stream_id in self.streams
            or config.validate_outbound_headers
            or config.normalize_outbound_headers
            or self.remote_settings.max_concurrent_streams < 1
        ):
            self.send_headers(stream_id, headers)
            stream = self.streams[stream_id]
            if len(body) > min(
                stream.outbound_flow_control_window,
                self.outbound_flow_control_window,
                self.max_outbound_frame_size,
            ):
                return False
            self.send_data(stream_id, body, end_stream=True)
            return True
        self.open_outbound_streams  # noqa: B018 - purges closed streams now and then
        stream = self._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_HEADERS)  # before HPACK changes its table
        block = self.encoder.encode(headers)
        stream._authority = authority_from_headers(headers)
        stream.request_method = extract_method_header(headers)
        out = self._data_to_send
        limit = self.max_outbound_frame_size
        size = len(block)
        if size <= limit:
            out += _frame_head(size, _HEADERS, _END_HEADERS, stream_id)
            out += block
        else:
            out += _frame_head(limit, _HEADERS, 0, stream_id)
            out += block[:limit]
            for start in range(limit, size, limit):
                part = block[start : start + limit]
                last = start + limit >= size
                out += _frame_head(len(part), _CONTINUATION, _END_HEADERS if last else 0, stream_id)
                out += part
        size = len(body)
        if size > min(
            stream.outbound_flow_control_window, self.outbound_flow_control_window, limit
        ):
            return False
        machine.process_input(StreamInputs.SEND_DATA)
        machine.process_input(StreamInputs.SEND_END_STREAM)
        out += _frame_head(size, _DATA, _END_STREAM, stream_id)
        out += body
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        return True

    @property
    def open_outbound_streams(self) -> int:
        # The connection counts its own streams; h2's count walks them all on every new
        # stream. Let it purge closed streams now and then, which its count also does.
        if len(self.streams) >= 512:
            super().open_outbound_streams  # noqa: B018 - purges closed streams
        return 0

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        state = self.state_machine.state
        unsent = bytes(self._data_to_send)
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == 0 and state is ConnectionState.CLIENT_OPEN:
            # A graceful GOAWAY: streams up to its last stream id are still answered; h2
            # would call every later frame a protocol error, and drop what it had not sent
            # yet (the rest of a body, say). We open no stream after it.
            self.state_machine.state = state
            self._data_to_send[:0] = unsent
        return frames, events


class H2ClientConnection(PooledConnection):
    protocol = "h2"

    def __init__(self, listener: PoolListener, authority: str, path: str, max_streams: int) -> None:
        super().__init__(listener)
        self._authority = authority.encode()
        self._path = path.encode()
        self._max_streams = max_streams
        self.h2 = _Client(config=raw_headers_config(client_side=True))
        self.h2.encoder = CachingEncoder()
        self.h2.decoder = CachingDecoder(self.h2.decoder.max_header_list_size)
        self.capacity = 0  # known once the server's SETTINGS arrive
        self.exchanges: dict[int, Exchange] = {}
        self._bodies = WaitingBodies(self.h2, failed=self._send_failed)
        self._outbox = Outbox(self.h2)
        self._headers: tuple[str, list[tuple[bytes, bytes]]] | None = None
        self._released = 0  # exchanges answered or failed while reading, to tell the pool

    # -- what the pool uses ----------------------------------------------------------------
    @property
    def unsent(self) -> dict[int, bytes]:
        """The bodies (or what is left of them) waiting for flow-control window."""
        return self._bodies.waiting

    def free_slots(self) -> int:
        return self.capacity - len(self.exchanges) if self.usable else 0

    def start(self, exchange: Exchange) -> None:
        h2 = self.h2
        stream_id = h2.get_next_available_stream_id()
        if stream_id >= LAST_STREAM_ID - 2:
            self.usable = False  # stream ids run out: the pool opens another connection
        headers = exchange.headers
        if headers is None:
            headers = self._request_headers(exchange.authorization)
        sent = h2.send_request(stream_id, headers, exchange.body)
        exchange.stream_id = stream_id
        exchange.connection = self
        self.exchanges[stream_id] = exchange
        if not sent:
            self._bodies.send(stream_id, exchange.body)
        self._outbox.flush_soon()

    def cancel(self, exchange: Exchange, reason: str) -> None:
        """Give up on `exchange` (a timeout): reset its stream and release the slot."""
        stream_id = exchange.stream_id
        if self.exchanges.pop(stream_id, None) is None:
            return
        self._bodies.drop(stream_id)
        if not self.closed:
            with contextlib.suppress(H2Error):
                self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
            self._outbox.flush_soon()
        exchange.fail(reason)
        self._after_release()

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            with contextlib.suppress(H2Error):
                self.h2.close_connection()
            self._outbox.flush()
            self._transport.close()
        self._lose("closed")

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's and uvloop's TLS transports both write and close; uvloop's is not
        # an asyncio.Transport subclass, so no isinstance check.
        self._transport = self._outbox.transport = cast(asyncio.Transport, transport)
        h2 = self.h2
        h2.local_settings.update(
            {
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: RECEIVE_WINDOW,
            }
        )
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_RECEIVE_WINDOW - 65535)
        self._outbox.flush()

    def data_received(self, data: bytes) -> None:
        try:
            self.h2.receive(data, self)
        except ProtocolError:
            self._released = 0
            self._outbox.flush()
            if self._transport is not None:
                self._transport.close()
            self._lose("HTTP/2 protocol error")
            return
        if self.closed:
            self._released = 0
            return
        self._outbox.flush()
        if self._released:
            self._released = 0
            self._after_release()

    # -- what the receiving side tells (push/h2receive.py's Receiver) ------------------------
    def response(self, stream_id: int, headers: list[Any]) -> None:
        exchange = self.exchanges.get(stream_id)
        if exchange is not None and headers:
            kept = exchange.response_headers
            for name, value in headers:
                if name == b":status":
                    exchange.status = int(value) if value.isdigit() else 0
                elif name == b"retry-after":
                    exchange.retry_after = bytes(value).decode("latin-1")
                if kept is not None:
                    kept[bytes(name)] = bytes(value)

    def data(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        if flow_controlled_length:
            self.h2.acknowledge_received_data(flow_controlled_length, stream_id)
        exchange = self.exchanges.get(stream_id)
        if exchange is not None and data:
            exchange.response += data
            if len(exchange.response) > MAX_RESPONSE_BYTES:
                self.cancel(exchange, "answer too large")

    def ended(self, stream_id: int) -> None:
        exchange = self.exchanges.pop(stream_id, None)
        if exchange is not None:
            if self._bodies.drop(stream_id):
                # Answered before our body was all sent: end our half too.
                with contextlib.suppress(H2Error):
                    self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
            self._released += 1
            exchange.answered()

    def events(self, events: list[Any]) -> None:
        for event in events:
            if tell_answer(self, event):
                continue
            if isinstance(event, StreamReset):
                exchange = self.exchanges.pop(event.stream_id, None)
                if exchange is not None:
                    self._bodies.drop(event.stream_id)
                    self._released += 1
                    exchange.fail(
                        "stream reset", refused=event.error_code == ErrorCodes.REFUSED_STREAM
                    )
            elif isinstance(event, WindowUpdated):
                if self._bodies.waiting:
                    self._bodies.drain_all()
            elif isinstance(event, RemoteSettingsChanged):
                self._settings_changed()
            elif isinstance(event, ConnectionTerminated):
                self._goaway(event)
                if self.closed:
                    return

    # -- internals -------------------------------------------------------------------------
    def _request_headers(self, authorization: str) -> list[tuple[bytes, bytes]]:
        cached = self._headers
        if cached is not None and cached[0] is authorization:
            return cached[1]
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", self._authority),
            (b":path", self._path),
            (b"content-type", b"application/json"),
            (b"authorization", authorization.encode()),
            (b"x-goog-api-format-version", b"2"),
        ]
        self._headers = (authorization, headers)
        return headers

    def _settings_changed(self) -> None:
        server_limit = self.h2.remote_settings.max_concurrent_streams
        self.capacity = max(0, min(self._max_streams, server_limit))
        if self._bodies.waiting:
            self._bodies.drain_all()
        if not self.ready.done():
            self.usable = True
            self.ready.set_result(None)
        else:
            self._listener.released(self)  # the limit may have grown

    def _goaway(self, event: ConnectionTerminated) -> None:
        self.usable = False
        last = event.last_stream_id or 0
        graceful = event.error_code == ErrorCodes.NO_ERROR
        for stream_id in [s for s in self.exchanges if s > last or not graceful]:
            exchange = self.exchanges.pop(stream_id)
            unfinished = self._bodies.drop(stream_id)
            exchange.fail("GOAWAY", refused=stream_id > last or unfinished)
        self._listener.lost(self)
        if not self.exchanges and self._transport is not None:
            self._outbox.flush()
            self._transport.close()
            self._lose("GOAWAY")

    def _after_release(self) -> None:
        if self.usable:
            self._listener.released(self)
        elif not self.exchanges and not self.closed and self._transport is not None:
            self._outbox.flush()
            self._transport.close()  # drained after a GOAWAY (or out of stream ids)
            self._lose("drained")

    def _fail_carried(self, reason: str) -> None:
        self._outbox.transport = None
        exchanges, self.exchanges = self.exchanges, {}
        unsent = self._bodies.take()
        for stream_id, exchange in exchanges.items():
            exchange.fail(reason, refused=stream_id in unsent)

    def _send_failed(self, stream_id: int) -> None:
        exchange = self.exchanges.get(stream_id)
        if exchange is not None:
            self.cancel(exchange, "stream closed while sending")
