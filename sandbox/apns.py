"""A fake Apple Push Notification service: HTTP/2 over TLS on 127.0.0.1.

It speaks the real provider API (``POST /3/device/<token>``, token auth with ES256 JWTs, Apple's
status codes and ``{"reason": ...}`` bodies), honours HTTP/2 flow control in both directions, and
answers each device token as scripted (see :mod:`sandbox.script`).

It also watches the client: DATA beyond the windows it granted, or in frames larger than its
SETTINGS_MAX_FRAME_SIZE, is recorded in ``violations`` (and ends the connection with GOAWAY, as
HTTP/2 requires); a stream the client resets is recorded in ``client_resets``; a request whose
body never ended is counted in ``half_open_at_close`` when its connection closes (and
``open_requests()`` counts those still open). ``strict_flow_control=True`` grants only the RFC
default window (65,535 bytes for the connection and for each stream) and gives it back only as
requests are consumed, the way a strict server does; ``hold_window_updates()`` stops even that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hpack.hpack
import hpack.huffman_table
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
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
from h2.exceptions import FlowControlError, FrameTooLargeError, ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple

from sandbox._runner import LoopServer, check_loopback
from sandbox.certs import (
    ApnsKey,
    TlsFiles,
    client_ssl_context,
    generate_apns_key,
    generate_tls,
    server_ssl_context,
)
from sandbox.script import Behaviour, Kind, Recorder, Scripts

__all__ = [
    "DEFAULT_TOPIC",
    "MAX_PAYLOAD",
    "ApnsPush",
    "ClientReset",
    "FakeApns",
    "FlowViolation",
    "install_huffman_cache",
    "provider_token",
]

DEFAULT_TOPIC = "com.loki-project.loki-messenger"
MAX_PAYLOAD = 4096
PATH_PREFIX = "/3/device/"
# Our receive window for the whole connection: large, so clients rarely wait on us (unless
# strict_flow_control, which keeps the RFC default of 65,535 bytes).
CONNECTION_WINDOW = 1 << 24

_PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
        "controls",
        "widgets",
    }
)
_PRIORITIES = frozenset({"1", "5", "10"})
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX_TOKEN = re.compile(r"^[0-9a-fA-F]{64,200}$")

_Header = tuple[str, str] | HeaderTuple

_STATIC: dict[Kind, tuple[int, str]] = {
    Kind.BAD_DEVICE_TOKEN: (400, "BadDeviceToken"),
    Kind.PAYLOAD_TOO_LARGE: (413, "PayloadTooLarge"),
    Kind.TOO_MANY_REQUESTS: (429, "TooManyRequests"),
    Kind.SERVER_ERROR: (500, "InternalServerError"),
    Kind.SERVICE_UNAVAILABLE: (503, "ServiceUnavailable"),
    Kind.WRONG_SENDER: (400, "DeviceTokenNotForTopic"),
}


def provider_token(
    apns_key: ApnsKey,
    *,
    issued_at: int | None = None,
    key_id: str | None = None,
    team_id: str | None = None,
) -> str:
    """An APNs provider JWT (ES256; header ``kid``; claims ``iss``, ``iat``) as Apple wants.

    The overrides exist to forge wrong tokens in tests.
    """
    return jwt.encode(
        {
            "iss": team_id or apns_key.team_id,
            "iat": int(time.time()) if issued_at is None else issued_at,
        },
        apns_key.private_key_pem(),
        algorithm="ES256",
        headers={"kid": key_id or apns_key.key_id},
    )


@dataclass(frozen=True, slots=True)
class ApnsPush:
    """One request the fake received, and how it was answered.

    ``status`` is the HTTP status sent (0 when the behaviour was ``goaway`` or ``drop``);
    ``reason`` is Apple's reason string ("" on success). ``headers`` holds every request header,
    pseudo-headers (``:path`` ...) included, names lower-case.
    """

    token: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    status: int
    reason: str
    apns_id: str
    connection_id: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class FlowViolation:
    """The client broke HTTP/2 flow control or frame-size rules on a connection.

    ``error`` is h2's exception name (``FlowControlError``: DATA beyond the connection or stream
    window; ``FrameTooLargeError``: a frame over SETTINGS_MAX_FRAME_SIZE); ``detail`` its text.
    """

    connection_id: int
    error: str
    detail: str


@dataclass(frozen=True, slots=True)
class ClientReset:
    """The client reset a stream (RST_STREAM). ``request_complete`` is False when the request
    body had not ended yet (the client gave up part-way through sending)."""

    connection_id: int
    stream_id: int
    error_code: int
    request_complete: bool


@dataclass(slots=True)
class _Request:
    headers: dict[str, str]
    body: bytearray
    unconsumed: int = 0  # flow-controlled bytes received, not yet given back (strict mode)


def _reason_body(reason: str, timestamp_ms: int | None = None) -> bytes:
    if timestamp_ms is None:
        return b'{"reason":"' + reason.encode() + b'"}'
    return json.dumps({"reason": reason, "timestamp": timestamp_ms}, separators=(",", ":")).encode()


class _PlainEncoder(Encoder):
    """HPACK encoder that skips Huffman coding of literals (cheaper; still valid HPACK)."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return bytes(super().encode(headers, huffman=huffman))


class _ServerConnection(H2Connection):
    """Two changes to h2's handling of SETTINGS_MAX_CONCURRENT_STREAMS on a server:

    - h2 recounts (and purges) its whole stream table on every new inbound stream, O(open
      streams) per request; here the purge runs only once the table reaches twice the limit.
    - h2 kills the connection when a client opens one stream too many (which a client may do
      legitimately before it has seen our SETTINGS); the protocol refuses that one stream with
      RST_STREAM(REFUSED_STREAM) instead, as RFC 9113 section 5.1.2 allows.
    """

    @property
    def open_inbound_streams(self) -> int:
        if len(self.streams) >= 2 * max(self.local_settings.max_concurrent_streams, 100):
            _ = super().open_inbound_streams  # purges closed streams
        return 0


_huffman_cache_installed = False


def install_huffman_cache(maxsize: int = 4096) -> None:
    """Memoise hpack's Huffman decoder (process-wide, idempotent, semantics unchanged).

    Clients re-send the never-indexed ``authorization`` JWT (~200 bytes) on every request and
    pure-Python Huffman decoding of it is the fake's single largest per-request cost.
    """
    global _huffman_cache_installed  # noqa: PLW0603
    if _huffman_cache_installed:
        return
    cached = functools.lru_cache(maxsize=maxsize)(hpack.huffman_table.decode_huffman)

    def decode_huffman(data: bytes | bytearray | memoryview | None) -> bytes:
        return cached(bytes(data or b""))

    setattr(hpack.hpack, "decode_huffman", decode_huffman)  # noqa: B010
    _huffman_cache_installed = True


class _H2Protocol(asyncio.Protocol):
    def __init__(self, server: FakeApns, connection_id: int) -> None:
        self.server = server
        self.connection_id = connection_id
        self.transport: asyncio.Transport | None = None
        self.certificate_authenticated = False
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
        self.requests: dict[int, _Request] = {}
        self.pending: dict[int, bytes] = {}
        # Streams opened by the client and not yet fully answered (for MAX_CONCURRENT_STREAMS).
        self.active: set[int] = set()
        self.timers: set[asyncio.TimerHandle] = set()
        # (stream id, bytes) consumed while the server holds its window updates back.
        self.withheld: list[tuple[int, int]] = []
        self.closed = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.certificate_authenticated = bool(transport.get_extra_info("peercert"))
        server = self.server
        server.connections_total += 1
        if server.down:
            self.closed = True
            _abort(transport)
            return
        server._protocols.add(self)
        self.conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: server.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.conn.initiate_connection()
        if not server.strict_flow_control:
            self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        transport.write(self.conn.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._protocols.discard(self)
        self.server.half_open_at_close += len(self.requests)
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        self.requests.clear()
        self.pending.clear()
        self.active.clear()

    def pause_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        conn = self.conn
        strict = self.server.strict_flow_control
        try:
            events = conn.receive_data(data)
        except (FlowControlError, FrameTooLargeError) as exc:
            # h2 has queued GOAWAY(FLOW_CONTROL_ERROR / FRAME_SIZE_ERROR): record, send, close.
            self.server.violations.append(
                FlowViolation(self.connection_id, type(exc).__name__, str(exc))
            )
            self.flush()
            self.close()
            return
        except ProtocolError:
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
                    if strict:  # given back once the request is consumed (StreamEnded)
                        request.unconsumed += event.flow_controlled_length
                        continue
                self.consume(sid, event.flow_controlled_length)
            elif kind is RequestReceived:
                assert isinstance(event, RequestReceived)
                sid = event.stream_id
                if len(self.active) >= self.server.max_concurrent_streams:
                    with contextlib.suppress(StreamClosedError, ProtocolError):
                        conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
                    continue
                self.active.add(sid)
                self.requests[sid] = _Request(
                    {_text(k): _text(v) for k, v in event.headers}, bytearray()
                )
            elif kind is StreamEnded:
                assert isinstance(event, StreamEnded)
                request = self.requests.pop(event.stream_id, None)
                if request is not None:
                    if request.unconsumed:
                        self.consume(event.stream_id, request.unconsumed)
                    self.server._on_request(self, event.stream_id, request)
                    if self.closed:
                        return
            elif kind is WindowUpdated:
                assert isinstance(event, WindowUpdated)
                if event.stream_id:
                    self._drain(event.stream_id)
                else:
                    self._drain_all()
            elif kind is RemoteSettingsChanged:
                assert isinstance(event, RemoteSettingsChanged)
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._drain_all()
            elif kind is StreamReset:
                assert isinstance(event, StreamReset)
                sid = event.stream_id
                request = self.requests.pop(sid, None)
                if event.remote_reset and (request is not None or sid in self.active):
                    self.server.client_resets.append(
                        ClientReset(self.connection_id, sid, int(event.error_code), request is None)
                    )
                if request is not None and request.unconsumed:
                    self.consume(sid, request.unconsumed)  # discarded: give the window back
                self.pending.pop(sid, None)
                self.active.discard(sid)
            elif kind is ConnectionTerminated:
                self.flush()
                self.close()
                return
        self.flush()

    def consume(self, stream_id: int, size: int) -> None:
        """The server has read ``size`` bytes of ``stream_id``: hand the window back (h2 sends
        WINDOW_UPDATE once half a window is consumed), unless window updates are held."""
        if self.server.window_updates_held:
            self.withheld.append((stream_id, size))
        else:
            self.conn.acknowledge_received_data(size, stream_id)

    def release_withheld(self) -> None:
        withheld, self.withheld = self.withheld, []
        with contextlib.suppress(ProtocolError):
            for stream_id, size in withheld:
                self.conn.acknowledge_received_data(size, stream_id)
        self.flush()

    # -- sending -------------------------------------------------------------------------------
    def flush(self) -> None:
        if self.closed or self.transport is None:
            return
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def respond(self, stream_id: int, headers: list[_Header], body: bytes) -> None:
        """Send a response; DATA beyond the peer's flow-control window waits in ``pending``."""
        if self.closed:
            return
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not body)
        except (StreamClosedError, ProtocolError):
            self.active.discard(stream_id)
            return  # the client reset the stream meanwhile
        if body:
            self.pending[stream_id] = body
            self._drain(stream_id)
        else:
            self.active.discard(stream_id)

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
        except (StreamClosedError, ProtocolError):
            self.pending.pop(stream_id, None)
            self.active.discard(stream_id)
            return
        if data:
            self.pending[stream_id] = data
        else:
            del self.pending[stream_id]
            self.active.discard(stream_id)

    def _drain_all(self) -> None:
        for stream_id in list(self.pending):
            if self.conn.outbound_flow_control_window <= 0:
                break
            self._drain(stream_id)

    def goaway(self, last_stream_id: int | None = None, reason: str = "Shutdown") -> None:
        if self.closed:
            return
        with contextlib.suppress(ProtocolError):
            self.conn.close_connection(
                error_code=0,
                additional_data=_reason_body(reason),
                last_stream_id=last_stream_id,
            )
        self.flush()
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            _abort(self.transport)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _abort(transport: asyncio.Transport) -> None:
    """Close with RST (SO_LINGER 0) rather than a FIN: an abrupt connection loss."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FakeApns(LoopServer):
    """A fake APNs provider endpoint.

    Construct it with TLS files and the APNs signing key it should trust (or use
    :meth:`create`), then ``start()`` (own thread) or ``await serve()`` (caller's loop).
    """

    def __init__(
        self,
        tls: TlsFiles,
        apns_key: ApnsKey,
        *,
        topic: str = DEFAULT_TOPIC,
        host: str = "127.0.0.1",
        port: int = 0,
        max_concurrent_streams: int = 1000,
        check_token_format: bool = True,
        token_max_age: float = 3600.0,
        alpn: Iterable[str] | None = ("h2",),
        cache_huffman: bool = True,
        client_ca_file: str | os.PathLike[str] | None = None,
        strict_flow_control: bool = False,
    ) -> None:
        super().__init__()
        self.tls = tls
        self.apns_key = apns_key
        self.key_id = apns_key.key_id
        self.team_id = apns_key.team_id
        self.topic = topic
        self.host = check_loopback(host)
        self.port = port
        self.max_concurrent_streams = max_concurrent_streams
        #: Grant only the RFC default windows (65,535 bytes), given back as requests are read.
        self.strict_flow_control = strict_flow_control
        self.window_updates_held = False
        self.check_token_format = check_token_format
        self.token_max_age = token_max_age
        self._public_key: ec.EllipticCurvePublicKey = apns_key.public_key()
        self._ssl = server_ssl_context(tls, alpn)
        if client_ca_file is not None:
            # Certificate auth: a client certificate from this CA replaces the JWT.
            self._ssl.verify_mode = ssl.CERT_OPTIONAL
            self._ssl.load_verify_locations(str(client_ca_file))
        if cache_huffman:
            install_huffman_cache()

        self.scripts = Scripts()
        self.pushes: Recorder[ApnsPush] = Recorder()
        #: Seconds added before every answer (a globally slow server).
        self.global_delay = 0.0
        self.connections_total = 0
        self.requests_total = 0
        #: What the clients did wrong or left unfinished (see the module docstring).
        self.violations: list[FlowViolation] = []
        self.client_resets: list[ClientReset] = []
        self.half_open_at_close = 0
        self._down = False
        self._server: asyncio.Server | None = None
        self._protocols: set[_H2Protocol] = set()
        self._jwt_cache: dict[str, int] = {}
        self._next_connection_id = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def create(cls, directory: str | os.PathLike[str], **kwargs: Any) -> FakeApns:
        """Generate a test CA, server certificate and APNs key into ``directory``."""
        path = Path(directory)
        return cls(generate_tls(path), generate_apns_key(path), **kwargs)

    # -- public API ----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``host:port``, the form of ``PN_APNS_ENDPOINT``."""
        return f"{self.host}:{self.port}"

    @property
    def connections_open(self) -> int:
        return len(self._protocols)

    @property
    def down(self) -> bool:
        return self._down

    def client_ssl_context(self, alpn: Iterable[str] | None = ("h2",)) -> ssl.SSLContext:
        """A client context trusting this fake's CA (ALPN ``alpn``; ``None``: offer none)."""
        return client_ssl_context(self.tls, alpn)

    def set_down(self, down: bool, *, refuse: bool = False) -> None:
        """Take the whole server down (``True``) or bring it back.

        Down: open connections are aborted; new ones are accepted then aborted at once, or, with
        ``refuse=True``, the listening socket is closed so connects get ECONNREFUSED.
        """
        if self._loop is None:
            self._down = down
            return
        if down:
            self.call_in_loop(lambda: self._go_down(refuse))
        else:
            self._call_async(self._go_up())

    def disconnect_all(self, graceful: bool = True) -> None:
        """Close every open connection: with GOAWAY (``graceful``) or an abrupt RST."""

        def run() -> None:
            for proto in list(self._protocols):
                if graceful:
                    proto.goaway()
                else:
                    proto.abort()

        self.call_in_loop(run)

    def hold_window_updates(self, held: bool = True) -> None:
        """Stop giving flow-control window back (``True``): the server reads nothing more, the
        way a stalled server does. ``False`` gives back everything withheld meanwhile."""

        def run() -> None:
            self.window_updates_held = held
            if not held:
                for proto in list(self._protocols):
                    proto.release_withheld()

        self.call_in_loop(run)

    def open_requests(self) -> int:
        """Requests whose headers arrived but whose body has not ended, on open connections."""
        return self.call_in_loop(lambda: sum(len(p.requests) for p in self._protocols))

    def delivered(self) -> list[ApnsPush]:
        """Recorded pushes answered 200."""
        return [p for p in self.pushes.snapshot() if p.status == 200]

    # -- lifecycle -----------------------------------------------------------------------------
    async def _open(self) -> None:
        await self._listen()

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_protocol, self.host, self.port, ssl=self._ssl, backlog=1024
        )
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1]

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for proto in list(self._protocols):
            proto.abort()
        self._protocols.clear()
        if server is not None:
            await server.wait_closed()

    def _make_protocol(self) -> _H2Protocol:
        self._next_connection_id += 1
        return _H2Protocol(self, self._next_connection_id)

    def _go_down(self, refuse: bool) -> None:
        self._down = True
        for proto in list(self._protocols):
            proto.abort()
        if refuse and self._server is not None:
            self._server.close()
            self._server = None

    async def _go_up(self) -> None:
        self._down = False
        if self._server is None:
            await self._listen()

    def _call_async(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    async def aset_down(self, down: bool, *, refuse: bool = False) -> None:
        """:meth:`set_down` for code running on the server's own loop."""
        if down:
            self._go_down(refuse)
        else:
            await self._go_up()

    # -- request handling ----------------------------------------------------------------------
    def _on_request(self, proto: _H2Protocol, stream_id: int, request: _Request) -> None:
        self.requests_total += 1
        received_at = time.monotonic()
        headers = request.headers
        body = bytes(request.body)
        path = headers.get(":path", "")
        token = path[len(PATH_PREFIX) :] if path.startswith(PATH_PREFIX) else ""
        apns_id = headers.get("apns-id") or str(uuid.uuid4())

        failure = self._validate(headers, path, token, body, proto.certificate_authenticated)
        if failure is not None:
            behaviour: Behaviour | None = None
            status, reason = failure
        else:
            behaviour = self.scripts.next(token)
            status, reason = self._status_of(behaviour)

        self.pushes.add(
            ApnsPush(
                token=token,
                headers=headers,
                body=body,
                received_at=received_at,
                status=status,
                reason=reason,
                apns_id=apns_id,
                connection_id=proto.connection_id,
            )
        )

        delay = self.global_delay + (behaviour.delay if behaviour is not None else 0.0)
        if delay > 0:
            loop = asyncio.get_running_loop()
            holder: list[asyncio.TimerHandle] = []

            def later() -> None:
                proto.timers.discard(holder[0])
                self._answer(
                    proto, stream_id, apns_id, status=status, reason=reason, behaviour=behaviour
                )
                proto.flush()

            handle = loop.call_later(delay, later)
            holder.append(handle)
            proto.timers.add(handle)
        else:
            self._answer(
                proto, stream_id, apns_id, status=status, reason=reason, behaviour=behaviour
            )

    def _validate(
        self,
        headers: dict[str, str],
        path: str,
        token: str,
        body: bytes,
        certificate_authenticated: bool = False,
    ) -> tuple[int, str] | None:
        if headers.get(":method") != "POST":
            return 405, "MethodNotAllowed"
        if not path.startswith(PATH_PREFIX):
            return 404, "BadPath"
        if not token:
            return 400, "MissingDeviceToken"
        if not (certificate_authenticated and "authorization" not in headers):
            auth_failure = self._check_auth(headers.get("authorization"))
            if auth_failure is not None:
                return 403, auth_failure
        topic = headers.get("apns-topic")
        if not topic:
            return 400, "MissingTopic"
        if topic != self.topic:
            return 400, "DeviceTokenNotForTopic"
        apns_id = headers.get("apns-id")
        if apns_id is not None and not _UUID.match(apns_id):
            return 400, "BadMessageId"
        priority = headers.get("apns-priority")
        if priority is not None and priority not in _PRIORITIES:
            return 400, "BadPriority"
        push_type = headers.get("apns-push-type")
        if push_type is not None and push_type not in _PUSH_TYPES:
            return 400, "InvalidPushType"
        expiration = headers.get("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            return 400, "BadExpirationDate"
        if not body:
            return 400, "PayloadEmpty"
        if len(body) > MAX_PAYLOAD:
            return 413, "PayloadTooLarge"
        if self.check_token_format and not _HEX_TOKEN.match(token):
            return 400, "BadDeviceToken"
        return None

    def _check_auth(self, authorization: str | None) -> str | None:
        if not authorization:
            return "MissingProviderToken"
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return "InvalidProviderToken"
        iat = self._jwt_cache.get(token)
        if iat is None:
            try:
                header = jwt.get_unverified_header(token)
                if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
                    return "InvalidProviderToken"
                claims = jwt.decode(
                    token,
                    self._public_key,
                    algorithms=["ES256"],
                    options={"require": ["iss", "iat"], "verify_aud": False},
                    leeway=60,
                )
            except jwt.InvalidTokenError:
                return "InvalidProviderToken"
            if claims.get("iss") != self.team_id or not isinstance(claims.get("iat"), int):
                return "InvalidProviderToken"
            iat = int(claims["iat"])
            if len(self._jwt_cache) > 4096:
                self._jwt_cache.clear()
            self._jwt_cache[token] = iat
        if time.time() - iat > self.token_max_age:
            return "ExpiredProviderToken"
        return None

    @staticmethod
    def _status_of(behaviour: Behaviour) -> tuple[int, str]:
        kind = behaviour.kind
        if kind is Kind.OK:
            return 200, ""
        if kind is Kind.UNREGISTERED:
            return 410, "Unregistered"
        if kind is Kind.ERROR:
            return behaviour.status, behaviour.reason
        if kind is Kind.GOAWAY or kind is Kind.DROP:
            return 0, ""
        return _STATIC[kind]

    def _answer(
        self,
        proto: _H2Protocol,
        stream_id: int,
        apns_id: str,
        *,
        status: int,
        reason: str,
        behaviour: Behaviour | None,
    ) -> None:
        if proto.closed:
            return
        if behaviour is not None:
            if behaviour.kind is Kind.GOAWAY:
                proto.goaway(last_stream_id=max(stream_id - 2, 0))
                return
            if behaviour.kind is Kind.DROP:
                proto.abort()
                return
        headers: list[_Header] = [
            (":status", str(status)),
            NeverIndexedHeaderTuple("apns-id", apns_id),
        ]
        if status == 200:
            proto.respond(stream_id, headers, b"")
            return
        timestamp: int | None = None
        if behaviour is not None and behaviour.kind is Kind.UNREGISTERED:
            timestamp = behaviour.timestamp_ms
            if timestamp is None:
                timestamp = int(time.time() * 1000)
        if behaviour is not None and behaviour.retry_after is not None:
            headers.append(("retry-after", _seconds(behaviour.retry_after)))
        body = _reason_body(reason, timestamp)
        headers.append(("content-type", "application/json"))
        headers.append(("content-length", str(len(body))))
        proto.respond(stream_id, headers, body)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
