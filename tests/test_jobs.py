"""jobs.py: every periodic job of a relay process under one scheduler; the housekeeping jobs
(clock heartbeat, purges) fire at start, write through the writer, and write a last heartbeat
on stop. Real SQLite, a real writer; nothing is timed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, select

from jobs import (
    HEARTBEAT_JOB_ID,
    PURGE_JOB_ID,
    RETENTION_JOB_ID,
    ROLLUP_JOB_ID,
    Housekeeping,
    Intervals,
    RelayJobs,
)
from settings import Settings
from stats.counters import Counters
from stats.rollup import MinuteRollup
from storage.clock import HEARTBEAT_PREFIX, HeartbeatWriter, RelayClock
from storage.engine import create_schema, make_engine
from storage.protect import IdentifierProtector
from storage.schema import schema_meta
from storage.store import RelayStore
from storage.writer import BatchWriter
from tests import loops
from tests.support import RunningRelay


@dataclass
class Housekept:
    """A real SQLite database, its writer, and the housekeeping jobs writing through it."""

    engine: Engine
    writer: BatchWriter
    housekeeping: Housekeeping


@pytest.fixture
def housekept(sqlite_url: str) -> Iterator[Housekept]:
    engine = make_engine(sqlite_url, pool_size=2)
    create_schema(engine)
    writer = BatchWriter(engine)
    clock = RelayClock(1_700_000_000_000)
    store = RelayStore(engine, writer, IdentifierProtector(b"i" * 32, b"t" * 32), clock.now_ms)
    yield Housekept(
        engine, writer, Housekeeping(writer, store, HeartbeatWriter(engine, clock, "boot-1"))
    )
    writer.close()
    engine.dispose()


def heartbeats(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(schema_meta.c.value).where(schema_meta.c.key.startswith(HEARTBEAT_PREFIX))
        )
        return [str(value) for (value,) in rows]


def test_a_relay_runs_all_its_periodic_jobs_under_one_scheduler(
    start_relay: Callable[..., RunningRelay], sqlite_url: str
) -> None:
    running = start_relay(sqlite_url)
    scheduler = running.relay.jobs.scheduler
    assert scheduler is not None and scheduler.running
    ids = {job.id for job in scheduler.get_jobs()}
    assert ids == {ROLLUP_JOB_ID, RETENTION_JOB_ID, HEARTBEAT_JOB_ID, PURGE_JOB_ID}


def test_without_retention_the_table_has_no_retention_job(
    start_relay: Callable[..., RunningRelay], sqlite_url: str
) -> None:
    running = start_relay(sqlite_url, STATS_RETENTION_DAYS=0)
    assert RETENTION_JOB_ID not in {job.id for job in running.relay.jobs.table()}


def test_the_purge_interval_follows_the_dedup_window_within_a_minute_and_an_hour() -> None:
    assert Intervals.from_settings(Settings(DEDUP_WINDOW=600)).purge_s == 600
    assert Intervals.from_settings(Settings(DEDUP_WINDOW=5)).purge_s == 60
    assert Intervals.from_settings(Settings(DEDUP_WINDOW=86_400)).purge_s == 3600


def test_housekeeping_beats_at_start_and_once_more_on_stop(housekept: Housekept) -> None:
    engine = housekept.engine
    rollup = MinuteRollup(engine, Counters(), lambda: 1_700_000_000_000)
    jobs = RelayJobs(rollup, None, housekept.housekeeping)
    seen: list[list[str]] = []

    async def run() -> None:
        jobs.start()
        while not heartbeats(engine):  # the at-start firing, through the writer
            await asyncio.sleep(0.01)
        seen.append(heartbeats(engine))
        await jobs.stop()
        seen.append(heartbeats(engine))

    loops.run(run())
    first, last = seen
    assert len(first) == len(last) == 1
    assert int(last[0].split(":")[0]) >= int(first[0].split(":")[0])
    assert jobs.scheduler is None


def test_a_housekeeping_write_that_fails_is_logged_not_raised(
    housekept: Housekept, caplog: pytest.LogCaptureFixture
) -> None:
    housekept.writer.close()  # every write now fails with WriterClosedError, a StorageError
    with caplog.at_level(logging.WARNING, logger="jobs"):
        loops.run(housekept.housekeeping.beat())
        loops.run(housekept.housekeeping.purge())
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "housekeeping write failed",
        "housekeeping write failed",
    ]
    assert heartbeats(housekept.engine) == []
