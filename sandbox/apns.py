"""A fake Apple Push Notification service: HTTP/2 over TLS on 127.0.0.1.

It speaks the real provider API (``POST /3/device/<token>``, token auth with ES256 JWTs, Apple's
status codes and ``{"reason": ...}`` bodies), honours HTTP/2 flow control in both directions
(the server session it shares with the fake FCM: sandbox/h2server.py), and answers each device
token as scripted (see :mod:`sandbox.script`).

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
import ssl
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import hpack.hpack
import hpack.huffman_table
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from h2.events import StreamReset
from h2.exceptions import FlowControlError, FrameTooLargeError, ProtocolError
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from sandbox._runner import LoopServer, check_loopback
from sandbox.certs import (
    ApnsKey,
    TlsFiles,
    client_ssl_context,
    generate_apns_key,
    generate_tls,
    server_ssl_context,
)
from sandbox.h2server import H2ServerSession, Request, reset_on_close
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


def _reason_body(reason: str, timestamp_ms: int | None = None) -> bytes:
    if timestamp_ms is None:
        return b'{"reason":"' + reason.encode() + b'"}'
    return json.dumps({"reason": reason, "timestamp": timestamp_ms}, separators=(",", ":")).encode()


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


class _H2Protocol(H2ServerSession, asyncio.Protocol):
    def __init__(self, server: FakeApns, connection_id: int) -> None:
        super().__init__(connection_id)
        self.server = server
        self.strict_flow_control = server.strict_flow_control
        self.transport: asyncio.Transport | None = None
        self.certificate_authenticated = False
        # (stream id, bytes) consumed while the server holds its window updates back.
        self.withheld: list[tuple[int, int]] = []

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but write and close alike)
        self.transport = transport = cast(asyncio.Transport, transport)
        self.certificate_authenticated = bool(transport.get_extra_info("peercert"))
        server = self.server
        server.connections_total += 1
        if server.down:
            self.closed = True
            _abort(transport)
            return
        server._protocols.add(self)
        self.open(wide_window=not server.strict_flow_control)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._protocols.discard(self)
        self.server.half_open_at_close += len(self.requests)
        self.closed_down()
        self.requests.clear()
        self.bodies.take()
        self.active.clear()

    def pause_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- H2ServerSession -----------------------------------------------------------------------
    def stream_limit(self) -> int:
        return self.server.max_concurrent_streams

    def on_request(self, stream_id: int, request: Request) -> None:
        self.server._on_request(self, stream_id, request)

    def on_protocol_error(self, exc: ProtocolError) -> None:
        if isinstance(exc, FlowControlError | FrameTooLargeError):
            # GOAWAY(FLOW_CONTROL_ERROR / FRAME_SIZE_ERROR) is queued: record it too.
            self.server.violations.append(
                FlowViolation(self.connection_id, type(exc).__name__, str(exc))
            )

    def on_reset(self, event: StreamReset, request: Request | None) -> None:
        sid = event.stream_id
        if event.remote_reset and (request is not None or sid in self.active):
            self.server.client_resets.append(
                ClientReset(self.connection_id, sid, int(event.error_code), request is None)
            )

    def consume(self, stream_id: int, size: int) -> None:
        """As H2ServerSession's, unless the server holds window updates back."""
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

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def goaway(self, last_stream_id: int | None = None, reason: str = "Shutdown") -> None:
        """Send GOAWAY as Apple does (a reason in its debug data) and close at once."""
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


def _abort(transport: asyncio.Transport) -> None:
    """Close with RST (SO_LINGER 0) rather than a FIN: an abrupt connection loss."""
    reset_on_close(transport.get_extra_info("socket"))
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
        self._server: asyncio.Server | None = None
        self._protocols: set[_H2Protocol] = set()
        self._jwt_cache: dict[str, int] = {}
        self._next_connection_id = 0

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

    def client_ssl_context(self, alpn: Iterable[str] | None = ("h2",)) -> ssl.SSLContext:
        """A client context trusting this fake's CA (ALPN ``alpn``; ``None``: offer none)."""
        return client_ssl_context(self.tls, alpn)

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

    # -- request handling ----------------------------------------------------------------------
    def _on_request(self, proto: _H2Protocol, stream_id: int, request: Request) -> None:
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

        def answer() -> None:
            self._answer(
                proto, stream_id, apns_id, status=status, reason=reason, behaviour=behaviour
            )

        delay = self.global_delay + (behaviour.delay if behaviour is not None else 0.0)
        if delay > 0:
            proto.later(delay, answer)
        else:
            answer()

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
