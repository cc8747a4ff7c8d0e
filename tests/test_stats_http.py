"""The statistics, metrics and health endpoints over a real socket: a Flask app with the
stats blueprints behind Tornado's HTTPServer + WSGIContainer, spoken to with http.client."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, insert

from stats.auth import WWW_AUTHENTICATE, StatsAuth, hash_password
from stats.counters import COUNTER_NAMES, Counters
from stats.healthz import create_health_blueprint
from stats.metrics import RelayMetrics, create_metrics_blueprint
from stats.query import DEFAULT_COUNTERS, create_stats_blueprint
from stats.rollup import MinuteRollup
from stats.schema import statistics_minutes
from storage.engine import create_schema, make_engine
from storage.records import Provider
from tests.http_calls import Received
from tests.served import Served
from tests.support import DrivenClock, ms

USER, PASSWORD = "stats-reader", "correct horse battery staple"
README_REQUEST = (
    b'{"start_date": "2021-5-4 03:40:00", "end_date": "2021-5-4 06:00:00",'
    b' "ios_pn_number": 1, "android_pn_number": 1, "total_message_number": 1}'
)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


AUTH = basic(USER, PASSWORD)
NOW = "2021-05-04T06:30:10"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def engine(sqlite_engine: Engine) -> Engine:
    """These tests run on SQLite only (conftest's `engine` is on each backend)."""
    return sqlite_engine


@pytest.fixture
def clock() -> DrivenClock:
    return DrivenClock(NOW)


def stats_app(engine: Engine, auth: StatsAuth, clock: DrivenClock) -> Flask:
    app = Flask("stats_test")
    app.register_blueprint(create_stats_blueprint(engine, auth, clock))
    return app


@pytest.fixture(scope="module")
def stats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Rows for every minute of 2021-05-04 03:00-06:59 UTC, counter i = minute-of-day * (i+1).

    One database and server for the module: these tests only read.
    """
    path = tmp_path_factory.mktemp("stats") / "relay.sqlite3"
    engine = make_engine(f"sqlite:///{path}", pool_size=4)
    create_schema(engine)
    first = ms("2021-05-04T03:00:00")
    with engine.begin() as conn:
        conn.execute(
            insert(statistics_minutes),
            [
                {
                    "minute_start": first + m * 60_000,
                    **{name: (180 + m) * (i + 1) for i, name in enumerate(COUNTER_NAMES)},
                }
                for m in range(240)
            ],
        )
    served = Served(stats_app(engine, StatsAuth(USER, PASSWORD), DrivenClock(NOW)))
    yield served
    served.close()
    engine.dispose()


def post(
    served: Served, body: object | bytes | None, headers: Mapping[str, str] = AUTH
) -> Received:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return served.request("POST", "/get_statistics_data", raw, {**JSON, **headers})


def data(answer: Received) -> list[dict[str, Any]]:
    assert answer.status == 200, answer.body
    parsed = answer.json()
    assert parsed["code"] == 0
    return list(parsed["data"])


def bad(answer: Received, fragment: str) -> None:
    assert answer.status == 400, (answer.status, answer.body)
    parsed = answer.json()
    assert parsed["code"] == 1
    assert fragment in parsed["message"], parsed["message"]


# -- the README's request and the shape of the answer ----------------------------------------


def test_the_readme_request_verbatim(stats: Served) -> None:
    answer = stats.request("POST", "/get_statistics_data", README_REQUEST, {**JSON, **AUTH})
    found = data(answer)
    assert len(found) == 141  # 03:40 .. 06:00 inclusive
    assert found[0] == {
        "start_date": "2021-05-04 03:40:00",
        "end_date": "2021-05-04 03:41:00",
        "total_message_number": 220,
        "ios_pn_number": 440,
        "android_pn_number": 660,
    }
    assert found[-1]["start_date"] == "2021-05-04 06:00:00"
    assert found[-1]["end_date"] == "2021-05-04 06:01:00"
    starts = [row["start_date"] for row in found]
    assert starts == sorted(starts)  # oldest first


def test_unknown_fields_are_ignored(stats: Served) -> None:
    body = json.dumps(
        {**json.loads(README_REQUEST), "dashboard": "ops", "ios_pn_numbr": 1}
    ).encode()
    answer = stats.request("POST", "/get_statistics_data", body, {**JSON, **AUTH})
    assert len(data(answer)) == 141


# -- flags ------------------------------------------------------------------------------------

FLAG_VALUES: list[object] = ["absent", 0, 1, False, True]


def test_every_combination_of_the_readme_flags(stats: Served) -> None:
    for values in itertools.product(FLAG_VALUES, repeat=3):
        body: dict[str, object] = {
            "start_date": "2021-05-04 04:00:00",
            "end_date": "2021-5-4 4:01:00",
        }
        expected = {"start_date", "end_date"}
        for name, value in zip(DEFAULT_COUNTERS, values, strict=True):
            if value != "absent":
                body[name] = value
            if value == "absent" or value:
                expected.add(name)
        found = data(post(stats, body))
        assert len(found) == 2, values
        for row in found:
            assert set(row) == expected, values


@pytest.mark.parametrize("name", [n for n in COUNTER_NAMES if n not in DEFAULT_COUNTERS])
def test_other_counters_are_included_on_request(stats: Served, name: str) -> None:
    window = {"start_date": "2021-05-04 04:00:00", "end_date": "2021-05-04 04:00:00"}
    assert name not in data(post(stats, window))[0]
    assert name not in data(post(stats, {**window, name: 0}))[0]
    (row,) = data(post(stats, {**window, name: True}))
    index = COUNTER_NAMES.index(name)
    assert row[name] == 240 * (index + 1)
    all_off = {n: 0 for n in COUNTER_NAMES}
    assert data(post(stats, {**window, **all_off})) == [
        {"start_date": "2021-05-04 04:00:00", "end_date": "2021-05-04 04:01:00"}
    ]


# -- date filters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "first", "last", "count"),
    [
        # neither: the last 24 hours up to the clock (06:30:10), i.e. all rows up to 06:30
        ({}, "03:00:00", "06:30:00", 211),
        # start alone: up to now
        ({"start_date": "2021-05-04 06:00:00"}, "06:00:00", "06:30:00", 31),
        # end alone: the 24 hours up to it
        ({"end_date": "2021-05-04 03:10:00"}, "03:00:00", "03:10:00", 11),
        # both, inclusive at each end; seconds inside a minute select that minute
        (
            {"start_date": "2021-5-4 3:05:30", "end_date": "2021-5-4 3:07:00"},
            "03:05:00",
            "03:07:00",
            3,
        ),
        (
            {"start_date": "2021-05-04 03:05:00", "end_date": "2021-05-04 03:05:00"},
            "03:05:00",
            "03:05:00",
            1,
        ),
        # a date alone: the whole day, for either bound
        ({"start_date": "2021-5-4", "end_date": "2021-5-4"}, "03:00:00", "06:59:00", 240),
        (
            {"start_date": "2021-05-04 06:58:00", "end_date": "2021-05-04"},
            "06:58:00",
            "06:59:00",
            2,
        ),
        (
            {"start_date": "2021-05-04", "end_date": "2021-05-04 03:01:00"},
            "03:00:00",
            "03:01:00",
            2,
        ),
        # null is the same as absent
        ({"start_date": None, "end_date": None}, "03:00:00", "06:30:00", 211),
    ],
)
def test_date_filters(
    stats: Served, body: dict[str, object], first: str, last: str, count: int
) -> None:
    found = data(post(stats, body))
    assert len(found) == count
    assert found[0]["start_date"] == f"2021-05-04 {first}"
    assert found[-1]["start_date"] == f"2021-05-04 {last}"


def test_ranges_without_rows_are_empty(stats: Served) -> None:
    assert data(post(stats, {"start_date": "2021-05-05", "end_date": "2021-05-05"})) == []
    assert data(post(stats, {"start_date": "2030-01-01"})) == []  # in the future
    assert data(post(stats, {"end_date": "2021-05-03 12:00:00"})) == []


def test_a_range_may_cover_31_days_and_no_more(stats: Served) -> None:
    assert len(data(post(stats, {"start_date": "2021-04-04", "end_date": "2021-05-04"}))) == 240
    bad(post(stats, {"start_date": "2021-04-03", "end_date": "2021-05-04"}), "at most 44640")
    bad(post(stats, {"start_date": "2020-01-01"}), "at most 44640")


# -- bodies and bad input --------------------------------------------------------------------


def test_empty_bodies_and_content_types_are_all_defaults(stats: Served) -> None:
    everything = data(post(stats, {}))
    assert len(everything) == 211
    assert data(stats.request("POST", "/get_statistics_data", None, AUTH)) == everything
    assert data(stats.request("POST", "/get_statistics_data", b"", AUTH)) == everything
    assert data(post(stats, b"  \n")) == everything
    as_form = {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}
    assert data(stats.request("POST", "/get_statistics_data", b'{"end_date": null}', as_form)) == (
        everything
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'"2021-5-4"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"1", "must be a JSON object"),
        (b"[" * 100_000, "JSON"),
        ({"start_date": "yesterday"}, "start_date is not a date"),
        ({"start_date": "2021-13-01"}, "start_date is not a date"),
        ({"start_date": "2021-02-30 00:00:00"}, "start_date is not a date"),
        ({"end_date": "2021-05-04T03:40:00"}, "end_date is not a date"),
        ({"end_date": "2021-05-04 03:40"}, "end_date is not a date"),
        ({"end_date": "2021-05-04 24:00:00"}, "end_date is not a date"),
        ({"end_date": "2021-05-04 03:40:00" + " " * 100}, "end_date is not a date"),
        ({"start_date": 1620099600}, "start_date must be a string"),
        ({"start_date": ["2021-05-04"]}, "start_date must be a string"),
        ({"ios_pn_number": 2}, "ios_pn_number must be 0, 1, true or false"),
        ({"ios_pn_number": -1}, "ios_pn_number must be 0, 1, true or false"),
        ({"android_pn_number": "1"}, "android_pn_number must be 0, 1, true or false"),
        ({"android_pn_number": "true"}, "android_pn_number must be 0, 1, true or false"),
        ({"total_message_number": 1.0}, "total_message_number must be 0, 1, true or false"),
        ({"total_message_number": None}, "total_message_number must be 0, 1, true or false"),
        ({"tokens_pruned": {}}, "tokens_pruned must be 0, 1, true or false"),
        (
            {"start_date": "2021-05-04 06:00:00", "end_date": "2021-05-04 05:59:59"},
            "start_date is after end_date",
        ),
        ({"start_date": "2021-05-05", "end_date": "2021-05-04"}, "start_date is after end_date"),
    ],
)
def test_bad_input_is_a_400_saying_what_is_wrong(
    stats: Served, body: object, fragment: str
) -> None:
    bad(post(stats, body), fragment)


def test_the_database_failing_is_a_503_not_a_500(
    tmp_path: Path, clock: DrivenClock, serve: Callable[[Flask], Served]
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'no-tables.sqlite3'}", pool_size=2)
    try:
        served = serve(stats_app(engine, StatsAuth(USER, PASSWORD), clock))
        answer = post(served, {})
        assert answer.status == 503
        assert answer.json() == {
            "code": 1,
            "message": "statistics are unavailable right now; try again",
        }
    finally:
        engine.dispose()


# -- authentication --------------------------------------------------------------------------


def unauthorized(answer: Received) -> None:
    assert answer.status == 401, (answer.status, answer.body)
    assert (
        answer.headers["www-authenticate"]
        == WWW_AUTHENTICATE
        == ('Basic realm="pn-relay statistics"')
    )
    assert answer.json() == {"code": 1, "message": "authentication required"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(USER, "wrong"),
        basic("someone", PASSWORD),
        basic(USER, PASSWORD + " "),
        basic(USER, ""),
        basic("", ""),
        {"Authorization": "Basic"},
        {"Authorization": "Basic !!!not-base64!!!"},
        {"Authorization": "Basic " + base64.b64encode(USER.encode()).decode()},  # no colon
        {"Authorization": "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()},
    ],
)
def test_wrong_or_missing_credentials_are_401(stats: Served, headers: dict[str, str]) -> None:
    unauthorized(post(stats, README_REQUEST, headers))
    unauthorized(post(stats, b"{not json", headers))  # refused before the body is read


def test_the_scheme_is_case_insensitive(stats: Served) -> None:
    token = AUTH["Authorization"].split()[1]
    assert len(data(post(stats, {}, {"Authorization": f"basic {token}"}))) == 211


def test_a_password_hash_works_like_the_password(
    engine: Engine, clock: DrivenClock, serve: Callable[[Flask], Served]
) -> None:
    auth = StatsAuth(USER, password_hash=hash_password(PASSWORD, iterations=1000))
    served = serve(stats_app(engine, auth, clock))
    assert data(post(served, {})) == []
    assert data(post(served, {})) == []  # the remembered credentials
    unauthorized(post(served, {}, basic(USER, "wrong")))
    unauthorized(post(served, {}, basic("other", PASSWORD)))


@pytest.mark.parametrize(
    "auth",
    [
        StatsAuth(None),
        StatsAuth(""),
        StatsAuth(USER),  # a username without a password
        StatsAuth("", PASSWORD),  # a password without a username
    ],
)
def test_unconfigured_auth_refuses_everyone(
    engine: Engine,
    clock: DrivenClock,
    serve: Callable[[Flask], Served],
    auth: StatsAuth,
) -> None:
    served = serve(stats_app(engine, auth, clock))
    for headers in ({}, AUTH, basic("", ""), basic(USER, ""), basic("admin", "admin")):
        unauthorized(post(served, {}, headers))


# -- metrics and health ----------------------------------------------------------------------


def metrics_app(
    engine: Engine,
    metrics: RelayMetrics | None,
    alive: Callable[[], bool] | None,
    auth: StatsAuth | None = None,
) -> Flask:
    app = Flask("metrics_test")
    app.register_blueprint(create_health_blueprint(engine, alive))
    app.register_blueprint(create_metrics_blueprint(metrics, auth=auth))
    return app


def test_metrics_exposes_counters_latency_in_flight_and_queue(
    engine: Engine, serve: Callable[[Flask], Served]
) -> None:
    counters = Counters()
    queue = [(3, 1.5)]
    metrics = RelayMetrics(counters, lambda: queue[0], requests_in_flight=lambda: 2)
    served = serve(metrics_app(engine, metrics, lambda: True))
    counters.incr("ios_pn_number", 5)
    counters.incr("ios_pn_failed")
    counters.incr("android_pn_number", 2)
    counters.incr("total_message_number", 9)
    counters.swap()  # the per-minute roll-up does not reset the lifetime totals
    metrics.observe_push_latency("apns", 0.03)
    metrics.observe_push_latency("fcm", 0.2)
    metrics.push_started("apns")
    with metrics.track_push("fcm"):
        answer = served.request("GET", "/metrics")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    lines = set(answer.body.decode().splitlines())
    for line in [
        'pn_relay_pushes_total{outcome="sent",provider="apns"} 5.0',
        'pn_relay_pushes_total{outcome="failed",provider="apns"} 1.0',
        'pn_relay_pushes_total{outcome="sent",provider="fcm"} 2.0',
        'pn_relay_pushes_total{outcome="failed",provider="fcm"} 0.0',
        'pn_relay_events_total{event="total_message_number"} 9.0',
        'pn_relay_events_total{event="tokens_pruned"} 0.0',
        'pn_relay_push_latency_seconds_count{provider="apns"} 1.0',
        'pn_relay_push_latency_seconds_bucket{le="0.05",provider="apns"} 1.0',
        'pn_relay_push_latency_seconds_bucket{le="0.1",provider="fcm"} 0.0',
        'pn_relay_pushes_in_flight{provider="apns"} 1.0',
        'pn_relay_pushes_in_flight{provider="fcm"} 1.0',
        "pn_relay_queue_depth 3.0",
        "pn_relay_queue_oldest_age_seconds 1.5",
        "pn_relay_requests_in_flight 2.0",
    ]:
        assert line in lines, line
    after = set(served.request("GET", "/metrics").body.decode().splitlines())
    assert 'pn_relay_pushes_in_flight{provider="fcm"} 0.0' in after
    assert 'pn_relay_push_latency_seconds_count{provider="fcm"} 2.0' in after


def test_metrics_registries_are_per_app(engine: Engine) -> None:
    import prometheus_client

    first, second = RelayMetrics(Counters()), RelayMetrics(Counters())
    first.observe_push_latency("apns", 1.0)
    assert b'pn_relay_push_latency_seconds_count{provider="apns"} 1.0' in first.render()
    assert b'pn_relay_push_latency_seconds_count{provider="apns"} 0.0' in second.render()
    assert b"pn_relay" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
    first.observe_push_latency("somebody's-provider", 1.0)  # bounded label values
    assert b'provider="other"' in first.render()


def test_metrics_take_the_dispatchers_provider_enum_and_in_flight_counts() -> None:
    lanes = {Provider.APNS: 4, Provider.FCM: 0}
    metrics = RelayMetrics(Counters(), pushes_in_flight=lanes.items)
    metrics.observe_push_latency(Provider.FCM, 0.5)
    lines = metrics.render().decode().splitlines()
    assert 'pn_relay_push_latency_seconds_count{provider="fcm"} 1.0' in lines
    assert 'pn_relay_pushes_in_flight{provider="apns"} 4.0' in lines
    assert 'pn_relay_pushes_in_flight{provider="fcm"} 0.0' in lines

    def broken() -> list[tuple[Provider, int]]:
        raise RuntimeError("lanes gone")

    rendered = RelayMetrics(Counters(), pushes_in_flight=broken).render()
    assert b"pn_relay_pushes_in_flight" not in rendered
    assert b"pn_relay_pushes_total" in rendered


def test_a_failing_queue_callable_leaves_the_rest_of_the_scrape(
    engine: Engine, serve: Callable[[Flask], Served]
) -> None:
    def broken() -> tuple[int, float]:
        raise RuntimeError("queue unavailable")

    served = serve(metrics_app(engine, RelayMetrics(Counters(), broken), None))
    answer = served.request("GET", "/metrics")
    assert answer.status == 200
    assert b"pn_relay_pushes_total" in answer.body
    assert b"pn_relay_queue_depth" not in answer.body


def test_metrics_behind_basic_auth_and_absent_when_disabled(
    engine: Engine, serve: Callable[[Flask], Served]
) -> None:
    auth = StatsAuth(USER, PASSWORD)
    served = serve(metrics_app(engine, RelayMetrics(Counters()), None, auth))
    refused = served.request("GET", "/metrics", headers=basic(USER, "wrong"))
    assert refused.status == 401
    assert refused.headers["www-authenticate"] == WWW_AUTHENTICATE
    assert served.request("GET", "/metrics", headers=AUTH).status == 200
    assert served.request("GET", "/healthz").status == 200  # health needs no credentials

    disabled = serve(metrics_app(engine, None, None))
    assert disabled.request("GET", "/metrics").status == 404
    assert disabled.request("GET", "/healthz").body == b"ok\n"


def test_healthz(engine: Engine, tmp_path: Path, serve: Callable[[Flask], Served]) -> None:
    alive: list[bool | None] = [True]

    def dispatcher_alive() -> bool:
        if alive[0] is None:
            raise RuntimeError("no dispatcher")
        return bool(alive[0])

    served = serve(metrics_app(engine, None, dispatcher_alive))
    ok = served.request("GET", "/healthz")
    assert (ok.status, ok.body) == (200, b"ok\n")
    assert ok.headers["content-type"].startswith("text/plain")
    alive[0] = False
    answer = served.request("GET", "/healthz")
    assert (answer.status, answer.body) == (503, b"dispatcher not running\n")
    alive[0] = None
    answer = served.request("GET", "/healthz")
    assert (answer.status, answer.body) == (503, b"dispatcher check failed\n")

    unreachable = make_engine(
        f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.sqlite3'}", pool_size=1
    )
    try:
        down = serve(metrics_app(unreachable, None, lambda: True))
        answer = down.request("GET", "/healthz")
        assert (answer.status, answer.body) == (503, b"database unreachable\n")
    finally:
        unreachable.dispose()


def test_counted_events_reach_the_endpoint_on_each_backend(
    database_url: str, serve: Callable[[Flask], Served]
) -> None:
    """Counters -> two processes' roll-ups -> one database -> the endpoint's answer."""
    engines = [make_engine(database_url, pool_size=2) for _ in range(2)]
    try:
        create_schema(engines[0])
        clock = DrivenClock("2021-05-04T03:40:05")
        processes = [(MinuteRollup(e, c, clock), c) for e, c in ((e, Counters()) for e in engines)]
        for _, counters in processes:
            counters.incr("ios_pn_number", 2)
            counters.incr("total_message_number", 3)
        clock.set("2021-05-04T03:41:00")
        for rollup, counters in processes:
            rollup.flush(rollup.ended_minute())
            counters.incr("android_pn_number")
        clock.set("2021-05-04T03:41:30")
        for rollup, _ in processes:
            rollup.flush_on_shutdown()
        clock.set("2021-05-04T06:30:00")
        served = serve(stats_app(engines[1], StatsAuth(USER, PASSWORD), clock))
        answer = served.request("POST", "/get_statistics_data", README_REQUEST, {**JSON, **AUTH})
        assert data(answer) == [
            {
                "start_date": "2021-05-04 03:40:00",
                "end_date": "2021-05-04 03:41:00",
                "total_message_number": 6,
                "ios_pn_number": 4,
                "android_pn_number": 0,
            },
            {
                "start_date": "2021-05-04 03:41:00",
                "end_date": "2021-05-04 03:42:00",
                "total_message_number": 0,
                "ios_pn_number": 0,
                "android_pn_number": 2,
            },
        ]
    finally:
        for engine in engines:
            engine.dispose()


def test_metric_callables_are_called_at_scrape_time_only() -> None:
    """The server builds RelayMetrics before the dispatcher the callables read."""
    calls: list[str] = []

    def queue() -> tuple[int, float]:
        calls.append("queue")
        return 0, 0.0

    def requests() -> int:
        calls.append("requests")
        return 0

    def pushes() -> list[tuple[Provider, int]]:
        calls.append("pushes")
        return []

    metrics = RelayMetrics(Counters(), queue, requests_in_flight=requests, pushes_in_flight=pushes)
    assert calls == []
    metrics.render()
    assert sorted(calls) == ["pushes", "queue", "requests"]
