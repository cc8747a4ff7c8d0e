"""The APNs sender on the wire: exact headers and bytes, the provider JWT, answers and verdicts,
and the files it needs, checked when the relay starts."""

from __future__ import annotations

import base64
import dataclasses
import os
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.errors import ErrorCodes

from push.apns import (
    CREDENTIAL_HINT,
    TOPIC_HINT,
    APNsAnswer,
    APNsConfig,
    APNsSender,
    classify,
    read_answer,
)
from push.apns import config_from_settings as apns_config
from push.apns_auth import JWT_REFRESH_SECONDS, ProviderTokens, load_signing_key
from push.config_checks import DeliveryConfigError
from push.exchange import Exchange
from push.outcome import Push, PushOutcome, Verdict
from push.payloads import apns_payload
from sandbox import script
from sandbox.apns import FakeApns
from sandbox.certs import ApnsKey, generate_apns_certificate, generate_apns_key
from settings import load_settings
from storage.records import Provider
from tests import loops
from tests.providers import apns_sender
from tests.support import random_apns_token


@pytest.fixture
def fake(fake_apns: FakeApns) -> FakeApns:
    return fake_apns


def new_push(token: str | None = None, data: str = "QUJD") -> Push:
    return Push(
        delivery_id=1,
        provider=Provider.APNS,
        token=token or random_apns_token(),
        data=data,
        apns_id=str(uuid.uuid4()),
        expiration_s=int(time.time()) + 3600,
    )


def send(sender: APNsSender, *batches: list[Push]) -> list[list[PushOutcome]]:
    async def run() -> list[list[PushOutcome]]:
        try:
            return [await sender.send(batch) for batch in batches]
        finally:
            await sender.close()

    return loops.run(run())


# -- the wire ---------------------------------------------------------------------------------


def test_every_push_goes_with_the_headers_and_bytes_aioapns_sent(fake: FakeApns) -> None:
    # Three rounds on one connection: the first teaches the HPACK encoder the fixed fields,
    # the others are assembled from what it learnt. The fake decodes each with hpack's own.
    batches = [[new_push(data=base64.b64encode(os.urandom(n)).decode())] for n in (10, 200, 3000)]
    batches.append([new_push(), new_push(), new_push()])
    outcomes = send(apns_sender(fake), *batches)
    assert [o.verdict for batch in outcomes for o in batch] == [Verdict.ACCEPTED] * 6
    sent = {push.apns_id: push for batch in batches for push in batch}
    recorded = fake.pushes.snapshot()
    assert len(recorded) == 6
    authorizations = set()
    for received in recorded:
        push = sent[received.apns_id]
        names = list(received.headers)
        assert names == [
            ":method",
            ":scheme",
            ":path",
            "host",
            "apns-id",
            "apns-topic",
            "apns-push-type",
            "apns-priority",
            "apns-expiration",
            "authorization",
        ]
        assert received.headers[":method"] == "POST"
        assert received.headers[":scheme"] == "https"
        assert received.headers[":path"] == f"/3/device/{push.token}"
        assert received.headers["host"] == "127.0.0.1"
        assert received.headers["apns-topic"] == fake.topic
        assert received.headers["apns-push-type"] == "alert"
        assert received.headers["apns-priority"] == "10"
        assert received.headers["apns-expiration"] == str(push.expiration_s)
        authorizations.add(received.headers["authorization"])
        assert received.body == apns_payload(push.data)[0]
    assert len(authorizations) == 1
    assert len({p.connection_id for p in recorded}) == 1


def test_data_too_large_goes_without_it_and_says_so(fake: FakeApns) -> None:
    push = new_push(data=base64.b64encode(os.urandom(3100)).decode())
    ((outcome,),) = send(apns_sender(fake), [push])
    assert (outcome.verdict, outcome.trimmed) == (Verdict.ACCEPTED, True)
    (received,) = fake.pushes.snapshot()
    assert received.body == apns_payload(push.data)[0]
    assert "ENCRYPTED_DATA" not in received.json()


def test_the_provider_jwt_is_what_apple_asks_for(fake: FakeApns) -> None:
    send(apns_sender(fake), [new_push()])
    (received,) = fake.pushes.snapshot()
    scheme, _, token = received.headers["authorization"].partition(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": fake.key_id}
    claims = jwt.decode(token, fake.apns_key.public_key(), algorithms=["ES256"])
    assert set(claims) == {"iss", "iat"}
    assert claims["iss"] == fake.team_id
    assert abs(claims["iat"] - time.time()) < 600


def test_one_jwt_per_team_signed_again_every_30_minutes(tmp_path: Path) -> None:
    key: ApnsKey = generate_apns_key(tmp_path, key_id="KEYID12345", team_id="TEAM123456")
    now = [1000.0]
    tokens = ProviderTokens(
        load_signing_key(key.key_file.read_bytes()),
        key.key_id,
        key.team_id,
        wall_clock=lambda: 1_700_000_000.0 + now[0],
        monotonic=lambda: now[0],
    )
    first = tokens.header()
    now[0] += JWT_REFRESH_SECONDS - 1
    assert tokens.header() is first  # the same bytes: the HPACK field stays indexed
    now[0] += 1
    second = tokens.header()
    assert second != first
    assert tokens.signed == 2
    claims = jwt.decode(second.split(b" ")[1], key.public_key(), algorithms=["ES256"])
    assert claims["iat"] == 1_700_000_000 + 1000 + JWT_REFRESH_SECONDS


def test_only_an_ec_p256_key_signs(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for wrong in (pem, b"not a key", b""):
        with pytest.raises(ValueError, match="not"):
            load_signing_key(wrong)


# -- answers and verdicts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "verdict", "reason", "retry_after"),
    [
        (script.ok(), Verdict.ACCEPTED, "", None),
        (script.unregistered(1_700_000_000_000), Verdict.DEAD_TOKEN, "Unregistered", None),
        (script.bad_device_token(), Verdict.DEAD_TOKEN, "BadDeviceToken", None),
        (script.payload_too_large(), Verdict.REJECTED, "PayloadTooLarge", None),
        (script.too_many_requests(7), Verdict.TRANSIENT, "TooManyRequests", 7.0),
        (script.server_error(), Verdict.TRANSIENT, "InternalServerError", None),
        (script.service_unavailable(2.5), Verdict.TRANSIENT, "ServiceUnavailable", 2.5),
        (script.device_token_not_for_topic(), Verdict.CONFIG_ERROR, "DeviceTokenNotForTopic", None),
        (
            script.error(403, "InvalidProviderToken"),
            Verdict.CONFIG_ERROR,
            "InvalidProviderToken",
            None,
        ),
    ],
)
def test_each_answer_gets_its_verdict(
    fake: FakeApns,
    behaviour: script.Behaviour,
    verdict: Verdict,
    reason: str,
    retry_after: float | None,
) -> None:
    token = random_apns_token()
    fake.scripts.set(token, behaviour)
    ((outcome,),) = send(apns_sender(fake), [new_push(token)])
    assert (outcome.verdict, outcome.reason, outcome.retry_after) == (verdict, reason, retry_after)
    if verdict is Verdict.DEAD_TOKEN and reason == "Unregistered":
        assert outcome.invalid_since_ms == 1_700_000_000_000


def answer(status: int, body: bytes = b"", **headers: bytes) -> Exchange:
    exchange = Exchange(b"{}", "", 0, response_headers={})
    exchange.status = status
    exchange.response += body
    assert exchange.response_headers is not None
    exchange.response_headers.update({k.replace("_", "-").encode(): v for k, v in headers.items()})
    exchange.answered()
    return exchange


def test_an_answer_is_read_whole() -> None:
    apns_id = str(uuid.uuid4())
    gone = answer(
        410, b'{"reason":"Unregistered","timestamp":1700000000000}', apns_id=apns_id.encode()
    )
    assert read_answer(gone) == APNsAnswer("410", apns_id, "Unregistered", 1_700_000_000_000)
    assert read_answer(answer(200)) == APNsAnswer("200")
    assert read_answer(answer(500, b"<html>")).description == "UnreadableBody"
    assert read_answer(answer(400, b'{"reason": 5}')).description == "UnreadableBody"
    assert (
        read_answer(answer(410, b'{"reason":"Unregistered","timestamp":"soon"}')).timestamp is None
    )
    assert read_answer(answer(0)).status == "500"  # no usable :status: try later


@pytest.mark.parametrize(
    ("result", "retry_after", "expected"),
    [
        (APNsAnswer("200"), None, PushOutcome(Verdict.ACCEPTED)),
        (
            APNsAnswer("410", description="Unregistered", timestamp=5),
            None,
            PushOutcome(Verdict.DEAD_TOKEN, reason="Unregistered", invalid_since_ms=5),
        ),
        (APNsAnswer("410"), None, PushOutcome(Verdict.DEAD_TOKEN, reason="410")),
        (
            APNsAnswer("400", description="BadDeviceToken", timestamp=5),
            None,
            PushOutcome(Verdict.DEAD_TOKEN, reason="BadDeviceToken"),
        ),
        (
            APNsAnswer("400", description="ExpiredToken"),
            None,
            PushOutcome(Verdict.DEAD_TOKEN, reason="ExpiredToken"),
        ),
        (
            APNsAnswer("400", description="TopicDisallowed"),
            None,
            PushOutcome(Verdict.CONFIG_ERROR, reason="TopicDisallowed", hint=TOPIC_HINT),
        ),
        (
            APNsAnswer("403"),
            None,
            PushOutcome(Verdict.CONFIG_ERROR, reason="403", hint=CREDENTIAL_HINT),
        ),
        (APNsAnswer("429"), "x", PushOutcome(Verdict.TRANSIENT, reason="429")),
        (APNsAnswer("503"), "-3", PushOutcome(Verdict.TRANSIENT, reason="503", retry_after=0.0)),
        (
            APNsAnswer("400", description="BadExpirationDate"),
            "9",
            PushOutcome(Verdict.REJECTED, reason="BadExpirationDate"),
        ),
    ],
)
def test_classify(result: APNsAnswer, retry_after: str | None, expected: PushOutcome) -> None:
    assert classify(result, retry_after) == expected


# -- files: checked at start, and if they change afterwards -----------------------------------


def settings_for(tmp_path: Path, **environ: str | Path) -> APNsConfig | None:
    values = {f"PN_{k}": str(v) for k, v in environ.items()}
    return apns_config(load_settings(environ=values, cwd=tmp_path))


def test_the_files_are_read_when_the_relay_starts(tmp_path: Path, fake: FakeApns) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    key = {"APNS_KEY_ID": fake.key_id, "APNS_TEAM_ID": fake.team_id}
    good = settings_for(tmp_path, APNS_KEY_FILE=fake.apns_key.key_file, **key)
    assert good is not None and good.key_file == fake.apns_key.key_file
    cases: dict[str, tuple[dict[str, str | Path], str]] = {
        "APNS_KEY_FILE": ({"APNS_KEY_FILE": junk, **key}, "is not an APNs signing key"),
        "APNS_CA_FILE": (
            {"APNS_KEY_FILE": fake.apns_key.key_file, "APNS_CA_FILE": junk, **key},
            "holds no PEM certificate to trust",
        ),
        "APNS_CERT_FILE": ({"APNS_CERT_FILE": junk}, "is not a PEM certificate with its"),
    }
    for setting, (environ, words) in cases.items():
        with pytest.raises(DeliveryConfigError, match=f"^{setting}: {junk} {words}"):
            settings_for(tmp_path, **environ)
    certificate = generate_apns_certificate(tmp_path / "cert")
    config = settings_for(tmp_path, APNS_CERT_FILE=certificate.cert_file)
    assert config is not None and config.cert_file == certificate.cert_file


def test_a_key_file_spoilt_after_start_is_a_configuration_error(
    tmp_path: Path, fake: FakeApns
) -> None:
    spoilt = tmp_path / "AuthKey.p8"
    spoilt.write_text("gone")
    sender = apns_sender(fake)
    sender.config = dataclasses.replace(sender.config, key_file=spoilt)
    ((outcome,),) = send(sender, [new_push()])
    assert (outcome.verdict, outcome.reason, outcome.hint) == (
        Verdict.CONFIG_ERROR,
        "ValueError",
        CREDENTIAL_HINT,
    )
    assert fake.pushes.snapshot() == []


def test_a_server_that_never_answers_is_a_timeout_and_its_stream_is_reset(
    fake: FakeApns,
) -> None:
    token = random_apns_token()
    fake.scripts.set(token, script.slow(60.0))
    fake.client_resets.clear()
    ((outcome,),) = send(apns_sender(fake, request_timeout_s=0.5), [new_push(token)])
    assert (outcome.verdict, outcome.reason) == (Verdict.TRANSIENT, "timeout")
    deadline = time.monotonic() + 20  # bounds a broken run; nothing here is timed
    while not fake.client_resets and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.error_code for r in fake.client_resets] == [ErrorCodes.CANCEL]
