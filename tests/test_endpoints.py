"""Every endpoint over a real socket, in each real client's style and each enc type."""

from __future__ import annotations

import base64
import itertools
import json
import os
import struct
from typing import Any

import pytest
from sqlalchemy import select

from lsrpc.client import V2_STYLES
from storage.records import Provider
from storage.schema import deliveries, devices, group_members, notifications
from tests.checks import SUCCESS, count
from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id

ENC_TYPE_NAMES = [None, "aes-gcm", "gcm", "xchacha20", "xchacha20-poly1305"]


def device_providers(relay: RunningRelay) -> list[int]:
    with relay.relay.engine.connect() as conn:
        return sorted(conn.execute(select(devices.c.provider)).scalars())


def message_data() -> str:
    return base64.b64encode(os.urandom(300)).decode()


@pytest.mark.parametrize(
    ("style", "enc_type"), list(itertools.product(V2_STYLES, ["aes-gcm", "xchacha20"]))
)
def test_every_endpoint_in_every_style(relay: RunningRelay, style: str, enc_type: str) -> None:
    opts: dict[str, Any] = {"style": style, "enc_type": enc_type}
    alice, bob, group = random_session_id(), random_session_id(), random_session_id()
    alice_token, bob_token = random_apns_token(), random_fcm_token()

    assert relay.call_v2("register", {"token": alice_token, "pubKey": alice}, **opts) == SUCCESS
    assert relay.call_v2("register", {"token": bob_token, "pubKey": bob}, **opts) == SUCCESS
    assert device_providers(relay) == [Provider.APNS, Provider.FCM]
    for member in (alice, bob):
        params = {"closedGroupPublicKey": group, "pubKey": member}
        assert relay.call_v2("subscribe_closed_group", params, **opts) == SUCCESS
    assert count(relay, group_members) == 2

    assert relay.call_v2("notify", {"data": message_data(), "send_to": alice}, **opts) == SUCCESS
    assert count(relay, deliveries) == 1
    assert relay.call_v2("notify", {"data": message_data(), "send_to": group}, **opts) == SUCCESS
    assert count(relay, deliveries) == 3

    params = {"closedGroupPublicKey": group, "pubKey": bob}
    assert relay.call_v2("unsubscribe_closed_group", params, **opts) == SUCCESS
    assert count(relay, group_members) == 1
    assert relay.call_v2("unregister", {"token": bob_token, "pubKey": bob}, **opts) == SUCCESS
    assert count(relay, devices) == 1


@pytest.mark.parametrize("enc_type", ENC_TYPE_NAMES)
def test_every_enc_type_name(sqlite_relay: RunningRelay, enc_type: str | None) -> None:
    params = {"token": random_apns_token(), "pubKey": random_session_id()}
    assert sqlite_relay.call_v2("register", params, enc_type=enc_type) == SUCCESS


def test_reply_plaintext_shape(sqlite_relay: RunningRelay) -> None:
    request = sqlite_relay.client.v2("register", {"token": "x", "pubKey": random_session_id()})
    answer = sqlite_relay.post("/loki/v2/lsrpc", request.body)
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    result = json.loads(answer.body)["result"]
    plaintext = request.open_raw_reply(base64.b64decode(result, validate=True))
    plaintext.decode("ascii")  # iOS decodes it as ASCII
    reply = json.loads(plaintext)
    assert reply == {"status": 200, "body": {"code": 1, "message": "Success"}}
    assert type(reply["body"]["code"]) is int


def test_token_moves_to_its_new_owner_and_owners_keep_many(relay: RunningRelay) -> None:
    alice, bob = random_session_id(), random_session_id()
    shared_token, second_token = random_apns_token(), random_fcm_token()
    relay.call_v2("register", {"token": shared_token, "pubKey": alice})
    relay.call_v2("register", {"token": second_token, "pubKey": alice})
    relay.call_v2("register", {"token": shared_token, "pubKey": bob})  # moves it
    assert count(relay, devices) == 2

    relay.call_v2("notify", {"data": message_data(), "send_to": alice})
    assert count(relay, deliveries) == 1  # only second_token is still Alice's
    relay.call_v2("notify", {"data": message_data(), "send_to": bob})
    assert count(relay, deliveries) == 2


def test_group_notify_reaches_every_device_of_every_member(relay: RunningRelay) -> None:
    group = random_session_id()
    members = [random_session_id() for _ in range(3)]
    for member in members:
        for _ in range(2):
            relay.call_v2("register", {"token": random_fcm_token(), "pubKey": member})
        relay.call_v2("subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": member})
    assert relay.call_v2("notify", {"data": message_data(), "send_to": group}) == SUCCESS
    assert count(relay, deliveries) == 6
    assert count(relay, notifications) == 1  # the data is stored once, not per device


def test_notify_without_devices_succeeds_and_writes_nothing(relay: RunningRelay) -> None:
    assert (
        relay.call_v2("notify", {"data": message_data(), "send_to": random_session_id()}) == SUCCESS
    )
    assert count(relay, deliveries) == 0
    assert count(relay, notifications) == 0
    assert relay.relay.counters.lifetime()["untracked_message_number"] == 1


def test_idempotent_subscriptions_and_unknown_unregister(relay: RunningRelay) -> None:
    group, member = random_session_id(), random_session_id()
    params = {"closedGroupPublicKey": group, "pubKey": member}
    assert relay.call_v2("unsubscribe_closed_group", params) == SUCCESS  # not a member: fine
    assert relay.call_v2("subscribe_closed_group", params) == SUCCESS
    assert relay.call_v2("subscribe_closed_group", params) == SUCCESS
    assert count(relay, group_members) == 1
    assert relay.call_v2("unregister", {"token": random_apns_token()}) == SUCCESS


def test_identifiers_are_case_insensitive(sqlite_relay: RunningRelay) -> None:
    alice, token = random_session_id(), random_apns_token()
    sqlite_relay.call_v2("register", {"token": token.upper(), "pubKey": alice.upper()})
    sqlite_relay.call_v2("notify", {"data": message_data(), "send_to": alice})
    assert count(sqlite_relay, deliveries) == 1
    sqlite_relay.call_v2("unregister", {"token": token})
    assert count(sqlite_relay, devices) == 0


def test_device_parameter_decides_the_provider(sqlite_relay: RunningRelay) -> None:
    alice = random_session_id()
    hex_token = random_apns_token()
    ok = sqlite_relay.call_v2(
        "register", {"token": hex_token, "pubKey": alice, "device": "android"}
    )
    assert ok == SUCCESS
    assert device_providers(sqlite_relay) == [Provider.FCM]
    status, body = sqlite_relay.call_v2(
        "register", {"token": hex_token, "pubKey": alice, "device": "huawei"}
    )
    assert (status, body["code"]) == (400, 0)
    assert "huawei" in body["message"]


def test_tolerates_what_real_clients_send(sqlite_relay: RunningRelay) -> None:
    alice = random_session_id()
    params = {"token": random_apns_token(), "pubKey": alice, "extra": [1, {"x": None}]}
    plaintext = json.dumps(
        {
            "endpoint": "/register",
            "method": "Post",
            "headers": {"X": "y"},
            "body": json.dumps(params),
        }
    ).encode()
    assert sqlite_relay.send_v2(sqlite_relay.client.seal(plaintext)) == SUCCESS
    # A body sent as an object rather than a JSON string is accepted too.
    plaintext = json.dumps({"endpoint": "unregister", "body": {"token": params["token"]}}).encode()
    assert sqlite_relay.send_v2(sqlite_relay.client.seal(plaintext)) == SUCCESS


# -- application errors: HTTP 200, encrypted status 400 / code 0, a message naming the cause --

S = "05" + "ab" * 32
T = "cd" * 32
D = base64.b64encode(b"hello").decode()

PARAMETER_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("no_such_endpoint", {}, "Unknown endpoint"),
    ("register", {"pubKey": S}, "Missing parameter: token"),
    ("register", {"token": T}, "Missing parameter: pubKey"),
    ("register", {"token": T, "pubKey": "05abc"}, "pubKey must be 05"),
    ("register", {"token": T, "pubKey": "06" + "ab" * 32}, "pubKey must be 05"),
    ("register", {"token": T, "pubKey": 5}, "pubKey must be a string"),
    ("register", {"token": "", "pubKey": S}, "token must be 1 to 4096 printable"),
    ("register", {"token": "a b", "pubKey": S}, "token must be 1 to 4096 printable"),
    ("register", {"token": "x" * 4097, "pubKey": S}, "token must be 1 to 4096 printable"),
    ("register", {"token": "é", "pubKey": S}, "token must be 1 to 4096 printable"),
    ("register", {"token": "zz", "pubKey": S, "device": "ios"}, "iOS token must be 64 hex"),
    ("register", {"token": T, "pubKey": S, "device": "nokia"}, "device must be one of"),
    ("register", {"token": T, "pubKey": S, "device": 1}, "device must be a string"),
    ("unregister", {}, "Missing parameter: token"),
    ("unregister", {"token": ["x"]}, "token must be a string"),
    ("subscribe_closed_group", {"pubKey": S}, "Missing parameter: closedGroupPublicKey"),
    ("subscribe_closed_group", {"closedGroupPublicKey": S}, "Missing parameter: pubKey"),
    (
        "subscribe_closed_group",
        {"closedGroupPublicKey": "05", "pubKey": S},
        "closedGroupPublicKey must be 05",
    ),
    ("unsubscribe_closed_group", {"closedGroupPublicKey": S, "pubKey": "x"}, "pubKey must be 05"),
    ("notify", {"send_to": S}, "Missing parameter: data"),
    ("notify", {"data": D}, "Missing parameter: send_to"),
    ("notify", {"data": D, "send_to": "05" + "g" * 64}, "send_to must be 05"),
    ("notify", {"data": "", "send_to": S}, "data must not be empty"),
    ("notify", {"data": "not base64!", "send_to": S}, "data must be standard base64"),
    ("notify", {"data": "aGVsbG8", "send_to": S}, "data must be standard base64"),
    ("notify", {"data": "aGVsbG8=\n", "send_to": S}, "data must be standard base64"),
    ("notify", {"data": "aGVs-G8_", "send_to": S}, "data must be standard base64"),
    ("notify", {"data": base64.b64encode(bytes(8193)).decode(), "send_to": S}, "larger than 8192"),
    (
        "register_legacy_groups_only",
        {"token": T, "pubKey": S},
        "Missing parameter: legacyGroupPublicKeys",
    ),
    (
        "register_legacy_groups_only",
        {"token": T, "pubKey": S, "legacyGroupPublicKeys": S},
        "must be a list",
    ),
    (
        "register_legacy_groups_only",
        {"token": T, "pubKey": S, "legacyGroupPublicKeys": ["x"]},
        "each group key",
    ),
]


@pytest.mark.parametrize(("endpoint", "params", "message"), PARAMETER_ERRORS)
def test_parameter_errors(
    sqlite_relay: RunningRelay, endpoint: str, params: dict[str, Any], message: str
) -> None:
    status, body = sqlite_relay.call_v2(endpoint, params)
    assert status == 400
    assert body["code"] == 0
    assert message in body["message"]


def test_data_at_the_size_limit_is_accepted(sqlite_relay: RunningRelay) -> None:
    data = base64.b64encode(bytes(8192)).decode()
    assert sqlite_relay.call_v2("notify", {"data": data, "send_to": S}) == SUCCESS


REQUEST_ERRORS: list[tuple[bytes, str]] = [
    (b"Hello world", "Request is not valid JSON"),
    (b"\xff\xfe", "Request is not valid JSON"),
    (b"[1, 2]", "Request must be a JSON object"),
    (b"{}", "Missing endpoint"),
    (b'{"endpoint": 7}', "endpoint must be a string"),
    (b'{"endpoint": "register", "body": 7}', "body must be a JSON string"),
    (b'{"endpoint": "register", "body": "{"}', "Request body is not valid JSON"),
    (b'{"endpoint": "register", "body": "[]"}', "Request body must be a JSON object"),
]


@pytest.mark.parametrize(("plaintext", "message"), REQUEST_ERRORS)
def test_undecodable_requests_get_encrypted_errors(
    sqlite_relay: RunningRelay, plaintext: bytes, message: str
) -> None:
    status, body = sqlite_relay.send_v2(sqlite_relay.client.seal(plaintext))
    assert (status, body) == (400, {"code": 0, "message": message})


# -- transport errors: plain HTTP 400 / 413 / 405 / 404, never a 500 --


def _frame(ciphertext: bytes, trailer: bytes) -> bytes:
    return struct.pack("<I", len(ciphertext)) + ciphertext + trailer


KEY = "11" * 32
BAD_BODIES: list[tuple[bytes, str]] = [
    (b"", "body too short"),
    (b"\x01\x00", "body too short"),
    (struct.pack("<I", 100) + b"abc", "ciphertext length exceeds the body"),
    (_frame(b"x" * 40, b""), "missing JSON trailer"),
    (_frame(b"x" * 40, b"{not json"), "not valid JSON"),
    (_frame(b"x" * 40, b"\xff\xff"), "not valid JSON"),
    (_frame(b"x" * 40, b"[1]"), "not an object"),
    (_frame(b"x" * 40, b"{}"), "missing ephemeral_key"),
    (_frame(b"x" * 40, b'{"ephemeral_key": 5}'), "missing ephemeral_key"),
    (_frame(b"x" * 40, b'{"ephemeral_key": "abcd"}'), "64 hex characters"),
    (_frame(b"x" * 40, json.dumps({"ephemeral_key": "zz" * 32}).encode()), "not hex"),
    (
        _frame(b"x" * 40, json.dumps({"ephemeral_key": KEY, "enc_type": "rot13"}).encode()),
        "unsupported enc_type",
    ),
    (
        _frame(b"x" * 40, json.dumps({"ephemeral_key": KEY, "enc_type": 1}).encode()),
        "unsupported enc_type",
    ),
    (_frame(b"x" * 40, json.dumps({"ephemeral_key": "00" * 32}).encode()), "invalid ephemeral_key"),
    (_frame(b"x" * 5, json.dumps({"ephemeral_key": KEY}).encode()), "ciphertext too short"),
    (_frame(b"x" * 40, json.dumps({"ephemeral_key": KEY}).encode()), "authentication failed"),
    (
        _frame(b"x" * 50, json.dumps({"ephemeral_key": KEY, "enc_type": "xchacha20"}).encode()),
        "authentication failed",
    ),
    (_frame(b"x" * 40, b"{" + b" " * 5000 + b"}"), "trailer too long"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_BODIES)
def test_unopenable_bodies_are_plain_400(
    sqlite_relay: RunningRelay, body: bytes, reason: str
) -> None:
    answer = sqlite_relay.post("/loki/v2/lsrpc", body)
    assert answer.status == 400
    assert answer.body.startswith(b"Invalid onion request: ")
    assert reason.encode() in answer.body


def test_request_encrypted_for_another_key_is_refused(sqlite_relay: RunningRelay) -> None:
    from lsrpc.client import OnionClient

    stranger = OnionClient(
        bytes.fromhex("caea52c5b0c316d85ffb53ea536826618b13dee40685f166f632653114526a78")
    )
    answer = sqlite_relay.post("/loki/v2/lsrpc", stranger.v2("register", {}).body)
    assert answer.status == 400
    assert b"authentication failed" in answer.body


def test_oversized_body_is_413(sqlite_relay: RunningRelay) -> None:
    limit = sqlite_relay.settings.MAX_BODY_BYTES
    answer = sqlite_relay.post("/loki/v2/lsrpc", b"x" * (limit + 1))
    assert answer.status == 413
    assert b"Traceback" not in answer.body


def test_other_methods_and_paths(sqlite_relay: RunningRelay) -> None:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", sqlite_relay.port, timeout=10)
    connection.request("GET", "/loki/v2/lsrpc")
    response = connection.getresponse()
    assert (response.status, response.read()) == (405, b"Method Not Allowed\n")
    connection.close()
    assert sqlite_relay.post("/nowhere", b"").status == 404


def test_random_bodies_never_500(sqlite_relay: RunningRelay) -> None:
    rng = __import__("random").Random(1234)
    good = sqlite_relay.client.v2("register", {"token": T, "pubKey": S}).body
    for _ in range(300):
        body = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(body))
            body[position] = rng.randrange(256)
        if rng.random() < 0.3:
            body = body[: rng.randrange(len(body))]
        answer = sqlite_relay.post("/loki/v2/lsrpc", bytes(body))
        assert answer.status in (200, 400), answer
