"""Abuse limits that need no IP address (issue 12, point 2), over a real socket.

Each limit: the refusal is the protocol's encrypted error reply with a clear message, nothing is
written, and /metrics counts it (`pn_relay_refused_total{reason}`); the device cap replaces
instead of refusing, so a user's new phone always works.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from handlers.notify_limit import NotifyRateLimit
from storage.schema import deliveries, devices, group_members, notifications
from tests.checks import SUCCESS, count
from tests.http_calls import http_request
from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id


def data() -> str:
    return base64.b64encode(os.urandom(60)).decode()


def tokens_of(relay: RunningRelay, session_id: str) -> set[str]:
    protector = relay.relay.protector
    with relay.relay.engine.connect() as conn:
        rows = conn.execute(
            select(devices.c.token_sealed).where(
                devices.c.session_hash == protector.identity(session_id)
            )
        ).scalars()
        return {protector.open_token(sealed) for sealed in rows}


def scrape(relay: RunningRelay) -> set[str]:
    answer = http_request(relay.port, "GET", "/metrics")
    assert answer.status == 200
    return set(answer.body.decode().splitlines())


def refused_line(reason: str, value: int) -> str:
    return f'pn_relay_refused_total{{reason="{reason}"}} {float(value)}'


@pytest.fixture
def limited(start_relay: Callable[..., RunningRelay], database_url: str) -> RunningRelay:
    return start_relay(
        database_url,
        MAX_DEVICES_PER_SESSION=3,
        MAX_GROUP_MEMBERS=3,
        NOTIFY_PER_MINUTE=1,
        NOTIFY_BURST=3,
        METRICS_PUBLIC=True,
    )


# -- devices per Session ID -----------------------------------------------------------------


def test_a_new_device_beyond_the_cap_replaces_the_least_recently_registered(
    limited: RunningRelay,
) -> None:
    alice = random_session_id()
    oldest, middle, newest = random_apns_token(), random_fcm_token(), random_apns_token()
    for token in (oldest, middle, newest):
        assert limited.call_v2("register", {"token": token, "pubKey": alice}) == SUCCESS
    # Pushes queued for all three (no dispatcher runs: they stay queued).
    assert limited.call_v2("notify", {"data": data(), "send_to": alice}) == SUCCESS
    assert count(limited, deliveries) == 3
    oldest_id = _device_id(limited, oldest)

    phone = random_fcm_token()
    assert limited.call_v2("register", {"token": phone, "pubKey": alice}) == SUCCESS

    assert tokens_of(limited, alice) == {middle, newest, phone}
    # The replaced registration's queued push went with it (same transaction); the others stay.
    assert count(limited, deliveries) == 2
    assert count(limited, deliveries, deliveries.c.device_id == oldest_id) == 0
    assert limited.relay.counters.lifetime(("devices_replaced",))["devices_replaced"] == 1
    assert 'pn_relay_events_total{event="devices_replaced"} 1.0' in scrape(limited)


def test_registering_an_existing_device_again_replaces_nothing_and_refreshes_it(
    limited: RunningRelay,
) -> None:
    alice = random_session_id()
    first, second, third = random_apns_token(), random_apns_token(), random_apns_token()
    for token in (first, second, third, first):  # `first` registers again: now the newest
        assert limited.call_v2("register", {"token": token, "pubKey": alice}) == SUCCESS
    assert tokens_of(limited, alice) == {first, second, third}
    fourth = random_apns_token()
    assert limited.call_v2("register", {"token": fourth, "pubKey": alice}) == SUCCESS
    assert tokens_of(limited, alice) == {first, third, fourth}  # `second` was the oldest


def test_the_device_cap_applies_to_register_legacy_groups_only(limited: RunningRelay) -> None:
    alice, group = random_session_id(), random_session_id()
    tokens = [random_apns_token() for _ in range(4)]
    for token in tokens:
        params = {"token": token, "pubKey": alice, "device": "ios"}
        params_with_groups: dict[str, Any] = {**params, "legacyGroupPublicKeys": [group]}
        assert limited.call_v4("register_legacy_groups_only", params_with_groups)[1] == {
            "code": 1,
            "message": "Success",
        }
    assert tokens_of(limited, alice) == set(tokens[1:])


def _device_id(relay: RunningRelay, token: str) -> int:
    with relay.relay.engine.connect() as conn:
        return int(
            conn.execute(
                select(devices.c.id).where(
                    devices.c.token_hash == relay.relay.protector.token_hash(token)
                )
            ).scalar_one()
        )


# -- members per group ----------------------------------------------------------------------


def test_a_member_beyond_the_group_cap_is_refused(limited: RunningRelay) -> None:
    group = random_session_id()
    members = [random_session_id() for _ in range(4)]
    for member in members[:3]:
        params = {"closedGroupPublicKey": group, "pubKey": member}
        assert limited.call_v2("subscribe_closed_group", params) == SUCCESS

    status, body = limited.call_v2(
        "subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": members[3]}
    )
    assert (status, body["code"]) == (403, 0)
    assert body["message"] == (
        "The closed group has reached its limit of 3 members; nothing was changed"
    )
    assert count(limited, group_members) == 3
    # The same refusal in v4, as its meta code.
    code, v4_body = limited.call_v4(
        "subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": members[3]}
    )
    assert (code, v4_body["code"]) == (403, 0)
    # A member already in the group is not refused; one leaving makes room.
    params = {"closedGroupPublicKey": group, "pubKey": members[0]}
    assert limited.call_v2("subscribe_closed_group", params) == SUCCESS
    assert limited.call_v2("unsubscribe_closed_group", params) == SUCCESS
    params = {"closedGroupPublicKey": group, "pubKey": members[3]}
    assert limited.call_v2("subscribe_closed_group", params) == SUCCESS
    assert refused_line("group_members", 2) in scrape(limited)


def test_register_legacy_groups_only_into_a_full_group_changes_nothing(
    limited: RunningRelay,
) -> None:
    full, roomy = random_session_id(), random_session_id()
    insiders = [random_session_id() for _ in range(3)]
    for member in insiders:
        params = {"closedGroupPublicKey": full, "pubKey": member}
        assert limited.call_v2("subscribe_closed_group", params) == SUCCESS
    alice, token = random_session_id(), random_apns_token()
    params = {"closedGroupPublicKey": roomy, "pubKey": alice}
    assert limited.call_v2("subscribe_closed_group", params) == SUCCESS
    before = count(limited, group_members)

    code, body = limited.call_v4(
        "register_legacy_groups_only",
        {"token": token, "pubKey": alice, "device": "ios", "legacyGroupPublicKeys": [full]},
    )
    assert (code, body["code"]) == (403, 0)
    assert body["message"] == (
        "A group in legacyGroupPublicKeys has reached its limit of 3 members; nothing was changed"
    )
    assert tokens_of(limited, alice) == set()  # not registered either: all or nothing
    assert count(limited, group_members) == before  # still in `roomy`, not in `full`

    # A member of the full group already is not refused.
    insider_token = random_apns_token()
    code, body = limited.call_v4(
        "register_legacy_groups_only",
        {
            "token": insider_token,
            "pubKey": insiders[0],
            "device": "ios",
            "legacyGroupPublicKeys": [full, roomy],
        },
    )
    assert (code, body["code"]) == (200, 1)
    assert tokens_of(limited, insiders[0]) == {insider_token}
    assert refused_line("group_members", 1) in scrape(limited)


# -- notifies per recipient per minute ------------------------------------------------------


def test_notifies_beyond_a_recipients_rate_are_refused_not_queued(limited: RunningRelay) -> None:
    alice, bob, nobody = random_session_id(), random_session_id(), random_session_id()
    for session in (alice, bob):
        assert (
            limited.call_v2("register", {"token": random_apns_token(), "pubKey": session})[0] == 200
        )
    first = data()
    for payload in (first, data(), data()):  # the burst of 3
        assert limited.call_v2("notify", {"data": payload, "send_to": alice}) == SUCCESS
    assert count(limited, deliveries) == 3

    status, body = limited.call_v2("notify", {"data": data(), "send_to": alice})
    assert (status, body["code"]) == (429, 0)
    assert body["message"] == (
        "Too many notifications for this recipient (at most 1 a minute); try again later"
    )
    assert count(limited, deliveries) == 3  # refused, not queued
    assert count(limited, notifications) == 3
    # A client's retry of an accepted notify is deduplicated, not refused; another recipient,
    # and a recipient with no device (nothing to queue), are not affected.
    assert limited.call_v2("notify", {"data": first, "send_to": alice}) == SUCCESS
    assert limited.call_v2("notify", {"data": data(), "send_to": bob}) == SUCCESS
    for _ in range(5):
        assert limited.call_v2("notify", {"data": data(), "send_to": nobody}) == SUCCESS
    code, v4_body = limited.call_v4("notify", {"data": data(), "send_to": alice})
    assert (code, v4_body["code"]) == (429, 0)

    lifetime = limited.relay.counters.lifetime()
    assert lifetime["total_message_number"] == 3 + 1 + 1 + 5  # refusals are not messages
    assert lifetime["deduplicated_number"] == 1
    assert refused_line("notify_rate", 2) in scrape(limited)


def test_a_group_has_one_rate_for_all_its_members(limited: RunningRelay) -> None:
    group = random_session_id()
    for _ in range(2):
        member = random_session_id()
        assert (
            limited.call_v2("register", {"token": random_apns_token(), "pubKey": member})[0] == 200
        )
        params = {"closedGroupPublicKey": group, "pubKey": member}
        assert limited.call_v2("subscribe_closed_group", params) == SUCCESS
    for _ in range(3):
        assert limited.call_v2("notify", {"data": data(), "send_to": group}) == SUCCESS
    assert limited.call_v2("notify", {"data": data(), "send_to": group})[0] == 429
    assert count(limited, deliveries) == 6


# -- data as today, now counted ---------------------------------------------------------------


def test_data_over_the_cap_is_refused_and_counted(
    start_relay: Callable[..., RunningRelay], sqlite_url: str
) -> None:
    relay = start_relay(sqlite_url, MAX_DATA_BYTES=100, METRICS_PUBLIC=True)
    too_big = base64.b64encode(os.urandom(101)).decode()
    status, body = relay.call_v2("notify", {"data": too_big, "send_to": random_session_id()})
    assert (status, body) == (
        400,
        {"code": 0, "message": "Parameter data is larger than 100 bytes"},
    )
    assert refused_line("data_too_large", 1) in scrape(relay)
    assert refused_line("notify_rate", 0) in scrape(relay)


# -- the token bucket itself, on a clock the test moves -----------------------------------


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    clock = FakeMonotonic()
    limit = NotifyRateLimit(per_minute=60, burst=5, clock=clock)
    alice, bob = b"a" * 32, b"b" * 32
    assert [limit.admit(alice) for _ in range(6)] == [True] * 5 + [False]
    assert limit.admit(bob)  # buckets are per recipient
    clock.now += 1.0  # one notify a second
    assert limit.admit(alice)
    assert not limit.admit(alice)
    clock.now += 3600  # a long quiet spell refills to the burst, no further
    assert [limit.admit(alice) for _ in range(6)] == [True] * 5 + [False]


def test_idle_buckets_are_forgotten_and_memory_is_bounded() -> None:
    clock = FakeMonotonic()
    limit = NotifyRateLimit(per_minute=60, burst=5, max_buckets=100, clock=clock)
    for n in range(1000):
        limit.admit(n.to_bytes(32, "big"))
    assert len(limit) == 100  # never more than max_buckets
    clock.now += 5.0  # every bucket is full again (5 tokens at one a second): forgotten
    limit.admit(b"x" * 32)
    assert len(limit) == 1
