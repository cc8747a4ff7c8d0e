"""The fake APNs, driven by real HTTP/2 clients: the relay's APNs sender, httpx (h2) and a raw
h2 client."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509

from push.apns import APNsSender
from push.outcome import Push, PushOutcome, Verdict
from sandbox import script
from sandbox.apns import FakeApns, provider_token
from sandbox.certs import generate_apns_key, generate_tls
from sandbox.h2client import ConnectionClosedError, RawH2Client, StreamResetError
from storage.records import Provider
from tests import loops
from tests.providers import apns_sender

DATA = "aGVsbG8="
BODY = {
    "aps": {
        "alert": {"title": "Session", "body": "You've got a new message"},
        "badge": 1,
        "sound": "default",
        "mutable-content": 1,
        "category": "SECRET",
    },
    "ENCRYPTED_DATA": DATA,
    "remote": 1,
}


# {"reason":"Unregistered","timestamp":1700000000000} is 51 bytes: 1,285 of them fill the
# 65,535-byte HTTP/2 connection window, so 1,600 answers prove the client's acknowledgements.
GONE = script.unregistered(1_700_000_000_000)
GONE_BODY = 51
MANY = 1600
WINDOW = 65535


@pytest.fixture
def fake(fake_apns: FakeApns) -> FakeApns:
    return fake_apns


def new_token() -> str:
    return secrets.token_hex(32)


def apns_headers(
    fake: FakeApns, overrides: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "authorization": f"bearer {provider_token(fake.apns_key)}",
        "apns-topic": fake.topic,
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-expiration": "0",
    }
    headers.update(overrides or {})
    return {k: v for k, v in headers.items() if v is not None}


def post(
    fake: FakeApns,
    token: str,
    body: bytes | None = None,
    headers: Mapping[str, str | None] | None = None,
) -> httpx.Response:
    with httpx.Client(http2=True, verify=fake.client_ssl_context()) as client:
        return client.post(
            f"https://{fake.endpoint}/3/device/{token}",
            headers=apns_headers(fake, headers),
            content=json.dumps(BODY).encode() if body is None else body,
        )


def relay_sender(fake: FakeApns, *, max_connections: int = 1) -> APNsSender:
    """The relay's own APNs sender (push/apns.py), pointed at the fake."""
    return apns_sender(fake, max_connections=max_connections, request_timeout_s=20.0)


def push_to(token: str, apns_id: str | None = None) -> Push:
    return Push(
        delivery_id=1,
        provider=Provider.APNS,
        token=token,
        data=DATA,
        apns_id=apns_id or str(uuid.uuid4()),
        expiration_s=int(time.time()) + 3600,
    )


async def send_each(sender: APNsSender, tokens: list[str]) -> list[PushOutcome]:
    """One `send` per push, one after the other (a retry is a later send)."""
    try:
        return [(await sender.send([push_to(token)]))[0] for token in tokens]
    finally:
        await sender.close()


async def raw_client(fake: FakeApns, **kwargs: Any) -> RawH2Client:
    return await RawH2Client.connect(
        "127.0.0.1", fake.port, fake.client_ssl_context(alpn=("h2",)), **kwargs
    )


def raw_headers(fake: FakeApns) -> list[tuple[str, str]]:
    return list(apns_headers(fake).items())


# -- certificates and keys ---------------------------------------------------------------------


def test_generated_certificate_verifies_for_localhost_and_ip(tmp_path):
    tls = generate_tls(tmp_path)
    cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert (tls.key_file.stat().st_mode & 0o777) == 0o600
    key = generate_apns_key(tmp_path, key_id="ABC123DEFG", team_id="TEAM123456")
    assert key.key_file.name == "AuthKey_ABC123DEFG.p8"
    assert key.private_key_pem().startswith("-----BEGIN PRIVATE KEY-----")
    token = provider_token(key)
    assert jwt.get_unverified_header(token)["kid"] == "ABC123DEFG"
    assert jwt.decode(token, key.public_key(), algorithms=["ES256"])["iss"] == "TEAM123456"


# -- the relay's sender ------------------------------------------------------------------------


def test_relay_sender_push_is_delivered_and_recorded(fake):
    token = new_token()
    push = push_to(token)

    async def main() -> list[PushOutcome]:
        sender = relay_sender(fake)
        try:
            return await sender.send([push])
        finally:
            await sender.close()

    before = time.monotonic()
    (outcome,) = loops.run(main())
    assert outcome.verdict is Verdict.ACCEPTED
    [recorded] = fake.pushes.snapshot()
    assert recorded.token == token
    assert recorded.status == 200
    assert recorded.apns_id == push.apns_id
    assert recorded.headers["apns-topic"] == fake.topic
    assert recorded.headers["apns-push-type"] == "alert"
    assert recorded.headers["apns-priority"] == "10"
    assert int(recorded.headers["apns-expiration"]) == push.expiration_s > time.time()
    assert recorded.headers[":path"] == f"/3/device/{token}"
    assert recorded.json() == BODY
    assert before <= recorded.received_at <= time.monotonic()
    assert fake.delivered() == [recorded]


def test_relay_sender_sees_scripted_errors(fake):
    dead, bad = new_token(), new_token()
    fake.scripts.set(dead, script.unregistered(1_700_000_000_123))
    fake.scripts.set(bad, script.bad_device_token())

    gone, invalid = loops.run(send_each(relay_sender(fake), [dead, bad]))
    assert (gone.verdict, gone.reason, gone.invalid_since_ms) == (
        Verdict.DEAD_TOKEN,
        "Unregistered",
        1_700_000_000_123,
    )
    assert (invalid.verdict, invalid.reason) == (Verdict.DEAD_TOKEN, "BadDeviceToken")


def test_relay_sender_resends_after_goaway_but_not_after_a_drop(fake):
    # GOAWAY names the last stream processed: the one above it is sent again at once, on a
    # new connection. A dropped connection may have delivered the push: transient, for the
    # dispatcher to retry later.
    after_goaway, after_drop = new_token(), new_token()
    fake.scripts.fail_times(after_goaway, 1, script.goaway())
    fake.scripts.fail_times(after_drop, 1, script.drop())

    before = fake.connections_total
    outcomes = loops.run(send_each(relay_sender(fake), [after_goaway, after_drop, after_drop]))
    assert [o.verdict for o in outcomes] == [Verdict.ACCEPTED, Verdict.TRANSIENT, Verdict.ACCEPTED]
    assert outcomes[1].reason.startswith("transport: ")
    statuses = [p.status for p in fake.pushes.snapshot()]
    assert statuses == [0, 200, 0, 200]  # 0: closed without an answer
    assert fake.connections_total == before + 3


def test_relay_sender_fail_n_times_then_succeed(fake):
    token = new_token()
    fake.scripts.fail_times(token, 2, script.server_error())

    outcomes = loops.run(send_each(relay_sender(fake), [token] * 3))
    assert [(o.verdict, o.reason) for o in outcomes] == [
        (Verdict.TRANSIENT, "InternalServerError"),
        (Verdict.TRANSIENT, "InternalServerError"),
        (Verdict.ACCEPTED, ""),
    ]
    assert fake.scripts.remaining(token) == 0


def test_relay_sender_survives_1600_errors_on_one_connection(fake):
    token = new_token()
    fake.scripts.set(token, GONE)

    async def main() -> Counter[str]:
        sender = relay_sender(fake)
        try:
            outcomes = await sender.send([push_to(token) for _ in range(MANY)])
            return Counter(o.reason for o in outcomes)
        finally:
            await sender.close()

    before = fake.connections_total
    assert loops.run(asyncio.wait_for(main(), 20)) == {"Unregistered": MANY}
    assert fake.connections_total == before + 1


def test_serve_on_the_callers_loop(tmp_path):
    async def main() -> tuple[Verdict, int]:
        async with FakeApns.create(tmp_path) as server:
            sender = relay_sender(server)
            try:
                (outcome,) = await sender.send([push_to(new_token())])
            finally:
                await sender.close()
            return outcome.verdict, len(server.pushes)

    assert loops.run(main()) == (Verdict.ACCEPTED, 1)


# -- scripted behaviours, seen by httpx ----------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "status", "reason"),
    [
        (script.ok(), 200, None),
        (script.unregistered(1_700_000_000_000), 410, "Unregistered"),
        (script.bad_device_token(), 400, "BadDeviceToken"),
        (script.payload_too_large(), 413, "PayloadTooLarge"),
        (script.too_many_requests(7), 429, "TooManyRequests"),
        (script.server_error(), 500, "InternalServerError"),
        (script.service_unavailable(), 503, "ServiceUnavailable"),
        (script.device_token_not_for_topic(), 400, "DeviceTokenNotForTopic"),
        (script.error(403, "TopicDisallowed"), 403, "TopicDisallowed"),
    ],
)
def test_scripted_answers(fake, behaviour, status, reason):
    token = new_token()
    fake.scripts.set(token, behaviour)
    apns_id = "8fd1a3b2-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
    response = post(fake, token, headers={"apns-id": apns_id})
    assert response.http_version == "HTTP/2"
    assert response.status_code == status
    assert response.headers["apns-id"] == apns_id
    if reason is None:
        assert response.content == b""
    else:
        assert response.json()["reason"] == reason
    if status == 410:
        assert response.json() == {"reason": "Unregistered", "timestamp": 1_700_000_000_000}
    if status == 429:
        assert response.headers["retry-after"] == "7"
    assert fake.pushes.snapshot()[0].status == status


def test_unregistered_defaults_to_now(fake):
    token = new_token()
    fake.scripts.set(token, script.unregistered())
    before = int(time.time() * 1000)
    timestamp = post(fake, token).json()["timestamp"]
    assert before <= timestamp <= int(time.time() * 1000)


def test_apns_id_is_generated_when_absent(fake):
    response = post(fake, new_token())
    assert len(response.headers["apns-id"]) == 36


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"authorization": None}, 403, "MissingProviderToken"),
        ({"authorization": "bearer not-a-jwt"}, 403, "InvalidProviderToken"),
        ({"apns-topic": None}, 400, "MissingTopic"),
        ({"apns-topic": "com.example.other"}, 400, "DeviceTokenNotForTopic"),
        ({"apns-priority": "7"}, 400, "BadPriority"),
        ({"apns-push-type": "shout"}, 400, "InvalidPushType"),
        ({"apns-id": "not-a-uuid"}, 400, "BadMessageId"),
        ({"apns-expiration": "soon"}, 400, "BadExpirationDate"),
    ],
)
def test_request_validation(fake, change, status, reason):
    response = post(fake, new_token(), headers=change)
    assert (response.status_code, response.json()["reason"]) == (status, reason)


def test_jwt_checks(fake, tmp_path):
    other_key = generate_apns_key(tmp_path, key_id=fake.key_id, team_id=fake.team_id)
    forged = {
        "signed by another key": provider_token(other_key),
        "wrong kid": provider_token(fake.apns_key, key_id="WRONGKEY00"),
        "wrong team": provider_token(fake.apns_key, team_id="WRONGTEAM0"),
    }
    for name, token in forged.items():
        response = post(fake, new_token(), headers={"authorization": f"bearer {token}"})
        assert response.json() == {"reason": "InvalidProviderToken"}, name
    stale = provider_token(fake.apns_key, issued_at=int(time.time()) - 3700)
    response = post(fake, new_token(), headers={"authorization": f"bearer {stale}"})
    assert (response.status_code, response.json()["reason"]) == (403, "ExpiredProviderToken")
    assert all(p.status == 403 for p in fake.pushes.snapshot())


def test_payload_limits(fake):
    big = json.dumps({"aps": {"alert": "x" * 4100}}).encode()
    response = post(fake, new_token(), body=big)
    assert (response.status_code, response.json()["reason"]) == (413, "PayloadTooLarge")
    exact = json.dumps({"aps": {"alert": "x" * (4096 - 22)}}).encode()
    assert len(exact) == 4096
    assert post(fake, new_token(), body=exact).status_code == 200
    response = post(fake, new_token(), body=b"")
    assert response.json()["reason"] == "PayloadEmpty"


def test_bad_token_format_path_and_method(fake):
    assert post(fake, "not-hex").json()["reason"] == "BadDeviceToken"
    with httpx.Client(http2=True, verify=fake.client_ssl_context()) as client:
        response = client.get(f"https://{fake.endpoint}/3/device/{new_token()}")
        assert (response.status_code, response.json()["reason"]) == (405, "MethodNotAllowed")
        response = client.post(f"https://{fake.endpoint}/4/nothing", content=b"{}")
        assert (response.status_code, response.json()["reason"]) == (404, "BadPath")


# -- timing, connection-level behaviours and ALPN, seen by the raw h2 client -----------------------


def test_slow_token_does_not_block_other_streams(fake):
    slow_token, fast_token = new_token(), new_token()
    fake.scripts.set(slow_token, script.slow(0.4))
    body = json.dumps(BODY).encode()

    async def main() -> tuple[float, float]:
        client = await raw_client(fake)
        start = time.monotonic()
        slow = client.start_request("POST", f"/3/device/{slow_token}", raw_headers(fake), body)
        fast = await client.request("POST", f"/3/device/{fast_token}", raw_headers(fake), body)
        fast_at = time.monotonic() - start
        assert fast.status == 200
        assert (await slow).status == 200
        slow_at = time.monotonic() - start
        await client.aclose()
        return fast_at, slow_at

    fast_at, slow_at = loops.run(main())
    assert fast_at < 0.3
    assert slow_at >= 0.4


def test_slow_then_error(fake):
    token = new_token()
    fake.scripts.set(token, script.slow(0.2, then=script.server_error()))
    start = time.monotonic()
    assert post(fake, token).status_code == 500
    assert time.monotonic() - start >= 0.2


def test_global_delay(fake):
    fake.global_delay = 0.2
    start = time.monotonic()
    assert post(fake, new_token()).status_code == 200
    assert time.monotonic() - start >= 0.2


def test_goaway_names_the_last_processed_stream(fake):
    token = new_token()
    fake.scripts.fail_times(token, 1, script.goaway())
    body = json.dumps(BODY).encode()

    async def main() -> None:
        client = await raw_client(fake)
        first = await client.request("POST", f"/3/device/{new_token()}", raw_headers(fake), body)
        assert first.stream_id == 1
        with pytest.raises(ConnectionClosedError):
            await client.request("POST", f"/3/device/{token}", raw_headers(fake), body)
        assert client.terminated is not None
        assert client.terminated.last_stream_id == 1  # stream 3 was not processed: retry it
        assert json.loads(client.terminated.additional_data) == {"reason": "Shutdown"}
        await client.wait_closed()

    loops.run(main())


def test_drop_closes_the_connection_without_answer(fake):
    token = new_token()
    fake.scripts.set(token, script.drop())

    async def main() -> None:
        client = await raw_client(fake)
        with pytest.raises(ConnectionClosedError):
            await client.request(
                "POST", f"/3/device/{token}", raw_headers(fake), json.dumps(BODY).encode()
            )
        assert client.terminated is None
        await client.wait_closed()

    loops.run(main())
    assert [p.status for p in fake.pushes.snapshot()] == [0]


def test_no_alpn_client_is_accepted(fake):
    async def main() -> tuple[str | None, str | None, int]:
        plain = await RawH2Client.connect(
            "127.0.0.1", fake.port, ssl.create_default_context(cafile=str(fake.tls.ca_file))
        )
        offered = await raw_client(fake)
        response = await plain.request(
            "POST", f"/3/device/{new_token()}", raw_headers(fake), json.dumps(BODY).encode()
        )
        result = plain.alpn_protocol, offered.alpn_protocol, response.status
        await plain.aclose()
        await offered.aclose()
        return result

    assert loops.run(main()) == (None, "h2", 200)


def test_server_down_and_back(fake):
    async def connect() -> RawH2Client:
        client = await raw_client(fake)
        await client.request(
            "POST", f"/3/device/{new_token()}", raw_headers(fake), json.dumps(BODY).encode()
        )
        return client

    async def main() -> None:
        client = await connect()
        assert fake.connections_open == 1
        fake.set_down(True)
        await client.wait_closed()
        with pytest.raises((OSError, ConnectionClosedError)):
            await connect()
        fake.set_down(True, refuse=True)
        with pytest.raises(ConnectionRefusedError):
            await connect()
        fake.set_down(False)
        client = await connect()
        await client.aclose()

    before = fake.connections_total
    loops.run(main())
    assert fake.connections_total >= before + 3


def test_disconnect_all_sends_goaway(fake):
    async def main() -> None:
        client = await raw_client(fake)
        await client.request(
            "POST", f"/3/device/{new_token()}", raw_headers(fake), json.dumps(BODY).encode()
        )
        await asyncio.get_running_loop().run_in_executor(None, fake.disconnect_all)
        await client.wait_closed()
        assert client.terminated is not None
        assert client.terminated.error_code == 0

    loops.run(main())


# -- flow control ----------------------------------------------------------------------------------


def test_many_error_bodies_on_one_acknowledging_connection(fake):
    token = new_token()
    fake.scripts.set(token, GONE)
    body = json.dumps(BODY).encode()

    async def main() -> Counter[int]:
        client = await raw_client(fake)
        headers = raw_headers(fake)  # one JWT for the connection, as real clients do
        path = f"/3/device/{token}"
        responses = await asyncio.gather(
            *(client.request("POST", path, headers, body) for _ in range(MANY))
        )
        await client.aclose()
        assert all(r.json()["reason"] == "Unregistered" for r in responses)
        return Counter(r.status for r in responses)

    before = fake.connections_total
    assert loops.run(asyncio.wait_for(main(), 20)) == {410: MANY}
    assert fake.connections_total == before + 1


def test_server_buffers_data_until_the_window_opens(fake):
    token = new_token()
    fake.scripts.set(token, GONE)
    body = json.dumps(BODY).encode()

    async def main() -> None:
        client = await raw_client(fake, auto_ack=False)
        headers = raw_headers(fake)  # one JWT, as real clients do
        futures = [
            asyncio.ensure_future(client.request("POST", f"/3/device/{token}", headers, body))
            for _ in range(MANY)
        ]
        # 1,600 bodies cannot fit the connection window: wait until it is full.
        while client.unacked_bytes <= WINDOW - GONE_BODY:
            await asyncio.sleep(0.02)
        finished = sum(f.done() for f in futures)
        await asyncio.sleep(0.3)
        assert sum(f.done() for f in futures) == finished == WINDOW // GONE_BODY
        assert client.unacked_bytes == WINDOW
        assert not any(f.done() and f.exception() for f in futures)
        while not all(f.done() for f in futures):
            client.acknowledge()
            await asyncio.sleep(0.05)
        assert {f.result().json()["reason"] for f in futures} == {"Unregistered"}
        await client.aclose()

    before = fake.connections_total
    loops.run(asyncio.wait_for(main(), 20))
    assert fake.connections_total == before + 1


def test_body_split_across_frames_by_a_tiny_stream_window(fake):
    token = new_token()
    fake.scripts.set(token, script.unregistered(1_700_000_000_000))

    async def main() -> None:
        client = await raw_client(fake, initial_window_size=8)
        response = await client.request(
            "POST", f"/3/device/{token}", raw_headers(fake), json.dumps(BODY).encode()
        )
        assert response.data_frames > 1
        assert response.json() == {"reason": "Unregistered", "timestamp": 1_700_000_000_000}
        await client.aclose()

    loops.run(asyncio.wait_for(main(), 10))


# -- recording -----------------------------------------------------------------------------------


def test_recording_is_shared_with_listeners_and_waitable(fake):
    seen: list[str] = []
    fake.pushes.listeners.append(lambda push: seen.append(push.token))
    try:
        token = new_token()
        post(fake, token)
        assert fake.pushes.wait_for(1, timeout=2)[0].token == token
        assert seen == [token]
        with pytest.raises(TimeoutError):
            fake.pushes.wait_for(2, timeout=0.05)
    finally:
        fake.pushes.listeners.clear()


def test_streams_over_the_limit_are_refused_not_fatal(tmp_path):
    async def main() -> list[int | str]:
        async with FakeApns.create(tmp_path, max_concurrent_streams=2) as server:
            token = new_token()
            server.scripts.set(token, script.slow(0.2))
            client = await raw_client(server)
            body, headers = json.dumps(BODY).encode(), raw_headers(server)
            futures = [
                client.start_request("POST", f"/3/device/{token}", headers, body) for _ in range(3)
            ]
            outcomes: list[int | str] = []
            for future in futures:
                try:
                    outcomes.append((await future).status)
                except StreamResetError as exc:
                    outcomes.append(f"reset {exc.error_code}")
            # The connection survived: it still serves requests.
            outcomes.append(
                (await client.request("POST", f"/3/device/{token}", headers, body)).status
            )
            await client.aclose()
            return outcomes

    assert loops.run(main()) == [200, 200, "reset 7", 200]  # 7: REFUSED_STREAM
