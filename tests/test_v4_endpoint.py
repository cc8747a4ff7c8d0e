"""/oxen/v4/lsrpc over a real socket: every client style, both enc types, every endpoint."""

from __future__ import annotations

import base64
import itertools
import os
from typing import Any

import pytest

from lsrpc.client import V4_STYLES
from storage.schema import deliveries, devices, group_members
from tests.checks import SUCCESS, count
from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id


def data() -> str:
    return base64.b64encode(os.urandom(200)).decode()


@pytest.mark.parametrize(
    ("style", "enc_type"), list(itertools.product(V4_STYLES, ["aes-gcm", "xchacha20"]))
)
def test_every_endpoint_in_every_style(relay: RunningRelay, style: str, enc_type: str) -> None:
    opts: dict[str, Any] = {"style": style, "enc_type": enc_type}
    alice, bob, group = random_session_id(), random_session_id(), random_session_id()
    alice_token, bob_token = random_apns_token(), random_fcm_token()
    assert (
        relay.call_v4("register", {"token": alice_token, "pubKey": alice, "device": "ios"}, **opts)
        == SUCCESS
    )
    assert relay.call_v4("register", {"token": bob_token, "pubKey": bob}, **opts) == SUCCESS
    membership = {"closedGroupPublicKey": group, "pubKey": alice}
    assert relay.call_v4("subscribe_closed_group", membership, **opts) == SUCCESS
    params = {
        "token": bob_token,
        "pubKey": bob,
        "device": "android",
        "legacyGroupPublicKeys": [group],
    }
    assert relay.call_v4("register_legacy_groups_only", params, **opts) == SUCCESS
    assert count(relay, group_members) == 2
    assert relay.call_v4("notify", {"data": data(), "send_to": group}, **opts) == SUCCESS
    assert count(relay, deliveries) == 2
    assert relay.call_v4("unsubscribe_closed_group", membership, **opts) == SUCCESS
    assert relay.call_v4("unregister", {"token": alice_token}, **opts) == SUCCESS
    assert count(relay, devices) == 1


@pytest.mark.parametrize("style", V4_STYLES)
def test_default_enc_type_of_each_style(sqlite_relay: RunningRelay, style: str) -> None:
    params = {"token": random_apns_token(), "pubKey": random_session_id()}
    assert sqlite_relay.call_v4("register", params, style=style) == SUCCESS


def test_application_errors_are_meta_400_body_code_0(sqlite_relay: RunningRelay) -> None:
    status, body = sqlite_relay.call_v4("register", {"token": random_apns_token()})
    assert (status, body) == (400, {"code": 0, "message": "Missing parameter: pubKey"})
    status, body = sqlite_relay.call_v4("nope", {})
    assert (status, body) == (400, {"code": 0, "message": "Unknown endpoint"})
    status, body = sqlite_relay.call_v4("register", None)  # a request without a body element
    assert (status, body["code"]) == (400, 0)


def test_register_legacy_groups_only_replaces_memberships(relay: RunningRelay) -> None:
    member, token = random_session_id(), random_apns_token()
    old_groups = [random_session_id() for _ in range(3)]
    new_groups = [old_groups[0], random_session_id()]
    for groups in (old_groups, new_groups):
        params = {
            "token": token,
            "pubKey": member,
            "device": "ios",
            "legacyGroupPublicKeys": groups,
        }
        assert relay.call_v4("register_legacy_groups_only", params) == SUCCESS
    assert count(relay, group_members) == 2
    for group in old_groups[1:]:
        relay.call_v4("notify", {"data": data(), "send_to": group})
    assert count(relay, deliveries) == 0  # no longer a member of those
    for group in new_groups:
        relay.call_v4("notify", {"data": data(), "send_to": group})
    assert count(relay, deliveries) == 2
    params = {"token": token, "pubKey": member, "device": "ios", "legacyGroupPublicKeys": []}
    assert relay.call_v4("register_legacy_groups_only", params) == SUCCESS
    assert count(relay, group_members) == 0


MALFORMED_PLAINTEXTS = [
    b"",
    b"Hello world",
    b"le",
    b"l5:hello",
    b"l99:{}e",
    b"l02:{}e",
    b"l2:{}2:{}2:{}e",
    b"li1ee",
    b"ll2:{}ee",
    b"d3:abci1ee",
    b"l2:{}e trailing",
    b"l" * 5000 + b"e" * 5000,
    b"l" + b"9" * 30 + b":e",
    b"l4:[1]e",
    b'l13:{"method":1}e',
    b'l16:{"endpoint":7}e',
    b"l2:\xff\xfee",
]


@pytest.mark.parametrize("plaintext", MALFORMED_PLAINTEXTS)
@pytest.mark.parametrize("enc_type", ["aes-gcm", "xchacha20"])
def test_malformed_v4_plaintext_gets_an_encrypted_400(
    sqlite_relay: RunningRelay, plaintext: bytes, enc_type: str
) -> None:
    meta, body = sqlite_relay.send_v4(sqlite_relay.client.seal(plaintext, enc_type))
    assert meta["code"] == 400
    assert body["code"] == 0
    assert body["message"]


def test_v4_reply_is_raw_bytes_in_the_request_enc_type(sqlite_relay: RunningRelay) -> None:
    request = sqlite_relay.client.v4("unregister", {"token": "x"}, enc_type="xchacha20")
    answer = sqlite_relay.post("/oxen/v4/lsrpc", request.body)
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/octet-stream"
    plaintext = request.open_raw_reply(answer.body)
    assert plaintext == (
        b'l58:{"code":200,"headers":{"content-type":"application/json"}}'
        b'30:{"code":1,"message":"Success"}e'
    )


def test_v4_transport_errors_are_plain(sqlite_relay: RunningRelay) -> None:
    answer = sqlite_relay.post("/oxen/v4/lsrpc", b"\x00")
    assert answer.status == 400
    assert answer.body.startswith(b"Invalid onion request")
