"""/healthz tells the truth (issue 11): 503 and the database's own words when it refuses
writes (a read-only file, a write lock held past the probe's bound, a read-only PostgreSQL
transaction), when a provider lane is paused for a configuration error, and when the oldest
queued push is older than HEALTH_MAX_QUEUE_AGE. One log line per change of verdict.

Real parts throughout: a relay on a real socket, its SQLite file made read-only under it (the
kernel refuses the writes, as on a file system remounted read-only), locks taken by a second
real connection, the sandbox APNs refusing our credentials."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.engine import make_url

from stats.healthz import HealthProbe, HealthSettings
from storage.engine import create_schema, make_engine
from storage.schema import deliveries
from storage.write_probe import PROBE_KEY
from tests import loops
from tests.checks import SUCCESS, wait_until
from tests.http_calls import request
from tests.providers import Providers
from tests.support import RunningRelay, random_apns_token, random_session_id

HEALTH_LOGGER = "stats.healthz"


def healthz(relay: RunningRelay) -> tuple[int, str]:
    answer = request(relay, "GET", "/healthz", {})
    return answer.status, answer.body.decode()


def queue_one_push(relay: RunningRelay) -> None:
    """Register an APNs device, then send its Session ID one notify."""
    session_id = random_session_id()
    params = {"token": random_apns_token(), "pubKey": session_id}
    assert relay.call_v2("register", params) == SUCCESS
    assert relay.call_v2("notify", {"data": "aGVsbG8=", "send_to": session_id}) == SUCCESS


def probe_every_request(relay: RunningRelay) -> None:
    """The relay probes a write at most every 5 s; the tests want a fresh probe each time."""
    health = relay.relay.health
    health.settings = HealthSettings(
        max_queue_age_s=health.settings.max_queue_age_s,
        write_probe_interval_s=0.0,
        write_timeout_s=health.settings.write_timeout_s,
        answer_within_s=health.settings.answer_within_s,
    )


def health_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == HEALTH_LOGGER]


def changes(bodies: list[str]) -> int:
    """How many times a sequence of answers changed, counting the first one away from ok."""
    previous = "ok\n"
    changed = 0
    for body in bodies:
        if body != previous:
            changed += 1
        previous = body
    return changed


def sqlite_path(relay: RunningRelay) -> Path:
    database = make_url(relay.settings.database_url).database
    assert database
    return Path(database)


# -- a read-only database file -------------------------------------------------------------


def _immutable(paths: list[Path], on: bool) -> bool:
    flag = "+i" if on else "-i"
    existing = [str(p) for p in paths if p.exists()]
    try:
        done = subprocess.run(["chattr", flag, *existing], capture_output=True, check=False)
    except FileNotFoundError:
        return False
    return done.returncode == 0


class ReadOnlyFiles:
    """Makes a SQLite database (and its WAL) read-only under a running relay, and back.

    The kernel then refuses every write, through descriptors already open too, as it does
    when a file system is remounted read-only: `chattr +i` (root with CAP_LINUX_IMMUTABLE).
    Elsewhere that cannot be done without privileges, and the test says so and skips.
    """

    def __init__(self) -> None:
        self.made: list[Path] = []

    def make(self, database: Path) -> None:
        files = [database, Path(f"{database}-wal")]
        if not _immutable(files, True):
            pytest.skip(
                "making a file read-only under an open SQLite connection needs `chattr +i`"
                " (root with CAP_LINUX_IMMUTABLE), which this environment does not allow"
            )
        self.made.extend(files)
        assert not os.access(database, os.W_OK)

    def undo(self) -> None:
        if self.made:
            assert _immutable(self.made, False)
            self.made = []


@pytest.fixture
def read_only_files() -> Iterator[ReadOnlyFiles]:
    files = ReadOnlyFiles()
    yield files
    files.undo()


def test_a_database_file_turned_read_only_makes_healthz_503_with_the_reason(
    start_relay: Any,
    sqlite_url: str,
    read_only_files: ReadOnlyFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    relay: RunningRelay = start_relay(sqlite_url)
    probe_every_request(relay)
    token, session_id = random_apns_token(), random_session_id()
    assert relay.call_v2("register", {"token": token, "pubKey": session_id}) == SUCCESS
    assert healthz(relay) == (200, "ok\n")

    read_only_files.make(sqlite_path(relay))
    bodies = []
    for _ in range(4):
        status, body = healthz(relay)
        assert status == 503
        assert body.startswith("database refuses writes: "), body
        bodies.append(body)
    # The database's own words: the first probe's connection was open before (its write to
    # the WAL fails: "disk I/O error"); a new connection opens the file read-only.
    assert {b.removeprefix("database refuses writes: ") for b in bodies} <= {
        "disk I/O error\n",
        "attempt to write a readonly database\n",
    }
    # The relay's own writes fail the same way: /healthz says what clients see.
    status, _ = relay.call_v2("register", {"token": random_apns_token(), "pubKey": session_id})
    assert status != 200

    # One log line per change of verdict, not one per probe; it names the database's message.
    unhealthy = [line for line in health_lines(caplog) if "unhealthy" in line]
    assert len(unhealthy) == changes(bodies) < len(bodies)
    assert unhealthy[-1] == "health: unhealthy: " + bodies[-1].strip()
    assert token not in caplog.text and session_id not in caplog.text
    assert "HealthHandler" not in caplog.text  # a 503 by design is not a server error

    read_only_files.undo()
    assert healthz(relay) == (200, "ok\n")
    assert healthz(relay) == (200, "ok\n")
    assert health_lines(caplog).count("health: ok again") == 1
    assert relay.call_v2("register", {"token": random_apns_token(), "pubKey": session_id}) == (
        SUCCESS
    )


# -- a write lock held past the probe's bound ---------------------------------------------


@contextlib.contextmanager
def write_lock_held(relay: RunningRelay) -> Iterator[None]:
    """Another connection (as another program would) holds the lock the probe's write needs."""
    url = make_url(relay.settings.database_url)
    if url.get_backend_name() == "sqlite":
        assert url.database
        other = sqlite3.connect(url.database, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            yield
            other.execute("ROLLBACK")
        finally:
            other.close()
        return
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as holder:
        holder.execute("LOCK TABLE schema_meta IN EXCLUSIVE MODE")
        yield
        holder.rollback()


def start_up_jobs_done(caplog: pytest.LogCaptureFixture) -> None:
    """Wait for the jobs that fire at start (the heartbeat, the purge) to finish: they commit
    through the writer, and a probe that met a lock while the writer committed is "busy, not
    refusing" by design (a purge landing inside the locked probe made this test flaky)."""
    deadline = time.monotonic() + 30
    for job in ("clock heartbeat", "purge expired"):
        while not any(
            f'Job "{job}' in record.getMessage() and "executed successfully" in record.getMessage()
            for record in caplog.records
        ):
            assert time.monotonic() < deadline, f"{job} did not run at start"
            time.sleep(0.01)


def test_a_write_lock_held_past_the_bound_is_a_503_and_released_is_ok(
    database_url: str, start_relay: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    relay: RunningRelay = start_relay(database_url)
    probe_every_request(relay)
    start_up_jobs_done(caplog)
    assert healthz(relay) == (200, "ok\n")
    with write_lock_held(relay):
        # Bounded: the probe gives up after its own timeout (1 s), not the relay's 30 s
        # (which would have been "did not answer within 3 s").
        status, body = healthz(relay)
        assert status == 503
        assert body in (
            "database refuses writes: database is locked\n",
            "database refuses writes: canceling statement due to lock timeout\n",
        )
    assert healthz(relay) == (200, "ok\n")
    assert health_lines(caplog) == ["health: unhealthy: " + body.strip(), "health: ok again"]


def test_a_read_only_postgresql_transaction_is_a_503(postgres_url: str) -> None:
    database_url = postgres_url
    writable = make_engine(database_url, pool_size=1)
    create_schema(writable)
    writable.dispose()
    # A standby or a read-only role looks like this to the relay: every transaction read-only.
    read_only = make_engine(
        database_url.replace("options=", "options=-cdefault_transaction_read_only%3Don%20"),
        pool_size=1,
    )
    probe = HealthProbe(read_only, settings=HealthSettings(write_probe_interval_s=0.0))
    try:
        with read_only.connect() as conn:  # reads work: a SELECT 1 would have said "ok"
            assert conn.execute(text("SELECT 1")).scalar() == 1
            assert conn.execute(text("SHOW default_transaction_read_only")).scalar() == "on"
        assert loops.run(probe.check()) == (
            503,
            "database refuses writes: cannot execute INSERT in a read-only transaction",
        )
    finally:
        probe.close()
        read_only.dispose()


def test_an_unreachable_database_is_named_in_the_answer_and_explained_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.sqlite3'}", pool_size=1)
    probe = HealthProbe(engine, settings=HealthSettings(write_probe_interval_s=0.0))
    try:
        assert loops.run(probe.check()) == (503, "database unreachable")
        assert loops.run(probe.check()) == (503, "database unreachable")
    finally:
        probe.close()
        engine.dispose()
    assert health_lines(caplog) == [
        "health: unhealthy: database unreachable: unable to open database file"
    ]


# -- the probe's cache and its bound --------------------------------------------------------


class SteppedClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_write_probe_runs_at_most_once_per_interval_and_is_shared(
    sqlite_engine: Engine,
) -> None:
    clock = SteppedClock()
    probe = HealthProbe(
        sqlite_engine, settings=HealthSettings(write_probe_interval_s=5.0), monotonic=clock
    )

    async def checks(n: int) -> list[tuple[int, str]]:
        return list(await asyncio.gather(*(probe.check() for _ in range(n))))

    try:
        assert loops.run(checks(8)) == [(200, "ok")] * 8
        assert probe.probes == 1  # eight concurrent requests, one write
        clock.now += 4.9
        loops.run(checks(1))
        assert probe.probes == 1
        clock.now += 0.2
        loops.run(checks(1))
        assert probe.probes == 2
        with sqlite_engine.connect() as conn:
            value = conn.execute(
                text("SELECT value FROM schema_meta WHERE key = :key"), {"key": PROBE_KEY}
            ).scalar()
        assert value is not None and value.isdigit()
    finally:
        probe.close()


def test_a_lock_held_by_our_own_busy_writer_is_not_a_failure(
    sqlite_engine: Engine, sqlite_url: str
) -> None:
    """The probe gave up waiting for the lock; if the relay's writer committed meanwhile, the
    lock was the writer's (busy, writes flowing), and health says ok."""
    database = make_url(sqlite_url).database
    assert database
    commits = [0]

    def writer_commits() -> int:
        commits[0] += 1  # a writer committing between the probe's two readings
        return commits[0]

    settings = HealthSettings(write_probe_interval_s=0.0, write_timeout_s=0.05)
    busy = HealthProbe(sqlite_engine, writer_commits=writer_commits, settings=settings)
    stuck = HealthProbe(sqlite_engine, writer_commits=lambda: 7, settings=settings)
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        assert loops.run(busy.check()) == (200, "ok")
        assert loops.run(stuck.check()) == (503, "database refuses writes: database is locked")
        holder.execute("ROLLBACK")
        assert loops.run(stuck.check()) == (200, "ok")
    finally:
        holder.close()
        busy.close()
        stuck.close()


# -- a provider lane paused, the queue too old -----------------------------------------------


def test_a_lane_paused_for_a_configuration_error_is_a_503(
    start_relay: Any, sqlite_url: str, providers: Providers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = {**providers.settings, "APNS_TEAM_ID": "WRONGTEAM1"}  # APNs: InvalidProviderToken
    relay: RunningRelay = start_relay(sqlite_url, dispatch=True, **settings)
    assert healthz(relay) == (200, "ok\n")
    queue_one_push(relay)
    (apns,) = [lane for lane in relay.relay.dispatcher.lanes if lane.name == "APNs"]
    wait_until(lambda: apns.paused)
    # The lane stays paused for 30 s (config_pause_s): ample time for the next request.
    assert healthz(relay) == (
        503,
        "APNs pushes paused: the provider refused our configuration"
        " (the log says which setting to check)\n",
    )


def test_a_queued_push_older_than_the_limit_is_a_503(database_url: str, start_relay: Any) -> None:
    relay: RunningRelay = start_relay(database_url, HEALTH_MAX_QUEUE_AGE=600)
    probe_every_request(relay)
    queue_one_push(relay)  # the dispatcher is not started: the push stays queued
    assert healthz(relay) == (200, "ok\n")
    with relay.relay.engine.begin() as conn:  # as if it had waited an hour
        conn.execute(update(deliveries).values(created_at=deliveries.c.created_at - 3_600_000))
    assert healthz(relay) == (
        503,
        "oldest queued push waited more than 600 s (HEALTH_MAX_QUEUE_AGE)\n",
    )
    with relay.relay.engine.begin() as conn:
        conn.execute(deliveries.delete())
    assert healthz(relay) == (200, "ok\n")


def test_health_max_queue_age_zero_leaves_the_queue_out(start_relay: Any, sqlite_url: str) -> None:
    relay: RunningRelay = start_relay(sqlite_url, HEALTH_MAX_QUEUE_AGE=0)
    probe_every_request(relay)
    queue_one_push(relay)
    with relay.relay.engine.begin() as conn:
        conn.execute(update(deliveries).values(created_at=deliveries.c.created_at - 86_400_000))
    assert healthz(relay) == (200, "ok\n")
