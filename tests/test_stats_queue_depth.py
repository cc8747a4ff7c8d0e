"""Queue depth in the statistics (schema 3): the migration step that adds the column to a
schema-2 database, the roll-up's per-minute sample (merged by the largest across processes,
NULL where nothing was sampled), and the whole path on a live relay: a queued push, the
minute's roll-up, the row, the /stats page."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select, text, update

from stats.counters import Counters
from stats.rollup import MinuteRollup
from stats.schema import QUEUE_DEPTH, statistics_minutes
from storage.engine import create_schema, make_engine
from storage.migrations import VERSION_KEY
from storage.schema import SCHEMA_VERSION, schema_meta
from tests.checks import SUCCESS
from tests.http_calls import request
from tests.support import DrivenClock, RunningRelay, ms, random_apns_token, random_session_id


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, pool_size=2)
    yield engine
    engine.dispose()


def version(engine: Engine) -> str:
    with engine.connect() as conn:
        found = conn.execute(select(schema_meta.c.value).where(schema_meta.c.key == VERSION_KEY))
        return str(found.scalar_one())


def queue_depths(engine: Engine) -> dict[int, int | None]:
    table = statistics_minutes.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.minute_start, table[QUEUE_DEPTH]).order_by(table.minute_start)
        ).all()
    return {int(minute): depth for minute, depth in rows}


def test_a_schema_2_database_gains_the_column_and_keeps_its_rows(engine: Engine) -> None:
    assert SCHEMA_VERSION == 3
    create_schema(engine)
    # The previous release's layout: statistics_minutes without queue_depth, schema 2.
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE statistics_minutes DROP COLUMN queue_depth")
        conn.execute(update(schema_meta).where(schema_meta.c.key == VERSION_KEY).values(value="2"))
        conn.execute(
            text("INSERT INTO statistics_minutes (minute_start, ios_pn_number) VALUES (60000, 5)")
        )
    assert version(engine) == "2"

    create_schema(engine)
    assert version(engine) == "3"
    (column,) = [
        c for c in inspect(engine).get_columns("statistics_minutes") if c["name"] == QUEUE_DEPTH
    ]
    assert column["nullable"]
    with engine.connect() as conn:
        row = conn.execute(select(statistics_minutes)).mappings().one()
    # Old minutes read as "not sampled", not as an empty queue; their counts are kept.
    assert (row["minute_start"], row["ios_pn_number"], row[QUEUE_DEPTH]) == (60000, 5, None)

    create_schema(engine)  # at the current version: nothing to do, nothing changes
    assert version(engine) == "3"
    assert queue_depths(engine) == {60000: None}


def test_samples_merge_by_the_largest_and_unsampled_minutes_stay_null(
    database_url: str,
) -> None:
    """Two processes sharing the database sample the same queue: keep the largest sample."""
    engines = [make_engine(database_url, pool_size=2) for _ in range(2)]
    try:
        create_schema(engines[0])
        clock = DrivenClock("2021-05-04T03:40:05")

        def broken() -> int:
            raise RuntimeError("queue unreadable")

        first = MinuteRollup(engines[0], Counters(), clock, queue_depth=lambda: 5)
        second = MinuteRollup(engines[1], Counters(), clock, queue_depth=lambda: 9)
        counters = Counters()
        unsampled = MinuteRollup(engines[1], counters, clock, queue_depth=broken)
        clock.set("2021-05-04T03:43:00")
        first.flush(first.ended_minute())  # 03:40 and 03:41 gap-filled, 03:42 sampled
        second.flush(second.ended_minute())
        counters.incr("ios_pn_number", 2)
        unsampled.flush(unsampled.ended_minute())  # NULL sample: keeps 9, still counts
        assert queue_depths(engines[0]) == {
            ms("2021-05-04T03:40:00"): None,
            ms("2021-05-04T03:41:00"): None,
            ms("2021-05-04T03:42:00"): 9,
        }
        with engines[0].connect() as conn:
            ios = conn.execute(select(statistics_minutes.c.ios_pn_number)).scalars().all()
        assert sum(ios) == 2
        clock.set("2021-05-04T03:43:30")
        first.flush_on_shutdown()  # the partial minute gets its own sample
        assert queue_depths(engines[0])[ms("2021-05-04T03:43:00")] == 5
    finally:
        for engine in engines:
            engine.dispose()


def test_a_queued_push_reaches_the_minute_row_and_the_page(
    database_url: str, start_relay: Any
) -> None:
    relay: RunningRelay = start_relay(
        database_url, STATS_USERNAME="ops", STATS_PASSWORD="queue depth"
    )
    session_id = random_session_id()
    assert relay.call_v2("register", {"token": random_apns_token(), "pubKey": session_id}) == (
        SUCCESS
    )
    # The dispatcher is not started: the push stays queued.
    assert relay.call_v2("notify", {"data": "aGVsbG8=", "send_to": session_id}) == SUCCESS
    relay.call(relay.relay.jobs.rollup.tick())  # the minute's scheduled job, run now
    assert 1 in queue_depths(relay.relay.engine).values()

    auth = {"Authorization": "Basic " + base64.b64encode(b"ops:queue depth").decode()}
    page = request(relay, "GET", "/stats?range=hour", auth).body.decode()
    assert re.search(r'<td id="total-queue_depth_peak">1</td>', page)
    assert '<td id="queue-now">1 waiting, oldest ' in page
    assert 'class="series series-queue_depth"' in page
