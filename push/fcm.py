"""FCM HTTP v1 over our own HTTP/2 client: many pushes multiplexed on few connections.

firebase-admin's `send_each_async` made one HTTP/1.1 request per message through httpx, with
its per-request authentication flow: ~250 pushes/s to the fake FCM in bench/push_bench.py,
against ~3,800 now (and ~70 us of the sender's CPU per push: bench/sender_bench.py). A
`send` call is one task (the dispatcher's) for its whole batch; no task or future per push.

- push/httppool.py keeps a bounded pool of connections to FCM_ENDPOINT (default
  https://fcm.googleapis.com): HTTP/2 when TLS negotiates ALPN "h2" (push/h2conn.py: many
  streams per connection, flow control both ways, GOAWAY handled), else HTTP/1.1 with
  keep-alive (push/h1conn.py; a plain http:// endpoint, a proxy). FCM_CA_FILE trusts a
  private CA for a TLS endpoint (and for the service account's token endpoint).
- firebase-admin and google-auth still do what they are good at: loading the service
  account and getting the OAuth access token, refreshed ahead of expiry in a worker thread
  (push/fcm_auth.py).
- The body is exactly what firebase-admin's encoder makes of `Message(token=..., data=...,
  android=AndroidConfig(priority="high"))`, built from a template (push/payloads.py;
  tests/test_fcm_body.py compares the bytes).
- Answers map to verdicts as firebase-admin's exceptions did (`classify`; the contract is
  pinned by tests/test_fcm_sender.py against firebase-admin's own error parsing).
- A 401 (our access token refused) gets one new token and one more try; a request the
  server refused unprocessed (GOAWAY, REFUSED_STREAM) is sent once more at once; anything
  else that fails before an answer is transient: the dispatcher retries it later.
- Every step is bounded: connecting (TCP, TLS, HTTP/2 SETTINGS), the token, each request,
  and the whole `send` (`send_timeout_s`, well below DELIVERY_LEASE's 60 s default).
- The batch loop (rounds, resends, the deadline) is push/batch.py's, shared with APNs.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from firebase_admin import credentials

from push.batch import PooledSender
from push.config_checks import DeliveryConfigError, http_url, readable
from push.exchange import Exchange
from push.fcm_auth import AccessTokens
from push.httppool import ConnectionPool, Endpoint, PoolLimits
from push.outcome import ACCEPTED, Push, PushOutcome, Verdict
from push.payloads import fcm_body
from settings import Settings
from storage.records import Provider

CREDENTIAL_HINT = "FCM_SERVICE_ACCOUNT_FILE and FCM_PROJECT_ID"
DEFAULT_ENDPOINT = "https://fcm.googleapis.com"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
THIRD_PARTY_AUTH_CODES = frozenset({"THIRD_PARTY_AUTH_ERROR", "APNS_AUTH_ERROR"})
# The answer that means "not our token" or "our configuration is wrong", told apart by how many
# say the same (push/dispatcher.py), and the settings to check when it is the configuration.
SUSPECT_REASONS = {
    "SENDER_ID_MISMATCH": (
        "FCM_SERVICE_ACCOUNT_FILE (a service account of the app's own Firebase project)"
        " and FCM_PROJECT_ID"
    ),
}
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]{1,4096}")


def is_device_token(token: str) -> bool:
    """A token FCM could accept: 1 to 4096 printable ASCII characters, kept verbatim."""
    return _PRINTABLE_ASCII.fullmatch(token) is not None


# firebase-admin's reading of a Google API error (firebase_admin/_utils.py): the JSON
# `error.status` if any, else the HTTP status's canonical code; unknown words are UNKNOWN.
_HTTP_STATUS_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "CONFLICT",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_CANONICAL_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "NOT_FOUND",
        "ABORTED",
        "ALREADY_EXISTS",
        "CONFLICT",
        "RESOURCE_EXHAUSTED",
        "CANCELLED",
        "DATA_LOSS",
        "UNKNOWN",
        "INTERNAL",
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
    }
)
_TRANSIENT_CODES = frozenset(
    {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "UNKNOWN"}
)


@dataclass(frozen=True)
class FCMConfig:
    service_account_file: Path
    project_id: str | None = None
    endpoint: str | None = None  # e.g. https://127.0.0.1:8443; None: Google's
    ca_file: Path | None = None  # trusted for a TLS endpoint (and the token endpoint)
    max_connections: int = 4  # HTTP/2 connections
    max_streams: int = 100  # per HTTP/2 connection (the server's own limit may be lower)
    http1_connections: int = 16  # when the endpoint offers no HTTP/2
    connect_timeout_s: float = 10.0  # TCP + TLS + the server's HTTP/2 SETTINGS
    token_timeout_s: float = 10.0  # waiting for an OAuth access token
    request_timeout_s: float = 15.0  # one request, queueing for a connection included
    send_timeout_s: float = 30.0  # one `send` call, retries included


@dataclass(frozen=True)
class FCMError:
    """An FCM error answer, read as firebase-admin reads it."""

    code: str  # the canonical code, e.g. NOT_FOUND, UNAVAILABLE
    fcm_code: str  # details[].errorCode of type FcmError, e.g. UNREGISTERED; "" if none
    message: str


def read_error(status: int, body: bytes) -> FCMError:
    content = body.decode("utf-8", "replace")
    data: Any = None
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, dict) else {}
    message = error.get("message")
    if not message or not isinstance(message, str):
        message = f"Unexpected HTTP response with status: {status}; body: {content}"
    fcm_code = ""
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type") == FCM_ERROR_TYPE:
            fcm_code = str(detail.get("errorCode") or "")
            break
    code = error.get("status") or _HTTP_STATUS_CODES.get(status, "UNKNOWN")
    if code not in _CANONICAL_CODES:
        code = "UNKNOWN"
    return FCMError(code=str(code), fcm_code=fcm_code, message=message)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def classify(status: int, body: bytes, retry_after: str | None = None) -> PushOutcome:
    """Map an FCM answer to what the dispatcher does about it (firebase-admin's verdicts)."""
    if 200 <= status < 300:
        return ACCEPTED
    error = read_error(status, body)
    fcm_code, code = error.fcm_code, error.code
    if fcm_code == "UNREGISTERED":
        return PushOutcome(Verdict.DEAD_TOKEN, reason="UNREGISTERED")
    if fcm_code == "SENDER_ID_MISMATCH":
        return PushOutcome(Verdict.CONFIG_ERROR, reason="SENDER_ID_MISMATCH", hint=CREDENTIAL_HINT)
    if fcm_code in THIRD_PARTY_AUTH_CODES:
        return PushOutcome(
            Verdict.CONFIG_ERROR, reason="THIRD_PARTY_AUTH_ERROR", hint=CREDENTIAL_HINT
        )
    if fcm_code == "QUOTA_EXCEEDED":
        return PushOutcome.transient("RESOURCE_EXHAUSTED", _retry_after(retry_after))
    if code == "INVALID_ARGUMENT":
        if "registration token" in error.message.lower():
            return PushOutcome(Verdict.DEAD_TOKEN, reason="INVALID_ARGUMENT")
        return PushOutcome(Verdict.REJECTED, reason="INVALID_ARGUMENT")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return PushOutcome(Verdict.CONFIG_ERROR, reason=code, hint=CREDENTIAL_HINT)
    if code == "NOT_FOUND":
        return PushOutcome(Verdict.CONFIG_ERROR, reason=code, hint="FCM_PROJECT_ID")
    if code in _TRANSIENT_CODES:
        return PushOutcome.transient(code, _retry_after(retry_after))
    return PushOutcome(Verdict.REJECTED, reason=code)


def classify_token_error(error: BaseException) -> PushOutcome:
    """The OAuth token endpoint refused or failed: wrong account, or Google unreachable."""
    name = type(error).__name__
    if name == "RefreshError" and "invalid_grant" in str(error):
        return PushOutcome(Verdict.CONFIG_ERROR, reason="invalid_grant", hint=CREDENTIAL_HINT)
    if isinstance(error, TimeoutError):
        return PushOutcome.transient("token: timeout")
    return PushOutcome.transient(f"token: {name}")


def _needs_new_token(exchange: Exchange) -> bool:
    """A 401 for our access token (not for the app's APNs/web credentials at Google)."""
    if exchange.status != 401:
        return False
    return read_error(401, bytes(exchange.response)).fcm_code not in THIRD_PARTY_AUTH_CODES


def endpoint_for(config: FCMConfig, project_id: str) -> Endpoint:
    url = urlsplit(config.endpoint or DEFAULT_ENDPOINT)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"not an http(s) URL: {config.endpoint!r}")
    context: ssl.SSLContext | None = None
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        context.set_alpn_protocols(["h2", "http/1.1"])
    port = url.port or (443 if context is not None else 80)
    path = f"{url.path.rstrip('/')}/v1/projects/{quote(project_id, safe='')}/messages:send"
    return Endpoint(host=url.hostname, port=port, path=path, ssl_context=context)


class FCMSender(PooledSender[FCMConfig]):
    provider = Provider.FCM
    name = "FCM"
    credential_hint = CREDENTIAL_HINT

    tokens: AccessTokens | None = None  # with the pool

    def _connect(self) -> ConnectionPool:
        config = self.config
        tokens = AccessTokens(
            config.service_account_file, timeout_s=config.token_timeout_s, ca_file=config.ca_file
        )
        project_id = config.project_id or tokens.project_id
        if not project_id:
            tokens.close()
            raise ValueError("no project id")
        self.tokens = tokens
        return ConnectionPool(
            endpoint_for(config, project_id),
            PoolLimits(
                max_h2_connections=config.max_connections,
                max_streams=config.max_streams,
                max_h1_connections=config.http1_connections,
                connect_timeout_s=config.connect_timeout_s,
            ),
            name=self.name,
        )

    def _payload(self, push: Push) -> tuple[bytes, bool]:
        return fcm_body(push.token, push.data)

    def _batch(self, pushes: list[Push]) -> _FCMBatch:
        assert self.tokens is not None  # built with the pool
        return _FCMBatch(self.tokens, len(pushes), self.config.token_timeout_s)

    async def close(self) -> None:
        tokens, self.tokens = self.tokens, None
        await super().close()
        if tokens is not None:
            tokens.close()


class _FCMBatch:
    """One `send`: each round gets an access token first (a failure is every push's outcome);
    a 401 for that token invalidates it and sends the push once more, with a new one."""

    def __init__(self, tokens: AccessTokens, count: int, token_timeout_s: float) -> None:
        self.tokens = tokens
        self.token_timeout_s = token_timeout_s
        self.authorization = ""
        self.reauthorised = [False] * count  # sent once more with a new token after a 401

    async def authorize(self, deadline: float) -> PushOutcome | None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self.token_timeout_s)):
                self.authorization = await self.tokens.header()
        except Exception as exc:  # noqa: BLE001 - any failure to get a token
            return classify_token_error(exc)
        return None

    def exchange(self, index: int, body: bytes) -> Exchange:
        return Exchange(body, self.authorization, index)

    def judge(self, exchange: Exchange) -> PushOutcome | None:
        index = exchange.index
        if _needs_new_token(exchange) and not self.reauthorised[index]:
            self.reauthorised[index] = True
            self.tokens.invalidate(self.authorization)
            return None
        return classify(exchange.status, bytes(exchange.response), exchange.retry_after)


def describe(config: FCMConfig) -> str:
    endpoint = config.endpoint or DEFAULT_ENDPOINT
    trust = f", trusting {config.ca_file.name}" if config.ca_file else ""
    return f"{endpoint}{trust}, service account {config.service_account_file.name}"


def config_from_settings(settings: Settings) -> FCMConfig | None:
    """The sender's config, None without a service account (FCM off); DeliveryConfigError
    when the file or the endpoint is not what it should be."""
    path = settings.FCM_SERVICE_ACCOUNT_FILE
    if path is None:
        return None
    readable(path, "FCM_SERVICE_ACCOUNT_FILE")
    try:
        account = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError):
        raise DeliveryConfigError(f"FCM_SERVICE_ACCOUNT_FILE: {path} is not JSON") from None
    if not isinstance(account, dict) or account.get("type") != "service_account":
        raise DeliveryConfigError(
            f"FCM_SERVICE_ACCOUNT_FILE: {path} is not a Google service account key"
        )
    if not settings.FCM_PROJECT_ID and not account.get("project_id"):
        raise DeliveryConfigError("FCM_PROJECT_ID: the service account names no project")
    try:
        credentials.Certificate(account)
    except ValueError:
        raise DeliveryConfigError(
            f"FCM_SERVICE_ACCOUNT_FILE: {path} is not a usable service account key"
        ) from None
    endpoint = settings.FCM_ENDPOINT.rstrip("/") or None
    if endpoint is not None:
        http_url(endpoint, "FCM_ENDPOINT")
    if settings.FCM_CA_FILE is not None:
        readable(settings.FCM_CA_FILE, "FCM_CA_FILE")
    return FCMConfig(
        service_account_file=path,
        project_id=settings.FCM_PROJECT_ID or None,
        endpoint=endpoint,
        ca_file=settings.FCM_CA_FILE,
    )
