"""APNs over HTTP/2 through aioapns 4.0, with a small adapter of our own.

aioapns 4.0 (pinned) is used for its connection pool, channel (stream slot) pool, connection
lifecycle and JWT signing. The adapter replaces how a request travels on a connection, by
subclassing its protocol:

- HTTP/2 flow control when sending: DATA never goes beyond the connection's or the stream's
  window, nor in frames over the peer's SETTINGS_MAX_FRAME_SIZE. A body the windows cannot
  take yet waits, in order, for WINDOW_UPDATE (or a SETTINGS change of the initial window);
  aioapns called h2's `send_data` blindly, and on `FlowControlError` its pool slept a second
  and sent again, leaving a half-open stream and its channel behind;
- answers are keyed by stream id, not by `apns-id`: the same delivery sent twice at once (two
  processes, a retry racing a late answer) gets two answers. aioapns keys `requests[apns_id]`,
  so the second send overwrote the first's future and the first waited for its timeout;
- a send that fails in any way (timeout, cancellation, connection lost, an exception part-way)
  resets its stream (RST_STREAM CANCEL) and gives back its channel slot; a stream the server
  resets fails its send at once (REFUSED_STREAM: sent again by the pool) instead of hanging;
- it acknowledges received DATA (aioapns never sends WINDOW_UPDATE, so after ~1,200 error
  bodies a connection stalls for good; upstream Fatal1ty/aioapns PR #75, unmerged), and reads
  an answer's body whole, even split over several DATA frames;
- host and port come from settings (APNS_ENDPOINT), and the TLS context trusts APNS_CA_FILE
  and offers ALPN "h2";
- the body sent is exactly our payload bytes (aioapns would re-encode it), with an absolute
  `apns-expiration` and the delivery's own `apns-id`, the same on every retry;
- it keeps `Retry-After` with the answer, and one JWT per team is shared by every connection
  (aioapns signs one per connection);
- `ExpiredProviderToken` (403) renews that JWT (once per rejected token, at most once a
  minute) and is transient: the push goes again with the new one. Apple asks for a new token
  then, and our 30-minute refresh makes it rare (a suspended host, a clock that jumped);
  treating it as a configuration error would pause the whole lane for it.

tests/test_provider_adapters.py fails if the aioapns internals this relies on move;
tests/test_apns_flow_control.py drives it against the fake APNs granting only 65,535 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import jwt
from aioapns.common import NotificationRequest, NotificationResult
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsCertConnectionPool,
    APNsKeyConnectionPool,
    APNsTLSClientProtocol,
    JWTAuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed, MaxAttemptsExceeded
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
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
from h2.settings import ChangedSetting, SettingCodes
from hpack import Encoder

from push.outcome import ACCEPTED, ProviderSender, Push, PushOutcome, Verdict
from push.payloads import apns_payload
from storage.records import Provider

log = logging.getLogger(__name__)

PRODUCTION_HOST = "api.push.apple.com"
SANDBOX_HOST = "api.sandbox.push.apple.com"
JWT_REFRESH_SECONDS = 30 * 60  # Apple: not more often than every 20 minutes, before 60
# A JWT Apple called expired is renewed at once, but not more often than this: if the host's
# clock is wrong, every new token is "expired" too, and renewing at each answer would earn
# TooManyProviderTokenUpdates.
JWT_MIN_RENEW_SECONDS = 60.0
EXPIRED_JWT_REASON = "ExpiredProviderToken"

CREDENTIAL_HINT = "APNS_KEY_FILE, APNS_KEY_ID and APNS_TEAM_ID (or APNS_CERT_FILE) and APNS_SANDBOX"
TOPIC_HINT = "APNS_TOPIC (the app's bundle id)"
DEAD_TOKEN_REASONS = {"BadDeviceToken", "Unregistered", "ExpiredToken"}
TOPIC_REASONS = {"DeviceTokenNotForTopic", "TopicDisallowed", "BadTopic", "MissingTopic"}


@dataclass(frozen=True)
class APNsConfig:
    topic: str
    host: str
    port: int
    key_file: Path | None = None
    key_id: str | None = None
    team_id: str | None = None
    cert_file: Path | None = None
    ca_file: Path | None = None
    max_connections: int = 4
    request_timeout_s: float = 15.0


class _Request(NotificationRequest):
    __slots__ = ("expiration", "payload")

    def __init__(self, token: str, payload: bytes, apns_id: str, expiration: int) -> None:
        super().__init__(device_token=token, message={}, notification_id=apns_id)
        self.payload = payload
        self.expiration = expiration


class APNsResult(NotificationResult):
    """aioapns' result, with the answer's own Retry-After (None when absent) and the
    authorization header the request carried (None with certificate auth)."""

    __slots__ = ("authorization", "retry_after")

    def __init__(
        self,
        notification_id: str,
        status: str,
        description: str | None = None,
        timestamp: int | None = None,
        retry_after: str | None = None,
        *,
        authorization: str | None = None,
    ) -> None:
        super().__init__(notification_id, status, description=description, timestamp=timestamp)
        self.retry_after = retry_after
        self.authorization = authorization


class StreamResetByServer(ConnectionError):
    """APNs reset the request's stream (RST_STREAM) without answering it."""

    def __init__(self, error_code: int) -> None:
        super().__init__(f"stream reset by APNs, error code {error_code}")
        self.error_code = error_code


class _Stream:
    """One request in flight on a connection: what is left to send, and its answer so far."""

    __slots__ = ("answer", "apns_id", "authorization", "body", "retry_after", "status", "unsent")

    def __init__(self, apns_id: str, answer: asyncio.Future[APNsResult], body: bytes) -> None:
        self.apns_id = apns_id
        self.answer = answer
        self.unsent = memoryview(body)  # the part of our request body not sent yet
        self.status = ""
        self.retry_after: str | None = None
        self.authorization: str | None = None  # the JWT header sent, to renew it if expired
        self.body = bytearray()  # the answer's body


def _answer(stream: _Stream) -> APNsResult:
    status = stream.status or "500"
    if status == "200":
        return APNsResult(stream.apns_id, status, retry_after=stream.retry_after)
    reason: Any = ""
    timestamp: Any = None
    try:
        document = json.loads(bytes(stream.body)) if stream.body else {}
    except ValueError:
        reason = "UnreadableBody"
    else:
        if isinstance(document, dict):
            reason = document.get("reason", "")
            timestamp = document.get("timestamp")
    return APNsResult(
        stream.apns_id,
        status,
        description=reason if isinstance(reason, str) else "UnreadableBody",
        timestamp=timestamp if type(timestamp) is int else None,
        retry_after=stream.retry_after,
        authorization=stream.authorization,
    )


class _PlainEncoder(Encoder):
    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return bytes(super().encode(headers, huffman=False))


class RelayAPNsProtocol(APNsTLSClientProtocol):
    """aioapns' protocol with flow control, answers by stream, and every failure cleaned up.

    `streams` holds the requests in flight (each holding one of `free_channels`' slots until it
    is answered or abandoned); `unsent` those of them whose body still waits for window.
    aioapns' `requests`, `request_streams` and `request_statuses` stay empty.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Our headers are fixed names and checked values: skip h2's per-header validation and
        # normalisation, and Huffman coding (CPU, for ~30% fewer header bytes). Measured:
        # together they were a third of the dispatcher's time at 1,000 pushes/s.
        self.conn = H2Connection(
            config=H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.conn.encoder = _PlainEncoder()
        self.streams: dict[int, _Stream] = {}
        self.unsent: dict[int, _Stream] = {}  # in the order sent: first come, first sent
        self.closing = False

    # -- sending ---------------------------------------------------------------------------
    async def send_notification(self, request: NotificationRequest) -> APNsResult:
        if not isinstance(request, _Request):
            raise TypeError("the relay's APNs protocol sends _Request objects only")
        if self.closing:
            raise ConnectionClosed("connection closing")
        stream_id = await self.free_channels.acquire()
        stream = _Stream(request.notification_id, self.loop.create_future(), request.payload)
        self.streams[stream_id] = stream
        try:
            if self.closing:  # lost while we waited for a channel
                raise ConnectionClosed("connection closing")
            headers = [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", f"/3/device/{request.device_token}"),
                ("host", self.APNS_SERVER),
                ("apns-id", request.notification_id),
                ("apns-topic", self.apns_topic),
                ("apns-push-type", "alert"),
                ("apns-priority", "10"),
                ("apns-expiration", str(request.expiration)),
            ]
            if self.auth_provider is not None:
                stream.authorization = self.auth_provider.get_header()
                headers.append(("authorization", stream.authorization))
            try:
                self.conn.send_headers(stream_id=stream_id, headers=headers)
            except ProtocolError as exc:  # e.g. GOAWAY received: no new streams here
                raise ConnectionClosed(str(exc)) from None
            self.unsent[stream_id] = stream
            self._send_unsent()
            self.flush()
            return await stream.answer
        except BaseException:
            self._abandon(stream_id)
            raise

    def _send_unsent(self) -> None:
        """Send what the windows allow of the waiting bodies, oldest first."""
        conn = self.conn
        finished: list[int] = []
        failed: list[tuple[int, ProtocolError]] = []
        for stream_id, stream in self.unsent.items():
            if conn.outbound_flow_control_window <= 0:
                break
            unsent = stream.unsent
            try:
                while True:
                    size = min(
                        conn.local_flow_control_window(stream_id),
                        conn.max_outbound_frame_size,
                        len(unsent),
                    )
                    if size <= 0 and unsent:
                        break  # this stream's window is shut: let the next one use the rest
                    conn.send_data(stream_id, unsent[:size], end_stream=size == len(unsent))
                    unsent = unsent[size:]
                    if not unsent:
                        finished.append(stream_id)
                        break
            except ProtocolError as exc:  # the stream or connection closed under us
                failed.append((stream_id, exc))
            stream.unsent = unsent
        for stream_id in finished:
            self.unsent.pop(stream_id, None)
        for stream_id, error in failed:
            self._fail(stream_id, ConnectionClosed(str(error)))

    def _release(self, stream_id: int) -> _Stream | None:
        """Forget a stream and give its channel back: exactly once per stream."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self.unsent.pop(stream_id, None)
            self.free_channels.release()
        return stream

    def _reset(self, stream_id: int) -> None:
        with contextlib.suppress(ProtocolError):  # never opened, or closed already
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)

    def _abandon(self, stream_id: int) -> None:
        """Our side gave up on a stream (timeout, cancellation, an error): reset, release."""
        if self._release(stream_id) is not None:
            self._reset(stream_id)
            if self.transport is not None and not self.transport.is_closing():
                self.flush()

    def _fail(self, stream_id: int, error: Exception) -> None:
        stream = self._release(stream_id)
        if stream is not None:
            self._reset(stream_id)
            if not stream.answer.done():
                stream.answer.set_exception(error)

    # -- receiving ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:  # h2 has queued GOAWAY: send it and close
            log.warning("APNs connection closed: HTTP/2 protocol error (%s)", type(exc).__name__)
            self.flush()
            self.close()
            return
        window_opened = False
        for event in events:
            kind = type(event)
            if kind is ResponseReceived:
                assert isinstance(event, ResponseReceived)
                self._on_response(event)
            elif kind is DataReceived:
                assert isinstance(event, DataReceived)
                self._on_data(event)
            elif kind is StreamEnded:
                assert isinstance(event, StreamEnded)
                self._on_ended(event.stream_id)
            elif kind is WindowUpdated:
                window_opened = True
            elif kind is RemoteSettingsChanged:
                assert isinstance(event, RemoteSettingsChanged)
                self.on_remote_settings_changed(
                    cast(dict[SettingCodes, ChangedSetting], event.changed_settings)
                )
                window_opened = True  # the initial window or the frame size may have grown
            elif kind is StreamReset:
                assert isinstance(event, StreamReset)
                self._on_reset(event)
            elif kind is ConnectionTerminated:
                assert isinstance(event, ConnectionTerminated)
                self.on_connection_terminated(event)
        if window_opened and self.unsent:
            self._send_unsent()
        if self.transport is not None and not self.transport.is_closing():
            self.flush()

    def _on_response(self, event: ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is None:
            return
        for name, value in event.headers or ():
            if name == b":status":
                stream.status = bytes(value).decode("ascii", "replace")
            elif name == b"retry-after":
                stream.retry_after = bytes(value).decode("ascii", "replace")

    def _on_data(self, event: DataReceived) -> None:
        # The fix aioapns lacks: give the window back, or the server stops sending. And keep
        # the body until the stream ends: it may come in several DATA frames.
        stream_id = event.stream_id or 0
        self.conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        stream = self.streams.get(stream_id)
        if stream is not None and event.data:
            stream.body += event.data

    def _on_ended(self, stream_id: int) -> None:
        unfinished = stream_id in self.unsent  # answered before our body was all sent
        stream = self._release(stream_id)
        if stream is None:
            return
        if unfinished:
            self._reset(stream_id)
        if not stream.answer.done():
            stream.answer.set_result(_answer(stream))

    def _on_reset(self, event: StreamReset) -> None:
        stream = self._release(event.stream_id or 0)
        if stream is None or stream.answer.done():
            return
        code = int(event.error_code or 0)
        if code == ErrorCodes.REFUSED_STREAM:  # not processed: the pool sends it again
            stream.answer.set_exception(ConnectionClosed("stream refused"))
        else:
            stream.answer.set_exception(StreamResetByServer(code))

    def flush(self) -> None:
        # Nothing to write on a connection going away: asyncio would log a warning for each
        # write past the loss ("socket.send() raised exception"), a flood while APNs drops us.
        # The requests whose bytes stay unsent fail in connection_lost, a loop turn later, and
        # the pool sends them again on another connection.
        if self.transport is None or _going_away(self.transport):
            return
        super().flush()

    # -- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        self.closing = True
        super().close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        try:
            super().connection_lost(exc)  # the pool forgets us; channel waiters fail
        finally:
            for stream_id in list(self.streams):
                self._fail(stream_id, ConnectionClosed(str(exc)))


def _going_away(transport: asyncio.BaseTransport) -> bool:
    """The transport is closing, or (TLS) the socket under it already lost the connection.

    asyncio's TLS transport learns of a lost socket a loop turn or two after the socket's
    own transport, and passes writes down meanwhile; that inner transport is private, so it
    is looked up defensively (absent, the TLS transport's own state is all there is)."""
    if transport.is_closing():
        return True
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    return bool(inner is not None and inner.is_closing())


def _protocol_class(host: str, port: int) -> type[RelayAPNsProtocol]:
    attributes = {"APNS_SERVER": host, "APNS_PORT": port}
    return type("ConfiguredAPNsProtocol", (RelayAPNsProtocol,), attributes)


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.set_alpn_protocols(["h2"])
    return context


class RenewableJWT(JWTAuthorizationHeaderProvider):
    """aioapns' JWT provider (a new token every `TOKEN_TTL` seconds), plus `renew`: forget a
    token APNs called expired, so the next request signs a new one."""

    TOKEN_TTL = JWT_REFRESH_SECONDS

    def __init__(self, key: str, key_id: str | None, team_id: str | None) -> None:
        super().__init__(key, key_id, team_id)
        self._header: str | None = None
        self._issued_at = 0.0
        self._renewed_at: float | None = None  # monotonic

    def get_header(self) -> str:
        now = time.time()
        if self._header is None or self._issued_at < now - self.TOKEN_TTL:
            self._issued_at = now
            token = jwt.encode(
                payload={"iss": self.team_id, "iat": int(now)},
                key=self.key,
                algorithm="ES256",
                headers={"kid": self.key_id},
            )
            self._header = f"bearer {token}"
        return self._header

    def renew(self, rejected: str | None) -> bool:
        """Drop the current token if it is the one APNs rejected (answers for a token already
        replaced change nothing), at most once every JWT_MIN_RENEW_SECONDS."""
        if rejected is None or rejected != self._header:
            return False
        now = time.monotonic()
        if self._renewed_at is not None and now - self._renewed_at < JWT_MIN_RENEW_SECONDS:
            return False
        self._renewed_at = now
        self._header = None
        return True


def _usable(connection: APNsBaseClientProtocol) -> APNsBaseClientProtocol:
    """A new connection, unless APNs closed it while it opened.

    The pool appends what `create_connection` returns to its list once the call resumes;
    a connection lost in between (APNs accepting then resetting, as it does when overloaded)
    would have tried to leave a list it was not in yet (ValueError in the loop's callback),
    then been appended dead, and chosen first ever after: every push on it failing at once.
    Refused here instead, the pool waits a second and connects again.
    """
    if getattr(connection, "closing", False):
        raise ConnectionError("APNs closed the connection as it opened")
    return connection


class _PoolFixes:
    """For aioapns' pools: forgetting a connection it never listed is not an error."""

    connections: list[APNsBaseClientProtocol]

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        with contextlib.suppress(ValueError):
            self.connections.remove(connection)


class _SharedJWTKeyPool(_PoolFixes, APNsKeyConnectionPool):
    """One JWT per team for every connection, refreshed every 30 minutes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.auth_provider = RenewableJWT(self.key, self.key_id, self.team_id)

    async def create_connection(self) -> APNsBaseClientProtocol:
        factory = partial(
            self.protocol_class,
            self.apns_topic,  # type: ignore[arg-type]
            self.loop,
            self.discard_connection,  # type: ignore[arg-type]
            self.auth_provider,
        )
        connection: APNsBaseClientProtocol = await self._create_connection(factory)
        return _usable(connection)


class _CertPool(_PoolFixes, APNsCertConnectionPool):
    async def create_connection(self) -> APNsBaseClientProtocol:
        connection: APNsBaseClientProtocol = await super().create_connection()
        return _usable(connection)


def classify(result: NotificationResult, retry_after: str | None) -> PushOutcome:
    """Map an APNs answer to what the dispatcher does about it."""
    status = str(result.status)
    reason = str(result.description or "")
    if status == "200":
        return ACCEPTED
    if reason in DEAD_TOKEN_REASONS or status == "410":
        timestamp = result.timestamp if status == "410" else None
        return PushOutcome(
            Verdict.DEAD_TOKEN,
            reason=reason or status,
            invalid_since_ms=int(timestamp) if timestamp else None,
        )
    if reason in TOPIC_REASONS:
        return PushOutcome(Verdict.CONFIG_ERROR, reason=reason, hint=TOPIC_HINT)
    if reason == EXPIRED_JWT_REASON:  # the sender has renewed the JWT: send again
        return PushOutcome.transient(reason)
    if status == "403":
        return PushOutcome(Verdict.CONFIG_ERROR, reason=reason or status, hint=CREDENTIAL_HINT)
    if status == "429" or status.startswith("5"):
        seconds: float | None = None
        if retry_after is not None:
            try:
                seconds = max(0.0, float(retry_after))
            except ValueError:
                seconds = None
        return PushOutcome.transient(reason or status, seconds)
    return PushOutcome(Verdict.REJECTED, reason=reason or status)


class APNsSender(ProviderSender):
    provider = Provider.APNS
    name = "APNs"
    batch_size = 1

    def __init__(self, config: APNsConfig, *, max_in_flight: int = 250) -> None:
        self.config = config
        self.max_in_flight = max_in_flight
        self._pool: APNsKeyConnectionPool | APNsCertConnectionPool | None = None

    def _build_pool(self) -> APNsKeyConnectionPool | APNsCertConnectionPool:
        config = self.config
        context = _ssl_context(config.ca_file)
        pool: APNsKeyConnectionPool | APNsCertConnectionPool
        if config.cert_file is not None:
            pool = _CertPool(
                cert_file=str(config.cert_file),
                topic=config.topic,
                max_connections=config.max_connections,
                ssl_context=context,
            )
        else:
            assert config.key_file is not None
            pool = _SharedJWTKeyPool(
                key=config.key_file.read_text(),
                key_id=config.key_id,
                team_id=config.team_id,
                topic=config.topic,
                max_connections=config.max_connections,
                ssl_context=context,
            )
        pool.protocol_class = _protocol_class(config.host, config.port)
        return pool

    async def send(self, pushes: list[Push]) -> list[PushOutcome]:
        return [await self._send_one(push) for push in pushes]

    async def _send_one(self, push: Push) -> PushOutcome:
        if self._pool is None:
            self._pool = self._build_pool()  # needs the running loop: built on first use
        payload, trimmed = apns_payload(push.data)
        request = _Request(push.token, payload, push.apns_id, push.expiration_s)
        try:
            # asyncio.timeout, unlike wait_for, adds no task per push.
            async with asyncio.timeout(self.config.request_timeout_s):
                result = await self._pool.send_notification(request)
        except TimeoutError:
            return PushOutcome.transient("timeout")
        except (ConnectionError, ConnectionClosed, MaxAttemptsExceeded, OSError) as exc:
            return PushOutcome.transient(type(exc).__name__)
        retry_after = result.retry_after if isinstance(result, APNsResult) else None
        outcome = classify(result, retry_after)
        if outcome.reason == EXPIRED_JWT_REASON and isinstance(result, APNsResult):
            auth = getattr(self._pool, "auth_provider", None)
            if isinstance(auth, RenewableJWT) and auth.renew(result.authorization):
                log.warning("APNs said our provider token expired: signing a new one")
        return outcome.with_trimmed() if trimmed else outcome

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def describe(config: APNsConfig) -> str:
    auth = "certificate" if config.cert_file else "token (.p8)"
    return f"{config.host}:{config.port}, {auth} auth, topic {config.topic}"
