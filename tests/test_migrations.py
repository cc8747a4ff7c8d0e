"""Upgrading a database written by the first release (schema 1) to the current schema.

tests/fixtures/schema_v1.json holds that release's own DDL and the rows its storage code
wrote (tests/fixtures/README.md says how it was made). Each test rebuilds it on SQLite and on
PostgreSQL, then starts a relay on it with the sandbox providers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from errors import StartupError
from relay import Relay
from storage.engine import create_schema, make_engine
from storage.migrations import upgrade
from storage.schema import SCHEMA_VERSION
from tests.checks import SUCCESS
from tests.providers import Providers
from tests.support import RunningRelay, random_apns_token, random_session_id, relay_settings

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "schema_v1.json").read_text())
# Columns holding times. The fixture's rows are months old; they are moved forward together
# (one offset for all) so the queued pushes are younger than PUSH_MAX_AGE today.
TIME_COLUMNS = {"registered_at", "created_at", "not_before", "expires_at"}
CAROL_DATA = "Q0FST0wtMQ=="  # queued for a device that was deleted before the upgrade


def _value(column: str, value: Any, shift_ms: int) -> Any:
    if isinstance(value, dict):
        return bytes.fromhex(value["hex"])
    if column in TIME_COLUMNS:
        return value + shift_ms
    return value


def _highest_ids() -> dict[str, int]:
    """The highest id the previous release had handed out, per table with a sequence."""
    found = FIXTURE["rows"]

    def top(table: str, column: str) -> int:
        return max((row[column] for row in found[table]), default=0)

    return {
        "devices": max(top("devices", "id"), top("deliveries", "device_id")),
        "notifications": max(top("notifications", "id"), top("deliveries", "notification_id")),
        "deliveries": top("deliveries", "id"),
    }


def build_v1_database(database_url: str) -> None:
    """The previous release's tables and rows, as it left them."""
    newest = max(row["created_at"] for row in FIXTURE["rows"]["notifications"])
    shift_ms = int(time.time() * 1000) - 60_000 - newest
    engine = create_engine(database_url)
    backend = engine.dialect.name
    try:
        with engine.begin() as conn:
            for statement in FIXTURE["ddl"][backend]:
                conn.exec_driver_sql(statement)
            for table, table_rows in FIXTURE["rows"].items():
                for row in table_rows:
                    names = list(row)
                    columns = ", ".join(f'"{name}"' for name in names)
                    marks = ", ".join(f":{name}" for name in names)
                    conn.execute(
                        text(f"INSERT INTO {table} ({columns}) VALUES ({marks})"),
                        {name: _value(name, row[name], shift_ms) for name in names},
                    )
            if backend == "postgresql":
                for table, highest in _highest_ids().items():
                    conn.execute(
                        text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), :n)"),
                        {"n": highest},
                    )
    finally:
        engine.dispose()


def key_files(directory: Path) -> dict[str, Path]:
    """The fixture's identity and token secrets, and a server key (the fixture's release kept
    its own, which clients pin; any key file stands in for it here), as the relay reads them."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "KEY_FILE": directory / "server_key.hex",
        "IDENTITY_KEY_FILE": directory / "identity_secret.hex",
        "TOKEN_KEY_FILE": directory / "token_secret.hex",
    }
    files["KEY_FILE"].write_text("42" * 32 + "\n")
    files["IDENTITY_KEY_FILE"].write_text(FIXTURE["identity_secret"] + "\n")
    files["TOKEN_KEY_FILE"].write_text(FIXTURE["token_secret"] + "\n")
    for path in files.values():
        path.chmod(0o600)
    return files


def rows(relay: RunningRelay, statement: str) -> list[tuple[Any, ...]]:
    with relay.relay.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(statement))]


def snapshot(engine: Engine) -> dict[str, Any]:
    """Every table's rows and the schema's shape (columns, indexes, sequences)."""
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            master = conn.exec_driver_sql(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
            ).all()
            found["schema"] = [tuple(row) for row in master]
            tables = [name for kind, name, _, _ in found["schema"] if kind == "table"]
        else:
            columns = conn.exec_driver_sql(
                "SELECT table_name, column_name, data_type, is_nullable, column_default"
                " FROM information_schema.columns WHERE table_schema = current_schema()"
                " ORDER BY table_name, column_name"
            ).all()
            indexes = conn.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = current_schema() ORDER BY indexname"
            ).all()
            sequences = conn.exec_driver_sql(
                "SELECT sequencename, last_value FROM pg_sequences"
                " WHERE schemaname = current_schema() ORDER BY sequencename"
            ).all()
            found["schema"] = [tuple(row) for row in [*columns, *indexes, *sequences]]
            tables = sorted({row[0] for row in columns})
        for table in tables:
            table_rows = conn.exec_driver_sql(f'SELECT * FROM "{table}"').all()
            found[table] = sorted(tuple(row) for row in table_rows)
    return found


def test_a_schema_1_database_is_upgraded_and_its_queue_delivered(
    database_url: str,
    providers: Providers,
    start_relay: Callable[..., RunningRelay],
    tmp_path: Path,
) -> None:
    build_v1_database(database_url)
    keys = key_files(tmp_path / "keys")
    relay = start_relay(database_url, **keys)  # not dispatching yet: look at the rows first
    protector = relay.relay.protector
    tokens, people = FIXTURE["tokens"], FIXTURE["session_ids"]

    version = rows(relay, "SELECT value FROM schema_meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)]
    registrations = {
        device_id: (protector.open_token(sealed), session_hash, provider, generation)
        for device_id, sealed, session_hash, provider, generation in rows(
            relay,
            "SELECT id, token_sealed, session_hash, provider, generation FROM devices",
        )
    }
    alice, bob = protector.identity(people["alice"]), protector.identity(people["bob"])
    assert registrations == {
        1: (tokens["alice_apns"], alice, 1, 1),
        2: (tokens["alice_fcm"], alice, 2, 1),
        3: (tokens["bob_apns"], bob, 1, 1),
    }
    group = protector.identity(people["group"])
    members = rows(relay, "SELECT group_hash, session_hash FROM group_members")
    assert sorted(members) == sorted([(group, alice), (group, bob)])
    queued = rows(
        relay,
        "SELECT id, notification_id, device_id, device_generation, lease_token"
        " FROM deliveries ORDER BY id",
    )
    # Carol's delivery (device 4, deleted) is gone, and her notification's data with it.
    assert queued == [
        (1, 1, 1, 1, 0),  # (id, notification, device, generation, lease token)
        (2, 1, 2, 1, 0),
        (3, 2, 3, 1, 0),
        (4, 2, 1, 1, 0),
        (5, 2, 2, 1, 0),
    ]
    assert rows(relay, "SELECT id FROM notifications ORDER BY id") == [(1,), (2,)]

    # New ids start above every id the previous release handed out, deleted ones included.
    dave, dave_token, dave_data = random_session_id(), random_apns_token(), "REFWRS0x"
    assert relay.call_v2("register", {"token": dave_token, "pubKey": dave}) == SUCCESS
    assert relay.call_v2("notify", {"data": dave_data, "send_to": dave}) == SUCCESS
    highest = _highest_ids()
    ((dave_device,),) = rows(relay, "SELECT max(id) FROM devices")
    ((dave_notification,),) = rows(relay, "SELECT max(id) FROM notifications")
    ((dave_delivery,),) = rows(relay, "SELECT max(id) FROM deliveries")
    assert dave_device > highest["devices"] == 4
    assert dave_notification > highest["notifications"] == 3
    assert dave_delivery > highest["deliveries"] == 6
    relay.stop_relay_only()

    # Upgrading again changes nothing.
    engine = make_engine(database_url, pool_size=1)
    try:
        before = snapshot(engine)
        with engine.begin() as conn:
            assert upgrade(conn) == (SCHEMA_VERSION, SCHEMA_VERSION)
        create_schema(engine)
        assert snapshot(engine) == before
    finally:
        engine.dispose()

    # The queue left by the previous release goes to exactly its recipients' tokens.
    pushing = start_relay(database_url, dispatch=True, **keys, **providers.settings)
    apns_expected = sorted(
        [
            (tokens["alice_apns"], "QUxJQ0UtMQ=="),
            (tokens["alice_apns"], "R1JPVVAtMQ=="),
            (tokens["bob_apns"], "R1JPVVAtMQ=="),
            (dave_token, dave_data),
        ]
    )
    fcm_expected = sorted(
        [(tokens["alice_fcm"], "QUxJQ0UtMQ=="), (tokens["alice_fcm"], "R1JPVVAtMQ==")]
    )
    providers.apns.pushes.wait_for(len(apns_expected), timeout=20)
    providers.fcm.pushes.wait_for(len(fcm_expected), timeout=20)
    deadline = time.monotonic() + 20
    while rows(pushing, "SELECT count(*) FROM deliveries") != [(0,)]:
        assert time.monotonic() < deadline, "the queue was not delivered"
        time.sleep(0.01)
    apns = sorted(
        (p.token, p.json().get("ENCRYPTED_DATA")) for p in providers.apns.pushes.snapshot()
    )
    fcm = sorted((p.token, p.data.get("ENCRYPTED_DATA")) for p in providers.fcm.pushes.snapshot())
    assert apns == apns_expected
    assert fcm == fcm_expected
    assert all(p.status == 200 for p in providers.apns.pushes.snapshot())
    assert all(p.status == 200 for p in providers.fcm.pushes.snapshot())
    assert rows(pushing, "SELECT count(*) FROM notifications") == [(0,)]


def test_a_database_from_a_newer_release_is_refused_in_one_line(
    database_url: str, start_relay: Callable[..., RunningRelay], tmp_path: Path
) -> None:
    relay = start_relay(database_url)
    relay.stop_relay_only()
    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE schema_meta SET value = '99' WHERE key = 'schema_version'"))
        before = snapshot(engine)
    finally:
        engine.dispose()
    settings = relay_settings(tmp_path / "again", database_url)
    with pytest.raises(StartupError) as refused:
        Relay(settings)
    message = str(refused.value)
    assert message == (
        "the database was written by a newer pn-relay (schema 99);"
        f" this one knows schema {SCHEMA_VERSION}"
    )
    engine = make_engine(database_url, pool_size=1)
    try:
        assert snapshot(engine) == before  # refused without touching anything
    finally:
        engine.dispose()
