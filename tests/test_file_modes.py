"""Data at rest is the owner's only: DATA_DIR 0700, key files and the SQLite files 0600."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.engine import make_engine
from tests.support import RunningRelay, random_apns_token, random_session_id, relay_settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The common 022: files would be world-readable unless the relay says otherwise."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_first_start_makes_everything_owner_only(tmp_path: Path, usual_umask: None) -> None:
    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir / 'pn-relay.sqlite3'}"
    running = RunningRelay(relay_settings(data_dir, url))
    try:
        status, body = running.call_v2(
            "register", {"token": random_apns_token(), "pubKey": random_session_id()}
        )
        assert (status, body["code"]) == (200, 1)
        # While it runs, SQLite's write-ahead log and shared-memory index exist beside it.
        files = ["server_key.hex", "identity_secret.hex", "token_secret.hex", "pn-relay.sqlite3"]
        files += ["pn-relay.sqlite3-wal", "pn-relay.sqlite3-shm"]
        assert {name: oct(mode(data_dir / name)) for name in files} == {
            name: oct(0o600) for name in files
        }
        assert mode(data_dir) == 0o700
    finally:
        running.stop()


def open_and_close(database: Path) -> None:
    """Connect to a SQLite file as the relay does (storage/engine.py), then let it go."""
    engine = make_engine(f"sqlite:///{database}", pool_size=1)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def test_files_left_readable_by_an_older_version_are_tightened(
    tmp_path: Path, usual_umask: None
) -> None:
    database = tmp_path / "old.sqlite3"
    with sqlite3.connect(database) as db:  # journal files kept: as after a crash
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
    for name in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        name.touch()
        name.chmod(0o644)
    open_and_close(database)
    assert mode(database) == 0o600
    for suffix in ("-wal", "-shm"):
        path = Path(f"{database}{suffix}")
        if path.exists():  # SQLite may have removed them on the last close
            assert mode(path) == 0o600


def test_a_directory_that_exists_is_left_as_it_is(tmp_path: Path, usual_umask: None) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    open_and_close(shared / "relay.sqlite3")
    assert mode(shared) == 0o755
    assert mode(shared / "relay.sqlite3") == 0o600
