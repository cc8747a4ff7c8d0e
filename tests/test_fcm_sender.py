"""The FCM sender against the fake FCM: HTTP/2 over TLS, HTTP/1.1 over TLS, plain HTTP/1.1.

The error → verdict contract is firebase-admin's: `reference_outcome` is the relay's mapping
of firebase-admin's exceptions as it stood before this sender (push/fcm.py's `classify` of
firebase-admin 7.7 errors), fed with the exception firebase-admin's own parser makes of the
fake's answer. Each case goes through the sandbox over each protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from firebase_admin import _utils, exceptions, messaging

from push.fcm import CREDENTIAL_HINT, FCMConfig, FCMSender, classify
from push.outcome import Push, PushOutcome, Verdict
from push.payloads import fcm_body
from sandbox import script
from sandbox.certs import generate_service_account
from sandbox.fcm import FakeFcm
from sandbox.script import Behaviour
from storage.records import Provider
from tests import loops
from tests.checks import wait_until
from tests.support import random_fcm_token

MODES = ["h2", "http1-tls", "http1-plain"]


@dataclass
class Fake:
    server: FakeFcm
    service_account: Path
    mode: str

    def config(self, **extra: Any) -> FCMConfig:
        tls = self.server.tls
        return FCMConfig(
            service_account_file=self.service_account,
            endpoint=self.server.base_url,
            ca_file=tls.ca_file if tls is not None else None,
            **extra,
        )


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Fake]]:
    made: dict[str, Fake] = {}
    directory = tmp_path_factory.mktemp("fcm-fakes")
    servers = {
        "h2": FakeFcm.create(directory / "h2", use_tls=True),
        "http1-tls": FakeFcm.create(directory / "h1", use_tls=True, alpn=("http/1.1",)),
        "http1-plain": FakeFcm(),
    }
    try:
        for mode, server in servers.items():
            server.start()
            account = server.write_service_account(directory / f"{mode}.json").file
            made[mode] = Fake(server, account, mode)
        yield made
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(params=MODES)
def fake(request: pytest.FixtureRequest, fakes: dict[str, Fake]) -> Iterator[Fake]:
    chosen = fakes[request.param]
    yield chosen
    reset(chosen.server)


@pytest.fixture
def h2(fakes: dict[str, Fake]) -> Iterator[Fake]:
    yield fakes["h2"]
    reset(fakes["h2"].server)


def reset(server: FakeFcm) -> None:
    server.set_down(False)
    server.global_delay = 0.0
    server.token_delay = 0.0
    server.max_concurrent_streams = 100
    server.receive_window = 65535
    server.scripts.clear()
    server.pushes.clear()


def pushes_for(tokens: list[str], data: str = "QUJD") -> list[Push]:
    expiration = int(time.time()) + 3600
    return [
        Push(n, Provider.FCM, token, data, str(uuid.uuid4()), expiration)
        for n, token in enumerate(tokens)
    ]


def send(config: FCMConfig, *batches: list[str], data: str = "QUJD") -> list[list[PushOutcome]]:
    """Send each batch in turn with one sender, then close it."""
    sender = FCMSender(config)

    async def run() -> list[list[PushOutcome]]:
        try:
            return [await sender.send(pushes_for(tokens, data)) for tokens in batches]
        finally:
            await sender.close()

    return loops.run(run())


# -- the reference: today's contract, on firebase-admin's exceptions ---------------------------


def reference_outcome(error: Exception) -> PushOutcome:
    """push/fcm.py's `classify` as it was, for firebase-admin 7.7's exceptions."""
    assert isinstance(error, exceptions.FirebaseError)
    reason = str(getattr(error, "code", "") or type(error).__name__)
    if isinstance(error, messaging.UnregisteredError):
        return PushOutcome(Verdict.DEAD_TOKEN, reason="UNREGISTERED")
    if isinstance(error, messaging.SenderIdMismatchError):
        return PushOutcome(Verdict.CONFIG_ERROR, reason="SENDER_ID_MISMATCH", hint=CREDENTIAL_HINT)
    if isinstance(error, messaging.ThirdPartyAuthError):
        return PushOutcome(
            Verdict.CONFIG_ERROR, reason="THIRD_PARTY_AUTH_ERROR", hint=CREDENTIAL_HINT
        )
    if isinstance(error, exceptions.InvalidArgumentError):
        if "registration token" in str(error).lower():
            return PushOutcome(Verdict.DEAD_TOKEN, reason="INVALID_ARGUMENT")
        return PushOutcome(Verdict.REJECTED, reason="INVALID_ARGUMENT")
    if isinstance(error, (exceptions.UnauthenticatedError, exceptions.PermissionDeniedError)):
        return PushOutcome(Verdict.CONFIG_ERROR, reason=reason, hint=CREDENTIAL_HINT)
    if isinstance(error, exceptions.NotFoundError):
        return PushOutcome(Verdict.CONFIG_ERROR, reason=reason, hint="FCM_PROJECT_ID")
    transient = (
        messaging.QuotaExceededError,
        exceptions.ResourceExhaustedError,
        exceptions.UnavailableError,
        exceptions.InternalError,
        exceptions.DeadlineExceededError,
        exceptions.UnknownError,
    )
    if isinstance(error, transient):
        value = error.http_response.headers.get("Retry-After") if error.http_response else None
        try:
            retry_after = max(0.0, float(value)) if value is not None else None
        except ValueError:
            retry_after = None
        return PushOutcome.transient(reason, retry_after)
    return PushOutcome(Verdict.REJECTED, reason=reason)


def firebase_admin_error(response: httpx.Response) -> Exception:
    """The exception firebase-admin 7.7's send path makes of this FCM answer."""
    error = httpx.HTTPStatusError("FCM error", request=response.request, response=response)
    parsed: Exception = _utils.handle_platform_error_from_httpx(
        error, messaging._MessagingService._build_fcm_error_httpx
    )
    return parsed


def raw_answer(server: FakeFcm, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.issue_access_token()}"}
    body = {"message": {"token": token, "data": {"ENCRYPTED_DATA": "QUJD"}}}
    verify: Any = server.client_ssl_context() if server.tls else True
    return httpx.post(server.send_url, json=body, headers=headers, verify=verify)


ERROR_CASES: list[tuple[str, Behaviour, Verdict, str]] = [
    ("unregistered", script.unregistered(), Verdict.DEAD_TOKEN, "UNREGISTERED"),
    ("invalid-token", script.invalid_argument(), Verdict.DEAD_TOKEN, "INVALID_ARGUMENT"),
    ("too-big", script.payload_too_large(), Verdict.REJECTED, "INVALID_ARGUMENT"),
    ("quota", script.quota_exceeded(30), Verdict.TRANSIENT, "RESOURCE_EXHAUSTED"),
    ("sender-id", script.sender_id_mismatch(), Verdict.CONFIG_ERROR, "SENDER_ID_MISMATCH"),
    ("internal", script.internal(), Verdict.TRANSIENT, "INTERNAL"),
    ("unavailable", script.unavailable(7), Verdict.TRANSIENT, "UNAVAILABLE"),
    (
        "third-party-auth",
        script.error(401, "THIRD_PARTY_AUTH_ERROR"),
        Verdict.CONFIG_ERROR,
        "THIRD_PARTY_AUTH_ERROR",
    ),
    (
        "apns-auth",
        script.error(401, "APNS_AUTH_ERROR"),
        Verdict.CONFIG_ERROR,
        "THIRD_PARTY_AUTH_ERROR",
    ),
    (
        "permission",
        script.error(403, "PERMISSION_DENIED"),
        Verdict.CONFIG_ERROR,
        "PERMISSION_DENIED",
    ),
    ("not-found", script.error(404, "NOT_FOUND"), Verdict.CONFIG_ERROR, "NOT_FOUND"),
    ("conflict", script.error(409, "ABORTED"), Verdict.REJECTED, "ALREADY_EXISTS"),
    ("deadline", script.error(504, "DEADLINE"), Verdict.TRANSIENT, "DEADLINE_EXCEEDED"),
    ("bad-gateway", script.error(502, "WHATEVER"), Verdict.TRANSIENT, "UNKNOWN"),
]


@pytest.mark.parametrize(
    ("behaviour", "verdict", "reason"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_error_answers_keep_firebase_admins_verdicts(
    fake: Fake, behaviour: Behaviour, verdict: Verdict, reason: str
) -> None:
    token = random_fcm_token()
    fake.server.scripts.set(token, behaviour)
    answer = raw_answer(fake.server, token)
    expected = reference_outcome(firebase_admin_error(answer))
    retry_after = answer.headers.get("retry-after")
    assert classify(answer.status_code, answer.content, retry_after) == expected
    assert (expected.verdict, expected.reason) == (verdict, reason)

    fake.server.pushes.clear()
    [[outcome]] = send(fake.config(), [token])
    assert outcome == expected
    pushes = fake.server.pushes.snapshot()
    assert len(pushes) == 1  # no retry of our own: the dispatcher decides
    assert pushes[0].http_version == ("HTTP/2" if fake.mode == "h2" else "HTTP/1.1")


def test_responses_firebase_admin_cannot_parse_are_read_alike() -> None:
    request = httpx.Request("POST", "https://fcm.googleapis.com/v1/projects/p/messages:send")
    answers = [
        (500, b"<html>Server Error</html>", {}),
        (503, b"", {"Retry-After": "12"}),
        (429, b'{"error": {"code": 429, "message": "slow down"}}', {"Retry-After": "soon"}),
        (400, b'{"error": {"status": "FAILED_PRECONDITION", "message": "no"}}', {}),
        (400, b'{"error": {"status": "MADE_UP", "message": "registration token?"}}', {}),
        (403, b'{"error": {"message": "x", "details": [{"@type": "other"}]}}', {}),
        (302, b"", {"Location": "https://elsewhere"}),
        (418, b"{}", {}),
    ]
    for status, body, headers in answers:
        response = httpx.Response(status, content=body, headers=headers, request=request)
        expected = reference_outcome(firebase_admin_error(response))
        assert classify(status, body, headers.get("Retry-After")) == expected, (status, body)


# -- delivery over each protocol ----------------------------------------------------------------


def test_pushes_go_with_exact_bodies_and_headers(fake: Fake) -> None:
    tokens = [random_fcm_token() for _ in range(150)]
    [outcomes] = send(fake.config(), tokens)
    assert [o.verdict for o in outcomes] == [Verdict.ACCEPTED] * 150
    pushes = {p.token: p for p in fake.server.pushes.snapshot()}
    assert sorted(pushes) == sorted(tokens)
    for token in tokens:
        push = pushes[token]
        assert push.raw == fcm_body(token, "QUJD")[0]
        assert push.headers["authorization"].startswith("Bearer ya29.sandbox-")
        assert push.headers["content-type"] == "application/json"
        assert push.headers["x-goog-api-format-version"] == "2"
        assert not push.validate_only
    versions = {p.http_version for p in pushes.values()}
    connections = {p.connection_id for p in pushes.values()}
    if fake.mode == "h2":
        assert versions == {"HTTP/2"}
        assert len(connections) == 1  # 100 streams at once on one connection
    else:
        assert versions == {"HTTP/1.1"}
        assert 1 < len(connections) <= FCMConfig.http1_connections


def test_trimmed_pushes_say_so(h2: Fake) -> None:
    [[outcome]] = send(h2.config(), [random_fcm_token()], data="QUJD" * 1100)
    assert outcome.verdict is Verdict.ACCEPTED
    assert outcome.trimmed
    (push,) = h2.server.pushes.snapshot()
    assert push.data == {}


def test_concurrent_sends_share_bounded_connections(h2: Fake) -> None:
    h2.server.max_concurrent_streams = 10
    h2.server.global_delay = 0.05  # streams stay open a while, so they pile up
    sender = FCMSender(h2.config(max_connections=3))

    async def run() -> list[PushOutcome]:
        try:
            batches = [pushes_for([random_fcm_token() for _ in range(20)]) for _ in range(10)]
            results = await asyncio.gather(*(sender.send(batch) for batch in batches))
            return [outcome for result in results for outcome in result]
        finally:
            await sender.close()

    outcomes = loops.run(run())
    assert {o.verdict for o in outcomes} == {Verdict.ACCEPTED}
    pushes = h2.server.pushes.snapshot()
    assert len(pushes) == 200
    assert len({p.connection_id for p in pushes}) <= 3
    assert h2.server.streams_refused == 0  # never above the server's stream limit


def test_http1_pool_is_bounded(fakes: dict[str, Fake]) -> None:
    plain = fakes["http1-plain"]
    try:
        [outcomes] = send(
            plain.config(http1_connections=3), [random_fcm_token() for _ in range(30)]
        )
        assert {o.verdict for o in outcomes} == {Verdict.ACCEPTED}
        assert len({p.connection_id for p in plain.server.pushes.snapshot()}) <= 3
    finally:
        reset(plain.server)


def test_bodies_larger_than_the_servers_window_wait_for_it(h2: Fake) -> None:
    # 1 KiB stream windows, a 64 KiB connection window: 20 bodies of ~4 KiB need both to
    # open up again and again (WINDOW_UPDATE), and frames no larger than allowed.
    h2.server.receive_window = 1024
    data = "QUJD" * 1015  # 4,060 bytes: fits FCM's limit
    tokens = [random_fcm_token() for _ in range(20)]
    [outcomes] = send(h2.config(), tokens, data=data)
    assert {o.verdict for o in outcomes} == {Verdict.ACCEPTED}
    assert not any(o.trimmed for o in outcomes)
    for push in h2.server.pushes.snapshot():
        assert push.raw == fcm_body(push.token, data)[0]


# -- access tokens ----------------------------------------------------------------------------


def test_a_revoked_access_token_is_replaced_and_the_push_goes(fake: Fake) -> None:
    server = fake.server
    issued = server.tokens_issued
    tokens = [random_fcm_token() for _ in range(3)]

    sender = FCMSender(fake.config())

    async def run() -> list[list[PushOutcome]]:
        try:
            first = await sender.send(pushes_for(tokens[:1]))
            server.revoke_access_tokens()
            second = await sender.send(pushes_for(tokens[1:]))
            return [first, second]
        finally:
            await sender.close()

    first, second = loops.run(run())
    assert [o.verdict for o in first + second] == [Verdict.ACCEPTED] * 3
    assert server.tokens_issued == issued + 2
    statuses = sorted(p.status for p in server.pushes.snapshot())
    assert statuses == [200, 200, 200, 401, 401]


def test_a_steady_401_is_a_configuration_error_after_one_new_token(h2: Fake) -> None:
    token = random_fcm_token()
    h2.server.scripts.set(token, script.error(401, "UNAUTHENTICATED"))
    issued = h2.server.tokens_issued
    [[outcome]] = send(h2.config(), [token])
    assert outcome == PushOutcome(Verdict.CONFIG_ERROR, "UNAUTHENTICATED", hint=CREDENTIAL_HINT)
    assert [p.status for p in h2.server.pushes.snapshot()] == [401, 401]
    assert h2.server.tokens_issued == issued + 2


def test_the_token_is_refreshed_ahead_of_expiry_while_the_old_one_serves(
    tmp_path: Path,
) -> None:
    with FakeFcm.create(tmp_path, use_tls=True, token_lifetime=120) as server:
        account = server.write_service_account(tmp_path / "sa.json").file
        config = FCMConfig(
            service_account_file=account,
            endpoint=server.base_url,
            ca_file=server.tls.ca_file if server.tls else None,
        )
        sender = FCMSender(config)

        async def run() -> None:
            try:
                await sender.send(pushes_for([random_fcm_token()]))
                await sender.send(pushes_for([random_fcm_token()]))  # starts a refresh
                assert sender.tokens is not None
                while server.tokens_issued < 2 or sender.tokens._refreshing is not None:
                    await asyncio.sleep(0.01)
                await sender.send(pushes_for([random_fcm_token()]))
            finally:
                await sender.close()

        loops.run(run())
        first, second, third = (p.headers["authorization"] for p in server.pushes.snapshot())
        assert first == second  # the old token, still valid, served meanwhile
        assert third != first
        assert server.tokens_issued >= 2


def test_a_hung_token_endpoint_fails_the_send_in_time(h2: Fake) -> None:
    h2.server.token_delay = 30.0
    [[outcome]] = send(h2.config(token_timeout_s=0.3), [random_fcm_token()])
    assert outcome == PushOutcome.transient("token: timeout")
    assert len(h2.server.pushes) == 0


def test_an_unknown_service_account_is_a_configuration_error(h2: Fake, tmp_path: Path) -> None:
    stranger = generate_service_account(
        tmp_path / "stranger.json", token_uri=h2.server.token_uri, project_id="pn-relay-sandbox"
    )
    config = FCMConfig(
        service_account_file=stranger.file,
        endpoint=h2.server.base_url,
        ca_file=h2.server.tls.ca_file if h2.server.tls else None,
    )
    [[outcome]] = send(config, [random_fcm_token()])
    assert outcome == PushOutcome(Verdict.CONFIG_ERROR, "invalid_grant", hint=CREDENTIAL_HINT)


def test_a_wrong_project_is_a_configuration_error(fake: Fake) -> None:
    [[outcome]] = send(fake.config(project_id="someone-else"), [random_fcm_token()])
    assert outcome == PushOutcome(
        Verdict.CONFIG_ERROR, reason="PERMISSION_DENIED", hint=CREDENTIAL_HINT
    )


# -- failures before an answer ------------------------------------------------------------------


def test_a_slow_answer_times_out_and_its_stream_is_reset(h2: Fake) -> None:
    slow, quick, later = random_fcm_token(), random_fcm_token(), random_fcm_token()
    h2.server.scripts.set(slow, script.slow(30))
    reset_before = h2.server.streams_reset
    first, second = send(h2.config(request_timeout_s=0.5), [slow, quick], [later])
    assert first == [PushOutcome.transient("timeout"), PushOutcome(Verdict.ACCEPTED)]
    assert second == [PushOutcome(Verdict.ACCEPTED)]
    wait_until(lambda: h2.server.streams_reset == reset_before + 1)
    connections = {p.token: p.connection_id for p in h2.server.pushes.snapshot()}
    assert connections[slow] == connections[later]  # the connection was kept


def test_a_slow_answer_over_http1_closes_that_connection(fakes: dict[str, Fake]) -> None:
    plain = fakes["http1-plain"]
    try:
        slow, later = random_fcm_token(), random_fcm_token()
        plain.server.scripts.set(slow, script.slow(30))
        config = plain.config(request_timeout_s=0.5, http1_connections=1)
        first, second = send(config, [slow], [later])
        assert first == [PushOutcome.transient("timeout")]
        assert second == [PushOutcome(Verdict.ACCEPTED)]
        connections = {p.token: p.connection_id for p in plain.server.pushes.snapshot()}
        assert connections[slow] != connections[later]
    finally:
        reset(plain.server)


def test_a_dropped_connection_is_transient_and_the_next_send_reconnects(fake: Fake) -> None:
    token = random_fcm_token()
    fake.server.scripts.fail_times(token, 1, script.drop())
    first, second = send(fake.config(), [token], [token])
    assert first[0].verdict is Verdict.TRANSIENT
    assert first[0].reason.startswith("transport: ")
    assert second == [PushOutcome(Verdict.ACCEPTED)]


def test_goaway_sends_the_refused_push_again_at_once(h2: Fake) -> None:
    tokens = [random_fcm_token() for _ in range(5)]
    h2.server.scripts.fail_times(tokens[2], 1, script.goaway())
    [outcomes] = send(h2.config(), tokens)
    assert outcomes == [PushOutcome(Verdict.ACCEPTED)] * 5
    pushes = h2.server.pushes.snapshot()
    goaway = [p for p in pushes if p.status == 0]
    assert [p.token for p in goaway] == [tokens[2]]
    again = [p for p in pushes if p.token == tokens[2] and p.status == 200]
    assert len(again) == 1
    assert again[0].connection_id != goaway[0].connection_id


def test_a_graceful_goaway_lets_open_streams_finish(h2: Fake) -> None:
    h2.server.global_delay = 2.0
    tokens = [random_fcm_token() for _ in range(10)]
    sender = FCMSender(h2.config())

    async def run() -> tuple[list[PushOutcome], list[PushOutcome]]:
        try:
            task = asyncio.ensure_future(sender.send(pushes_for(tokens)))
            while len(h2.server.pushes) < 10:
                await asyncio.sleep(0.01)
            h2.server.goaway_all()  # Google rotating a connection, say
            first = await task
            h2.server.global_delay = 0.0
            second = await sender.send(pushes_for([random_fcm_token()]))
            return first, second
        finally:
            await sender.close()

    first, second = loops.run(run())
    assert first == [PushOutcome(Verdict.ACCEPTED)] * 10
    assert second == [PushOutcome(Verdict.ACCEPTED)]
    pushes = h2.server.pushes.snapshot()
    assert len({p.connection_id for p in pushes[:10]}) == 1
    assert pushes[10].connection_id != pushes[0].connection_id


def test_a_refused_connection_is_transient_until_fcm_is_back(fake: Fake) -> None:
    sender = FCMSender(fake.config())

    async def run() -> list[list[PushOutcome]]:
        try:
            # The token endpoint is the same server: the token is got while it is up.
            before = await sender.send(pushes_for([random_fcm_token()]))
            fake.server.set_down(True, refuse=True)  # aborts the open connections too
            assert sender.pool is not None
            while sender.pool.connections:  # until the client has seen them go
                await asyncio.sleep(0.01)
            down = await sender.send(pushes_for([random_fcm_token()]))
            fake.server.set_down(False)
            up = await sender.send(pushes_for([random_fcm_token()]))
            return [before, down, up]
        finally:
            await sender.close()

    before, down, up = loops.run(run())
    assert before == up == [PushOutcome(Verdict.ACCEPTED)]
    assert down == [PushOutcome.transient("transport: connect: ConnectionRefusedError")]


def test_a_server_that_never_finishes_tls_is_a_connect_timeout(h2: Fake) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts TCP (backlog), never says a word
        port = silent.getsockname()[1]
        config = FCMConfig(
            service_account_file=h2.service_account,
            project_id="pn-relay-sandbox",
            endpoint=f"https://127.0.0.1:{port}",
            ca_file=h2.server.tls.ca_file if h2.server.tls else None,
            connect_timeout_s=0.3,
        )
        [[outcome]] = send(config, [random_fcm_token()])
    assert outcome == PushOutcome.transient("transport: connect: timeout")


def test_close_closes_every_connection(fake: Fake) -> None:
    send(fake.config(), [random_fcm_token() for _ in range(30)])
    wait_until(lambda: fake.server.connections_open == 0)


def test_a_send_cancelled_midway_resets_its_streams(h2: Fake) -> None:
    h2.server.global_delay = 30.0
    reset_before = h2.server.streams_reset
    sender = FCMSender(h2.config())

    async def run() -> None:
        try:
            task = asyncio.ensure_future(sender.send(pushes_for([random_fcm_token()] * 3)))
            while len(h2.server.pushes) < 3:
                await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert sender.pool is not None
            assert all(c.free_slots() == c.capacity for c in sender.pool.connections)
        finally:
            await sender.close()

    loops.run(run())
    wait_until(lambda: h2.server.streams_reset == reset_before + 3)


class _Http1Proxy(socketserver.ThreadingTCPServer):
    """A bare HTTP/1.1 server like a proxy might be: chunked answers, `Connection: close`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Http1ProxyHandler)
        self.connections = 0
        self.requests = 0


class _Http1ProxyHandler(socketserver.StreamRequestHandler):
    server: _Http1Proxy

    def handle(self) -> None:
        self.server.connections += 1
        while True:
            request_line = self.rfile.readline()
            if not request_line:
                return
            length = 0
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.rfile.read(length)
            self.server.requests += 1
            close = self.server.requests % 2 == 0  # every other answer ends the connection
            body = b'{"name": "projects/p/messages/1"}'
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + (b"Connection: close\r\n" if close else b"")
                + b"Transfer-Encoding: chunked\r\n\r\n"
                + f"{len(body):x}\r\n".encode()
                + body
                + b"\r\n0\r\n\r\n"
            )
            self.wfile.flush()
            if close:
                return


def test_an_http1_proxy_with_chunked_answers_and_connection_close(h2: Fake) -> None:
    proxy = _Http1Proxy()
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        config = FCMConfig(
            service_account_file=h2.service_account,  # the token still comes from the fake
            project_id="p",
            endpoint=f"http://127.0.0.1:{proxy.server_address[1]}",
            ca_file=h2.server.tls.ca_file if h2.server.tls else None,
            http1_connections=1,
        )
        [outcomes] = send(config, [random_fcm_token() for _ in range(6)])
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert outcomes == [PushOutcome(Verdict.ACCEPTED)] * 6
    assert proxy.requests == 6
    assert proxy.connections == 3  # kept alive for two requests, then closed as told
