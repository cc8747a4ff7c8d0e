"""Step charts as inline SVG, drawn on the server: no script, no external file, no CDN.

Pure functions from numbers to markup. A chart has one or more series of (bucket start, value)
points, all on one time axis. Each bucket is drawn as a horizontal step across its width (a
count belongs to the whole bucket, not to an instant); a bucket with no row, or a value of
None (not sampled), leaves a gap instead of a line at zero. Every string placed in the markup
is either a number we formatted or escaped text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 720
HEIGHT = 190
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 10, 26
X_TICKS = 5


@dataclass(frozen=True)
class Series:
    key: str  # an identifier for markup (letters, digits, _), e.g. "ios_pn_number"
    label: str
    color: str  # a CSS colour we chose, e.g. "#1f6feb"
    points: Sequence[tuple[int, int | None]]  # (bucket start ms, value), oldest first


def nice_ceiling(value: float) -> int:
    """The smallest 1, 2, 4, 6 or 8 times a power of ten at or above `value` (at least 1):
    round numbers whose half is a whole number too (counts have no half units)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for multiple in (1, 2, 4, 6, 8, 10):
        if multiple * power >= value:
            return int(multiple * power)
    return int(10 * power)  # pragma: no cover - the loop always returns


def _format_tick(ms: int, with_date: bool) -> str:
    t = time.gmtime(ms // 1000)
    return time.strftime("%m-%d %H:%M" if with_date else "%H:%M", t)


def _format_value(value: float) -> str:
    return f"{value:,.0f}"


def step_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    *,
    start_ms: int,
    end_ms: int,
    step_ms: int,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """An `<svg>` element: the series as step lines over [start_ms, end_ms), axes, grid."""
    if end_ms <= start_ms:
        raise ValueError("end_ms must be after start_ms")
    plot_w = width - _LEFT - _RIGHT
    plot_h = height - _TOP - _BOTTOM
    values = [v for s in series for _, v in s.points if v is not None]
    top = nice_ceiling(max(values, default=0))

    def x_of(ms: int) -> float:
        fraction = (ms - start_ms) / (end_ms - start_ms)
        return _LEFT + min(1.0, max(0.0, fraction)) * plot_w

    def y_of(value: int) -> float:
        return _TOP + plot_h - (value / top) * plot_h

    parts = [
        f'<svg id="{chart_id}" class="chart" xmlns="http://www.w3.org/2000/svg"'
        f' width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"'
        f' aria-labelledby="{chart_id}-title">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<rect class="plot" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}"/>',
    ]
    for fraction in (0.0, 0.5, 1.0) if top > 1 else (0.0, 1.0):
        y = _TOP + plot_h - fraction * plot_h
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + plot_w}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="y-label" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_format_value(top * fraction)}</text>"
        )
    with_date = end_ms - start_ms > 86_400_000
    for i in range(X_TICKS):
        ms = start_ms + (end_ms - start_ms) * i // (X_TICKS - 1)
        anchor = "start" if i == 0 else "end" if i == X_TICKS - 1 else "middle"
        parts.append(
            f'<text class="x-label" x="{x_of(ms):.1f}" y="{height - 8}" text-anchor="{anchor}">'
            f"{_format_tick(ms, with_date)}</text>"
        )
    for one in series:
        path = _step_path(one.points, x_of, y_of, step_ms)
        if path:
            parts.append(
                f'<path class="series series-{one.key}" d="{path}" fill="none"'
                f' stroke="{one.color}" stroke-width="1.5" shape-rendering="crispEdges">'
                f"<title>{escape(one.label)}</title></path>"
            )
    if not values:
        parts.append(
            f'<text class="empty" x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}"'
            ' text-anchor="middle">no data in this range</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _step_path(
    points: Sequence[tuple[int, int | None]],
    x_of: Callable[[int], float],
    y_of: Callable[[int], float],
    step_ms: int,
) -> str:
    commands: list[str] = []
    previous_end: int | None = None
    for start, value in points:
        if value is None:
            previous_end = None
            continue
        y = y_of(value)
        if previous_end is None or start != previous_end:
            commands.append(f"M{x_of(start):.1f},{y:.1f}")
        else:
            commands.append(f"V{y:.1f}")
        commands.append(f"H{x_of(start + step_ms):.1f}")
        previous_end = start + step_ms
    return "".join(commands)
