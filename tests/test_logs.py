"""What the relay logs, as an operator sees it: real processes, their standard error."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lsrpc.client import OnionClient
from tests.http_calls import http_request
from tests.providers import Providers
from tests.server_process import ServerProcess
from tests.support import random_apns_token, random_fcm_token, random_session_id


def get(port: int, path: str) -> int:
    return http_request(port, "GET", path).status


def register(server: ServerProcess, **params: str) -> None:
    client = OnionClient(bytes.fromhex(server.public_key))
    request = client.v2("register", params)
    status, body = server.post("/loki/v2/lsrpc", request.body)
    assert status == 200
    assert request.open_v2_reply(body)[1]["code"] == 1


def test_json_lines_and_an_access_log_without_identifiers(tmp_path: Path) -> None:
    token, session_id = random_apns_token(), random_session_id()
    with ServerProcess(tmp_path, PN_LOG_FORMAT="json", PN_ACCESS_LOG="true") as server:
        register(server, token=token, pubKey=session_id)
        assert get(server.port, "/healthz") == 200
        assert get(server.port, f"/{session_id}?token={token}") == 404
        assert server.terminate() == 0
    entries = [json.loads(line) for line in server.lines]
    for entry in entries:
        assert set(entry) == {"time", "level", "logger", "message"}
        assert entry["time"].endswith("Z")
    access = [e["message"] for e in entries if e["logger"] == "pn_relay.access"]
    assert [line.rsplit(" ", 1)[0] for line in access] == [
        "POST /loki/v2/lsrpc 200",
        "GET /healthz 200",
        "GET - 404",
    ]
    assert all(line.endswith("ms") for line in access)
    assert any(e["message"].startswith("pn-relay listening on") for e in entries)
    for secret in (token, session_id, session_id[2:]):
        assert secret not in server.log


def test_no_access_log_by_default_and_no_uri_in_any_line(tmp_path: Path) -> None:
    session_id = random_session_id()
    with ServerProcess(tmp_path) as server:
        assert get(server.port, "/healthz") == 200
        # Tornado logged 4xx answers of the Flask routes with the URI and the client's address.
        assert get(server.port, f"/{session_id}?token=secret-token") == 404
        assert server.terminate() == 0
    assert "pn_relay.access" not in server.log
    for text in ("/healthz", session_id[2:], "secret-token", "127.0.0.1)"):
        assert text not in server.log


@pytest.fixture
def postgres_url_with_password(postgres_url: str) -> str:
    user, at, rest = postgres_url.partition("@")
    if ":" in user.split("//")[1]:
        pytest.skip("the test database URL has a password of its own")
    return f"{user}:hunter2{at}{rest}"  # the test server trusts local users: hidden, unused


def test_one_line_per_start_up_fact_and_no_password(
    tmp_path: Path, postgres_url_with_password: str
) -> None:
    with ServerProcess(tmp_path, PN_DATABASE_URL=postgres_url_with_password) as server:
        assert server.terminate() == 0
    messages = [line.split(": ", 1)[1].rstrip("\n") for line in server.lines]
    shown_url = postgres_url_with_password.replace(":hunter2@", ":***@")
    assert "hunter2" not in server.log
    expected_starts = [
        "APNs is off: no credentials.",
        "FCM is off: no credentials.",
        "first start: made the key files data/server_key.hex, data/identity_secret.hex,"
        " data/token_secret.hex (mode 0600); back them up",
        f"database: {shown_url}",
        "the statistics endpoint refuses everyone",
        "workers: 1 process (onion requests on its uvloop event loop, 16 threads for the other"
        " routes)",
        f"pn-relay listening on http://127.0.0.1:{server.port} (server public key",
        "shutting down",
        "pn-relay stopped",
    ]
    assert len(messages) == len(expected_starts), messages
    for message, start in zip(messages, expected_starts, strict=True):
        assert message.startswith(start), (message, start)


def test_a_push_to_fcm_logs_no_library_line(tmp_path: Path, providers: Providers) -> None:
    # httpx (under firebase-admin) logged one INFO line per FCM request.
    env = providers.environment()
    session_id = random_session_id()
    with ServerProcess(tmp_path, **env) as server:
        register(server, token=random_fcm_token(), pubKey=session_id, device="android")
        register(server, token=random_apns_token(), pubKey=session_id)
        client = OnionClient(bytes.fromhex(server.public_key))
        data = base64.b64encode(b"hello").decode()
        request = client.v2("notify", {"data": data, "send_to": session_id})
        assert server.post("/loki/v2/lsrpc", request.body)[0] == 200
        providers.fcm.pushes.wait_for(1, timeout=30)
        providers.apns.pushes.wait_for(1, timeout=30)
        assert server.terminate() == 0
    loggers = {line.split(" ", 4)[3].rstrip(":") for line in server.lines}
    assert loggers <= {"pn_relay", "push.senders"}, server.log
