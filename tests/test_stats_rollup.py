"""The per-minute roll-up: which minute, additive upserts, restore on failure, the scheduler
job, shutdown flush and retention in one process only. Clocks are driven, never slept on."""

from __future__ import annotations

import asyncio
import datetime
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, func, insert, inspect, select, text

from jobs import RETENTION_JOB_ID, ROLLUP_JOB_ID, RelayJobs
from stats.counters import COUNTER_NAMES, Counters
from stats.rollup import DAY_MS, MinuteRollup, RetentionJob, claim_lease, minute_floor
from stats.schema import create_stats_schema, job_leases, statistics_minutes
from storage.engine import create_schema, make_engine
from tests import loops
from tests.support import DrivenClock, ms


def rows(engine: Engine) -> dict[int, dict[str, int]]:
    with engine.connect() as conn:
        found = conn.execute(select(statistics_minutes).order_by("minute_start")).mappings()
        return {row["minute_start"]: {name: row[name] for name in COUNTER_NAMES} for row in found}


def test_minute_floor_and_the_minute_a_flush_writes_to(sqlite_engine: Engine) -> None:
    clock = DrivenClock("2021-05-04T03:41:00.250")
    rollup = MinuteRollup(sqlite_engine, Counters(), clock)
    assert minute_floor(ms("2021-05-04T03:40:59.999")) == ms("2021-05-04T03:40:00")
    # A firing at the top of 03:41 writes the minute that has just ended, 03:40.
    assert rollup.ended_minute() == ms("2021-05-04T03:40:00")
    assert rollup.current_minute() == ms("2021-05-04T03:41:00")
    clock.set("2021-05-04T03:41:45")  # a late firing still writes the minute before
    assert rollup.ended_minute() == ms("2021-05-04T03:40:00")


def test_flush_writes_zero_rows_and_fills_gaps(sqlite_engine: Engine) -> None:
    clock = DrivenClock("2021-05-04T03:40:20")
    counters = Counters()
    rollup = MinuteRollup(sqlite_engine, counters, clock)

    counters.incr("ios_pn_number", 3)
    counters.incr("total_message_number", 5)
    clock.set("2021-05-04T03:41:00")
    rollup.flush(rollup.ended_minute())
    clock.set("2021-05-04T03:42:00")
    rollup.flush(rollup.ended_minute())  # nothing counted: a row of zeros all the same
    clock.set("2021-05-04T03:46:00")  # the loop stalled for three firings
    counters.incr("android_pn_number")
    rollup.flush(rollup.ended_minute())

    found = rows(sqlite_engine)
    assert list(found) == [ms(f"2021-05-04T03:{m}:00") for m in range(40, 46)]
    assert found[ms("2021-05-04T03:40:00")]["ios_pn_number"] == 3
    assert found[ms("2021-05-04T03:40:00")]["total_message_number"] == 5
    assert set(found[ms("2021-05-04T03:41:00")].values()) == {0}
    assert found[ms("2021-05-04T03:45:00")]["android_pn_number"] == 1
    assert sum(sum(r.values()) for r in found.values()) == 9

    with pytest.raises(ValueError, match="multiple of 60,000"):
        rollup.flush(ms("2021-05-04T03:46:30"))


def test_two_rollups_on_one_database_sum_exactly(database_url: str, engine: Engine) -> None:
    """Two 'processes' (own engine, own counters) hammer the same minutes concurrently."""
    other = make_engine(database_url, pool_size=4)
    clock = DrivenClock("2021-05-04T03:40:00")
    a_counters, b_counters = Counters(), Counters()
    a = MinuteRollup(engine, a_counters, clock)
    b = MinuteRollup(other, b_counters, clock)
    minutes = [ms("2021-05-04T03:40:00"), ms("2021-05-04T03:41:00")]
    rounds = 25
    barrier = threading.Barrier(2)

    def work(rollup: MinuteRollup, counters: Counters, amount: int) -> None:
        barrier.wait()
        for i in range(rounds):
            for name in COUNTER_NAMES:
                counters.incr(name, amount)
            rollup.flush(minutes[i % 2])

    try:
        threads = [
            threading.Thread(target=work, args=(a, a_counters, 1)),
            threading.Thread(target=work, args=(b, b_counters, 2)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert a.failures == b.failures == 0
        found = rows(engine)
        for name in COUNTER_NAMES:
            assert found[minutes[0]][name] == 13 * 3  # rounds 0, 2, ... 24 from both
            assert found[minutes[1]][name] == 12 * 3
    finally:
        other.dispose()


def test_a_failed_write_restores_the_counts(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bare.sqlite3'}", pool_size=2)
    try:
        clock = DrivenClock("2021-05-04T03:40:30")
        counters = Counters()
        rollup = MinuteRollup(engine, counters, clock)
        counters.incr("ios_pn_number", 7)
        clock.set("2021-05-04T03:41:00")
        rollup.flush(rollup.ended_minute())  # no table yet: the write fails
        assert rollup.failures == 1
        assert counters.swap()["ios_pn_number"] == 7
        counters.restore({"ios_pn_number": 7})

        create_schema(engine)
        clock.set("2021-05-04T03:42:00")
        rollup.flush(rollup.ended_minute())
        found = rows(engine)
        assert sum(r["ios_pn_number"] for r in found.values()) == 7
        assert found[ms("2021-05-04T03:41:00")]["ios_pn_number"] == 7
        assert ms("2021-05-04T03:40:00") in found  # the first minute, filled with zeros
    finally:
        engine.dispose()


def test_tick_swaps_on_the_loop_and_writes_the_ended_minute(sqlite_engine: Engine) -> None:
    clock = DrivenClock("2021-05-04T03:40:30")
    counters = Counters()
    executor = ThreadPoolExecutor(1, thread_name_prefix="stats-test")
    rollup = MinuteRollup(sqlite_engine, counters, clock, executor=executor)

    async def fire() -> None:
        counters.incr("total_message_number", 4)
        clock.set("2021-05-04T03:41:00.002")
        await rollup.tick()

    loops.run(fire())
    executor.shutdown()
    assert rows(sqlite_engine) == {
        ms("2021-05-04T03:40:00"): {
            n: 4 if n == "total_message_number" else 0 for n in COUNTER_NAMES
        }
    }


def test_scheduler_jobs_are_configured_as_documented(sqlite_engine: Engine) -> None:
    clock = DrivenClock("2021-05-04T03:40:30")
    rollup = MinuteRollup(sqlite_engine, Counters(), clock)
    scheduler = RelayJobs(rollup, RetentionJob(sqlite_engine, clock)).build_scheduler()
    job = scheduler.get_job(ROLLUP_JOB_ID)
    assert isinstance(job.trigger, CronTrigger)
    assert str(job.trigger) == "cron[second='0']"
    assert job.trigger.timezone == datetime.UTC
    assert job.misfire_grace_time >= 30
    assert job.coalesce is True
    retention = scheduler.get_job(RETENTION_JOB_ID)
    assert retention.coalesce is True
    assert retention.trigger.timezone == datetime.UTC


def test_the_scheduler_fires_the_job_and_stop_flushes_the_last_minute(
    engine: Engine,
) -> None:
    clock = DrivenClock("2021-05-04T03:40:10")
    counters = Counters()
    rollup = MinuteRollup(engine, counters, clock)
    jobs = RelayJobs(rollup, triggers={ROLLUP_JOB_ID: IntervalTrigger(seconds=0.05)})

    async def run() -> None:
        jobs.start()
        counters.incr("ios_pn_number", 2)
        clock.set("2021-05-04T03:41:00")
        for _ in range(200):  # the job fires every 50 ms; wait for its write
            await asyncio.sleep(0.02)
            if rows(engine).get(ms("2021-05-04T03:40:00"), {}).get("ios_pn_number") == 2:
                break
        counters.incr("android_pn_number", 3)
        clock.set("2021-05-04T03:41:40")
        await jobs.stop()

    loops.run(run())
    found = rows(engine)
    assert found[ms("2021-05-04T03:40:00")]["ios_pn_number"] == 2
    # A firing may have taken the android counts before stop() did; none are lost, and
    # stop() wrote the row of the minute it ran in.
    assert sum(r["android_pn_number"] for r in found.values()) == 3
    assert list(found) == [ms("2021-05-04T03:40:00"), ms("2021-05-04T03:41:00")]
    assert jobs.scheduler is None


def test_flush_on_shutdown_writes_the_partial_minute(sqlite_engine: Engine) -> None:
    clock = DrivenClock("2021-05-04T03:40:10")
    counters = Counters()
    rollup = MinuteRollup(sqlite_engine, counters, clock)
    counters.incr("tokens_pruned", 2)
    clock.set("2021-05-04T03:42:30")
    rollup.flush_on_shutdown()
    found = rows(sqlite_engine)
    assert list(found) == [ms(f"2021-05-04T03:{m}:00") for m in (40, 41, 42)]
    assert found[ms("2021-05-04T03:42:00")]["tokens_pruned"] == 2


def test_retention_runs_in_one_process_only(database_url: str, engine: Engine) -> None:
    clock = DrivenClock("2022-06-10T03:17:00")
    now_minute = minute_floor(clock())
    with engine.begin() as conn:
        conn.execute(
            insert(statistics_minutes),
            [
                {"minute_start": now_minute - days * DAY_MS, "total_message_number": days}
                for days in (1, 399, 400, 401, 500)
            ],
        )
    other = make_engine(database_url, pool_size=2)
    jobs = [
        RetentionJob(engine, clock, 400, holder="host-a:1"),
        RetentionJob(other, clock, 400, holder="host-b:2"),
        RetentionJob(engine, clock, 400, holder="host-c:3"),
    ]
    results: list[int | None] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = jobs[i].run()

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results, key=lambda r: r is not None) == [None, None, 2]
        kept = {(now_minute - m) // DAY_MS for m in rows(engine)}
        assert kept == {1, 399, 400}
        with engine.connect() as conn:
            holder = conn.execute(select(job_leases.c.holder)).scalar_one()
        assert holder == ["host-a:1", "host-b:2", "host-c:3"][results.index(2)]

        # Still leased an hour later; the next day someone runs it again.
        clock.set("2022-06-10T04:17:00")
        assert jobs[0].run() is None
        clock.set("2022-06-11T03:17:00")
        assert jobs[1].run() == 1  # the 400-day-old row has aged out
        assert jobs[0].run() is None
    finally:
        other.dispose()


def test_claim_lease_is_a_compare_and_set(sqlite_engine: Engine) -> None:
    with sqlite_engine.begin() as conn:
        assert claim_lease(conn, "job", "a", now_ms=1000, lease_ms=500)
        assert not claim_lease(conn, "job", "b", now_ms=1499, lease_ms=500)
        assert claim_lease(conn, "job", "b", now_ms=1500, lease_ms=500)
        assert claim_lease(conn, "other-job", "a", now_ms=1500, lease_ms=500)


def test_a_failed_retention_releases_the_lease(sqlite_engine: Engine) -> None:
    clock = DrivenClock("2022-06-10T03:17:00")
    with sqlite_engine.begin() as conn:
        conn.execute(text("DROP TABLE statistics_minutes"))
    job = RetentionJob(sqlite_engine, clock)
    loops.run(job.tick())  # logged, not raised
    create_stats_schema(sqlite_engine)
    assert job.run() == 0  # the failed run's claim rolled back with it


def test_retention_days_must_be_positive(sqlite_engine: Engine) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetentionJob(sqlite_engine, DrivenClock("2022-01-01T00:00:00"), 0)


def test_create_stats_schema_adds_new_counter_columns(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url, pool_size=2)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE TABLE statistics_minutes (minute_start INTEGER PRIMARY KEY,"
                    " total_message_number BIGINT NOT NULL DEFAULT 0)"
                )
            )
            conn.execute(text("INSERT INTO statistics_minutes VALUES (60000, 9)"))
        create_stats_schema(engine)
        columns = {c["name"] for c in inspect(engine).get_columns("statistics_minutes")}
        assert set(COUNTER_NAMES) <= columns
        with engine.connect() as conn:
            total = conn.execute(select(func.sum(statistics_minutes.c.ios_pn_number))).scalar()
        assert total == 0
        rollup = MinuteRollup(engine, Counters(), DrivenClock("1970-01-01T00:02:00"))
        rollup.flush(60000)
        assert rows(engine)[60000]["total_message_number"] == 9
    finally:
        engine.dispose()


def range_query_plan(engine: Engine) -> str:
    """SQLite's plan for the statistics range query (also printed by bench/stats_query.py)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT minute_start, ios_pn_number"
                " FROM statistics_minutes WHERE minute_start >= :a AND minute_start <= :b"
                " ORDER BY minute_start"
            ),
            {"a": 0, "b": 1},
        )
        return " ".join(str(row[-1]) for row in rows)


def test_range_queries_use_the_primary_key(sqlite_url: str) -> None:
    # What keeps a query over a year of minute rows fast (figures: bench/stats_query.py).
    engine = make_engine(sqlite_url, pool_size=2)
    try:
        create_schema(engine)
        plan = range_query_plan(engine)
        assert "PRIMARY KEY" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        engine.dispose()
