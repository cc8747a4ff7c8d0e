"""What the tests assert and wait on: the success answer, row counts, polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import Engine, func, select

if TYPE_CHECKING:
    from tests.support import RunningRelay

# What every endpoint answers when it did what it was asked: (HTTP status, body).
SUCCESS = (200, {"code": 1, "message": "Success"})


def wait_until(
    condition: Callable[[], object],
    what: str = "",
    *,
    timeout: float = 60.0,
    interval: float = 0.01,
) -> None:
    """Poll until `condition()` holds. Not a timing assertion: the bound only stops a test
    that would otherwise hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout:g} s: {what or condition}")
        time.sleep(interval)


def count(source: RunningRelay | Engine, table: Any, *where: Any) -> int:
    """Rows of `table` (a Table, or a table's name) in a relay's database, matching `where`."""
    engine = source if isinstance(source, Engine) else source.relay.engine
    query = select(func.count()).select_from(
        sqlalchemy.table(table) if isinstance(table, str) else table
    )
    if where:
        query = query.where(*where)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
