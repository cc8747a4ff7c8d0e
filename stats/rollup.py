"""Per-minute roll-up of the process's counters into `statistics_minutes`, and its retention.

Which minute a flush writes to
------------------------------
The roll-up job fires at second 0 of every UTC minute. A firing at the top of minute M (say
12:34:00) swaps the counters and writes them to the row of the minute that has just ended,
M-1 (12:33:00-12:34:00): `MinuteRollup.ended_minute()`. A firing that APScheduler runs late
(up to `misfire_grace_time`) still writes to the minute before the one it runs in; whatever was
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

Times are integer milliseconds since the Unix epoch, UTC (the house convention); `clock` is a
`Callable[[], int]` returning that, e.g. `server.now_ms`.
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
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
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
ROLLUP_JOB_ID = "stats-minute-rollup"
RETENTION_JOB_ID = "stats-retention"
ROLLUP_MISFIRE_GRACE_SECONDS = 50
RETENTION_MISFIRE_GRACE_SECONDS = 3600


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


class MinuteRollup:
    """Adds this process's counters into the database's per-minute rows."""

    def __init__(
        self,
        engine: Engine,
        counters: Counters,
        clock: Clock,
        *,
        executor: Executor | None = None,
        max_gap_fill: int = 1440,
        queue_depth: Callable[[], int] | None = None,
    ) -> None:
        self._engine = engine
        self._queue_depth = queue_depth
        self._counters = counters
        self._clock = clock
        self._executor = executor
        self._max_gap_fill = max_gap_fill
        self._upsert = additive_upsert(engine)
        self._lock = threading.Lock()
        # The minute before the one we started in: the first write fills from our first minute.
        self._last_written = minute_floor(clock()) - MINUTE_MS
        self._pending: set[asyncio.Future[bool]] = set()
        self.failures = 0

    # -- which minute ---------------------------------------------------------------------
    def current_minute(self) -> int:
        return minute_floor(self._clock())

    def ended_minute(self) -> int:
        """The minute that has just ended: what a firing at the top of a minute writes to."""
        return self.current_minute() - MINUTE_MS

    # -- blocking writes (call from a worker thread) ----------------------------------------
    def flush(self, minute_start: int) -> None:
        """Swap the counters and add them to `minute_start`'s row (restored if that fails)."""
        _check_minute(minute_start)
        self.write(minute_start, self._counters.swap())

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
                with self._engine.begin() as conn:
                    conn.execute(self._upsert, rows)
            except Exception as exc:  # noqa: BLE001 - whatever failed, keep the counts
                self._counters.restore(dict(counts))
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
        if self._queue_depth is None:
            return None
        try:
            return int(self._queue_depth())
        except Exception as exc:  # noqa: BLE001 - the counts still go out; the sample is NULL
            log.warning("queue depth not sampled for the statistics (%s)", type(exc).__name__)
            return None

    def _gap_minutes(self, minute_start: int) -> range:
        first = max(self._last_written + MINUTE_MS, minute_start - self._max_gap_fill * MINUTE_MS)
        return range(first, minute_start, MINUTE_MS)

    # -- on the event loop --------------------------------------------------------------------
    async def tick(self) -> None:
        """The scheduled job: swap on the loop, write from a worker thread."""
        minute = self.ended_minute()
        counts = self._counters.swap()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self.write, minute, counts)
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
        await asyncio.get_running_loop().run_in_executor(self._executor, self.flush_on_shutdown)


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


class RetentionJob:
    """Deletes statistics rows older than `retention_days`, in one process per period."""

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        *,
        holder: str | None = None,
        lease_ms: int = 20 * 3_600_000,
        executor: Executor | None = None,
    ) -> None:
        if retention_days < 1:
            raise ValueError("retention_days must be at least 1 (0 means: build no RetentionJob)")
        self._engine = engine
        self._clock = clock
        self.retention_days = retention_days
        self._holder = holder or process_holder()
        self._lease_ms = lease_ms
        self._executor = executor

    def cutoff(self) -> int:
        """Rows whose minute starts before this (ms) are deleted."""
        return minute_floor(self._clock()) - self.retention_days * DAY_MS

    def run(self) -> int | None:
        """Delete old rows; the number deleted, or None if another process holds the lease."""
        now = self._clock()
        cutoff = minute_floor(now) - self.retention_days * DAY_MS
        with self._engine.begin() as conn:
            if not claim_lease(conn, RETENTION_LEASE, self._holder, now, self._lease_ms):
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
            await loop.run_in_executor(self._executor, self.run)
        except Exception as exc:  # noqa: BLE001 - logged; the next day tries again
            log.warning("statistics retention failed (%s); next run tomorrow", type(exc).__name__)


def rollup_trigger() -> CronTrigger:
    return CronTrigger(second=0, timezone=datetime.UTC)


def retention_trigger() -> CronTrigger:
    return CronTrigger(hour=3, minute=17, second=0, timezone=datetime.UTC)


def build_scheduler(
    rollup: MinuteRollup,
    retention: RetentionJob | None = None,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    minute_trigger: Any = None,
    daily_trigger: Any = None,
) -> AsyncIOScheduler:
    """An (unstarted) AsyncIOScheduler with the roll-up job and, if given, the retention job.

    The roll-up fires at second 0 of every UTC minute (`CronTrigger(second=0, timezone=UTC)`),
    coalescing missed firings into one, with `misfire_grace_time` 50 s; the retention job at
    03:17:00 UTC daily. Tests may pass other triggers. `loop` defaults to the running loop at
    `start()`.
    """
    scheduler = AsyncIOScheduler(event_loop=loop, timezone=datetime.UTC)
    scheduler.add_job(
        rollup.tick,
        minute_trigger or rollup_trigger(),
        id=ROLLUP_JOB_ID,
        name="statistics minute roll-up",
        misfire_grace_time=ROLLUP_MISFIRE_GRACE_SECONDS,
        coalesce=True,
        max_instances=1,
    )
    if retention is not None:
        scheduler.add_job(
            retention.tick,
            daily_trigger or retention_trigger(),
            id=RETENTION_JOB_ID,
            name="statistics retention",
            misfire_grace_time=RETENTION_MISFIRE_GRACE_SECONDS,
            coalesce=True,
            max_instances=1,
        )
    return scheduler


class StatsJobs:
    """The scheduler and its jobs, started and stopped on the server's running loop."""

    def __init__(
        self,
        rollup: MinuteRollup,
        retention: RetentionJob | None = None,
        *,
        minute_trigger: Any = None,
        daily_trigger: Any = None,
    ) -> None:
        self.rollup = rollup
        self.retention = retention
        self._minute_trigger = minute_trigger
        self._daily_trigger = daily_trigger
        self.scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        """Start the jobs; call from a coroutine on the loop that should run them."""
        loop = asyncio.get_running_loop()
        self.scheduler = build_scheduler(
            self.rollup,
            self.retention,
            loop=loop,
            minute_trigger=self._minute_trigger,
            daily_trigger=self._daily_trigger,
        )
        self.scheduler.start()

    async def stop(self) -> None:
        """Stop the jobs, wait for a write in progress, then write the last partial minute.

        Call after the HTTP server (and anything else that counts) has stopped, and before
        the engine is disposed.
        """
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None and scheduler.running:
            # Let a firing in progress finish first: shutting down cancels running jobs
            # (its write would still happen, but APScheduler logs the cancellation).
            await self.rollup.drain()
            await asyncio.sleep(0)
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a loop callback
        await self.rollup.flush_on_shutdown_async()
