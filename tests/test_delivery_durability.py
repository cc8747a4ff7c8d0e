"""Nothing accepted is lost: kill -9 while a provider is down, and 10,000 notifies in a rush."""

from __future__ import annotations

import base64
import concurrent.futures
import os
import signal
import time
from pathlib import Path

from sqlalchemy import func, select

from lsrpc.client import OnionClient
from storage.schema import deliveries
from tests.checks import SUCCESS
from tests.providers import Providers
from tests.server_process import ServerProcess
from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id


def test_kill_9_after_accept_while_the_provider_is_down_loses_nothing(
    tmp_path: Path, providers: Providers
) -> None:
    providers.apns.set_down(True, refuse=True)
    providers.fcm.set_down(True, refuse=True)
    env = providers.environment(PN_DELIVERY_LEASE="2")
    server = ServerProcess(tmp_path, **env)
    client = OnionClient(bytes.fromhex(server.public_key))
    alice = random_session_id()
    apns_token, fcm_token = random_apns_token(), random_fcm_token()
    messages = [base64.b64encode(os.urandom(64)).decode() for _ in range(5)]
    for token in (apns_token, fcm_token):
        request = client.v2("register", {"token": token, "pubKey": alice})
        _, body = server.post("/loki/v2/lsrpc", request.body)
        assert request.open_v2_reply(body) == SUCCESS
    for message in messages:
        request = client.v2("notify", {"data": message, "send_to": alice})
        _, body = server.post("/loki/v2/lsrpc", request.body)
        assert request.open_v2_reply(body) == SUCCESS
    server.process.send_signal(signal.SIGKILL)  # right after the answers: no clean shutdown
    server.process.wait(10)

    providers.apns.set_down(False)
    providers.fcm.set_down(False)
    restarted = ServerProcess(tmp_path, **env)
    try:
        apns_pushes = providers.apns.pushes.wait_for(5, timeout=30)
        fcm_pushes = providers.fcm.pushes.wait_for(5, timeout=30)
        assert sorted(p.json()["ENCRYPTED_DATA"] for p in apns_pushes) == sorted(messages)
        assert sorted(p.data["ENCRYPTED_DATA"] for p in fcm_pushes) == sorted(messages)
    finally:
        assert restarted.terminate() == 0


def test_ten_thousand_notifies_are_all_delivered(
    start_relay: object, sqlite_url: str, providers: Providers
) -> None:
    # 100 notifies to each recipient: above the per-recipient limit, which is not this test's
    # subject (tests/test_abuse_limits.py is), so it is lifted.
    relay: RunningRelay = start_relay(  # type: ignore[operator]
        sqlite_url,
        dispatch=True,
        NOTIFY_PER_MINUTE=1_000_000,
        NOTIFY_BURST=1_000_000,
        **providers.settings,
    )
    recipients = [random_session_id() for _ in range(100)]
    tokens = [random_apns_token() for _ in recipients]
    for recipient, token in zip(recipients, tokens, strict=True):
        assert relay.call_v2("register", {"token": token, "pubKey": recipient}) == SUCCESS
    requests = [
        relay.client.v2(
            "notify",
            {"data": base64.b64encode(os.urandom(32)).decode(), "send_to": recipients[n % 100]},
        )
        for n in range(10_000)
    ]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(relay.send_v2, requests))
    assert answers == [SUCCESS] * 10_000
    pushes = providers.apns.pushes.wait_for(10_000, timeout=120)
    elapsed = time.monotonic() - started
    assert len(pushes) == 10_000
    assert {p.status for p in pushes} == {200}

    def queued() -> int:
        with relay.relay.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(deliveries)).scalar_one())

    deadline = time.monotonic() + 30
    while queued() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queued() == 0
    assert relay.relay.counters.lifetime()["ios_pn_number"] == 10_000
    print(f"10,000 notifies accepted and pushed in {elapsed:.1f} s")
