"""Statistics end to end: real notifies and pushes counted, and two processes adding up."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from lsrpc.client import OnionClient
from tests.checks import SUCCESS
from tests.http_calls import http_request
from tests.providers import Providers
from tests.server_process import ServerProcess
from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id

AUTH = {"Authorization": "Basic " + base64.b64encode(b"ops:correct horse").decode()}
ALL_FLAGS = {
    "total_message_number": 1,
    "ios_pn_number": 1,
    "android_pn_number": 1,
    "closed_group_message_number": 1,
    "untracked_message_number": 1,
    "deduplicated_number": 1,
    "tokens_pruned": 1,
}


def statistics(port: int, body: dict[str, Any]) -> list[dict[str, Any]]:
    headers = {"Content-Type": "application/json", **AUTH}
    response = http_request(
        port, "POST", "/get_statistics_data", body=json.dumps(body).encode(), headers=headers
    )
    answer = json.loads(response.body)
    assert response.status == 200, answer
    assert answer["code"] == 0
    rows: list[dict[str, Any]] = answer["data"]
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, int]:
    summed: dict[str, int] = {}
    for row in rows:
        for name, value in row.items():
            if name not in ("start_date", "end_date"):
                summed[name] = summed.get(name, 0) + value
    return summed


def test_counts_of_real_notifies_and_pushes(
    start_relay: Any, sqlite_url: str, providers: Providers
) -> None:
    relay: RunningRelay = start_relay(
        sqlite_url,
        dispatch=True,
        STATS_USERNAME="ops",
        STATS_PASSWORD="correct horse",
        **providers.settings,
    )
    alice, group = random_session_id(), random_session_id()
    relay.call_v2("register", {"token": random_apns_token(), "pubKey": alice})
    relay.call_v2("register", {"token": random_fcm_token(), "pubKey": alice})
    relay.call_v2("subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": alice})
    data = base64.b64encode(os.urandom(50)).decode()
    for params in (
        {"data": data, "send_to": alice},
        {"data": data, "send_to": alice},  # deduplicated
        {"data": base64.b64encode(b"g").decode(), "send_to": group},
        {"data": data, "send_to": random_session_id()},  # nobody registered
    ):
        assert relay.call_v2("notify", params) == SUCCESS
    providers.apns.pushes.wait_for(2)
    providers.fcm.pushes.wait_for(2)
    relay.stop_relay_only()  # flushes the partial minute, as a clean shutdown does
    restarted = RunningRelay(relay.settings)  # same database, to read what was written
    try:
        rows = statistics(restarted.port, ALL_FLAGS)
    finally:
        restarted.stop()
    assert totals(rows) == {
        "total_message_number": 4,
        "ios_pn_number": 2,
        "android_pn_number": 2,
        "closed_group_message_number": 1,
        "untracked_message_number": 1,
        "deduplicated_number": 1,
        "tokens_pruned": 0,
    }


def test_two_processes_sharing_postgresql_give_exact_totals(
    tmp_path: Path, postgres_url: str
) -> None:
    env = {
        "PN_DATABASE_URL": postgres_url,
        "PN_STATS_USERNAME": "ops",
        "PN_STATS_PASSWORD": "correct horse",
    }
    # Same key files (DATA_DIR) for both, as the README asks of processes sharing a database.
    first = ServerProcess(tmp_path, **env)
    second = ServerProcess(tmp_path, **env)
    assert first.public_key == second.public_key
    sent = {first: 0, second: 0}
    for index, server in enumerate([first, second] * 60 + [first] * 17):
        client = OnionClient(bytes.fromhex(server.public_key))
        params = {
            "data": base64.b64encode(f"{index}".encode()).decode(),
            "send_to": random_session_id(),
        }
        request = client.v2("notify", params)
        _, body = server.post("/loki/v2/lsrpc", request.body)
        assert request.open_v2_reply(body) == SUCCESS
        sent[server] += 1
    assert first.terminate() == 0
    assert second.terminate() == 0
    reader = ServerProcess(tmp_path, **env)
    try:
        rows = statistics(reader.port, {"total_message_number": 1, "untracked_message_number": 1})
    finally:
        reader.terminate()
    assert sent[first] == 77 and sent[second] == 60
    summed = totals(rows)
    assert (summed["total_message_number"], summed["untracked_message_number"]) == (137, 137)
