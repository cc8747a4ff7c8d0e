"""A fake Firebase Cloud Messaging HTTP v1 API, with the OAuth2 token endpoint it needs.

On 127.0.0.1, served by Tornado: with TLS (a throwaway CA, like the fake APNs) it offers
ALPN "h2" and "http/1.1" and speaks HTTP/2 (sandbox/fcm_h2.py) to clients that choose it, as
Google's does; HTTP/1.1 to the others, and without TLS (plain http://).

- ``POST /token``: the OAuth2 JWT-bearer grant google-auth performs for service accounts. The
  assertion (RS256) is verified against the trusted service-account keys.
- ``POST /v1/projects/<project>/messages:send`` with ``Authorization: Bearer <access token>``:
  validated like FCM does, then answered as scripted per registration token.

Errors use Google's JSON shape, so firebase-admin maps them to its exception classes.
Both protocols answer the same, from the same scripts (sandbox/script.py), and record the
same `FcmPush` (with its `http_version`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import secrets
import ssl
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from tornado import iostream, netutil, web
from tornado.httpserver import HTTPServer

from sandbox._runner import LoopServer, check_loopback
from sandbox.certs import (
    ServiceAccount,
    TlsFiles,
    client_ssl_context,
    generate_service_account_key,
    generate_tls,
    server_ssl_context,
    write_service_account,
)
from sandbox.fcm_h2 import H2Session, Reply, abort_stream
from sandbox.script import Behaviour, Kind, Recorder, Scripts

__all__ = [
    "DEFAULT_PROJECT",
    "GOOGLE_TOKEN_ENDPOINT",
    "MAX_DATA_PAYLOAD",
    "FakeFcm",
    "FcmPush",
    "fcm_error_body",
]

DEFAULT_PROJECT = "pn-relay-sandbox"
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_DATA_PAYLOAD = 4096
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
INVALID_TOKEN_MESSAGE = "The registration token is not a valid FCM registration token"
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9_:\-]+$")
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# Behaviour kind -> (HTTP status, FCM errorCode, message)
_ERRORS: dict[Kind, tuple[int, str, str]] = {
    Kind.UNREGISTERED: (404, "UNREGISTERED", "Requested entity was not found."),
    Kind.BAD_DEVICE_TOKEN: (400, "INVALID_ARGUMENT", INVALID_TOKEN_MESSAGE),
    Kind.PAYLOAD_TOO_LARGE: (400, "INVALID_ARGUMENT", "Message is too big"),
    Kind.TOO_MANY_REQUESTS: (
        429,
        "QUOTA_EXCEEDED",
        "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'"
        " of service 'fcm.googleapis.com'.",
    ),
    Kind.SERVER_ERROR: (500, "INTERNAL", "Internal error encountered."),
    Kind.SERVICE_UNAVAILABLE: (503, "UNAVAILABLE", "The service is currently unavailable."),
    Kind.WRONG_SENDER: (403, "SENDER_ID_MISMATCH", "SenderId mismatch"),
}

_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_MISSING_CREDENTIAL = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)


def fcm_error_body(
    status: int,
    message: str,
    error_code: str | None = None,
    field: str | None = None,
) -> bytes:
    """Google's error JSON: ``{"error": {"code", "message", "status", "details": [...]}}``."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    details: list[dict[str, Any]] = []
    if error_code is not None:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
    if field is not None:
        details.append(
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [{"field": field, "description": message}],
            }
        )
    if details:
        error["details"] = details
    return json.dumps({"error": error}, indent=2).encode()


@dataclass(frozen=True, slots=True)
class FcmPush:
    """One ``messages:send`` request the fake received, and how it was answered.

    ``body`` is the parsed JSON request (``None`` if it was not JSON). ``error_code`` is the
    FCM errorCode (or Google status) answered, "" on success; ``status`` 0 means the connection
    was closed without an answer (``drop``/``goaway``). ``headers`` holds the request headers,
    names lower-case (over HTTP/2, pseudo-headers such as ``:authority`` too);
    ``http_version`` is ``HTTP/2`` or ``HTTP/1.1``.
    """

    token: str
    body: Any
    raw: bytes
    headers: dict[str, str]
    received_at: float
    status: int
    error_code: str
    project: str
    message_id: str
    validate_only: bool
    http_version: str = "HTTP/1.1"
    connection_id: int = 0  # which connection (numbered from 1 as they come) carried it

    @property
    def message(self) -> dict[str, Any]:
        if isinstance(self.body, dict) and isinstance(self.body.get("message"), dict):
            return dict(self.body["message"])
        return {}

    @property
    def data(self) -> dict[str, Any]:
        data = self.message.get("data")
        return dict(data) if isinstance(data, dict) else {}


@dataclass(frozen=True, slots=True)
class _Account:
    client_email: str
    private_key_id: str
    public_key: rsa.RSAPublicKey
    project_id: str


@dataclass(slots=True)
class _AccessToken:
    """An OAuth access token the fake issued: whose, and until when (epoch seconds)."""

    client_email: str
    expires_at: float


@dataclass(slots=True)
class _Outcome:
    """How one send is answered, over either HTTP version: status and body (status 0: the
    behaviour drops the connection or sends GOAWAY), FCM's error code, the recorded message
    name, extra headers (``Retry-After``)."""

    status: int
    body: bytes
    _: KW_ONLY
    error_code: str = ""
    behaviour: Behaviour | None = None
    message_id: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def _no_access_log(handler: web.RequestHandler) -> None:
    return None


class _HTTPServer(HTTPServer):
    fake: FakeFcm

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> Any:
        fake = self.fake
        fake.connections_total += 1
        if fake.down:
            abort_stream(stream)
            return None
        fake._streams.add(stream)
        fake._next_connection_id += 1
        fake._connection_ids[stream] = fake._next_connection_id
        if isinstance(stream, iostream.SSLIOStream):
            return self._negotiate(stream, address)
        super().handle_stream(stream, address)
        return None

    async def _negotiate(self, stream: iostream.SSLIOStream, address: tuple[Any, ...]) -> None:
        """After the TLS handshake: HTTP/2 if the client chose "h2", else HTTP/1.1."""
        try:
            await stream.wait_for_handshake()
        except (iostream.StreamClosedError, ssl.SSLError, OSError):
            stream.close()
            return
        sock = stream.socket
        alpn = sock.selected_alpn_protocol() if isinstance(sock, ssl.SSLSocket) else None
        if alpn != "h2":
            super().handle_stream(stream, address)
            return
        connection_id = self.fake._connection_ids.get(stream, 0)
        session = H2Session(self.fake, stream, self.fake._h2_request, connection_id)
        self.fake._sessions.add(session)
        try:
            await session.run()
        finally:
            self.fake._sessions.discard(session)


class _Handler(web.RequestHandler):
    fake: FakeFcm

    def initialize(self, fake: FakeFcm) -> None:
        self.fake = fake

    def _json(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.finish(body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(fcm_error_body(status_code, http.client.responses.get(status_code, "Error")))


class _TokenHandler(_Handler):
    async def post(self) -> None:
        if self.fake.token_delay > 0:
            await asyncio.sleep(self.fake.token_delay)
        status, body = self.fake._grant(
            self.get_body_argument("grant_type", ""),
            self.get_body_argument("assertion", ""),
        )
        self._json(status, body, {"Cache-Control": "no-cache, no-store, max-age=0"})


class _SendHandler(_Handler):
    async def post(self, project: str) -> None:
        headers = {name.lower(): value for name, value in self.request.headers.get_all()}
        connection = self.request.connection
        stream = getattr(connection, "stream", None)
        connection_id = self.fake._connection_ids.get(stream, 0) if stream is not None else 0
        reply = self.fake._send(project, headers, self.request.body, "HTTP/1.1", connection_id)
        if reply.delay > 0:
            await asyncio.sleep(reply.delay)
        if reply.action:  # drop or goaway: HTTP/1.1 can only close the connection
            stream = self.detach()
            if reply.action == "drop":
                abort_stream(stream)
            else:
                stream.close()
            return
        self._json(reply.status, reply.body, reply.headers)


class _NotFoundHandler(_Handler):
    def prepare(self) -> None:
        path = self.request.path
        self._json(404, fcm_error_body(404, f"Requested entity was not found. ({path})"))


class FakeFcm(LoopServer):
    """A fake FCM HTTP v1 endpoint plus OAuth2 token endpoint.

    The fake owns a service-account key pair; after ``start()``/``serve()`` (the port must be
    known), :meth:`write_service_account` writes the JSON file firebase-admin loads.
    """

    def __init__(
        self,
        *,
        project_id: str = DEFAULT_PROJECT,
        tls: TlsFiles | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: int = 3600,
        check_token_format: bool = True,
        service_account_key: rsa.RSAPrivateKey | None = None,
        client_email: str | None = None,
        alpn: Iterable[str] = ("h2", "http/1.1"),
        max_concurrent_streams: int = 100,
        receive_window: int = 65535,
    ) -> None:
        super().__init__()
        self.project_id = project_id
        self.tls = tls
        self.host = check_loopback(host)
        self.port = port
        self.token_lifetime = token_lifetime
        self.check_token_format = check_token_format
        #: TLS only: the ALPN protocols offered; without "h2" every client gets HTTP/1.1.
        self.alpn = tuple(alpn)
        #: HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS (Google's is 100); more are refused.
        self.max_concurrent_streams = max_concurrent_streams
        #: HTTP/2: our SETTINGS_INITIAL_WINDOW_SIZE; below 65535 the connection window stays
        #: at 65535 too, so clients must wait for WINDOW_UPDATEs to send large bodies.
        self.receive_window = receive_window
        self.client_email = (
            client_email or f"firebase-adminsdk-sandbox@{project_id}.iam.gserviceaccount.com"
        )
        self.private_key_id = secrets.token_hex(20)
        self._sa_key = service_account_key or generate_service_account_key()
        self._accounts: dict[str, _Account] = {
            self.client_email: _Account(
                self.client_email, self.private_key_id, self._sa_key.public_key(), project_id
            )
        }
        self._access_tokens: dict[str, _AccessToken] = {}

        self.scripts = Scripts()
        self.pushes: Recorder[FcmPush] = Recorder()
        #: Seconds added before every ``messages:send`` answer (a globally slow server).
        self.global_delay = 0.0
        #: Seconds before every OAuth token answer (a slow or hung token endpoint).
        self.token_delay = 0.0
        self.connections_total = 0
        #: HTTP/2 streams refused (over SETTINGS_MAX_CONCURRENT_STREAMS), reset by clients.
        self.streams_refused = 0
        self.streams_reset = 0
        self.tokens_issued = 0
        self._server: _HTTPServer | None = None
        self._streams: weakref.WeakSet[iostream.IOStream] = weakref.WeakSet()
        self._sessions: set[H2Session] = set()
        self._connection_ids: weakref.WeakKeyDictionary[iostream.IOStream, int] = (
            weakref.WeakKeyDictionary()
        )
        self._next_connection_id = 0
        self._app = web.Application(
            [
                (r"/token", _TokenHandler, {"fake": self}),
                (r"/v1/projects/([^/]+)/messages:send", _SendHandler, {"fake": self}),
            ],
            default_handler_class=_NotFoundHandler,
            default_handler_args={"fake": self},
            log_function=_no_access_log,
        )

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], *, use_tls: bool = False, **kwargs: Any
    ) -> FakeFcm:
        """A fake with (when ``use_tls``) a fresh test CA in ``directory``."""
        tls = generate_tls(Path(directory)) if use_tls else None
        return cls(tls=tls, **kwargs)

    # -- public API ----------------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def base_url(self) -> str:
        """``http(s)://127.0.0.1:<port>``, the form of ``PN_FCM_ENDPOINT``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def send_url(self) -> str:
        """The ``messages:send`` URL for this fake's project."""
        return f"{self.base_url}/v1/projects/{self.project_id}/messages:send"

    @property
    def connections_open(self) -> int:
        return sum(1 for stream in list(self._streams) if not stream.closed())

    def client_ssl_context(self, alpn: Iterable[str] | None = None) -> ssl.SSLContext:
        """A client context trusting this fake's CA (offering ALPN ``alpn``, if given)."""
        if self.tls is None:
            raise RuntimeError("this fake FCM runs without TLS")
        return client_ssl_context(self.tls, alpn)

    def write_service_account(self, path: str | os.PathLike[str]) -> ServiceAccount:
        """Write the service-account JSON (``token_uri`` → this fake) for firebase-admin."""
        if not self.port:
            raise RuntimeError("start the fake first: token_uri needs the real port")
        return write_service_account(
            path,
            private_key=self._sa_key,
            token_uri=self.token_uri,
            project_id=self.project_id,
            client_email=self.client_email,
            private_key_id=self.private_key_id,
        )

    def trust_service_account(self, account: ServiceAccount) -> None:
        """Also accept token grants signed by ``account``'s key."""
        self._accounts[account.client_email] = _Account(
            account.client_email, account.private_key_id, account.public_key, account.project_id
        )

    def issue_access_token(self, client_email: str | None = None) -> str:
        """Mint an access token directly (for raw HTTP tests that skip the OAuth grant)."""
        email = client_email or self.client_email
        token = "ya29.sandbox-" + secrets.token_urlsafe(32)
        self._access_tokens[token] = _AccessToken(email, time.time() + self.token_lifetime)
        self.tokens_issued += 1
        return token

    def revoke_access_tokens(self) -> None:
        """Invalidate every issued access token (clients must refresh after a 401)."""
        self._access_tokens.clear()

    def goaway_all(self, error_code: int = 0) -> None:
        """Send GOAWAY on every HTTP/2 connection (streams already open are still answered)."""

        def run() -> None:
            for session in list(self._sessions):
                session.goaway(error_code=error_code)

        self.call_in_loop(run)

    def delivered(self) -> list[FcmPush]:
        """Recorded pushes answered 200."""
        return [p for p in self.pushes.snapshot() if p.status == 200]

    # -- lifecycle -----------------------------------------------------------------------------
    async def _open(self) -> None:
        self._listen()

    def _listen(self) -> None:
        ssl_options = server_ssl_context(self.tls, self.alpn) if self.tls else None
        server = _HTTPServer(self._app, ssl_options=ssl_options, idle_connection_timeout=300)
        server.fake = self
        sockets = netutil.bind_sockets(self.port, self.host, backlog=1024)
        self.port = sockets[0].getsockname()[1]
        server.add_sockets(sockets)
        self._server = server

    async def _close(self) -> None:
        server, self._server = self._server, None
        for stream in list(self._streams):
            if not stream.closed():
                stream.close()
        if server is not None:
            server.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.close_all_connections(), 5)

    def _go_down(self, refuse: bool) -> None:
        self._down = True
        for stream in list(self._streams):
            if not stream.closed():
                abort_stream(stream)
        if refuse and self._server is not None:
            self._server.stop()
            self._server = None

    async def _go_up(self) -> None:
        self._down = False
        if self._server is None:
            self._listen()

    # -- OAuth2 --------------------------------------------------------------------------------
    def _grant(self, grant_type: str, assertion: str) -> tuple[int, bytes]:
        def oauth_error(error: str, description: str) -> tuple[int, bytes]:
            return 400, json.dumps({"error": error, "error_description": description}).encode()

        if grant_type != JWT_BEARER_GRANT:
            return oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError:
            return oauth_error("invalid_grant", "Invalid JWT Signature.")
        account = self._accounts.get(str(unverified.get("iss", "")))
        if account is None:
            return oauth_error("invalid_grant", "Invalid grant: account not found")
        if header.get("kid") not in (None, account.private_key_id):
            return oauth_error("invalid_grant", "Invalid JWT Signature.")
        try:
            claims = jwt.decode(
                assertion,
                account.public_key,
                algorithms=["RS256"],
                audience=[GOOGLE_TOKEN_ENDPOINT, self.token_uri],
                options={"require": ["iss", "aud", "iat", "exp"]},
                leeway=60,
            )
        except jwt.InvalidAudienceError:
            return oauth_error(
                "invalid_grant",
                f"Invalid JWT: Failed audience check. The right audience is {self.token_uri}",
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            return oauth_error("invalid_grant", _SHORT_LIVED)
        except jwt.InvalidTokenError:
            return oauth_error("invalid_grant", "Invalid JWT Signature.")
        if int(claims["exp"]) - int(claims["iat"]) > 3600 + 60:
            return oauth_error("invalid_grant", _SHORT_LIVED)
        token = self.issue_access_token(account.client_email)
        body = {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        return 200, json.dumps(body).encode()

    # -- requests --------------------------------------------------------------------------------
    def _h2_request(self, headers: Mapping[str, str], body: bytes, connection_id: int) -> Reply:
        """Route one HTTP/2 request as the Tornado application routes HTTP/1.1 ones."""
        path = headers.get(":path", "").partition("?")[0]
        method = headers.get(":method", "")
        json_type = {"Content-Type": "application/json; charset=UTF-8"}
        sent = _SEND_PATH.match(path)
        if path != "/token" and sent is None:
            message = f"Requested entity was not found. ({path})"
            return Reply(404, json_type, fcm_error_body(404, message))
        if method != "POST":
            return Reply(405, json_type, fcm_error_body(405, "Method Not Allowed"))
        if sent is not None:
            return self._send(sent.group(1), headers, body, "HTTP/2", connection_id)
        form = parse_qs(body.decode("utf-8", "replace"))
        status, answer = self._grant(
            form.get("grant_type", [""])[0], form.get("assertion", [""])[0]
        )
        json_type["Cache-Control"] = "no-cache, no-store, max-age=0"
        return Reply(status, json_type, answer, self.token_delay)

    def _send(
        self,
        project: str,
        headers: Mapping[str, str],
        raw: bytes,
        http_version: str,
        connection_id: int = 0,
    ) -> Reply:
        """Answer one ``messages:send`` (either protocol) and record it."""
        received_at = time.monotonic()
        outcome, push_args = self._handle_send(project, headers.get("authorization"), raw)
        self.pushes.add(
            FcmPush(
                headers=dict(headers),
                received_at=received_at,
                status=outcome.status,
                error_code=outcome.error_code,
                project=project,
                message_id=outcome.message_id,
                raw=raw,
                http_version=http_version,
                connection_id=connection_id,
                **push_args,
            )
        )
        behaviour = outcome.behaviour
        delay = self.global_delay + (behaviour.delay if behaviour is not None else 0.0)
        if behaviour is not None and behaviour.kind in (Kind.DROP, Kind.GOAWAY):
            action = "drop" if behaviour.kind is Kind.DROP else "goaway"
            return Reply(0, {}, b"", delay, action)
        headers_out = {"Content-Type": "application/json; charset=UTF-8", **outcome.headers}
        return Reply(outcome.status, headers_out, outcome.body, delay)

    # -- messages:send -------------------------------------------------------------------------
    def _handle_send(
        self, project: str, authorization: str | None, raw: bytes
    ) -> tuple[_Outcome, dict[str, Any]]:
        """Validate and decide the answer; returns it and the push fields parsed from ``raw``."""
        fields: dict[str, Any] = {"token": "", "body": None, "validate_only": False}
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        fields["body"] = body
        message = body.get("message") if isinstance(body, dict) else None
        if isinstance(body, dict) and isinstance(message, dict):
            fields["token"] = str(message.get("token") or message.get("fid") or "")
            fields["validate_only"] = bool(body.get("validate_only", False))

        auth_failure = self._check_bearer(authorization)
        if auth_failure is not None:
            return auth_failure, fields
        if project != self.project_id:
            return _Outcome(
                403,
                fcm_error_body(
                    403,
                    "Permission 'cloudmessaging.messages.create' denied on resource "
                    f"'//cloudresourcemanager.googleapis.com/projects/{project}' "
                    "(or it may not exist).",
                ),
                error_code="PERMISSION_DENIED",
            ), fields
        invalid = self._validate_message(body, message)
        if invalid is not None:
            return invalid, fields

        token = fields["token"]
        behaviour = self.scripts.next(token) if token else self.scripts.default
        return self._outcome(behaviour, project), fields

    def _check_bearer(self, authorization: str | None) -> _Outcome | None:
        challenge = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'}
        if not authorization:
            return _Outcome(
                401,
                fcm_error_body(401, _MISSING_CREDENTIAL),
                error_code="UNAUTHENTICATED",
                headers=challenge,
            )
        scheme, _, token = authorization.partition(" ")
        entry = self._access_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if entry is None or entry.expires_at < time.time():
            return _Outcome(
                401,
                fcm_error_body(401, _UNAUTHENTICATED),
                error_code="UNAUTHENTICATED",
                headers=challenge,
            )
        return None

    def _validate_message(self, body: Any, message: Any) -> _Outcome | None:
        def invalid(text: str, field: str | None = None) -> _Outcome:
            return _Outcome(
                400,
                fcm_error_body(400, text, "INVALID_ARGUMENT", field),
                error_code="INVALID_ARGUMENT",
            )

        if not isinstance(body, dict):
            return invalid("Invalid JSON payload received. Expected an object.")
        if not isinstance(message, dict):
            return invalid("Invalid JSON payload received. Unknown or missing field 'message'.")
        targets = [k for k in ("token", "fid", "topic", "condition") if message.get(k)]
        if not targets:
            return invalid("Recipient of the message is not set.", "message")
        if len(targets) > 1:
            return invalid("Exactly one of token, fid, topic or condition must be set.", "message")
        data = message.get("data")
        size = 0
        if data is not None:
            if not isinstance(data, dict):
                return invalid("Invalid value at 'message.data' (map).", "message.data")
            for key, value in data.items():
                if not isinstance(value, str):
                    return invalid(
                        f"Invalid value at 'message.data[{key}].value' (TYPE_STRING)",
                        f"message.data[{key}].value",
                    )
                size += len(key.encode()) + len(value.encode())
        if size > MAX_DATA_PAYLOAD:
            return invalid("Message is too big", "message")
        token = message.get("token", message.get("fid"))
        bad_format = isinstance(token, str) and self.check_token_format
        if token is not None and (
            not isinstance(token, str) or (bad_format and not _TOKEN_CHARS.match(token))
        ):
            return invalid(INVALID_TOKEN_MESSAGE, "message.token")
        return None

    def _outcome(self, behaviour: Behaviour, project: str) -> _Outcome:
        kind = behaviour.kind
        headers: dict[str, str] = {}
        if behaviour.retry_after is not None:
            value = behaviour.retry_after
            headers["Retry-After"] = str(int(value)) if float(value).is_integer() else str(value)
        if kind is Kind.OK:
            message_id = f"0:{time.time_ns() // 1000}%{secrets.token_hex(8)}"
            name = f"projects/{project}/messages/{message_id}"
            body = b'{\n  "name": ' + json.dumps(name).encode() + b"\n}"  # Google's indent
            return _Outcome(200, body, behaviour=behaviour, message_id=name, headers=headers)
        if kind is Kind.DROP or kind is Kind.GOAWAY:
            return _Outcome(0, b"", behaviour=behaviour)
        if kind is Kind.ERROR:
            status, code, message = behaviour.status, behaviour.reason, behaviour.reason
        else:
            status, code, message = _ERRORS[kind]
        field = "message.token" if kind is Kind.BAD_DEVICE_TOKEN else None
        return _Outcome(
            status,
            fcm_error_body(status, message, code, field),
            error_code=code,
            behaviour=behaviour,
            headers=headers,
        )
