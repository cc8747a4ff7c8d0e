"""`POST /get_statistics_data` (PROTOCOL.md section 7), behind HTTP Basic auth.

Request body: a JSON object, every field optional; an empty body (with or without a
Content-Type) means all defaults. The Content-Type is not checked.

- ``start_date``, ``end_date``: ``%Y-%m-%d %H:%M:%S`` or ``%Y-%m-%d``, UTC, zero padding
  optional ("2021-5-4 3:40:00"); ``null`` is the same as leaving the field out. Both bounds
  are inclusive: the answer holds every stored minute row whose minute contains or follows
  `start_date` and starts at or before `end_date`. A date without a time means the start of
  that day for `start_date` and its last second (23:59:59) for `end_date`, so
  ``{"start_date": "2021-5-4", "end_date": "2021-5-4"}`` is that whole day.
- Missing `end_date`: now. Missing `start_date`: 24 hours before the end (1440 minutes).
  Neither: the last 24 hours. A `start_date` in the future gives an empty list.
- At most 31 days (44,640 minute rows) per request; a longer range is a 400 that says so
  (ask in pieces; a `start_date` alone more than 31 days ago needs an `end_date`). That
  bounds an answer to about 6 MB; on SQLite with a year of rows a day
  takes ~10 ms and the full 31 days ~0.3 s (bench/stats_query.py; the query plan that keeps
  it so: tests/test_stats_rollup.py).
- Flags, one per counter of `COUNTER_NAMES`: ``1``/``true`` includes that counter in every
  row, ``0``/``false`` leaves it out. By default the three counters of the original README
  (``ios_pn_number``, ``android_pn_number``, ``total_message_number``) are included and the
  others are not, so the answer keeps the historical shape unless a client asks for more.

Answer: ``{"code": 0, "data": [{"start_date": ..., "end_date": ..., <counters>}, ...]}``,
oldest first, one row per stored minute (minutes when no relay process ran have no row), dates
``%Y-%m-%d %H:%M:%S`` UTC with `end_date` one minute after `start_date`.

Errors never 500: bad credentials 401 (with ``WWW-Authenticate``); too many failed attempts
(or password checks at once) 429 with ``Retry-After``, before any hashing; a body that is not a JSON
object, a bad date or flag, or `start_date` after `end_date` 400 (other fields are ignored); the
database unreachable 503. Each error body is ``{"code": 1, "message": "<what is wrong>"}``.
"""

from __future__ import annotations

import calendar
import datetime
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from errors import ClientError
from stats.auth import StatsAuth, requires_auth
from stats.counters import COUNTER_NAMES
from stats.rollup import MINUTE_MS, minute_floor
from stats.schema import statistics_minutes
from web.answers import json_error, to_flask

log = logging.getLogger(__name__)

PATH = "/get_statistics_data"
DEFAULT_COUNTERS = ("ios_pn_number", "android_pn_number", "total_message_number")
DEFAULT_SPAN_MINUTES = 1440
MAX_SPAN_MINUTES = 31 * 1440
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
_DAY_MS = 86_400_000
_MAX_DATE_LENGTH = 40


class BadRequest(ClientError, ValueError):
    """What is wrong with a statistics request, in words the client can act on."""


@dataclass(frozen=True)
class StatsQuery:
    first_minute: int  # ms, a minute start
    last_minute: int  # ms, a minute start, >= first_minute (or the range is empty)
    counters: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return self.last_minute < self.first_minute


def _parse_date(name: str, value: Any, *, end: bool) -> int | None:
    """Milliseconds of a date field (inclusive bound), None if absent."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f'{name} must be a string like "2021-05-04 03:40:00"')
    text = value.strip()
    if len(value) <= _MAX_DATE_LENGTH:
        for date_format in DATE_FORMATS:
            try:
                parsed = datetime.datetime.strptime(text, date_format)
            except ValueError:
                continue
            ms = calendar.timegm(parsed.timetuple()) * 1000
            if end and date_format == "%Y-%m-%d":
                ms += _DAY_MS - 1000  # the day's last second
            return ms
    raise BadRequest(f'{name} is not a date: use "YYYY-MM-DD HH:MM:SS" or "YYYY-MM-DD" (UTC)')


def _parse_flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise BadRequest(f"{name} must be 0, 1, true or false")


def parse_query(
    body: Mapping[str, Any],
    now_ms: int,
    *,
    max_span_minutes: int = MAX_SPAN_MINUTES,
    default_span_minutes: int = DEFAULT_SPAN_MINUTES,
) -> StatsQuery:
    """The query a request body asks for, or BadRequest saying what is wrong."""
    # Other fields are ignored, as the original server did: every field is optional and
    # dashboards built for it may send more.
    start = _parse_date("start_date", body.get("start_date"), end=False)
    end = _parse_date("end_date", body.get("end_date"), end=True)
    included = set(DEFAULT_COUNTERS)
    for name in COUNTER_NAMES:
        if name in body:
            if _parse_flag(name, body[name]):
                included.add(name)
            else:
                included.discard(name)
    counters = tuple(name for name in COUNTER_NAMES if name in included)

    if start is not None and end is not None and start > end:
        raise BadRequest("start_date is after end_date")
    if end is None:
        end = max(now_ms, start if start is not None else now_ms)
    last_minute = minute_floor(end)
    if start is None:
        first_minute = last_minute - (default_span_minutes - 1) * MINUTE_MS
    else:
        first_minute = minute_floor(start)
    span = (last_minute - first_minute) // MINUTE_MS + 1
    if span > max_span_minutes:
        raise BadRequest(
            f"the range covers {span} minutes; ask for at most {max_span_minutes}"
            f" ({max_span_minutes // 1440} days) per request"
        )
    return StatsQuery(first_minute, last_minute, counters)


_TIMES_OF_DAY = tuple(f"{m // 60:02d}:{m % 60:02d}:00" for m in range(1440))


class _MinuteFormatter:
    """`%Y-%m-%d %H:%M:%S` of minute starts, fast: one date string per day, cached."""

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def __call__(self, ms: int) -> str:
        day, in_day = divmod(ms, _DAY_MS)
        date = self._days.get(day)
        if date is None:
            t = time.gmtime(day * 86_400)
            date = self._days[day] = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d} "
        return date + _TIMES_OF_DAY[in_day // MINUTE_MS]


def _select(engine: Engine, query: StatsQuery) -> Sequence[Any]:
    """(minute_start, *counters) tuples in the range, oldest first: a primary-key range scan."""
    if query.empty:
        return []
    table = statistics_minutes.c
    columns = [table.minute_start, *(table[name] for name in query.counters)]
    statement = (
        select(*columns)
        .where(table.minute_start >= query.first_minute, table.minute_start <= query.last_minute)
        .order_by(table.minute_start)
    )
    with engine.connect() as conn:
        return conn.execute(statement).all()


def fetch_rows(engine: Engine, query: StatsQuery) -> list[dict[str, Any]]:
    """The answer's rows as dicts: one per stored minute in the range, oldest first."""
    keys = ("start_date", "end_date", *query.counters)
    formatted = _MinuteFormatter()
    return [
        dict(zip(keys, (formatted(start), formatted(start + MINUTE_MS), *values), strict=True))
        for start, *values in _select(engine, query)
    ]


def render_answer(engine: Engine, query: StatsQuery) -> str:
    """`{"code":0,"data":[...]}` as JSON text, written directly (2-3x faster than dicts and
    json.dumps for a month of rows); the same document `fetch_rows` describes."""
    # Keys are counter names (fixed identifiers), dates are digits, values integers: no
    # character here needs JSON escaping.
    template = (
        '{"start_date":"%s","end_date":"%s"'
        + "".join(f',"{name}":%d' for name in query.counters)
        + "}"
    )
    formatted = _MinuteFormatter()
    rows = [
        template % (formatted(start), formatted(start + MINUTE_MS), *values)
        for start, *values in _select(engine, query)
    ]
    return '{"code":0,"data":[' + ",".join(rows) + "]}"


def read_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is {}."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("the body is JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def create_stats_blueprint(
    engine: Engine,
    auth: StatsAuth,
    clock: Callable[[], int],
    *,
    max_span_minutes: int = MAX_SPAN_MINUTES,
    default_span_minutes: int = DEFAULT_SPAN_MINUTES,
) -> Blueprint:
    """`POST /get_statistics_data`; `clock` returns ms since the epoch (e.g. server.now_ms)."""
    blueprint = Blueprint("statistics", __name__)

    @blueprint.post(PATH)
    @requires_auth(auth, json_error)
    def get_statistics_data() -> Response:
        try:
            body = read_json_object(request.get_data(cache=False))
            query = parse_query(
                body,
                clock(),
                max_span_minutes=max_span_minutes,
                default_span_minutes=default_span_minutes,
            )
        except BadRequest as exc:
            return to_flask(json_error(400, str(exc)))
        try:
            answer = render_answer(engine, query)
        except SQLAlchemyError as exc:
            log.warning("statistics query failed (%s)", type(exc).__name__)
            return to_flask(json_error(503, "statistics are unavailable right now; try again"))
        return Response(answer, status=200, mimetype="application/json")

    return blueprint
