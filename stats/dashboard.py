"""`GET /stats`: the statistics as a page of charts, behind the statistics credentials.

``/stats?range=hour|day|week|month`` (default ``day``): the last 60 minutes, 24 hours, 7 days
or 30 days up to the current UTC minute, with the totals for that range and step charts of
messages, pushes by platform, failures by platform, pruned tokens and queue depth. The hour and
the day are drawn per minute; the week per 10 minutes and the month per hour, summed in SQL
(``GROUP BY`` a bucket of `minute_start` over the same primary-key range scan as
`POST /get_statistics_data`), so no range reads or draws more than 1,440 points a series.
Queue depth is the sample stored with each minute (stats/rollup.py), shown per bucket as its
largest; the page also shows the queue as it is now.

The page is one self-contained HTML document: inline CSS and server-drawn SVG (stats/charts.py),
no script, nothing fetched from anywhere (its Content-Security-Policy allows nothing else), so
it renders the same when saved to a file. The range picker is a row of links.

Same HTTP Basic credentials as /get_statistics_data and /metrics (stats/auth.py): 401 with
``WWW-Authenticate`` (a browser asks for them), 429 with ``Retry-After`` when throttled. A
range other than the four is a 400; the database unreachable a 503. Errors are one plain line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Any

from flask import Blueprint, Response, request
from sqlalchemy import Engine, Select, func, select
from sqlalchemy.exc import SQLAlchemyError

from push.providers import PROVIDERS
from stats.auth import StatsAuth, requires_auth
from stats.charts import Series, step_chart
from stats.rollup import MINUTE_MS, minute_floor
from stats.schema import QUEUE_DEPTH, statistics_minutes
from web.answers import plain, to_flask

log = logging.getLogger(__name__)

PATH = "/stats"
QueueStats = Callable[[], tuple[int, float]]

# Colours of each provider's pushes and failures, in the order of the provider table
# (chosen to read apart, also in grey).
PUSH_COLOURS = ("#1f6feb", "#2da44e", "#9467bd", "#17becf")
FAILURE_COLOURS = ("#cf222e", "#d4a72c", "#e377c2", "#7f7f7f")
# Counters on the page, with their labels and colours: every provider of the table's.
COUNTERS: dict[str, tuple[str, str]] = {
    "total_message_number": ("Messages", "#6f42c1"),
    **{
        info.sent_counter: (f"{info.platform} pushes", PUSH_COLOURS[n % len(PUSH_COLOURS)])
        for n, info in enumerate(PROVIDERS)
    },
    **{
        info.failed_counter: (
            f"{info.platform} failures",
            FAILURE_COLOURS[n % len(FAILURE_COLOURS)],
        )
        for n, info in enumerate(PROVIDERS)
    },
    "tokens_pruned": ("Tokens pruned", "#8c564b"),
}
QUEUE_LABEL, QUEUE_COLOUR = "Queue depth (largest sample)", "#0a7ea4"
CHARTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("messages", "Messages", ("total_message_number",)),
    ("pushes", "Pushes by platform", tuple(info.sent_counter for info in PROVIDERS)),
    ("failures", "Failed pushes by platform", tuple(info.failed_counter for info in PROVIDERS)),
    ("pruned", "Tokens pruned", ("tokens_pruned",)),
    ("queue", "Queue depth", (QUEUE_DEPTH,)),
)


@dataclass(frozen=True)
class Range:
    name: str
    label: str
    minutes: int  # how far back from the current minute, inclusive of it
    bucket_minutes: int  # minutes summed into one point

    @property
    def bucket_ms(self) -> int:
        return self.bucket_minutes * MINUTE_MS

    @property
    def per(self) -> str:
        if self.bucket_minutes == 1:
            return "per minute"
        if self.bucket_minutes == 60:
            return "per hour"
        return f"per {self.bucket_minutes} minutes"


RANGES: dict[str, Range] = {
    r.name: r
    for r in (
        Range("hour", "last hour", 60, 1),
        Range("day", "last 24 hours", 1440, 1),
        Range("week", "last 7 days", 7 * 1440, 10),
        Range("month", "last 30 days", 30 * 1440, 60),
    )
}
DEFAULT_RANGE = "day"


class BadRange(ValueError):
    pass


def parse_range(value: str | None) -> Range:
    if value is None or value == "":
        return RANGES[DEFAULT_RANGE]
    found = RANGES.get(value)
    if found is None:
        raise BadRange(f"range must be one of {', '.join(RANGES)}")
    return found


@dataclass(frozen=True)
class Window:
    """The minutes a page covers: [first_minute, last_minute], both minute starts."""

    first_minute: int
    last_minute: int
    bucket_ms: int

    @property
    def end_ms(self) -> int:
        return self.last_minute + MINUTE_MS

    @classmethod
    def ending_now(cls, chosen: Range, now_ms: int) -> Window:
        last = minute_floor(now_ms)
        return cls(last - (chosen.minutes - 1) * MINUTE_MS, last, chosen.bucket_ms)


@dataclass(frozen=True)
class Buckets:
    """Per bucket: its start and each column's value (a sum; the largest queue sample)."""

    starts: list[int]
    columns: dict[str, list[int | None]]

    def totals(self) -> dict[str, int]:
        return {name: sum(v or 0 for v in self.columns[name]) for name in COUNTERS}

    def peak_queue(self) -> int | None:
        sampled = [v for v in self.columns[QUEUE_DEPTH] if v is not None]
        return max(sampled) if sampled else None

    def points(self, name: str) -> list[tuple[int, int | None]]:
        return list(zip(self.starts, self.columns[name], strict=True))


COLUMNS = (*COUNTERS, QUEUE_DEPTH)


def bucket_query(window: Window) -> Select[Any]:
    """The window's rows (a primary-key range scan), summed per bucket in SQL: (bucket start,
    *COUNTERS sums, largest queue sample)."""
    table = statistics_minutes.c
    in_window = (
        table.minute_start >= window.first_minute,
        table.minute_start <= window.last_minute,
    )
    if window.bucket_ms == MINUTE_MS:
        columns = (table[name] for name in COLUMNS)
        return select(table.minute_start, *columns).where(*in_window).order_by(table.minute_start)
    bucket = (table.minute_start - table.minute_start % window.bucket_ms).label("bucket")
    return (
        select(bucket, *(func.sum(table[n]) for n in COUNTERS), func.max(table[QUEUE_DEPTH]))
        .where(*in_window)
        .group_by(bucket)
        .order_by(bucket)
    )


def fetch_buckets(engine: Engine, window: Window) -> Buckets:
    with engine.connect() as conn:
        rows = conn.execute(bucket_query(window)).all()
    names = COLUMNS
    columns: dict[str, list[int | None]] = {name: [] for name in names}
    starts: list[int] = []
    for start, *values in rows:
        starts.append(int(start))
        for name, value in zip(names, values, strict=True):
            # PostgreSQL sums BIGINT as NUMERIC (Decimal): back to int.
            columns[name].append(None if value is None else int(value))
    return Buckets(starts, columns)


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms // 1000))


_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
margin:24px;color:#1f2328;background:#fff}
h1{font-size:20px;margin:0 0 4px}
.span{color:#57606a;margin:0 0 16px}
nav.ranges a{display:inline-block;padding:4px 12px;margin-right:4px;border:1px solid #d0d7de;
border-radius:6px;color:#0969da;text-decoration:none}
nav.ranges a[aria-current=page]{background:#0969da;color:#fff;border-color:#0969da}
table.totals{border-collapse:collapse;margin:16px 0}
table.totals th,table.totals td{padding:4px 16px 4px 0;text-align:left}
table.totals td{font-variant-numeric:tabular-nums;font-weight:600;text-align:right}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;border:1px solid #d0d7de;border-radius:6px;padding:8px 8px 0;
flex:0 1 700px;min-width:0;box-sizing:border-box}
svg.chart{display:block;width:100%;height:auto}
figcaption{font-weight:600;margin-bottom:4px}
figcaption .key{font-weight:400;color:#57606a;margin-left:12px}
svg.chart .plot{fill:#f6f8fa}
svg.chart .grid{stroke:#d0d7de;stroke-width:1}
svg.chart text{font-size:11px;fill:#57606a}
svg.chart .empty{font-size:13px}
""".strip()

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'"
)


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>'


def render_page(
    chosen: Range, window: Window, buckets: Buckets, queue_now: tuple[int, float] | None
) -> str:
    totals = buckets.totals()
    peak = buckets.peak_queue()
    nav = "".join(
        f'<a href="?range={r.name}"'
        + (' aria-current="page"' if r.name == chosen.name else "")
        + f">{r.name}</a>"
        for r in RANGES.values()
    )
    rows = [
        f"<tr><th>{_swatch(colour)}{escape(label)}</th>"
        f'<td id="total-{name}">{totals[name]:,}</td></tr>'
        for name, (label, colour) in COUNTERS.items()
    ]
    peak_text = "not sampled" if peak is None else f"{peak:,}"
    rows.append(
        f"<tr><th>{_swatch(QUEUE_COLOUR)}Largest queue depth</th>"
        f'<td id="total-queue_depth_peak">{peak_text}</td></tr>'
    )
    if queue_now is not None:
        depth, age = queue_now
        rows.append(
            f"<tr><th>{_swatch(QUEUE_COLOUR)}Queue now</th>"
            f'<td id="queue-now">{depth:,} waiting, oldest {age:,.0f} s</td></tr>'
        )
    figures = []
    for chart_id, title, names in CHARTS:
        series = [
            Series(
                name,
                COUNTERS[name][0] if name in COUNTERS else QUEUE_LABEL,
                COUNTERS[name][1] if name in COUNTERS else QUEUE_COLOUR,
                buckets.points(name),
            )
            for name in names
        ]
        key = "".join(
            f'<span class="key">{_swatch(s.color)}{escape(s.label)}</span>' for s in series
        )
        svg = step_chart(
            f"chart-{chart_id}",
            f"{title}, {chosen.per}",
            series,
            start_ms=window.first_minute,
            end_ms=window.end_ms,
            step_ms=window.bucket_ms,
        )
        figures.append(f"<figure><figcaption>{escape(title)}{key}</figcaption>{svg}</figure>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>pn-relay statistics: {escape(chosen.label)}</title><style>{_STYLE}</style>"
        "</head><body><header><h1>pn-relay statistics</h1>"
        f'<p class="span" id="span">{escape(chosen.label)}: {_utc(window.first_minute)} to'
        f" {_utc(window.end_ms)} UTC, {chosen.per}</p>"
        f'<nav class="ranges" aria-label="range">{nav}</nav></header>'
        f'<main><table class="totals" id="totals"><caption hidden>Totals for the range</caption>'
        f"{''.join(rows)}</table>"
        f'<div class="charts">{"".join(figures)}</div></main></body></html>'
    )


def create_dashboard_blueprint(
    engine: Engine,
    auth: StatsAuth,
    clock: Callable[[], int],
    *,
    queue_stats: QueueStats | None = None,
) -> Blueprint:
    """`GET /stats`; `clock` returns ms since the epoch (wall time: statistics minutes are UTC
    calendar minutes), `queue_stats` (depth, oldest age in s) for the "queue now" line."""
    blueprint = Blueprint("dashboard", __name__)

    @blueprint.get(PATH)
    @requires_auth(auth, plain)
    def dashboard() -> Response:
        try:
            chosen = parse_range(request.args.get("range"))
        except BadRange as exc:
            return to_flask(plain(400, str(exc)))
        window = Window.ending_now(chosen, clock())
        try:
            buckets = fetch_buckets(engine, window)
        except SQLAlchemyError as exc:
            log.warning("statistics page query failed (%s)", type(exc).__name__)
            return to_flask(plain(503, "statistics are unavailable right now; try again"))
        queue_now = None
        if queue_stats is not None:
            try:
                queue_now = queue_stats()
            except Exception as exc:  # noqa: BLE001 - the page shows the rest
                log.warning("queue depth unavailable for /stats (%s)", type(exc).__name__)
        page = render_page(chosen, window, buckets, queue_now)
        return Response(
            page,
            status=200,
            mimetype="text/html",
            headers=[
                ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                ("Cache-Control", "no-store"),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
            ],
        )

    return blueprint
