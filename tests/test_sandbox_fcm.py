"""The fake FCM HTTP v1 API and its OAuth2 token endpoint, driven by raw clients: httpx over
HTTP/1.1 (plain and TLS) and HTTP/2 (TLS, ALPN "h2"), and sandbox/h2client.py for the
HTTP/2 details (stream limit, flow control, GOAWAY). The relay's own sender against it:
tests/test_fcm_sender.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from sandbox import script
from sandbox.certs import generate_service_account, load_service_account
from sandbox.fcm import GOOGLE_TOKEN_ENDPOINT, FakeFcm
from sandbox.h2client import ConnectionClosedError, RawH2Client, StreamResetError
from tests import loops

DATA = {"ENCRYPTED_DATA": "aGVsbG8="}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeFcm]:
    server = FakeFcm().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeFcm]:
    server = FakeFcm.create(tmp_path_factory.mktemp("fcm-tls"), use_tls=True).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset(fake: FakeFcm, tls_fake: FakeFcm) -> Iterator[None]:
    yield
    for server in (fake, tls_fake):
        server.set_down(False)
        server.global_delay = 0.0
        server.max_concurrent_streams = 100
        server.scripts.clear()
        server.pushes.clear()


def new_token() -> str:
    return secrets.token_urlsafe(96)


def raw_post(fake: FakeFcm, body: Any, token: str | None = None, **kwargs: Any) -> httpx.Response:
    access = fake.issue_access_token() if token is None else token
    headers = {"Authorization": f"Bearer {access}"} if access else {}
    if fake.tls is not None:
        kwargs.setdefault("verify", fake.client_ssl_context())
    return httpx.post(fake.send_url, json=body, headers=headers, **kwargs)


def h2_post(fake: FakeFcm, body: Any, token: str | None = None) -> httpx.Response:
    access = fake.issue_access_token() if token is None else token
    with httpx.Client(http2=True, verify=fake.client_ssl_context()) as client:
        response = client.post(
            fake.send_url, json=body, headers={"Authorization": f"Bearer {access}"}
        )
    assert response.http_version == "HTTP/2"
    return response


# -- delivery and scripted answers -----------------------------------------------------------


def test_send_is_delivered_and_recorded(fake: FakeFcm) -> None:
    token = new_token()
    before = time.monotonic()
    body = {"message": {"token": token, "data": DATA, "android": {"priority": "high"}}}
    response = raw_post(fake, body)
    assert response.status_code == 200
    name = response.json()["name"]
    assert name.startswith(f"projects/{fake.project_id}/messages/0:")
    assert response.text == json.dumps({"name": name}, indent=2)  # Google's layout
    [push] = fake.pushes.snapshot()
    assert push.token == token
    assert push.status == 200
    assert push.message_id == name
    assert push.body == body
    assert push.data == DATA
    assert push.headers["authorization"].startswith("Bearer ya29.sandbox-")
    assert push.http_version == "HTTP/1.1"
    assert push.connection_id > 0
    assert before <= push.received_at <= time.monotonic()
    assert not push.validate_only
    assert fake.delivered() == [push]


ANSWERS = [
    script.unregistered(),
    script.invalid_argument(),
    script.payload_too_large(),
    script.quota_exceeded(30),
    script.sender_id_mismatch(),
    script.internal(),
    script.unavailable(2.5),
    script.error(401, "THIRD_PARTY_AUTH_ERROR"),
]


@pytest.mark.parametrize("behaviour", ANSWERS, ids=lambda b: f"{b.kind.value}-{b.reason}")
def test_http2_and_http1_answer_alike(tls_fake: FakeFcm, behaviour: script.Behaviour) -> None:
    token = new_token()
    tls_fake.scripts.set(token, behaviour)
    body = {"message": {"token": token, "data": DATA}}
    over_h1, over_h2 = raw_post(tls_fake, body), h2_post(tls_fake, body)
    assert over_h1.http_version == "HTTP/1.1"
    assert over_h2.status_code == over_h1.status_code >= 400
    assert over_h2.json() == over_h1.json()
    assert over_h2.headers.get("retry-after") == over_h1.headers.get("retry-after")
    assert over_h2.headers["content-type"] == "application/json; charset=UTF-8"
    assert [p.http_version for p in tls_fake.pushes.snapshot()] == ["HTTP/1.1", "HTTP/2"]


def test_fail_n_times_then_succeed(fake: FakeFcm) -> None:
    token = new_token()
    fake.scripts.fail_times(token, 2, script.internal())
    body = {"message": {"token": token, "data": DATA}}
    assert [raw_post(fake, body).status_code for _ in range(3)] == [500, 500, 200]


def test_drop_closes_without_an_answer(fake: FakeFcm, tls_fake: FakeFcm) -> None:
    token, then_ok = new_token(), new_token()
    fake.scripts.set(token, script.drop())
    fake.scripts.fail_times(then_ok, 1, script.drop())
    with pytest.raises(httpx.TransportError):
        raw_post(fake, {"message": {"token": token, "data": DATA}})
    with pytest.raises(httpx.TransportError):
        raw_post(fake, {"message": {"token": then_ok, "data": DATA}})
    assert raw_post(fake, {"message": {"token": then_ok, "data": DATA}}).status_code == 200
    assert [p.status for p in fake.pushes.snapshot()] == [0, 0, 200]
    tls_fake.scripts.set(token, script.drop())
    with pytest.raises(httpx.TransportError):
        h2_post(tls_fake, {"message": {"token": token, "data": DATA}})


def test_slow_and_global_delay(fake: FakeFcm, tls_fake: FakeFcm) -> None:
    token = new_token()
    fake.scripts.set(token, script.slow(0.3))
    start = time.monotonic()
    assert raw_post(fake, {"message": {"token": token}}).status_code == 200
    assert time.monotonic() - start >= 0.3
    tls_fake.global_delay = 0.2
    start = time.monotonic()
    assert h2_post(tls_fake, {"message": {"token": new_token()}}).status_code == 200
    assert time.monotonic() - start >= 0.2


def test_data_over_4096_bytes_is_too_big(fake: FakeFcm) -> None:
    token = new_token()
    response = raw_post(fake, {"message": {"token": token, "data": {"ENCRYPTED_DATA": "x" * 4096}}})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Message is too big"
    fits = {"ENCRYPTED_DATA": "x" * (4096 - len("ENCRYPTED_DATA"))}
    assert raw_post(fake, {"message": {"token": token, "data": fits}}).status_code == 200


def test_a_revoked_access_token_is_refused(fake: FakeFcm) -> None:
    access = fake.issue_access_token()
    body = {"message": {"token": new_token()}}
    assert raw_post(fake, body, token=access).status_code == 200
    fake.revoke_access_tokens()
    assert raw_post(fake, body, token=access).status_code == 401
    assert raw_post(fake, body).status_code == 200  # a new token works


# -- the wire, seen by httpx -----------------------------------------------------------------------


def test_unregistered_error_has_googles_exact_shape(fake):
    token = new_token()
    fake.scripts.set(token, script.unregistered())
    response = raw_post(fake, {"message": {"token": token, "data": DATA}})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert response.json() == {
        "error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
            "details": [
                {
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "UNREGISTERED",
                }
            ],
        }
    }


def test_invalid_token_and_quota_answers(fake):
    response = raw_post(fake, {"message": {"token": "not a token!", "data": DATA}})
    error = response.json()["error"]
    assert (response.status_code, error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"] == "The registration token is not a valid FCM registration token"
    assert error["details"][0]["errorCode"] == "INVALID_ARGUMENT"
    token = new_token()
    fake.scripts.set(token, script.quota_exceeded(30))
    response = raw_post(fake, {"message": {"token": token}})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "30"
    assert response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_bearer_token_checks(fake):
    body = {"message": {"token": new_token()}}
    for access in ("", "ya29.unknown"):
        response = raw_post(fake, body, token=access)
        assert response.status_code == 401
        assert response.json()["error"]["status"] == "UNAUTHENTICATED"
        assert response.headers["www-authenticate"].startswith("Bearer")
    wrong_project = fake.send_url.replace(fake.project_id, "someone-else")
    headers = {"Authorization": f"Bearer {fake.issue_access_token()}"}
    response = httpx.post(wrong_project, json=body, headers=headers)
    assert (response.status_code, response.json()["error"]["status"]) == (
        403,
        "PERMISSION_DENIED",
    )


def test_message_validation(fake):
    assert raw_post(fake, {"message": {"data": DATA}}).json()["error"]["message"] == (
        "Recipient of the message is not set."
    )
    assert raw_post(fake, {"message": {"token": new_token(), "data": {"n": 1}}}).status_code == 400
    assert raw_post(fake, [1, 2]).status_code == 400
    assert raw_post(fake, {"message": {"topic": "news"}}).status_code == 200
    fid = new_token()
    assert raw_post(fake, {"message": {"fid": fid}}).status_code == 200
    dry = raw_post(fake, {"message": {"token": new_token()}, "validate_only": True})
    assert dry.status_code == 200
    pushes = fake.pushes.snapshot()
    assert pushes[-2].token == fid
    assert pushes[-1].validate_only


def test_oauth_token_endpoint(fake, tmp_path):
    stranger = generate_service_account(
        tmp_path / "other.json",
        token_uri=fake.token_uri,
        client_email="stranger@elsewhere.iam.gserviceaccount.com",
    )

    def grant(assertion: str, grant_type: str = "urn:ietf:params:oauth:grant-type:jwt-bearer"):
        return httpx.post(fake.token_uri, data={"grant_type": grant_type, "assertion": assertion})

    def assertion(account_file: Path, **claims: Any) -> str:
        info = json.loads(account_file.read_text())
        now = int(time.time())
        payload = {
            "iss": info["client_email"],
            "aud": GOOGLE_TOKEN_ENDPOINT,
            "iat": now,
            "exp": now + 3600,
            "scope": "https://www.googleapis.com/auth/firebase.messaging",
        }
        payload.update(claims)
        return jwt.encode(
            payload,
            info["private_key"],
            algorithm="RS256",
            headers={"kid": info["private_key_id"]},
        )

    sa_file = fake.write_service_account(tmp_path / "sa.json").file
    ok = grant(assertion(sa_file))
    assert ok.status_code == 200
    body = ok.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert raw_post(
        fake, {"message": {"token": new_token()}}, token=body["access_token"]
    ).is_success

    assert grant(assertion(stranger.file)).json() == {
        "error": "invalid_grant",
        "error_description": "Invalid grant: account not found",
    }
    fake.trust_service_account(load_service_account(stranger.file))
    assert grant(assertion(stranger.file)).status_code == 200

    forged = assertion(stranger.file, iss=fake.client_email)  # fake's email, stranger's key
    assert grant(forged).json()["error_description"] == "Invalid JWT Signature."
    stale = assertion(sa_file, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    assert "short-lived" in grant(stale).json()["error_description"]
    elsewhere = assertion(sa_file, aud="https://example.com/token")
    assert "audience" in grant(elsewhere).json()["error_description"]
    assert grant(assertion(sa_file), grant_type="password").json()["error"] == (
        "unsupported_grant_type"
    )


def test_server_down_and_back(fake):
    body = {"message": {"token": new_token()}}
    with httpx.Client() as client:
        headers = {"Authorization": f"Bearer {fake.issue_access_token()}"}
        assert client.post(fake.send_url, json=body, headers=headers).status_code == 200
        assert fake.connections_open >= 1
        fake.set_down(True)
        with pytest.raises(httpx.TransportError):
            client.post(fake.send_url, json=body, headers=headers)
        fake.set_down(True, refuse=True)
        with pytest.raises(httpx.ConnectError):
            client.post(fake.send_url, json=body, headers=headers)
        fake.set_down(False)
        assert client.post(fake.send_url, json=body, headers=headers).status_code == 200


# -- TLS and HTTP/2 -------------------------------------------------------------------------------


def test_alpn_chooses_the_protocol(tls_fake: FakeFcm, tmp_path: Path) -> None:
    body = {"message": {"token": new_token()}}
    assert tls_fake.base_url.startswith("https://127.0.0.1:")
    assert h2_post(tls_fake, body).status_code == 200  # offered h2: HTTP/2
    assert raw_post(tls_fake, body).http_version == "HTTP/1.1"  # offered http/1.1 only
    # A server like a proxy that only speaks HTTP/1.1 answers HTTP/1.1 even to h2 clients.
    with FakeFcm.create(tmp_path, use_tls=True, alpn=("http/1.1",)) as old:
        with httpx.Client(http2=True, verify=old.client_ssl_context()) as client:
            access = old.issue_access_token()
            response = client.post(
                old.send_url, json=body, headers={"Authorization": f"Bearer {access}"}
            )
        assert (response.status_code, response.http_version) == (200, "HTTP/1.1")


def test_http2_token_endpoint_and_unknown_paths(tls_fake: FakeFcm) -> None:
    with httpx.Client(http2=True, verify=tls_fake.client_ssl_context()) as client:
        grant = client.post(tls_fake.token_uri, data={"grant_type": "password"})
        assert grant.http_version == "HTTP/2"
        assert grant.json()["error"] == "unsupported_grant_type"
        missing = client.post(tls_fake.base_url + "/v1/elsewhere")
        assert missing.status_code == 404
        assert missing.json()["error"]["status"] == "NOT_FOUND"
        wrong_method = client.get(tls_fake.send_url)
        assert wrong_method.status_code == 405


def request_headers(fake: FakeFcm) -> list[tuple[str, str]]:
    return [
        ("authorization", f"Bearer {fake.issue_access_token()}"),
        ("content-type", "application/json"),
    ]


def send_path(fake: FakeFcm) -> str:
    return f"/v1/projects/{fake.project_id}/messages:send"


def test_streams_over_the_limit_are_refused(tls_fake: FakeFcm) -> None:
    async def main() -> list[Any]:
        client = await RawH2Client.connect(
            "127.0.0.1", tls_fake.port, tls_fake.client_ssl_context(alpn=("h2",))
        )
        try:
            tls_fake.max_concurrent_streams = 2  # from now on, for this open connection too
            tls_fake.global_delay = 0.5
            body = json.dumps({"message": {"token": new_token()}}).encode()
            futures = [
                client.start_request("POST", send_path(tls_fake), request_headers(tls_fake), body)
                for _ in range(3)
            ]
            return list(await asyncio.gather(*futures, return_exceptions=True))
        finally:
            await client.aclose()

    refused_before = tls_fake.streams_refused
    first, second, third = loops.run(main())
    assert (first.status, second.status) == (200, 200)
    assert isinstance(third, StreamResetError)
    assert third.error_code == 7  # REFUSED_STREAM: never processed, safe to retry
    assert tls_fake.streams_refused == refused_before + 1


def test_answers_wait_for_the_clients_flow_control_window(tls_fake: FakeFcm) -> None:
    token = new_token()
    tls_fake.scripts.set(token, script.unregistered())

    async def main() -> tuple[int, int, Any]:
        client = await RawH2Client.connect(
            "127.0.0.1",
            tls_fake.port,
            tls_fake.client_ssl_context(alpn=("h2",)),
            auto_ack=False,
            initial_window_size=16,
        )
        try:
            body = json.dumps({"message": {"token": token}}).encode()
            future = client.start_request(
                "POST", send_path(tls_fake), request_headers(tls_fake), body
            )
            while client.unacked_bytes < 16:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            held = client.unacked_bytes  # the fake stopped at our window
            assert not future.done()
            while not future.done():
                client.acknowledge()
                await asyncio.sleep(0.01)
            response = future.result()
            return held, response.data_frames, response.json()
        finally:
            await client.aclose()

    held, frames, answer = loops.run(main())
    assert held == 16
    assert frames > 5
    assert answer["error"]["details"][0]["errorCode"] == "UNREGISTERED"


def test_goaway_leaves_the_stream_unprocessed(tls_fake: FakeFcm) -> None:
    token = new_token()
    tls_fake.scripts.fail_times(token, 1, script.goaway())

    async def main() -> tuple[Any, Any]:
        client = await RawH2Client.connect(
            "127.0.0.1", tls_fake.port, tls_fake.client_ssl_context(alpn=("h2",))
        )
        try:
            body = json.dumps({"message": {"token": new_token()}}).encode()
            first = await client.request(
                "POST", send_path(tls_fake), request_headers(tls_fake), body
            )
            body = json.dumps({"message": {"token": token}}).encode()
            future = client.start_request(
                "POST", send_path(tls_fake), request_headers(tls_fake), body
            )
            with pytest.raises(ConnectionClosedError):
                await future
            await client.wait_closed()
            return first, client.terminated
        finally:
            await client.aclose()

    first, terminated = loops.run(main())
    assert first.status == 200
    assert terminated is not None
    assert (terminated.error_code, terminated.last_stream_id) == (0, 1)  # stream 3 not taken
    assert [p.status for p in tls_fake.pushes.snapshot()] == [200, 0]


def test_serve_on_the_callers_loop_for_raw_clients():
    async def main() -> int:
        async with FakeFcm() as server:
            async with httpx.AsyncClient() as client:
                response = await client.post(
                    server.send_url,
                    json={"message": {"token": new_token()}},
                    headers={"Authorization": f"Bearer {server.issue_access_token()}"},
                )
            return response.status_code

    assert loops.run(main()) == 200
