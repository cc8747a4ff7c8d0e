"""A minimal asyncio HTTP/2 client (h2) to drive the fake APNs from tests and benchmarks.

Unlike general-purpose clients it lets a test control receive-side flow control: with
``auto_ack=False`` received DATA is not acknowledged until :meth:`RawH2Client.acknowledge`,
so a test can exhaust the window and watch the server buffer.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from push.h2flow import Outbox, send_within_window
from sandbox.h2server import PlainEncoder

__all__ = ["ConnectionClosedError", "H2Response", "RawH2Client", "StreamResetError", "Terminated"]


class ConnectionClosedError(ConnectionError):
    """The connection closed (or was reset / sent GOAWAY) before the response completed."""


class StreamResetError(ConnectionClosedError):
    """The server reset the stream (``error_code`` 7 is REFUSED_STREAM: safe to retry)."""

    def __init__(self, error_code: int) -> None:
        super().__init__(f"stream reset by the server, error code {error_code}")
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class Terminated:
    """The GOAWAY the server sent."""

    error_code: int
    last_stream_id: int
    additional_data: bytes


@dataclass(slots=True)
class H2Response:
    stream_id: int
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    data_frames: int = 0

    def json(self) -> Any:
        return json.loads(bytes(self.body))


class _ClientConnection(H2Connection):
    """h2 recounts its whole stream table on every new outbound stream; :meth:`request`
    enforces MAX_CONCURRENT_STREAMS itself, so only purge closed streams now and then."""

    @property
    def open_outbound_streams(self) -> int:
        if len(self.streams) >= 2 * max(self.remote_settings.max_concurrent_streams, 100):
            _ = super().open_outbound_streams  # purges closed streams
        return 0


class RawH2Client(asyncio.Protocol):
    """Use :meth:`connect`; then ``await request(...)`` (many may run concurrently)."""

    def __init__(self, *, auto_ack: bool = True, authority: str = "127.0.0.1") -> None:
        self.auto_ack = auto_ack
        self.authority = authority
        self.conn = _ClientConnection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.encoder = PlainEncoder()  # no Huffman coding: cheaper at both ends
        self.transport: asyncio.Transport | None = None
        self.terminated: Terminated | None = None
        self.closed = False
        self.unacked: list[tuple[int, int]] = []
        self._responses: dict[int, H2Response] = {}
        self._futures: dict[int, asyncio.Future[H2Response]] = {}
        self._window_open = asyncio.Event()
        self._lost = asyncio.Event()
        self._settings_received = asyncio.Event()
        self._outbox = Outbox(self.conn)
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        *,
        auto_ack: bool = True,
        initial_window_size: int | None = None,
        server_hostname: str | None = None,
    ) -> RawH2Client:
        """Open a TLS connection and send the HTTP/2 preface (+ our SETTINGS)."""
        loop = asyncio.get_running_loop()
        client = cls(auto_ack=auto_ack, authority=f"{host}:{port}")
        await loop.create_connection(
            lambda: client, host, port, ssl=ssl_context, server_hostname=server_hostname
        )
        if initial_window_size is not None:
            client.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size})
            client._flush()
        # Know the server's MAX_CONCURRENT_STREAMS before sending anything.
        await asyncio.wait_for(client._settings_received.wait(), 5)
        return client

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but write and close alike)
        self.transport = self._outbox.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._outbox.transport = None
        self._lost.set()
        self._window_open.set()
        self._settings_received.set()
        self._wake(all_waiters=True)
        for future in self._futures.values():
            if not future.done():
                future.set_exception(ConnectionClosedError(str(exc or "connection closed")))
        self._futures.clear()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self._fail_all(ConnectionClosedError(f"protocol error: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                response = self._responses.get(event.stream_id)
                if response is not None:
                    headers = {str(k): str(v) for k, v in event.headers}
                    response.headers = headers
                    response.status = int(headers.get(":status", "0"))
            elif isinstance(event, DataReceived):
                response = self._responses.get(event.stream_id)
                if response is not None:
                    response.body += event.data
                    response.data_frames += 1
                if self.auto_ack:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                else:
                    self.unacked.append((event.stream_id, event.flow_controlled_length))
            elif isinstance(event, StreamEnded):
                self._complete(event.stream_id)
            elif isinstance(event, StreamReset):
                future = self._futures.pop(event.stream_id, None)
                self._responses.pop(event.stream_id, None)
                self._wake()
                if future is not None and not future.done():
                    future.set_exception(StreamResetError(int(event.error_code or 0)))
            elif isinstance(event, RemoteSettingsChanged):
                self._settings_received.set()
                self._window_open.set()
                self._wake(all_waiters=True)
            elif isinstance(event, WindowUpdated):
                self._window_open.set()
            elif isinstance(event, ConnectionTerminated):
                self.terminated = Terminated(
                    int(event.error_code or 0),
                    int(event.last_stream_id or 0),
                    bytes(event.additional_data or b""),
                )
                last = self.terminated.last_stream_id
                for stream_id in [s for s in self._futures if s > last]:
                    future = self._futures.pop(stream_id)
                    if not future.done():
                        future.set_exception(ConnectionClosedError("GOAWAY"))
        self._flush()

    # -- client API ----------------------------------------------------------------------------
    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol the TLS handshake selected (``None`` if the client offered none)."""
        if self.transport is None:
            return None
        ssl_object = self.transport.get_extra_info("ssl_object")
        return ssl_object.selected_alpn_protocol() if ssl_object is not None else None

    @property
    def unacked_bytes(self) -> int:
        return sum(size for _, size in self.unacked)

    def start_request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> asyncio.Future[H2Response]:
        """Send a request now (headers + as much body as the window allows)."""
        if self.closed or self.terminated is not None:
            raise ConnectionClosedError("connection is closed")
        stream_id = self.conn.get_next_available_stream_id()
        request_headers = [
            (":method", method),
            (":scheme", "https"),
            (":authority", self.authority),
            (":path", path),
            *headers,
        ]
        self.conn.send_headers(stream_id, request_headers, end_stream=not body)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[H2Response] = loop.create_future()
        self._futures[stream_id] = future
        self._responses[stream_id] = H2Response(stream_id)
        if body:
            window = self.conn.local_flow_control_window(stream_id)
            if len(body) <= min(window, self.conn.max_outbound_frame_size):
                self.conn.send_data(stream_id, body, end_stream=True)
            else:
                task = loop.create_task(self._send_body(stream_id, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._outbox.flush_soon()
        return future

    async def request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> H2Response:
        """Send a request once a stream slot is free (honours MAX_CONCURRENT_STREAMS)."""
        while len(self._futures) >= self.conn.remote_settings.max_concurrent_streams:
            if self.closed:
                raise ConnectionClosedError("connection is closed")
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            await waiter
        return await self.start_request(method, path, headers, body)

    def acknowledge(self) -> None:
        """Acknowledge every DATA frame received so far (opens our receive window)."""
        unacked, self.unacked = self.unacked, []
        for stream_id, size in unacked:
            self.conn.acknowledge_received_data(size, stream_id)
        self._flush()

    async def wait_closed(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self._lost.wait(), timeout)

    async def aclose(self) -> None:
        if self.transport is not None and not self.closed:
            self.conn.close_connection()
            self._flush()
            self.transport.close()
            await self.wait_closed()

    # -- internals -----------------------------------------------------------------------------
    async def _send_body(self, stream_id: int, body: bytes) -> None:
        while body and not self.closed:
            body = send_within_window(self.conn, stream_id, body)
            self._flush()
            if body:
                self._window_open.clear()
                await self._window_open.wait()

    def _complete(self, stream_id: int) -> None:
        future = self._futures.pop(stream_id, None)
        response = self._responses.pop(stream_id, None)
        self._wake()
        if future is not None and response is not None and not future.done():
            future.set_result(response)

    def _wake(self, all_waiters: bool = False) -> None:
        """Let one (or every) request waiting for a stream slot re-check."""
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not all_waiters:
                    return

    def _fail_all(self, exc: Exception) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(exc)
        self._futures.clear()

    def _flush(self) -> None:
        self._outbox.flush()
