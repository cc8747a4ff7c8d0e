"""GET /stats (issue 11): the statistics as charts, behind the statistics credentials.

Known rows go into the statistics table of a live relay; the page is read over a real socket
(on SQLite and PostgreSQL) and rendered by headless Chromium, whose DOM must show the totals
and the five charts, and whose screenshot must show the series' colours. The screenshot is
kept under the test's tmp path (its path printed)."""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, text

from stats.charts import Series, nice_ceiling, step_chart
from stats.counters import COUNTER_NAMES
from stats.dashboard import (
    CHARTS,
    COUNTERS,
    QUEUE_COLOUR,
    RANGES,
    Window,
    bucket_query,
)
from stats.rollup import MINUTE_MS, minute_floor
from stats.schema import QUEUE_DEPTH, statistics_minutes
from storage.engine import create_schema, make_engine
from tests.http_calls import Received, request
from tests.png_reader import read_png
from tests.support import RunningRelay, ms

USER, PASSWORD = "stats-reader", "a dashboard password"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
CREDENTIALS = {"STATS_USERNAME": USER, "STATS_PASSWORD": PASSWORD}


def known_rows(now_ms: int) -> list[tuple[int, dict[str, Any]]]:
    """(minutes before the current one, row): every range holds a different subset, and none
    lies within 10 minutes of a range's edge (the page is read a moment after they are made)."""
    now_minute = minute_floor(now_ms)
    found: list[tuple[int, dict[str, Any]]] = []

    def add(minutes_ago: int, **values: int | None) -> None:
        row: dict[str, int | None] = {"minute_start": now_minute - minutes_ago * MINUTE_MS}
        row.update(dict.fromkeys(COUNTER_NAMES, 0))
        row[QUEUE_DEPTH] = None
        row.update(values)
        found.append((minutes_ago, row))

    for m in range(10, 31):  # the last hour: 21 minutes of traffic
        add(
            m,
            total_message_number=7,
            ios_pn_number=3,
            android_pn_number=4,
            ios_pn_failed=1 if m % 5 == 0 else 0,
            tokens_pruned=1 if m == 20 else 0,
            queue_depth=m,
        )
    add(5 * 60, total_message_number=100, ios_pn_number=40, android_pn_number=60,
        android_pn_failed=2, queue_depth=55)  # fmt: skip
    add(3 * 1440, total_message_number=1000, ios_pn_number=500, android_pn_number=500,
        tokens_pruned=3)  # fmt: skip
    add(20 * 1440 + 7, total_message_number=10_000, ios_pn_number=4000,
        android_pn_number=6000, ios_pn_failed=17, queue_depth=99)  # fmt: skip
    add(40 * 1440, total_message_number=123_456, ios_pn_number=1)  # in no range
    return found


def expected_totals(rows: list[tuple[int, dict[str, Any]]], range_name: str) -> dict[str, str]:
    """What the page must show for a range: thousands separated, as an operator reads them."""
    inside = [row for ago, row in rows if ago < RANGES[range_name].minutes]
    totals = {name: f"{sum(row[name] for row in inside):,}" for name in COUNTERS}
    samples = [row[QUEUE_DEPTH] for row in inside if row[QUEUE_DEPTH] is not None]
    totals["queue_depth_peak"] = f"{max(samples):,}" if samples else "not sampled"
    return totals


def shown_totals(page: str) -> dict[str, str]:
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'<td id="total-(\w+)">([^<]*)</td>', page)
    }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def insert_rows(engine: Engine, rows: list[tuple[int, dict[str, Any]]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(statistics_minutes), [row for _, row in rows])


def get(relay: RunningRelay, path: str, headers: dict[str, str] | None = None) -> Received:
    return request(relay, "GET", path, AUTH if headers is None else headers)


@pytest.fixture
def dashboard_relay(database_url: str, start_relay: Any) -> Iterator[RunningRelay]:
    relay: RunningRelay = start_relay(database_url, **CREDENTIALS)
    yield relay


# -- over HTTP, both backends ------------------------------------------------------------------


def test_every_range_shows_the_totals_of_its_rows_and_five_charts(
    dashboard_relay: RunningRelay,
) -> None:
    relay = dashboard_relay
    rows = known_rows(_now_ms())
    insert_rows(relay.relay.engine, rows)
    for name in RANGES:
        answer = get(relay, f"/stats?range={name}")
        assert answer.status == 200, answer.body
        assert answer.headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["cache-control"] == "no-store"
        page = answer.body.decode()
        assert shown_totals(page) == expected_totals(rows, name), name
        for chart_id, _, series in CHARTS:
            assert f'<svg id="chart-{chart_id}" class="chart"' in page
            for key in series:
                if key == QUEUE_DEPTH and expected_totals(rows, name)["queue_depth_peak"] == (
                    "not sampled"
                ):
                    continue
                assert f'class="series series-{key}"' in page, (name, key)
        assert f'<a href="?range={name}" aria-current="page">{name}</a>' in page
        # Nothing from elsewhere: no script, no external reference.
        assert "<script" not in page and "http://" not in page.replace(
            'xmlns="http://www.w3.org/2000/svg"', ""
        )
        assert "https://" not in page
    assert get(relay, "/stats").body == get(relay, "/stats?range=day").body  # the default


def test_a_month_is_drawn_per_hour_and_a_week_per_ten_minutes(
    dashboard_relay: RunningRelay,
) -> None:
    relay = dashboard_relay
    now = _now_ms()
    first = minute_floor(now) - 40 * 1440 * MINUTE_MS
    # A row for every minute of the last 40 days up to 3 minutes ago: 57,597 rows.
    rows = [
        {"minute_start": first + i * MINUTE_MS, **dict.fromkeys(COUNTER_NAMES, 1), QUEUE_DEPTH: i}
        for i in range(40 * 1440 - 2)
    ]
    with relay.relay.engine.begin() as conn:
        conn.execute(insert(statistics_minutes), rows)
    for name, most_steps in (("month", 30 * 24 + 1), ("week", 7 * 144 + 1)):
        page = get(relay, f"/stats?range={name}").body.decode()
        (path,) = re.findall(r'class="series series-total_message_number" d="([^"]+)"', page)
        steps = path.count("H")
        assert most_steps - 2 <= steps <= most_steps, (name, steps)
        # Each bucket is the sum of its minutes: the whole range's total is still exact (one
        # minute less if the clock entered a new minute since the rows were written).
        in_range = RANGES[name].minutes - 3
        assert shown_totals(page)["total_message_number"] in (f"{in_range:,}", f"{in_range - 1:,}")


def test_credentials_and_a_bad_range_are_answered_plainly(
    dashboard_relay: RunningRelay,
) -> None:
    relay = dashboard_relay
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"x:y").decode()}):
        refused = get(relay, "/stats", headers)
        assert refused.status == 401
        assert refused.headers["www-authenticate"] == 'Basic realm="pn-relay statistics"'
        assert refused.body == b"authentication required\n"
    bad = get(relay, "/stats?range=year")
    assert (bad.status, bad.body) == (400, b"range must be one of hour, day, week, month\n")


def test_an_empty_range_says_so(dashboard_relay: RunningRelay) -> None:
    page = get(dashboard_relay, "/stats?range=hour").body.decode()
    totals = shown_totals(page)
    assert totals["total_message_number"] == "0"
    # The relay's own minute roll-up may have written a row (zeros, a queue sample of 0).
    assert totals["queue_depth_peak"] in ("not sampled", "0")
    assert page.count("no data in this range") >= 4


def test_the_queries_scan_the_primary_key_range(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url, pool_size=1)
    try:
        create_schema(engine)
        for name in RANGES:
            statement = bucket_query(Window.ending_now(RANGES[name], ms("2026-01-31T12:00:00")))
            compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
            with engine.connect() as conn:
                plan = " ".join(
                    str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}"))
                )
            assert "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan, (name, plan)
    finally:
        engine.dispose()


# -- the charts alone ------------------------------------------------------------------------


def test_step_chart_draws_gaps_where_there_is_no_row_or_no_sample() -> None:
    points: list[tuple[int, int | None]] = [
        (0, 1), (MINUTE_MS, 2), (3 * MINUTE_MS, 2), (4 * MINUTE_MS, None), (5 * MINUTE_MS, 4)
    ]  # fmt: skip
    svg = step_chart(
        "chart-x", "X & Y", [Series("k", "K <1>", "#123456", points)],
        start_ms=0, end_ms=6 * MINUTE_MS, step_ms=MINUTE_MS,
    )  # fmt: skip
    (path,) = re.findall(r' d="([^"]+)"', svg)
    assert path.count("M") == 3  # minutes 0-1 joined; 3 alone (minute 2 has no row); 5 alone
    assert path.count("V") == 1
    assert "<title>K &lt;1&gt;</title>" in svg and "X &amp; Y" in svg
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 11, 250, 999)] == [1, 1, 4, 8, 20, 400, 1000]
    empty = step_chart("chart-e", "E", [], start_ms=0, end_ms=MINUTE_MS, step_ms=MINUTE_MS)
    assert "no data in this range" in empty


# -- in a browser --------------------------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = (
            "the /stats browser test needs Debian's `chromium` package"
            " (apt-get install -y chromium; .ci/run installs it)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason + ", and CI must run it")
        pytest.skip(reason)
    return found


def run_chromium(binary: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--hide-scrollbars",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def colour_counts(screenshot: Path) -> dict[str, int]:
    image = read_png(screenshot)
    assert (image.width, image.height) == (1500, 1300)
    colours = {name: colour for name, (_, colour) in COUNTERS.items()}
    colours[QUEUE_DEPTH] = QUEUE_COLOUR
    counts = {}
    for name, colour in colours.items():
        red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
        counts[name] = image.count((red, green, blue))
    return counts


def test_chromium_renders_the_page_with_its_totals_and_charts(
    sqlite_url: str, start_relay: Any, tmp_path: Path
) -> None:
    binary = chromium()
    relay: RunningRelay = start_relay(sqlite_url, **CREDENTIALS)
    # Chromium sends the credentials in the URL when the relay asks for them (401).
    url = f"http://{USER}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{relay.port}/stats?range=hour"
    profile = tmp_path / "chromium-profile"

    def screenshot(path: Path) -> dict[str, int]:
        shot = run_chromium(binary, profile, f"--screenshot={path}", "--window-size=1500,1300", url)
        assert shot.returncode == 0, shot.stderr[-2000:]
        return colour_counts(path)

    # Before any traffic: the legend's colour swatches, and no lines.
    empty = screenshot(tmp_path / "stats-hour-empty.png")

    rows = known_rows(_now_ms())
    # As a running relay writes them: a row for every minute (zeros when nothing happened),
    # except the last few, which the relay under test may be writing itself.
    taken = {ago for ago, _ in rows}
    now_minute = minute_floor(_now_ms())
    rows += [
        (ago, {"minute_start": now_minute - ago * MINUTE_MS,
               **dict.fromkeys(COUNTER_NAMES, 0), QUEUE_DEPTH: 0})
        for ago in range(3, 60) if ago not in taken
    ]  # fmt: skip
    insert_rows(relay.relay.engine, rows)

    dumped = run_chromium(binary, profile, "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    assert "<h1>pn-relay statistics</h1>" in dom, dom[:2000]
    assert shown_totals(dom) == expected_totals(rows, "hour")
    for chart_id, _, _ in CHARTS:
        assert re.search(rf'<svg id="chart-{chart_id}" [^>]*>.*?<path class="series', dom)

    kept = tmp_path / "stats-hour.png"
    drawn = screenshot(kept)
    print(f"\n/stats screenshot (a test artefact): {kept}")
    # Every series is drawn, in its own colour: lines (with crisp edges, so in that exact
    # colour) where before there were only the swatches.
    for name in drawn:
        assert drawn[name] - empty[name] >= 100, (name, empty[name], drawn[name])
