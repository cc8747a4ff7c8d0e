"""No log line, at any level, carries a Session ID, group key, token or message data."""

from __future__ import annotations

import base64
import logging
import os

import pytest

from sandbox import script
from server import configure_logging
from tests.providers import Providers
from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id


def test_nothing_identifying_is_logged_even_at_debug(
    sqlite_relay: RunningRelay, caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging("DEBUG")
    caplog.set_level(logging.DEBUG)
    alice, group = random_session_id(), random_session_id()
    apns, fcm = random_apns_token(), random_fcm_token()
    data = base64.b64encode(os.urandom(120)).decode()
    secrets_used = [alice, group, apns, fcm, data, alice[2:], group[2:]]
    calls = [
        ("register", {"token": apns, "pubKey": alice}),
        ("register", {"token": fcm, "pubKey": alice, "device": "android"}),
        ("subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": alice}),
        ("notify", {"data": data, "send_to": alice}),
        ("notify", {"data": data, "send_to": alice}),  # deduplicated
        ("notify", {"data": data, "send_to": group}),
        ("notify", {"data": data + "!", "send_to": alice}),  # invalid data
        ("register", {"token": apns, "pubKey": alice + "0"}),  # invalid Session ID
        ("unsubscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": alice}),
        ("unregister", {"token": fcm}),
        ("no_such_endpoint", {"token": apns, "pubKey": alice}),
    ]
    for endpoint, params in calls:
        sqlite_relay.call_v2(endpoint, params)
        sqlite_relay.call_v4(endpoint, params, style="libsession")
    sqlite_relay.post("/loki/v2/lsrpc", b"garbage " + alice.encode())
    sqlite_relay.stop_relay_only()
    assert caplog.records, "the relay logged nothing at all: the check would be vacuous"
    logged = "\n".join(
        f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        for record in caplog.records
    )
    for secret in secrets_used:
        assert secret not in logged
        assert secret.lower() not in logged.lower()


def test_delivery_logs_nothing_identifying_even_at_debug(
    pushing_relay: RunningRelay, providers: Providers, caplog: pytest.LogCaptureFixture
) -> None:
    configure_logging("DEBUG")  # the relay's own logging set-up, at its most verbose
    caplog.set_level(logging.DEBUG)
    alice, group = random_session_id(), random_session_id()
    good_apns, dead_apns, topic_apns = random_apns_token(), random_apns_token(), random_apns_token()
    good_fcm, dead_fcm, flaky_fcm = random_fcm_token(), random_fcm_token(), random_fcm_token()
    providers.apns.scripts.set(dead_apns, script.unregistered())
    providers.apns.scripts.set(topic_apns, script.device_token_not_for_topic())
    providers.fcm.scripts.set(dead_fcm, script.unregistered())
    providers.fcm.scripts.fail_times(flaky_fcm, 2, script.unavailable())
    tokens = [good_apns, dead_apns, topic_apns, good_fcm, dead_fcm, flaky_fcm]
    for token in tokens:
        sqlite_call = pushing_relay.call_v2("register", {"token": token, "pubKey": alice})
        assert sqlite_call[0] == 200
    pushing_relay.call_v2(
        "subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": alice}
    )
    data = base64.b64encode(os.urandom(100)).decode()
    pushing_relay.call_v2("notify", {"data": data, "send_to": alice})
    pushing_relay.call_v2("notify", {"data": data, "send_to": group})
    providers.apns.pushes.wait_for(6)
    providers.fcm.pushes.wait_for(8)
    pushing_relay.stop_relay_only()
    logged = "\n".join(
        f"{record.name} {record.getMessage()} {record.exc_text or ''}" for record in caplog.records
    )
    assert len(caplog.records) > 5
    for secret in [alice, alice[2:], group, group[2:], data, *tokens]:
        assert secret.lower() not in logged.lower()
