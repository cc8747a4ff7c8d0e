"""A year of minute rows (525,600) on SQLite: how fast the statistics queries are.

    python bench/stats_query.py

Fills a temporary SQLite database with a year of minute rows, checks that range queries use
the primary key (no sort), and prints the time of a day's, a month's and a year's query.
(The same query-plan check runs in the test suite: tests/test_stats_rollup.py.)
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stats.auth import StatsAuth
from stats.counters import COUNTER_NAMES
from stats.query import (
    DEFAULT_COUNTERS,
    StatsQuery,
    create_stats_blueprint,
    fetch_rows,
    render_answer,
)
from stats.rollup import MINUTE_MS
from storage.engine import create_schema, make_engine
from tests.support import ms
from tests.test_stats_auth import header
from tests.test_stats_rollup import range_query_plan

YEAR_MINUTES = 525_600


def timed(function: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best of `repeat` wall-clock times (seconds), and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def measure(tmp_path: Path) -> None:
    path = tmp_path / "year.sqlite3"
    engine = make_engine(f"sqlite:///{path}", pool_size=2)
    try:
        create_schema(engine)
        first = ms("2021-01-01T00:00:00")
        columns = ", ".join(("minute_start", *COUNTER_NAMES))
        marks = ", ".join("?" * (1 + len(COUNTER_NAMES)))
        started = time.perf_counter()
        with sqlite3.connect(path) as raw:
            raw.executemany(
                f"INSERT INTO statistics_minutes ({columns}) VALUES ({marks})",
                (
                    (first + m * MINUTE_MS, *(m % 97 + i for i in range(len(COUNTER_NAMES))))
                    for m in range(YEAR_MINUTES)
                ),
            )
        raw.close()
        filled = time.perf_counter() - started

        plan = range_query_plan(engine)
        assert "PRIMARY KEY" in plan and "TEMP B-TREE" not in plan, plan

        mid = ms("2021-07-01T00:00:00")
        day = StatsQuery(mid, mid + 1439 * MINUTE_MS, DEFAULT_COUNTERS)
        month = StatsQuery(mid, mid + (31 * 1440 - 1) * MINUTE_MS, DEFAULT_COUNTERS)
        day_s, day_rows = timed(lambda: fetch_rows(engine, day))
        day_json_s, _ = timed(lambda: render_answer(engine, day))
        month_s, month_rows = timed(lambda: fetch_rows(engine, month))
        month_json_s, body = timed(lambda: render_answer(engine, month))
        year_sql = text(
            "SELECT count(*), sum(ios_pn_number) FROM statistics_minutes"
            " WHERE minute_start >= :a AND minute_start <= :b"
        )

        def year_sum() -> Any:
            with engine.connect() as conn:
                return conn.execute(year_sql, {"a": year_first, "b": year_last}).one()

        year_first, year_last = first, first + (YEAR_MINUTES - 1) * MINUTE_MS
        year_s, year_result = timed(year_sum)
        assert (len(day_rows), len(month_rows), year_result[0]) == (1440, 44640, YEAR_MINUTES)
        assert json.loads(body)["data"] == month_rows

        app = Flask("speed")
        app.register_blueprint(
            create_stats_blueprint(engine, StatsAuth("u", "p"), lambda: ms("2021-12-31T00:00:00"))
        )
        client = app.test_client()
        request_body = {"start_date": "2021-7-1", "end_date": "2021-7-31"}

        def request_month() -> int:
            answer = client.post(
                "/get_statistics_data",
                json=request_body,
                headers={"Authorization": header("u", "p")},
            )
            assert answer.status_code == 200
            return len(answer.get_json()["data"])

        request_s, request_rows = timed(request_month)
        assert request_rows == 44640

        print(
            f"\n  filled {YEAR_MINUTES} rows in {filled:.2f} s; plan: {plan}"
            f"\n  1 day    (1,440 rows), as dicts:      {day_s * 1000:7.1f} ms"
            f"\n  1 day    as the JSON answer:          {day_json_s * 1000:7.1f} ms"
            f"\n  31 days  (44,640 rows), as dicts:     {month_s * 1000:7.1f} ms"
            f"\n  31 days  as the JSON answer:          {month_json_s * 1000:7.1f} ms"
            f" ({len(body) / 1e6:.1f} MB)"
            f"\n  31 days  whole request (test client): {request_s * 1000:7.1f} ms"
            f"\n  365 days count+sum (525,600 rows):    {year_s * 1000:7.1f} ms"
        )
    finally:
        engine.dispose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        measure(Path(directory))
