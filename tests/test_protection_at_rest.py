"""A dump of the database alone reveals no Session ID, group key or device token."""

from __future__ import annotations

import base64
from pathlib import Path

from sqlalchemy import text

from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id


def forms(identifier: str) -> list[bytes]:
    """Every way an identifier could sit in a dump: text in either case, raw bytes, base64."""
    out = [identifier.encode(), identifier.upper().encode(), identifier.lower().encode()]
    hex_part = identifier[2:] if identifier.startswith("05") else identifier
    try:
        raw = bytes.fromhex(hex_part)
    except ValueError:
        raw = identifier.encode()
    out += [raw, base64.b64encode(raw), base64.b64encode(identifier.encode())]
    return out


def populate(relay: RunningRelay) -> list[str]:
    secrets_seen: list[str] = []
    group = random_session_id()
    secrets_seen.append(group)
    for _ in range(3):
        member = random_session_id()
        apns, fcm = random_apns_token(), random_fcm_token()
        secrets_seen += [member, apns, fcm]
        relay.call_v2("register", {"token": apns, "pubKey": member})
        relay.call_v4("register", {"token": fcm, "pubKey": member, "device": "android"})
        relay.call_v2("subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": member})
        relay.call_v2("notify", {"data": base64.b64encode(b"x" * 50).decode(), "send_to": member})
    relay.call_v2("notify", {"data": base64.b64encode(b"y" * 50).decode(), "send_to": group})
    return secrets_seen


def test_sqlite_file_holds_no_identifier(sqlite_relay: RunningRelay) -> None:
    identifiers = populate(sqlite_relay)
    sqlite_relay.stop_relay_only()
    database = Path(sqlite_relay.settings.database_url.removeprefix("sqlite:///"))
    blob = b"".join(
        path.read_bytes()
        for path in database.parent.iterdir()
        if path.name.startswith(database.name)  # the file, its -wal and -shm
    )
    assert len(blob) > 10_000
    for identifier in identifiers:
        for form in forms(identifier):
            assert form not in blob


def test_every_table_read_as_text_holds_no_identifier(relay: RunningRelay) -> None:
    identifiers = populate(relay)
    engine = relay.relay.engine
    dump = []
    with engine.connect() as conn:
        for table in ("devices", "group_members", "notifications", "deliveries", "notify_dedup"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                for value in row:
                    dump.append(value.hex() if isinstance(value, bytes) else str(value))
                    if isinstance(value, bytes):
                        dump.append(value.decode("latin-1"))
    text_dump = "\n".join(dump)
    assert text_dump.count("\n") > 20
    for identifier in identifiers:
        for form in forms(identifier):
            assert form.decode("latin-1") not in text_dump
            assert form.decode("latin-1").lower() not in text_dump.lower()


def test_secrets_live_in_data_dir_files_with_mode_0600(sqlite_relay: RunningRelay) -> None:
    settings = sqlite_relay.settings
    for path in (settings.key_file, settings.identity_key_file, settings.token_key_file):
        assert path.parent == settings.DATA_DIR
        assert path.stat().st_mode & 0o777 == 0o600
        assert len(path.read_text().strip()) == 64
