"""python -m lsrpc.cli: one request from the command line, the decrypted answer printed."""

from __future__ import annotations

import json

import pytest

from lsrpc.cli import main
from tests.support import RunningRelay, random_apns_token, random_session_id


def run(relay: RunningRelay, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{relay.port}"
    code = main(["--url", url, "--pubkey", relay.relay.keypair.public_hex, *args])
    return code, capsys.readouterr().out


def test_v2_and_v4_requests(sqlite_relay: RunningRelay, capsys: pytest.CaptureFixture[str]) -> None:
    session_id = random_session_id()
    code, out = run(
        sqlite_relay, capsys, "register", f"token={random_apns_token()}", f"pubKey={session_id}"
    )
    assert (code, json.loads(out)) == (
        0,
        {"status": 200, "body": {"code": 1, "message": "Success"}},
    )
    groups = json.dumps([random_session_id()])
    code, out = run(
        sqlite_relay,
        capsys,
        "--v4",
        "--style",
        "libsession",
        "--enc-type",
        "xchacha20",
        "register_legacy_groups_only",
        f"token={random_apns_token()}",
        f"pubKey={session_id}",
        "device=ios",
        f"legacyGroupPublicKeys={groups}",
    )
    assert code == 0
    assert json.loads(out)["body"]["code"] == 1


def test_an_application_error_exits_1(
    sqlite_relay: RunningRelay, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(sqlite_relay, capsys, "notify", "data=QUJD")
    assert code == 1
    assert json.loads(out) == {
        "status": 400,
        "body": {"code": 0, "message": "Missing parameter: send_to"},
    }


def test_bad_arguments_say_what_is_wrong() -> None:
    with pytest.raises(SystemExit, match="parameters are name=value"):
        main(["--pubkey", "00" * 32, "notify", "oops"])
    with pytest.raises(SystemExit, match="--pubkey: expected 64 hex characters"):
        main(["--pubkey", "abc", "notify"])
    with pytest.raises(SystemExit, match="cannot reach"):
        main(["--url", "http://127.0.0.1:9", "--pubkey", "11" * 32, "notify"])
