"""relay.Relay, the composition root: a build that fails part-way closes what it had built,
and the seams (senders, clock) replace the parts the settings would make."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from errors import StartupError
from relay import Relay
from storage.clock import RelayClock
from storage.records import Provider
from tests.support import relay_settings


def open_files_under(prefix: Path) -> list[str]:
    """This process's open file descriptors on `prefix` (the database, its -wal and -shm)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own descriptor)
            continue
        if target.startswith(str(prefix)):
            found.append(target)
    return found


@pytest.mark.parametrize(
    "late_failure",
    [
        {"NOTIFY_PER_MINUTE": 0},  # the handlers' rate limit, after the writer and dispatcher
        {"WEB_THREADS": 0},  # the web thread pool: the last part built
    ],
)
def test_a_failure_late_in_the_build_closes_the_engine_and_the_writer(
    tmp_path: Path, late_failure: dict[str, Any]
) -> None:
    database = tmp_path / "relay.sqlite3"
    settings = relay_settings(tmp_path / "data", f"sqlite:///{database}")
    # Past what the settings' own checks allow: what fails here is the part built from it.
    broken = replace(settings, **late_failure)
    threads_before = set(threading.enumerate())
    with pytest.raises(ValueError):
        Relay(broken)
    assert database.exists()  # the build got as far as the database
    assert open_files_under(database) == []  # the engine was disposed
    left_running = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    assert left_running == []  # the writer's thread (db-writer) ended
    # And the same settings, mended, still build and close cleanly.
    Relay(settings).close()
    assert open_files_under(database) == []


def test_senders_given_replace_the_ones_the_settings_describe(tmp_path: Path) -> None:
    settings = relay_settings(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'relay.sqlite3'}",
        APNS_KEY_FILE=tmp_path / "missing.p8",
        APNS_KEY_ID="KEY",
        APNS_TEAM_ID="TEAM",
    )
    with pytest.raises(StartupError, match="APNS_KEY_FILE"):
        Relay(settings)
    clock = RelayClock(1_700_000_000_000)
    relay = Relay(settings, senders={Provider.APNS: None, Provider.FCM: None}, clock=clock)
    try:
        assert [lane.provider for lane in relay.dispatcher.lanes] == [Provider.APNS, Provider.FCM]
        assert relay.clock is clock
    finally:
        relay.close()
