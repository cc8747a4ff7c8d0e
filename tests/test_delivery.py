"""Delivery, end to end: notify over the real onion endpoint → the relay → the sandbox."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import uuid
from typing import Any

import pytest

from push.payloads import apns_payload
from sandbox import script
from storage.schema import deliveries, devices, notifications
from tests.checks import SUCCESS, count, wait_until
from tests.providers import Providers, start_providers
from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id

APS = {
    "alert": {"title": "Session", "body": "You've got a new message"},
    "badge": 1,
    "sound": "default",
    "mutable-content": 1,
    "category": "SECRET",
}


def data(size: int = 300) -> str:
    return base64.b64encode(os.urandom(size)).decode()


def register(relay: RunningRelay, token: str, session_id: str, **extra: str) -> None:
    assert relay.call_v2("register", {"token": token, "pubKey": session_id, **extra}) == SUCCESS


def notify(relay: RunningRelay, send_to: str, payload: str) -> None:
    assert relay.call_v2("notify", {"data": payload, "send_to": send_to}) == SUCCESS


def register_both(relay: RunningRelay, session_id: str) -> tuple[str, str]:
    """A new APNs device and a new FCM device for `session_id`: their tokens."""
    apns_token, fcm_token = random_apns_token(), random_fcm_token()
    register(relay, apns_token, session_id)
    register(relay, fcm_token, session_id)
    return apns_token, fcm_token


def test_exact_bytes_of_a_one_to_one_notify(
    pushing_relay: RunningRelay, providers: Providers
) -> None:
    alice = random_session_id()
    apns_token, fcm_token = register_both(pushing_relay, alice)
    message = data()
    before = int(time.time())
    notify(pushing_relay, alice, message)

    (apns_push,) = providers.apns.pushes.wait_for(1)
    assert apns_push.status == 200
    assert apns_push.token == apns_token
    assert apns_push.body == (
        b'{"aps":{"alert":{"title":"Session","body":"You\'ve got a new message"},"badge":1,'
        b'"sound":"default","mutable-content":1,"category":"SECRET"},"ENCRYPTED_DATA":"'
        + message.encode()
        + b'","remote":1}'
    )
    headers = apns_push.headers
    assert headers[":path"] == f"/3/device/{apns_token}"
    assert headers["apns-topic"] == "com.loki-project.loki-messenger"
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert before + 3600 - 5 <= int(headers["apns-expiration"]) <= int(time.time()) + 3600 + 5
    uuid.UUID(headers["apns-id"])

    (fcm_push,) = providers.fcm.pushes.wait_for(1)
    assert fcm_push.status == 200
    assert fcm_push.http_version == "HTTP/2"  # TLS with ALPN h2, as Google's FCM
    assert fcm_push.body == {
        "message": {
            "token": fcm_token,
            "data": {"ENCRYPTED_DATA": message},
            "android": {"priority": "high"},
        }
    }
    wait_until(lambda: count(pushing_relay, deliveries) == 0)
    assert count(pushing_relay, notifications) == 0  # the data is not kept past delivery
    lifetime = pushing_relay.relay.counters.lifetime()
    assert (lifetime["ios_pn_number"], lifetime["android_pn_number"]) == (1, 1)


def test_closed_group_notify_reaches_every_device_of_every_member(
    pushing_relay: RunningRelay, providers: Providers
) -> None:
    group = random_session_id()
    apns_tokens, fcm_tokens = [], []
    for _ in range(3):
        member = random_session_id()
        apns_tokens.append(random_apns_token())
        fcm_tokens.append(random_fcm_token())
        register(pushing_relay, apns_tokens[-1], member)
        register(pushing_relay, fcm_tokens[-1], member)
        params = {"closedGroupPublicKey": group, "pubKey": member}
        assert pushing_relay.call_v2("subscribe_closed_group", params) == SUCCESS
    message = data()
    notify(pushing_relay, group, message)
    apns_pushes = providers.apns.pushes.wait_for(3)
    fcm_pushes = providers.fcm.pushes.wait_for(3)
    assert sorted(p.token for p in apns_pushes) == sorted(apns_tokens)
    assert sorted(p.token for p in fcm_pushes) == sorted(fcm_tokens)
    assert all(p.json()["ENCRYPTED_DATA"] == message for p in apns_pushes)
    assert all(p.data == {"ENCRYPTED_DATA": message} for p in fcm_pushes)
    wait_until(lambda: pushing_relay.relay.counters.lifetime()["closed_group_message_number"] == 1)


def test_payload_size_rule_at_the_boundary() -> None:
    overhead = len(apns_payload("")[0])
    fits, trimmed = apns_payload("A" * (4096 - overhead))
    assert len(fits) == 4096
    assert not trimmed
    left_out, trimmed = apns_payload("A" * (4097 - overhead))
    assert trimmed
    assert json.loads(left_out) == {"aps": APS, "remote": 1}


def test_oversized_data_is_pushed_without_it(
    pushing_relay: RunningRelay, providers: Providers
) -> None:
    alice = random_session_id()
    register_both(pushing_relay, alice)
    overhead = len(apns_payload("")[0])
    largest_fitting = (4096 - overhead) // 4 * 4  # base64 comes in groups of four
    fitting = "QUJD" * (largest_fitting // 4)
    too_big = "QUJD" * (largest_fitting // 4 + 1)
    notify(pushing_relay, alice, fitting)
    notify(pushing_relay, alice, too_big)
    pushes = providers.apns.pushes.wait_for(2)
    bodies = sorted((p.json() for p in pushes), key=lambda body: "ENCRYPTED_DATA" in body)
    assert bodies[0] == {"aps": APS, "remote": 1}
    assert bodies[1]["ENCRYPTED_DATA"] == fitting
    fcm_pushes = providers.fcm.pushes.wait_for(2)
    assert sorted(len(p.data) for p in fcm_pushes) == [1, 1]  # both fit FCM's 4096 data bytes
    huge = "QUJD" * 1100  # 4400 characters: over FCM's limit too
    notify(pushing_relay, alice, huge)
    fcm_pushes = providers.fcm.pushes.wait_for(3)
    assert any(p.data == {} for p in fcm_pushes)
    wait_until(lambda: pushing_relay.relay.counters.lifetime()["payload_trimmed_number"] == 3)


def test_dead_tokens_are_pruned(pushing_relay: RunningRelay, providers: Providers) -> None:
    """A BadDeviceToken prunes only when the lane's recent answers show the configuration
    works (push/dispatcher.py; tests/test_config_storms.py): here 20 pushes accepted first."""
    working = random_session_id()
    for _ in range(20):
        register(pushing_relay, random_apns_token(), working)
    notify(pushing_relay, working, data())
    wait_until(lambda: pushing_relay.relay.counters.lifetime()["ios_pn_number"] == 20)
    alice = random_session_id()
    gone_apns, bad_apns = random_apns_token(), random_apns_token()
    gone_fcm, invalid_fcm = random_fcm_token(), random_fcm_token()
    providers.apns.scripts.set(gone_apns, script.unregistered(int(time.time() * 1000)))
    providers.apns.scripts.set(bad_apns, script.bad_device_token())
    providers.fcm.scripts.set(gone_fcm, script.unregistered())
    providers.fcm.scripts.set(invalid_fcm, script.invalid_argument())
    for token in (gone_apns, bad_apns, gone_fcm, invalid_fcm):
        register(pushing_relay, token, alice)
    time.sleep(0.01)  # registered strictly before the 410's timestamp
    providers.apns.scripts.set(gone_apns, script.unregistered(int(time.time() * 1000)))
    notify(pushing_relay, alice, data())
    wait_until(lambda: count(pushing_relay, devices) == 20)
    wait_until(lambda: count(pushing_relay, deliveries) == 0)
    # The lane counts a prune once the writer has committed it, after the rows are gone.
    wait_until(lambda: pushing_relay.relay.counters.lifetime()["tokens_pruned"] == 4)


def push_answered(relay: RunningRelay, providers: Providers, answer: script.Behaviour) -> None:
    """A new APNs device, a notify for it, and APNs answering `answer`: settled."""
    alice, token = random_session_id(), random_apns_token()
    providers.apns.scripts.set(token, answer)
    register(relay, token, alice)
    notify(relay, alice, data())
    providers.apns.pushes.wait_for(1)
    wait_until(lambda: count(relay, deliveries) == 0)


def test_410_does_not_prune_a_token_registered_again_after_it(
    pushing_relay: RunningRelay, providers: Providers
) -> None:
    # Apple says the token went dead an hour ago; the app registered it again since.
    an_hour_ago_ms = int(time.time() * 1000) - 3_600_000
    push_answered(pushing_relay, providers, script.unregistered(an_hour_ago_ms))
    assert count(pushing_relay, devices) == 1
    assert pushing_relay.relay.counters.lifetime()["tokens_pruned"] == 0


def test_configuration_errors_keep_tokens_and_name_the_setting(
    pushing_relay: RunningRelay, providers: Providers, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone DeviceTokenNotForTopic or SENDER_ID_MISMATCH, with no other answers to judge it
    by, is held back: nothing deleted, the lane not paused, the settings named (a warning:
    a storm of them is the error, tests/test_config_storms.py)."""
    caplog.set_level(logging.WARNING)
    alice = random_session_id()
    apns_token, fcm_token = register_both(pushing_relay, alice)
    providers.apns.scripts.set(apns_token, script.device_token_not_for_topic())
    providers.fcm.scripts.set(fcm_token, script.sender_id_mismatch())
    notify(pushing_relay, alice, data())
    providers.apns.pushes.wait_for(1)
    providers.fcm.pushes.wait_for(1)
    wait_until(lambda: "FCM_SERVICE_ACCOUNT_FILE" in caplog.text and "APNS_TOPIC" in caplog.text)
    assert count(pushing_relay, devices) == 2
    assert count(pushing_relay, deliveries) == 2  # kept, to go once the configuration is fixed
    assert not any(lane.paused for lane in pushing_relay.relay.dispatcher.lanes)
    lifetime = pushing_relay.relay.counters.lifetime()
    assert (lifetime["ios_pn_failed"], lifetime["android_pn_failed"]) == (1, 1)
    assert lifetime["tokens_pruned"] == 0


def test_payload_too_large_drops_the_push_and_keeps_the_token(
    pushing_relay: RunningRelay, providers: Providers
) -> None:
    push_answered(pushing_relay, providers, script.payload_too_large())
    assert count(pushing_relay, devices) == 1
    assert pushing_relay.relay.counters.lifetime()["ios_pn_failed"] == 1


def test_transient_failures_retry_with_the_same_apns_id(
    pushing_relay: RunningRelay, providers: Providers
) -> None:
    alice = random_session_id()
    apns_token, fcm_token = register_both(pushing_relay, alice)
    providers.apns.scripts.fail_times(apns_token, 3, script.server_error())
    providers.fcm.scripts.fail_times(fcm_token, 2, script.unavailable())
    notify(pushing_relay, alice, data())
    apns_pushes = providers.apns.pushes.wait_for(4)
    fcm_pushes = providers.fcm.pushes.wait_for(3)
    assert [p.status for p in apns_pushes] == [500, 500, 500, 200]
    assert len({p.headers["apns-id"] for p in apns_pushes}) == 1
    assert [p.status for p in fcm_pushes] == [503, 503, 200]
    wait_until(lambda: count(pushing_relay, deliveries) == 0)


def test_backoff_honours_retry_after(pushing_relay: RunningRelay, providers: Providers) -> None:
    """End to end: each provider's Retry-After reaches the dispatcher (the policy itself is
    tested on virtual time in tests/test_dispatcher.py). Only a lower bound: a loaded machine
    may retry later, never sooner."""
    alice = random_session_id()
    apns_token, fcm_token = register_both(pushing_relay, alice)
    providers.apns.scripts.fail_times(apns_token, 1, script.too_many_requests(retry_after=2))
    providers.fcm.scripts.fail_times(fcm_token, 1, script.quota_exceeded(retry_after=2))
    notify(pushing_relay, alice, data())
    first, second = providers.apns.pushes.wait_for(2, timeout=10)
    assert second.received_at - first.received_at >= 2.0
    first_fcm, second_fcm = providers.fcm.pushes.wait_for(2, timeout=10)
    assert second_fcm.received_at - first_fcm.received_at >= 2.0


def test_goaway_and_dropped_connections_are_retried(
    pushing_relay: RunningRelay, providers: Providers
) -> None:
    alice = random_session_id()
    goaway_token, drop_token, fcm_token = (
        random_apns_token(),
        random_apns_token(),
        random_fcm_token(),
    )
    providers.apns.scripts.fail_times(goaway_token, 1, script.goaway())
    providers.apns.scripts.fail_times(drop_token, 1, script.drop())
    providers.fcm.scripts.fail_times(fcm_token, 1, script.drop())
    for token in (goaway_token, drop_token, fcm_token):
        register(pushing_relay, token, alice)
    notify(pushing_relay, alice, data())
    wait_until(lambda: {p.token for p in providers.apns.delivered()} == {goaway_token, drop_token})
    wait_until(lambda: [p.token for p in providers.fcm.delivered()] == [fcm_token])
    wait_until(lambda: count(pushing_relay, deliveries) == 0)


def test_dedup_inside_and_outside_the_window(
    start_relay: Any, sqlite_url: str, providers: Providers
) -> None:
    relay = start_relay(sqlite_url, dispatch=True, DEDUP_WINDOW=1.0, **providers.settings)
    alice, token = random_session_id(), random_apns_token()
    register(relay, token, alice)
    message = data()
    for _ in range(4):  # a client retrying its onion request
        notify(relay, alice, message)
    providers.apns.pushes.wait_for(1)
    time.sleep(1.2)
    assert len(providers.apns.pushes) == 1
    assert relay.relay.counters.lifetime()["deduplicated_number"] == 3
    notify(relay, alice, message)  # outside the window: pushed again
    providers.apns.pushes.wait_for(2)
    notify(relay, alice, data())  # other data: never a duplicate
    providers.apns.pushes.wait_for(3)


def test_a_slow_or_down_apns_does_not_delay_fcm(
    pushing_relay: RunningRelay, providers: Providers
) -> None:
    alice = random_session_id()
    register(pushing_relay, random_apns_token(), alice)
    register(pushing_relay, random_fcm_token(), alice)
    providers.apns.global_delay = 30.0  # every APNs answer takes 30 s
    started = time.monotonic()
    for _ in range(20):
        notify(pushing_relay, alice, data())
    pushes = providers.fcm.pushes.wait_for(20, timeout=10)
    assert max(p.received_at for p in pushes) - started < 3.0
    assert pushing_relay.relay.counters.lifetime()["ios_pn_number"] == 0  # none answered yet
    providers.apns.global_delay = 0.0
    providers.apns.set_down(True)  # now refuse APNs altogether
    for _ in range(20):
        notify(pushing_relay, alice, data())
    pushes = providers.fcm.pushes.wait_for(40, timeout=10)
    assert max(p.received_at for p in pushes) - started < 6.0


def test_providers_off_count_and_drop(
    sqlite_relay: RunningRelay, start_relay: Any, sqlite_url: str
) -> None:
    relay = start_relay(sqlite_url, dispatch=True)
    alice = random_session_id()
    register(relay, random_apns_token(), alice)
    register(relay, random_fcm_token(), alice)
    notify(relay, alice, data())
    wait_until(lambda: count(relay, deliveries) == 0)
    lifetime = relay.relay.counters.lifetime()
    assert (lifetime["ios_pn_failed"], lifetime["android_pn_failed"]) == (1, 1)


def test_fcm_over_plain_http_falls_back_to_http1(
    start_relay: Any, sqlite_url: str, tmp_path: Any
) -> None:
    plain = start_providers(tmp_path / "plain", fcm_tls=False)
    providers = next(plain)
    try:
        assert "FCM_CA_FILE" not in providers.settings
        relay = start_relay(sqlite_url, dispatch=True, **providers.settings)
        alice, token = random_session_id(), random_fcm_token()
        gone = random_fcm_token()
        providers.fcm.scripts.set(gone, script.unregistered())
        register(relay, token, alice)
        register(relay, gone, alice)
        message = data()
        notify(relay, alice, message)
        pushes = {p.token: p for p in providers.fcm.pushes.wait_for(2)}
        assert {p.http_version for p in pushes.values()} == {"HTTP/1.1"}
        assert pushes[token].status == 200
        assert pushes[token].data == {"ENCRYPTED_DATA": message}
        wait_until(lambda: count(relay, devices) == 1)  # the dead one pruned
        wait_until(lambda: count(relay, deliveries) == 0)
    finally:
        plain.close()
