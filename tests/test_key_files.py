"""Key files that a typo cannot lose: never made for a named path, made only on a first start,
and checked against fingerprints in the database (the relay in-process, on real databases)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, select

from lsrpc.keys import fingerprint
from relay import Relay
from startup import StartupError
from startup.fingerprints import ROW_KEYS
from storage.schema import schema_meta
from tests.support import RunningRelay, random_apns_token, random_session_id, relay_settings

KEY_2021 = "2f4d1c0d28e137777ec0a316e9f4f763e3e66662a6c51994c6315c9ef34b6deb"
PUBLIC_2021 = "8388de69bc0d4b6196133233ad9a46ba0473474bc67718aad96a3a33c257f726"
NAMES = ("server_key.hex", "identity_secret.hex", "token_secret.hex")


@pytest.fixture
def started() -> Iterator[Callable[..., RunningRelay]]:
    relays: list[RunningRelay] = []

    def start(data_dir: Path, database_url: str, **overrides: Any) -> RunningRelay:
        running = RunningRelay(relay_settings(data_dir, database_url, **overrides))
        relays.append(running)
        return running

    yield start
    for running in reversed(relays):
        running.stop()


def refusal(data_dir: Path, database_url: str, **overrides: Any) -> str:
    with pytest.raises(StartupError) as caught:
        Relay(relay_settings(data_dir, database_url, **overrides))
    message = str(caught.value)
    assert "\n" not in message
    return message


def meta(database_url: str) -> dict[str, str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(select(schema_meta.c.key, schema_meta.c.value)).all())
    finally:
        engine.dispose()


def fingerprints(database_url: str) -> dict[str, str]:
    return {k: v for k, v in meta(database_url).items() if k in ROW_KEYS.values()}


def register(relay: RunningRelay) -> None:
    status, body = relay.call_v2(
        "register", {"token": random_apns_token(), "pubKey": random_session_id()}
    )
    assert (status, body["code"]) == (200, 1)


def test_first_start_makes_the_keys_and_records_their_fingerprints(
    started: Callable[..., RunningRelay], database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    relay = started(data_dir, database_url)
    for name in NAMES:
        assert (data_dir / name).stat().st_mode & 0o777 == 0o600
    identity = (data_dir / "identity_secret.hex").read_text().strip()
    token = (data_dir / "token_secret.hex").read_text().strip()
    rows = meta(database_url)
    assert rows["server_public_key"] == relay.relay.keypair.public_hex
    assert rows["identity_secret_fingerprint"] == fingerprint(
        bytes.fromhex(identity), "identity_secret_fingerprint"
    )
    assert rows["token_secret_fingerprint"] == fingerprint(
        bytes.fromhex(token), "token_secret_fingerprint"
    )
    assert identity not in str(rows) and token not in str(rows)
    assert rows["identity_secret_fingerprint"] != rows["token_secret_fingerprint"]


@pytest.mark.parametrize("setting", ["KEY_FILE", "IDENTITY_KEY_FILE", "TOKEN_KEY_FILE"])
def test_a_named_key_file_that_does_not_exist_is_an_error_and_nothing_is_made(
    tmp_path: Path, setting: str
) -> None:
    data_dir, typo = tmp_path / "data", tmp_path / "keys" / "old-2021-key.hx"
    message = refusal(data_dir, "", **{setting: typo})
    assert message.startswith(f"{setting}: {typo} does not exist; fix the path")
    assert "python server.py --init" in message
    assert list(tmp_path.iterdir()) == []  # no DATA_DIR, no key, no database


def test_a_lost_key_file_in_a_used_data_dir_is_an_error(
    started: Callable[..., RunningRelay], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    started(data_dir, "").stop_relay_only()  # SQLite in DATA_DIR
    (data_dir / "server_key.hex").unlink()
    message = refusal(data_dir, "")
    assert message.startswith(
        f"server key {data_dir / 'server_key.hex'} does not exist, and {data_dir} is not a new"
        " DATA_DIR (new keys are made only on the first start): restore the file from your"
        " backup or set KEY_FILE to where it is"
    )
    assert not (data_dir / "server_key.hex").exists()


def test_a_data_dir_holding_only_the_2021_key_is_a_first_start(
    started: Callable[..., RunningRelay], sqlite_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "server_key.hex").write_text(KEY_2021 + "\n")
    relay = started(data_dir, sqlite_url)
    assert relay.relay.keypair.public_hex == PUBLIC_2021
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(NAMES)


@pytest.mark.parametrize("secret", ["identity_secret.hex", "token_secret.hex"])
def test_a_different_secret_in_front_of_registrations_refuses_the_start(
    started: Callable[..., RunningRelay], database_url: str, tmp_path: Path, secret: str
) -> None:
    data_dir = tmp_path / "data"
    relay = started(data_dir, database_url)
    register(relay)
    relay.stop_relay_only()
    original = (data_dir / secret).read_text()
    (data_dir / secret).write_text(os.urandom(32).hex() + "\n")
    setting = "IDENTITY_KEY_FILE" if secret.startswith("identity") else "TOKEN_KEY_FILE"
    kind = "identity secret" if secret.startswith("identity") else "token secret"
    assert refusal(data_dir, database_url) == (
        f"{setting}: {data_dir / secret} is not the {kind} this database was written with,"
        " and the database holds registrations made with the old one: restore the file from"
        f" your backup, or set {setting} to where it is (if it is lost for good, so are the"
        " registrations: start with an empty database)"
    )
    # Restored, it starts, and what was stored is still usable.
    (data_dir / secret).write_text(original)
    register(started(data_dir, database_url))


def test_a_missing_secret_in_front_of_registrations_refuses_and_leaves_nothing(
    started: Callable[..., RunningRelay], database_url: str, tmp_path: Path
) -> None:
    # A second machine (or a wiped DATA_DIR) pointed at a database that holds registrations:
    # its first start would make new secrets, and every registration would be lost.
    first = started(tmp_path / "data", database_url)
    register(first)
    first.stop_relay_only()
    elsewhere = tmp_path / "elsewhere"
    message = refusal(elsewhere, database_url)
    assert message.startswith(f"KEY_FILE: {elsewhere / 'server_key.hex'} was missing")
    assert "restore the file from your backup" in message
    assert not elsewhere.exists()


def test_a_missing_secret_alone_is_named(
    started: Callable[..., RunningRelay], database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    register(started(data_dir, database_url))
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("server_key.hex", "identity_secret.hex"):
        (copy / name).write_text((data_dir / name).read_text())
    message = refusal(copy, database_url)
    assert message.startswith(
        f"TOKEN_KEY_FILE: {copy / 'token_secret.hex'} was missing, and the database holds"
        " registrations made with the old one"
    )
    assert sorted(p.name for p in copy.iterdir()) == ["identity_secret.hex", "server_key.hex"]


def test_without_registrations_new_keys_replace_the_fingerprints(
    started: Callable[..., RunningRelay], database_url: str, tmp_path: Path
) -> None:
    started(tmp_path / "one", database_url).stop_relay_only()
    before = meta(database_url)
    second = started(tmp_path / "two", database_url)
    after = meta(database_url)
    assert after["server_public_key"] == second.relay.keypair.public_hex
    for key in ("server_public_key", "identity_secret_fingerprint", "token_secret_fingerprint"):
        assert after[key] != before[key]


def test_a_database_from_before_fingerprints_gets_them(
    started: Callable[..., RunningRelay], database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    relay = started(data_dir, database_url)
    register(relay)
    relay.stop_relay_only()
    recorded = fingerprints(database_url)
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(delete(schema_meta).where(schema_meta.c.key.in_(ROW_KEYS.values())))
    engine.dispose()
    assert fingerprints(database_url) == {}
    # Without fingerprints, a fresh DATA_DIR in front of registrations is still refused...
    assert "was missing" in refusal(tmp_path / "fresh", database_url)
    # ...and the keys that were there are trusted and recorded again.
    started(data_dir, database_url).stop_relay_only()
    assert fingerprints(database_url) == recorded


def test_a_different_server_key_is_allowed_with_a_warning(
    started: Callable[..., RunningRelay],
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data_dir = tmp_path / "data"
    relay = started(data_dir, database_url)
    old = relay.relay.keypair.public_hex
    register(relay)
    relay.stop_relay_only()
    (data_dir / "server_key.hex").write_text(KEY_2021 + "\n")
    with caplog.at_level(logging.WARNING, logger="pn_relay"):
        started(data_dir, database_url)
    assert (
        f"KEY_FILE: {data_dir / 'server_key.hex'} holds server key {PUBLIC_2021}, not {old}"
        " that this database was served with: clients that pinned the old key cannot reach"
        " this relay"
    ) in caplog.messages
    assert meta(database_url)["server_public_key"] == PUBLIC_2021


def test_a_failed_database_leaves_no_key_files(sqlite_url: str, tmp_path: Path) -> None:
    database = Path(sqlite_url.removeprefix("sqlite:///"))
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        schema_meta.create(conn)
        conn.execute(schema_meta.insert().values(key="schema_version", value="999"))
    engine.dispose()
    message = refusal(tmp_path / "data", sqlite_url)
    assert "the database was written by a newer pn-relay" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [database.name]


def test_a_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("oops")
    assert refusal(not_a_dir, "") == f"DATA_DIR {not_a_dir}: Not a directory"
    assert not_a_dir.read_text() == "oops"
