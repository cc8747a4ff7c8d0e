"""APNs over HTTP/2 through our own client (push/httppool.py, push/h2conn.py), as FCM.

aioapns 4.0 with an adapter of ours carried APNs until measured: through it a push cost ~215 us
of the sender's CPU against ~68 us for FCM on the shared client (bench/sender_bench.py; a
socket write per push, h2's per-stream scans, HPACK table searches, a task and a future per
push). Now:

- a bounded pool of HTTP/2 connections to APNS_ENDPOINT (default Apple's, production or
  sandbox), TLS offering ALPN "h2" and trusting APNS_CA_FILE; HTTP/2 only (APNs has no other);
  flow control both ways, at most the server's SETTINGS_MAX_CONCURRENT_STREAMS per connection,
  writes coalesced once per loop iteration (push/h2conn.py);
- certificate auth (APNS_CERT_FILE: the client certificate and its key, in the TLS context) or
  token auth: one ES256 JWT per team shared by every connection, signed again every 30
  minutes (push/apns_auth.py);
- each request carries exactly our body bytes (push/payloads.py `apns_payload`) and the
  headers aioapns sent, in its order: `:method`, `:scheme`, `:path /3/device/<token>`,
  `host`, `apns-id` (the delivery's own, the same on every retry), `apns-topic`,
  `apns-push-type: alert`, `apns-priority: 10`, an absolute `apns-expiration`, and
  `authorization` with token auth. The three per-push values go never-indexed (HPACK), so
  the others stay indexed at one byte each (push/hpack_cache.py);
- answers are read per stream, never matched by apns-id: the same delivery sent twice at once
  (two processes, a retry racing a late answer) gets two answers. Each answer's status,
  apns-id, Retry-After and JSON body (reason, 410 timestamp) make an `APNsAnswer`, judged by
  `classify`;
- a request APNs certainly did not process (REFUSED_STREAM, a stream above a GOAWAY's last
  stream id, a body cut off by a lost connection) is sent once more at once, on another
  connection after a GOAWAY; anything else that fails before an answer is transient: the
  dispatcher retries it later, with the same apns-id;
- every step is bounded: connecting (TCP, TLS, the server's SETTINGS), each request (queueing
  for a stream included), and the whole `send` (`send_timeout_s`, well below DELIVERY_LEASE's
  60 s default); a request given up is reset (RST_STREAM CANCEL) and its stream released.

The batch loop (rounds, the resend of refused requests, the deadline) is push/batch.py's,
shared with FCM; this module says how a request is built and an answer judged.

tests/test_apns_flow_control.py drives it against the fake APNs granting only 65,535 bytes;
tests/test_apns_sender.py checks the wire (headers, JWT, answers); tests/test_sandbox_apns.py
drives the fake with it; tests/test_provider_adapters.py its connections, JWT and cert auth.
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpack import NeverIndexedHeaderTuple

from push.apns_auth import ProviderTokens, load_signing_key
from push.batch import PooledSender
from push.config_checks import DeliveryConfigError, host_port, readable
from push.exchange import Exchange
from push.httppool import ConnectionPool, Endpoint, PoolLimits
from push.outcome import ACCEPTED, Push, PushOutcome, Verdict
from push.payloads import apns_payload
from settings import Settings
from storage.records import Provider

PRODUCTION_HOST = "api.push.apple.com"
SANDBOX_HOST = "api.sandbox.push.apple.com"

CREDENTIAL_HINT = "APNS_KEY_FILE, APNS_KEY_ID and APNS_TEAM_ID (or APNS_CERT_FILE) and APNS_SANDBOX"
TOPIC_HINT = "APNS_TOPIC (the app's bundle id)"
DEAD_TOKEN_REASONS = {"BadDeviceToken", "Unregistered", "ExpiredToken"}
TOPIC_REASONS = {"DeviceTokenNotForTopic", "TopicDisallowed", "BadTopic", "MissingTopic"}
PATH_PREFIX = b"/3/device/"
# Answers that mean "not our token" or "our configuration is wrong", told apart by how many
# say the same (push/dispatcher.py), and the settings to check when it is the configuration.
SUSPECT_REASONS = {
    "BadDeviceToken": (
        "APNS_SANDBOX (False for App Store and TestFlight builds, True for development builds)"
        " and APNS_TOPIC"
    ),
    "DeviceTokenNotForTopic": "APNS_TOPIC (the app's bundle id) and APNS_SANDBOX",
}
TOKEN_LENGTHS = range(64, 201, 2)  # 32-byte tokens today; Apple says they may grow
_HEX = frozenset("0123456789abcdefABCDEF")


def is_device_token(token: str) -> bool:
    """A token APNs could accept: hex, of one of `TOKEN_LENGTHS` (compared ignoring case)."""
    return len(token) in TOKEN_LENGTHS and _HEX.issuperset(token)


def has_token_shape(token: str) -> bool:
    """An APNs token as they are today (64 hex characters), for a client naming no device."""
    return len(token) == 64 and _HEX.issuperset(token)


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
    max_streams: int = 1000  # per connection (the server's own limit may be lower)
    connect_timeout_s: float = 10.0  # TCP + TLS + the server's HTTP/2 SETTINGS
    request_timeout_s: float = 15.0  # one request, queueing for a stream included
    send_timeout_s: float = 30.0  # one `send` call, the resend of refused requests included


@dataclass(frozen=True, slots=True)
class APNsAnswer:
    """What APNs answered one request: its status, apns-id, reason, 410 timestamp, Retry-After."""

    status: str
    apns_id: str | None = None
    description: str | None = None  # Apple's `reason`
    timestamp: int | None = None  # 410: when the token stopped being valid (ms)
    retry_after: str | None = None


def read_answer(exchange: Exchange) -> APNsAnswer:
    """The answer an exchange got (an exchange that failed has none)."""
    status = str(exchange.status) if exchange.status else "500"
    kept = exchange.response_headers
    raw_id = kept.get(b"apns-id") if kept is not None else None
    apns_id = raw_id.decode("latin-1") if raw_id is not None else None
    if status == "200":
        return APNsAnswer(status, apns_id, retry_after=exchange.retry_after)
    reason: Any = ""
    timestamp: Any = None
    try:
        document = json.loads(bytes(exchange.response)) if exchange.response else {}
    except ValueError:
        reason = "UnreadableBody"
    else:
        if isinstance(document, dict):
            reason = document.get("reason", "")
            timestamp = document.get("timestamp")
    return APNsAnswer(
        status,
        apns_id,
        description=reason if isinstance(reason, str) else "UnreadableBody",
        timestamp=timestamp if type(timestamp) is int else None,
        retry_after=exchange.retry_after,
    )


log = logging.getLogger(__name__)

EXPIRED_JWT_REASON = "ExpiredProviderToken"


def classify(result: APNsAnswer, retry_after: str | None) -> PushOutcome:
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
    if reason == EXPIRED_JWT_REASON:  # the sender renews the JWT: try again
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


def ssl_context(config: APNsConfig) -> ssl.SSLContext:
    """TLS offering ALPN h2, trusting APNS_CA_FILE (else the system's CAs), with the client
    certificate for certificate auth. Raises ssl.SSLError or OSError for a bad file."""
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    context.set_alpn_protocols(["h2"])
    if config.cert_file is not None:
        context.load_cert_chain(str(config.cert_file))
    return context


def provider_tokens(config: APNsConfig) -> ProviderTokens | None:
    """Token auth's JWT source, or None with certificate auth. ValueError for a bad key."""
    if config.cert_file is not None:
        return None
    if config.key_file is None or not config.key_id or not config.team_id:
        raise ValueError("token auth needs a key file, a key id and a team id")
    key = load_signing_key(config.key_file.read_bytes())
    return ProviderTokens(key, config.key_id, config.team_id)


_METHOD = (b":method", b"POST")
_SCHEME = (b":scheme", b"https")
_PUSH_TYPE = (b"apns-push-type", b"alert")
_PRIORITY = (b"apns-priority", b"10")


class APNsSender(PooledSender[APNsConfig]):
    provider = Provider.APNS
    name = "APNs"
    credential_hint = CREDENTIAL_HINT

    def __init__(
        self, config: APNsConfig, *, max_in_flight: int = 250, batch_size: int = 50
    ) -> None:
        super().__init__(config, max_in_flight=max_in_flight, batch_size=batch_size)
        self.tokens: ProviderTokens | None = None
        self._host = (b"host", config.host.encode("idna"))
        self._topic = (b"apns-topic", config.topic.encode())
        self._authorization: tuple[bytes, bytes] | None = None

    def _connect(self) -> ConnectionPool:
        config = self.config
        context = ssl_context(config)
        self.tokens = provider_tokens(config)
        return ConnectionPool(
            Endpoint(host=config.host, port=config.port, path="/3/device/", ssl_context=context),
            PoolLimits(
                max_h2_connections=config.max_connections,
                max_streams=config.max_streams,
                connect_timeout_s=config.connect_timeout_s,
                http2_only=True,
            ),
            name=self.name,
        )

    def _payload(self, push: Push) -> tuple[bytes, bool]:
        return apns_payload(push.data)

    def _batch(self, pushes: list[Push]) -> _APNsBatch:
        return _APNsBatch(self, pushes)

    def _authorization_field(self) -> tuple[bytes, bytes] | None:
        if self.tokens is None:
            return None
        value = self.tokens.header()
        field = self._authorization
        if field is None or field[1] is not value:
            field = self._authorization = (b"authorization", value)
        return field

    def _headers(
        self, push: Push, authorization: tuple[bytes, bytes] | None
    ) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = [
            _METHOD,
            _SCHEME,
            NeverIndexedHeaderTuple(b":path", PATH_PREFIX + push.token.encode()),
            self._host,
            NeverIndexedHeaderTuple(b"apns-id", push.apns_id.encode()),
            self._topic,
            _PUSH_TYPE,
            _PRIORITY,
            NeverIndexedHeaderTuple(b"apns-expiration", b"%d" % push.expiration_s),
        ]
        if authorization is not None:
            headers.append(authorization)
        return headers

    async def close(self) -> None:
        self.tokens = None
        await super().close()


class _APNsBatch:
    """One `send`: each round signs with the current JWT; an ExpiredProviderToken answer
    renews it (the push itself is transient: the dispatcher tries it again)."""

    def __init__(self, sender: APNsSender, pushes: list[Push]) -> None:
        self.sender = sender
        self.pushes = pushes
        self.authorization: tuple[bytes, bytes] | None = None

    async def authorize(self, deadline: float) -> PushOutcome | None:
        self.authorization = self.sender._authorization_field()
        return None

    def exchange(self, index: int, body: bytes) -> Exchange:
        headers = self.sender._headers(self.pushes[index], self.authorization)
        return Exchange(body, "", index, headers=headers, response_headers={})

    def judge(self, exchange: Exchange) -> PushOutcome:
        answered = read_answer(exchange)
        tokens, authorization = self.sender.tokens, self.authorization
        if (
            answered.description == EXPIRED_JWT_REASON
            and tokens is not None
            and authorization is not None
            and tokens.renew(authorization[1])
        ):
            log.warning("APNs said our provider token expired: signing a new one")
        return classify(answered, answered.retry_after)


def describe(config: APNsConfig) -> str:
    auth = "certificate" if config.cert_file else "token (.p8)"
    return f"{config.host}:{config.port}, {auth} auth, topic {config.topic}"


def config_from_settings(settings: Settings) -> APNsConfig | None:
    """The sender's config, None without credentials (APNs off); DeliveryConfigError when
    the credentials are inconsistent or a file they name is not what it should be."""
    if settings.APNS_KEY_FILE is None and settings.APNS_CERT_FILE is None:
        return None
    if settings.APNS_KEY_FILE is not None and settings.APNS_CERT_FILE is not None:
        raise DeliveryConfigError("APNS_KEY_FILE and APNS_CERT_FILE: set one, not both")
    if settings.APNS_KEY_FILE is not None:
        readable(settings.APNS_KEY_FILE, "APNS_KEY_FILE")
        if not settings.APNS_KEY_ID or not settings.APNS_TEAM_ID:
            raise DeliveryConfigError("APNS_KEY_FILE needs APNS_KEY_ID and APNS_TEAM_ID too")
    if settings.APNS_CERT_FILE is not None:
        readable(settings.APNS_CERT_FILE, "APNS_CERT_FILE")
    if settings.APNS_CA_FILE is not None:
        readable(settings.APNS_CA_FILE, "APNS_CA_FILE")
    if settings.APNS_ENDPOINT:
        host, port = host_port(settings.APNS_ENDPOINT, "APNS_ENDPOINT")
    else:
        host, port = (SANDBOX_HOST if settings.APNS_SANDBOX else PRODUCTION_HOST), 443
    config = APNsConfig(
        topic=settings.APNS_TOPIC,
        host=host,
        port=port,
        key_file=settings.APNS_KEY_FILE,
        key_id=settings.APNS_KEY_ID or None,
        team_id=settings.APNS_TEAM_ID or None,
        cert_file=settings.APNS_CERT_FILE,
        ca_file=settings.APNS_CA_FILE,
        max_connections=settings.APNS_CONNECTIONS,
        request_timeout_s=settings.APNS_REQUEST_TIMEOUT,
    )
    _check_files(config)
    return config


def _check_files(config: APNsConfig) -> None:
    """Read the files APNs will use now, not at the first push: a wrong one stops the start."""
    try:
        provider_tokens(config)
    except (ValueError, OSError):
        raise DeliveryConfigError(
            f"APNS_KEY_FILE: {config.key_file} is not an APNs signing key"
            " (the .p8 file from Apple: an EC P-256 private key in PEM)"
        ) from None
    if config.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(config.ca_file))
        except (ValueError, OSError):
            raise DeliveryConfigError(
                f"APNS_CA_FILE: {config.ca_file} holds no PEM certificate to trust"
            ) from None
    if config.cert_file is not None:
        try:
            ssl_context(config)
        except (ValueError, OSError):
            raise DeliveryConfigError(
                f"APNS_CERT_FILE: {config.cert_file} is not a PEM certificate with its private key"
            ) from None
