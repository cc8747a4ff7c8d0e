"""python -m lsrpc.cli: one onion request (the decrypted answer printed), or statistics."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import insert

from lsrpc.cli import main
from stats.schema import statistics_minutes
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


def test_a_wrong_public_key_is_named_as_the_likely_cause(
    sqlite_relay: RunningRelay, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{sqlite_relay.port}"
    wrong = "8388de69bc0d4b6196133233ad9a46ba0473474bc67718aad96a3a33c257f726"
    code = main(["--url", url, "--pubkey", wrong, "notify", "data=QUJD"])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[0].startswith("HTTP 400: Invalid onion request:")
    assert err[1] == (
        f"lsrpc.cli: the relay could not decrypt the request: the server public key ({wrong})"
        " is probably wrong; python server.py --print-pubkey on the relay's machine prints"
        " the right one"
    )


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for default in (
        "(default: http://127.0.0.1:3000)",
        "(default: the public key of ./data/server_key.hex)",
        "(default: android (v2), desktop (v4))",
        "(default: aes-gcm)",
        "python -m lsrpc.cli stats",
    ):
        assert default in out
    with pytest.raises(SystemExit):
        main(["stats", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: hour)", "(default: now)", "$RELAY_STATS_PASSWORD"):
        assert default in out


MINUTE_MS = 60_000
DAY = 1_714_780_800_000  # 2024-05-04 00:00 UTC


@pytest.fixture
def stats_relay(start_relay: Callable[..., RunningRelay], sqlite_url: str) -> RunningRelay:
    relay = start_relay(sqlite_url, STATS_USERNAME="ops", STATS_PASSWORD="correct horse")
    rows = [  # (minute, ios, android, total): two in the first hour, one in the third
        (DAY + 5 * MINUTE_MS, 2, 1, 3),
        (DAY + 59 * MINUTE_MS, 0, 4, 5),
        (DAY + 2 * 60 * MINUTE_MS, 7, 0, 7),
    ]
    with relay.relay.engine.begin() as conn:
        conn.execute(
            insert(statistics_minutes),
            [
                {
                    "minute_start": minute,
                    "ios_pn_number": ios,
                    "android_pn_number": android,
                    "total_message_number": total,
                    "tokens_pruned": 1,
                }
                for minute, ios, android, total in rows
            ],
        )
    return relay


def stats(relay: RunningRelay, *args: str) -> int:
    return main(["stats", "--url", f"http://127.0.0.1:{relay.port}", "--user", "ops", *args])


def test_stats_as_a_table(
    stats_relay: RunningRelay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_STATS_PASSWORD", "correct horse")
    assert stats(stats_relay, "--from", "2024-05-04", "--to", "2024-05-04") == 0
    assert capsys.readouterr().out.splitlines() == [
        "hour (UTC)        total_message_number  ios_pn_number  android_pn_number",
        "2024-05-04 00:00                     8              2                  5",
        "2024-05-04 02:00                     7              7                  0",
        "total                               15              9                  5",
    ]
    assert stats(stats_relay, "--from", "2024-05-04", "--to", "2024-05-05", "--by", "day") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines[1:]] == [
        ["2024-05-04", "15", "9", "5"],
        ["total", "15", "9", "5"],
    ]
    assert (
        stats(
            stats_relay,
            "--from",
            "2024-05-04 00:59:00",
            "--by",
            "minute",
            "--to",
            "2024-05-04 02:00:00",
            "--all",
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["minute", "(UTC)", "total_message_number"]
    assert "tokens_pruned" in lines[0]
    assert lines[1].startswith("2024-05-04 00:59 ")
    assert lines[2].startswith("2024-05-04 02:00 ")
    assert lines[3].startswith("total ")
    assert stats(stats_relay, "--from", "2023-01-01", "--to", "2023-01-01") == 0
    assert capsys.readouterr().out.startswith("no statistics in this range")


def test_stats_errors_say_what_is_wrong(
    stats_relay: RunningRelay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_STATS_PASSWORD", "wrong")
    assert stats(stats_relay) == 1
    assert "the relay refused these credentials (HTTP 401)" in capsys.readouterr().err
    monkeypatch.setenv("RELAY_STATS_PASSWORD", "correct horse")
    assert stats(stats_relay, "--from", "2024-05-04", "--to", "2024-07-04") == 1
    assert "HTTP 400: the range covers" in capsys.readouterr().err
    assert stats(stats_relay, "--from", "yesterday") == 1
    assert "HTTP 400: start_date is not a date" in capsys.readouterr().err
    monkeypatch.delenv("RELAY_STATS_PASSWORD")
    with pytest.raises(SystemExit, match="set RELAY_STATS_PASSWORD, or run stats on a terminal"):
        stats(stats_relay)


def test_stats_put_after_options_is_pointed_out() -> None:
    with pytest.raises(SystemExit, match="put stats first"):
        main(["--url", "http://127.0.0.1:9", "--pubkey", "11" * 32, "stats"])
