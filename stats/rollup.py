"""Per-minute roll-up of the process's counters into `statistics_minutes`, and its retention.

Both are jobs of the relay's one scheduler (jobs.py: when they fire, and in which process).

Which minute a flush writes to
------------------------------
The roll-up job fires at second 0 of every UTC minute. A firing at the top of minute M (say
12:34:00) swaps the counters and writes them to the row of the minute that has just ended,
M-1 (12:33:00-12:34:00): `MinuteRollup.ended_minute()`. A firing that the scheduler runs late
(up to its misfire grace) still writes to the minute before the one it runs in; whatever was
counted in those extra seconds goes to that row too, so totals stay exact and only the
attribution moves by seconds. On shutdown `flush_on_shutdown()` writes the last, partial
minute to the row of the minute it is in (`current_minute()`).

Exact totals with N processes
-----------------------------
Each process adds its own counts with an additive upsert::

    INSERT INTO statistics_minutes (minute_start, n, ...) VALUES (...)
    ON CONFLICT (minute_start) DO UPDATE SET n = statistics_minutes.n + excluded.n, ...

so any number of processes (on any number of hosts) sharing the database sum exactly. If the
write fails, the swapped counts are `restore`d into the counters and go out with the next
write: nothing is lost, it is only attributed to a later minute.

Queue depth, sampled
--------------------
`queue_depth` is not a count but a level: with a `queue_depth` callable (the relay passes
`DeliveryQueue.depth`, read on its own connection, never through the writer), each write
samples the queue once, from the worker thread, and stores it in the row of the minute it
writes. Processes sharing the database see the same queue, so their samples are merged by
the largest (``greatest`` on PostgreSQL, ``max(a, b)`` on SQLite, NULL ignored), not summed.
Gap-filled minutes and failed samples stay NULL ("not sampled"), so a chart does not draw an
empty queue where nobody looked.

A row for every minute
----------------------
Every write includes its minute even when all counts are zero, and also zero rows for any
minutes skipped since this process's last successful write (a late or failed write, a
stalled loop), back to the minute the process started, at most `max_gap_fill` of them. So a
row exists for every minute the server ran; minutes when no process ran have none.

Retention in one process only
-----------------------------
`RetentionJob.run` deletes rows older than `retention_days`, once a day. Every process
schedules it at the same time; the first to claim the `job_leases` row named
``statistics_retention`` (a compare-and-set on `expires_at`, see `claim_lease`) runs it, in
the claim's own transaction; the others find the lease held and skip. The same statements
work on PostgreSQL (the second UPDATE waits for the first's row lock and then no longer
matches) and on SQLite (`BEGIN IMMEDIATE` serialises writers).

Written beside the writer, not through it
-----------------------------------------
Every request's write goes through the one BatchWriter (storage/writer.py); these two jobs
are the deliberate exception (ARCHITECTURE.md, "Writes beside the writer"). Each runs in a
worker thread, on a pooled connection of the engine, in a transaction of its own:

- they write only tables no request touches (`statistics_minutes`, `job_leases`), so there is
  no order with request writes to keep, and no client waits for their commit;
- the retention's lease claim waits, on PostgreSQL, for another process's row lock until that
  process commits its delete: inside the writer, every request write of this process would
  wait with it;
- a retention delete (a day of rows) or a roll-up carrying gap-filled minutes would hold the
  commit of the request batch it landed in; beside the writer it waits at most for the lock
  (on SQLite, `BEGIN IMMEDIATE` under the engine's busy timeout), once a minute.

Times are integer milliseconds since the Unix epoch, UTC (the house convention); `clock` is a
`Callable[[], int]` returning that, e.g. `relay.wall_ms`.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from stats.counters import COUNTER_NAMES, Counters
from stats.schema import QUEUE_DEPTH, job_leases, statistics_minutes

log = logging.getLogger(__name__)

Clock = Callable[[], int]

MINUTE_MS = 60_000
DAY_MS = 86_400_000
DEFAULT_RETENTION_DAYS = 400
RETENTION_LEASE = "statistics_retention"


def minute_floor(ms: int) -> int:
    """The start (ms) of the UTC minute holding the instant `ms`."""
    return ms - ms % MINUTE_MS


def _dialect_insert(engine_or_conn: Engine | Connection, table: Any) -> Any:
    name = engine_or_conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise ValueError(f"statistics need SQLite or PostgreSQL, not {name}")


def additive_upsert(engine: Engine) -> Insert:
    """``INSERT ... ON CONFLICT (minute_start) DO UPDATE SET n = table.n + excluded.n``, and
    the larger of two queue-depth samples (NULL: none)."""
    statement = _dialect_insert(engine, statistics_minutes)
    table = statistics_minutes.c
    stored, sampled = table[QUEUE_DEPTH], statement.excluded[QUEUE_DEPTH]
    if engine.dialect.name == "postgresql":
        larger = func.greatest(stored, sampled)  # NULLs ignored
    else:  # SQLite's two-argument max() is scalar, and NULL if either is
        larger = func.max(func.coalesce(stored, sampled), func.coalesce(sampled, stored))
    return statement.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=[table.minute_start],
        set_={
            **{name: table[name] + statement.excluded[name] for name in COUNTER_NAMES},
            QUEUE_DEPTH: larger,
        },
    )


@dataclass(eq=False)
class MinuteRollup:
    """Adds this process's counters into the database's per-minute rows."""

    engine: Engine
    counters: Counters
    clock: Clock
    _: KW_ONLY
    executor: Executor | None = None
    max_gap_fill: int = 1440
    queue_depth: Callable[[], int] | None = None
    failures: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._upsert = additive_upsert(self.engine)
        self._lock = threading.Lock()
        # The minute before the one we started in: the first write fills from our first minute.
        self._last_written = minute_floor(self.clock()) - MINUTE_MS
        self._pending: set[asyncio.Future[bool]] = set()

    # -- which minute ---------------------------------------------------------------------
    def current_minute(self) -> int:
        return minute_floor(self.clock())

    def ended_minute(self) -> int:
        """The minute that has just ended: what a firing at the top of a minute writes to."""
        return self.current_minute() - MINUTE_MS

    # -- blocking writes (call from a worker thread) ----------------------------------------
    def flush(self, minute_start: int) -> None:
        """Swap the counters and add them to `minute_start`'s row (restored if that fails)."""
        _check_minute(minute_start)
        self.write(minute_start, self.counters.swap())

    def flush_on_shutdown(self) -> None:
        """Write the last, partial minute (the one the clock is in now)."""
        self.flush(self.current_minute())

    def write(self, minute_start: int, counts: Mapping[str, int]) -> bool:
        """Add `counts` (swapped out of our counters) to `minute_start`'s row.

        On a database failure the counts are restored into the counters and False returned.
        """
        _check_minute(minute_start)
        depth = self._sample_queue_depth()
        with self._lock:
            rows: list[dict[str, int | None]] = [
                {"minute_start": minute, **dict.fromkeys(COUNTER_NAMES, 0), QUEUE_DEPTH: None}
                for minute in self._gap_minutes(minute_start)
            ]
            rows.append(
                {
                    "minute_start": minute_start,
                    **{n: int(counts.get(n, 0)) for n in COUNTER_NAMES},
                    QUEUE_DEPTH: depth,
                }
            )
            try:
                with self.engine.begin() as conn:
                    conn.execute(self._upsert, rows)
            except Exception as exc:  # noqa: BLE001 - whatever failed, keep the counts
                self.counters.restore(dict(counts))
                self.failures += 1
                log.warning(
                    "statistics for %s not written (%s); kept for the next minute",
                    _format_minute(minute_start),
                    type(exc).__name__,
                )
                return False
            self._last_written = max(self._last_written, minute_start)
            return True

    def _sample_queue_depth(self) -> int | None:
        if self.queue_depth is None:
            return None
        try:
            return int(self.queue_depth())
        except Exception as exc:  # noqa: BLE001 - the counts still go out; the sample is NULL
            log.warning("queue depth not sampled for the statistics (%s)", type(exc).__name__)
            return None

    def _gap_minutes(self, minute_start: int) -> range:
        first = max(self._last_written + MINUTE_MS, minute_start - self.max_gap_fill * MINUTE_MS)
        return range(first, minute_start, MINUTE_MS)

    # -- on the event loop --------------------------------------------------------------------
    async def tick(self) -> None:
        """The scheduled job: swap on the loop, write from a worker thread."""
        minute = self.ended_minute()
        counts = self.counters.swap()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, self.write, minute, counts)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        # Shielded: if the scheduler cancels this job (shutdown), the write still happens
        # (or restores the counts); `drain` waits for it.
        await asyncio.shield(future)

    async def drain(self) -> None:
        """Wait for writes started by `tick` to finish."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def flush_on_shutdown_async(self) -> None:
        """`drain`, then `flush_on_shutdown` in the worker executor."""
        await self.drain()
        await asyncio.get_running_loop().run_in_executor(self.executor, self.flush_on_shutdown)


def _check_minute(minute_start: int) -> None:
    if minute_start % MINUTE_MS:
        raise ValueError("minute_start must be a multiple of 60,000 ms (a UTC minute)")


def _format_minute(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def process_holder() -> str:
    """Who holds a lease, for an operator reading `job_leases` (host and pid, no secret)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}"[:64]


def claim_lease(conn: Connection, name: str, holder: str, now_ms: int, lease_ms: int) -> bool:
    """Compare-and-set: take lease `name` until now+lease_ms if it has expired; True if taken.

    Run it inside the transaction doing the leased work: if that work fails, the claim rolls
    back with it and the next firing (in any process) tries again.
    """
    ensure = _dialect_insert(conn, job_leases).values(name=name, holder="", expires_at=0)
    conn.execute(ensure.on_conflict_do_nothing(index_elements=[job_leases.c.name]))
    claimed = conn.execute(
        update(job_leases)
        .where(job_leases.c.name == name, job_leases.c.expires_at <= now_ms)
        .values(holder=holder, expires_at=now_ms + lease_ms)
    )
    return claimed.rowcount == 1


@dataclass(eq=False)
class RetentionJob:
    """Deletes statistics rows older than `retention_days`, in one process per period."""

    engine: Engine
    clock: Clock
    retention_days: int = DEFAULT_RETENTION_DAYS
    _: KW_ONLY
    holder: str = field(default_factory=process_holder)
    lease_ms: int = 20 * 3_600_000
    executor: Executor | None = None

    def __post_init__(self) -> None:
        if self.retention_days < 1:
            raise ValueError("retention_days must be at least 1 (0 means: build no RetentionJob)")

    def cutoff(self) -> int:
        """Rows whose minute starts before this (ms) are deleted."""
        return minute_floor(self.clock()) - self.retention_days * DAY_MS

    def run(self) -> int | None:
        """Delete old rows; the number deleted, or None if another process holds the lease."""
        now = self.clock()
        cutoff = minute_floor(now) - self.retention_days * DAY_MS
        with self.engine.begin() as conn:
            if not claim_lease(conn, RETENTION_LEASE, self.holder, now, self.lease_ms):
                return None
            result = conn.execute(
                delete(statistics_minutes).where(statistics_minutes.c.minute_start < cutoff)
            )
            deleted = int(result.rowcount)
        log.info("statistics retention: deleted %d minute rows", deleted)
        return deleted

    async def tick(self) -> None:
        """The scheduled job: run in a worker thread; a failure is logged, never raised."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self.run)
        except Exception as exc:  # noqa: BLE001 - logged; the next day tries again
            log.warning("statistics retention failed (%s); next run tomorrow", type(exc).__name__)
