"""The fake FCM HTTP v1 API and its OAuth2 token endpoint, driven by firebase-admin 7.7, httpx."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import firebase_admin
import httpx
import jwt
import pytest
from firebase_admin import _http_client, credentials, exceptions, messaging
from firebase_admin._retry import HttpxRetry

from sandbox import script
from sandbox.certs import generate_service_account, load_service_account
from sandbox.fcm import GOOGLE_TOKEN_ENDPOINT, FakeFcm

DATA = {"ENCRYPTED_DATA": "aGVsbG8="}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeFcm]:
    # firebase-admin fetches OAuth tokens with blocking `requests` calls inside its async
    # client, so the fake must run on its own thread, never on the test's event loop.
    server = FakeFcm().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service_account(fake: FakeFcm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake.write_service_account(tmp_path_factory.mktemp("fcm") / "sa.json").file


@pytest.fixture(autouse=True)
def _reset(fake: FakeFcm) -> Iterator[None]:
    yield
    fake.set_down(False)
    fake.global_delay = 0.0
    fake.scripts.clear()
    fake.pushes.clear()


@contextlib.contextmanager
def firebase(
    fake: FakeFcm, service_account: Path, *, retries: int | None = None
) -> Iterator[firebase_admin.App]:
    """A firebase-admin app whose messaging service talks to the fake.

    firebase-admin 7.7 builds the send URL in ``_MessagingService.__init__`` from the class
    constant ``_MessagingService.FCM_URL`` ('https://fcm.googleapis.com/v1/projects/{0}/
    messages:send') into the instance attribute ``_fcm_url``: override the instance attribute.
    The OAuth endpoint comes from the service account's ``token_uri``.

    Use it outside the event loop: ``delete_app`` runs ``asyncio.run(aclose())`` in 7.7.
    """
    app = firebase_admin.initialize_app(
        credentials.Certificate(str(service_account)), name=f"sandbox-{uuid.uuid4()}"
    )
    service = messaging._get_messaging_service(app)
    service._fcm_url = fake.send_url
    if retries is not None:
        # Default: 4 retries on 500/503 with 0.5 s exponential backoff (about 7 s in all).
        service._async_client = _http_client.HttpxAsyncClient(
            credential=service._credential,
            retry_config=HttpxRetry(max_retries=retries, status_forcelist=[500, 503]),
        )
    try:
        yield app
    finally:
        firebase_admin.delete_app(app)


async def close_http(app: firebase_admin.App) -> None:
    """Close the app's httpx client on the loop that opened its connections."""
    await messaging._get_messaging_service(app)._async_client.aclose()


def message(token: str, data: dict[str, str] | None = None) -> messaging.Message:
    with warnings.catch_warnings():
        # 7.7 deprecates Message.token in favour of fid; FCM registration tokens still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        return messaging.Message(
            token=token,
            data=DATA if data is None else data,
            android=messaging.AndroidConfig(priority="high"),
        )


def send(
    fake: FakeFcm, service_account: Path, *tokens: str, retries: int | None = 0
) -> list[messaging.SendResponse]:
    with firebase(fake, service_account, retries=retries) as app:

        async def main() -> list[messaging.SendResponse]:
            try:
                batch = await messaging.send_each_async([message(t) for t in tokens], app=app)
                return list(batch.responses)
            finally:
                await close_http(app)

        return asyncio.run(main())


def new_token() -> str:
    return secrets.token_urlsafe(96)


def raw_post(fake: FakeFcm, body: Any, token: str | None = None, **kwargs: Any) -> httpx.Response:
    access = fake.issue_access_token() if token is None else token
    headers = {"Authorization": f"Bearer {access}"} if access else {}
    return httpx.post(fake.send_url, json=body, headers=headers, **kwargs)


# -- firebase-admin ------------------------------------------------------------------------------


def test_firebase_admin_send_is_delivered_and_recorded(fake, service_account):
    token = new_token()
    before = time.monotonic()
    [response] = send(fake, service_account, token, retries=None)
    assert response.success
    assert response.message_id.startswith(f"projects/{fake.project_id}/messages/0:")
    [push] = fake.pushes.snapshot()
    assert push.token == token
    assert push.status == 200
    assert push.message_id == response.message_id
    assert push.body == {"message": {"token": token, "data": DATA, "android": {"priority": "high"}}}
    assert push.data == DATA
    assert push.headers["Authorization"].startswith("Bearer ya29.sandbox-")
    assert push.headers["X-Goog-Api-Format-Version"] == "2"
    assert before <= push.received_at <= time.monotonic()
    assert not push.validate_only
    assert fake.delivered() == [push]


@pytest.mark.parametrize(
    "case",
    [
        (script.unregistered(), messaging.UnregisteredError, 404, "UNREGISTERED"),
        (script.invalid_argument(), exceptions.InvalidArgumentError, 400, "INVALID_ARGUMENT"),
        (script.payload_too_large(), exceptions.InvalidArgumentError, 400, "INVALID_ARGUMENT"),
        (script.quota_exceeded(30), messaging.QuotaExceededError, 429, "QUOTA_EXCEEDED"),
        (script.sender_id_mismatch(), messaging.SenderIdMismatchError, 403, "SENDER_ID_MISMATCH"),
        (script.internal(), exceptions.InternalError, 500, "INTERNAL"),
        (script.unavailable(), exceptions.UnavailableError, 503, "UNAVAILABLE"),
        (script.error(401, "THIRD_PARTY_AUTH_ERROR"), messaging.ThirdPartyAuthError, 401, None),
    ],
)
def test_firebase_admin_maps_scripted_errors(fake, service_account, case):
    behaviour, exception, status, code = case
    token = new_token()
    fake.scripts.set(token, behaviour)
    [response] = send(fake, service_account, token)
    assert not response.success
    assert type(response.exception) is exception
    assert response.exception.http_response.status_code == status
    pushes = fake.pushes.snapshot()
    # A 401 makes firebase-admin refresh its access token and try twice more.
    assert len(pushes) == (3 if status == 401 else 1)
    assert {p.status for p in pushes} == {status}
    assert pushes[0].error_code == (code or "THIRD_PARTY_AUTH_ERROR")


def test_firebase_admin_retries_a_transient_error(fake, service_account):
    token = new_token()
    fake.scripts.fail_times(token, 1, script.unavailable())
    [response] = send(fake, service_account, token, retries=None)  # firebase's own retries
    assert response.success
    assert [p.status for p in fake.pushes.snapshot()] == [503, 200]


def test_fail_n_times_then_succeed(fake, service_account):
    token = new_token()
    fake.scripts.fail_times(token, 2, script.internal())
    results = [send(fake, service_account, token)[0] for _ in range(3)]
    assert [r.success for r in results] == [False, False, True]


def test_drop_closes_without_an_answer(fake, service_account):
    token, then_ok = new_token(), new_token()
    fake.scripts.set(token, script.drop())
    fake.scripts.fail_times(then_ok, 1, script.drop())
    dropped, dropped_once = send(fake, service_account, token, then_ok)
    for response in (dropped, dropped_once):
        # RST: httpx.ReadError, which firebase-admin wraps in UnknownError (no retry).
        assert isinstance(response.exception, exceptions.UnknownError)
        assert isinstance(response.exception.cause, httpx.TransportError)
    with pytest.raises(httpx.TransportError):
        raw_post(fake, {"message": {"token": token, "data": DATA}})
    assert raw_post(fake, {"message": {"token": then_ok, "data": DATA}}).status_code == 200
    assert [p.status for p in fake.pushes.snapshot()].count(0) == 3


def test_slow_and_global_delay(fake, service_account):
    token = new_token()
    fake.scripts.set(token, script.slow(0.3))
    start = time.monotonic()
    assert send(fake, service_account, token)[0].success
    assert time.monotonic() - start >= 0.3
    fake.global_delay = 0.2
    start = time.monotonic()
    assert raw_post(fake, {"message": {"token": new_token()}}).status_code == 200
    assert time.monotonic() - start >= 0.2


def test_data_over_4096_bytes_is_too_big(fake, service_account):
    token = new_token()

    async def main(app: firebase_admin.App) -> messaging.SendResponse:
        try:
            big = {"ENCRYPTED_DATA": "x" * 4096}
            batch = await messaging.send_each_async([message(token, big)], app=app)
            return batch.responses[0]
        finally:
            await close_http(app)

    with firebase(fake, service_account, retries=0) as app:
        response = asyncio.run(main(app))
    assert isinstance(response.exception, exceptions.InvalidArgumentError)
    assert str(response.exception) == "Message is too big"
    fits = {"ENCRYPTED_DATA": "x" * (4096 - len("ENCRYPTED_DATA"))}
    assert raw_post(fake, {"message": {"token": token, "data": fits}}).status_code == 200


def test_access_token_is_refreshed_after_revocation(fake, service_account):
    token = new_token()

    async def main(app: firebase_admin.App) -> list[bool]:
        try:
            first = await messaging.send_each_async([message(token)], app=app)
            fake.revoke_access_tokens()
            second = await messaging.send_each_async([message(token)], app=app)
            return [first.responses[0].success, second.responses[0].success]
        finally:
            await close_http(app)

    issued = fake.tokens_issued
    with firebase(fake, service_account, retries=0) as app:
        assert asyncio.run(main(app)) == [True, True]
    assert fake.tokens_issued == issued + 2
    assert [p.status for p in fake.pushes.snapshot()] == [200, 401, 200]


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


# -- TLS -----------------------------------------------------------------------------------------


def test_https_with_the_test_ca(tmp_path, monkeypatch):
    """firebase-admin over https: httpx (sends) reads SSL_CERT_FILE when its client is built,
    google-auth's requests (token refresh) reads REQUESTS_CA_BUNDLE."""
    server = FakeFcm.create(tmp_path, use_tls=True).start()
    try:
        assert server.base_url.startswith("https://127.0.0.1:")
        assert server.tls is not None
        monkeypatch.setenv("SSL_CERT_FILE", str(server.tls.ca_file))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.tls.ca_file))
        sa_file = server.write_service_account(tmp_path / "sa.json").file
        token = new_token()
        [response] = send(server, sa_file, token, retries=None)
        assert response.success, response.exception
        assert server.pushes.snapshot()[0].token == token
    finally:
        server.stop()


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

    assert asyncio.run(main()) == 200
