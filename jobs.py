"""Every periodic job of one relay process, under one scheduler, registered in one place.

One APScheduler `AsyncIOScheduler` on the relay's loop runs them all (`RelayJobs.table`):

- `stats-minute-rollup`, second 0 of every UTC minute, in every process: each adds its own
  counts (stats/rollup.py), in a transaction of its own.
- `stats-retention`, 03:17 UTC daily: every process fires it, the one that claims the
  `job_leases` row runs it and the others skip (stats/rollup.py), in a transaction of its own.
- `clock-heartbeat`, at start and then every 30 s, in every process (the row of a boot holds
  whichever wrote last: storage/clock.py), through the writer.
- `purge-expired`, at start and then every DEDUP_WINDOW (at least a minute, at most an hour),
  in every process (deletes of what has expired, idempotent: storage/store.py), through the
  writer.

Why the statistics jobs write beside the writer, not through it: ARCHITECTURE.md ("Writes
beside the writer"). Each job is coalesced (missed firings run once) and never overlaps
itself. A failed write is logged and the next firing tries again; the roll-up keeps the counts
it could not write.

Stopping (`stop`, after the HTTP server and the dispatcher have stopped, before the writer
closes): no new firing starts, the firings in progress finish (or are cancelled after the
grace), then the last partial minute is written and the clock's last heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from settings import Settings
from stats.rollup import MinuteRollup, RetentionJob
from storage.clock import HeartbeatWriter
from storage.store import RelayStore
from storage.writer import BatchWriter, StorageError

log = logging.getLogger(__name__)

ROLLUP_JOB_ID = "stats-minute-rollup"
RETENTION_JOB_ID = "stats-retention"
HEARTBEAT_JOB_ID = "clock-heartbeat"
PURGE_JOB_ID = "purge-expired"


@dataclass(frozen=True)
class Job:
    """One periodic job: what runs, when, and how late a firing may still run."""

    id: str
    name: str
    run: Callable[[], Awaitable[None]]
    trigger: BaseTrigger
    misfire_grace_s: int
    at_start: bool = False  # also fire once as soon as the scheduler starts

    @classmethod
    def at_start_and_every(
        cls, seconds: float, job_id: str, name: str, run: Callable[[], Awaitable[None]]
    ) -> Job:
        """Fires at start, then every `seconds`; a firing up to one interval late still runs."""
        return cls(job_id, name, run, IntervalTrigger(seconds=seconds), int(seconds), True)


@dataclass(frozen=True)
class Intervals:
    """How often the housekeeping jobs fire."""

    heartbeat_s: float = 30.0
    purge_s: float = 600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Intervals:
        """Expired dedup fingerprints are purged once a window, but at most once a minute
        and at least once an hour."""
        return cls(purge_s=min(max(settings.DEDUP_WINDOW, 60.0), 3600.0))


class Housekeeping:
    """The writer's periodic work: the relay clock's heartbeat, and purging what expired
    (dedup fingerprints, fan-outs abandoned mid-way by a process that died)."""

    def __init__(self, writer: BatchWriter, store: RelayStore, heartbeat: HeartbeatWriter) -> None:
        self._writer = writer
        self._store = store
        self._heartbeat = heartbeat
        self.stopping = False

    async def beat(self) -> None:
        with _failure_logged():
            loop = asyncio.get_running_loop()
            await self._writer.submit_on_loop(self._heartbeat.op(), loop)

    async def purge(self) -> None:
        store, writer = self._store, self._writer
        with _failure_logged():
            loop = asyncio.get_running_loop()
            # Many rows each: on the writer thread (BatchWriter.submit_on_loop).
            await writer.submit_on_loop(store.purge_expired_dedup_op(), loop, on_thread=True)
            # A chunk per operation, so other writes run in between.
            while not self.stopping and await writer.submit_on_loop(
                store.purge_abandoned_fanouts_op(), loop, on_thread=True
            ):
                pass


@contextlib.contextmanager
def _failure_logged() -> Iterator[None]:
    """A write the database refused: one line; the next firing tries again."""
    try:
        yield
    except StorageError as exc:
        log.warning("housekeeping write failed: %s", exc)


def daily_at_0317() -> CronTrigger:
    return CronTrigger(hour=3, minute=17, second=0, timezone=datetime.UTC)


def every_minute() -> CronTrigger:
    return CronTrigger(second=0, timezone=datetime.UTC)


@dataclass(eq=False)
class RelayJobs:
    """The scheduler and the table of jobs, started and stopped on the relay's loop.

    `housekeeping` None: the statistics jobs only (tests of the roll-up). `triggers` replaces
    the trigger of the job with that id (tests fire a job every few milliseconds).
    """

    rollup: MinuteRollup
    retention: RetentionJob | None = None
    housekeeping: Housekeeping | None = None
    _: KW_ONLY
    intervals: Intervals = Intervals()
    triggers: Mapping[str, BaseTrigger] = field(default_factory=dict)
    scheduler: AsyncIOScheduler | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._running: set[asyncio.Task[object]] = set()

    def table(self) -> list[Job]:
        """Every job of the process, in one place (the module docstring says why each runs
        where it does)."""
        jobs = [
            Job(ROLLUP_JOB_ID, "statistics minute roll-up", self.rollup.tick, every_minute(), 50)
        ]
        if self.retention is not None:
            retention = self.retention.tick
            jobs.append(
                Job(RETENTION_JOB_ID, "statistics retention", retention, daily_at_0317(), 3600)
            )
        if self.housekeeping is not None:
            beat, purge, every = self.housekeeping.beat, self.housekeeping.purge, self.intervals
            jobs.append(
                Job.at_start_and_every(every.heartbeat_s, HEARTBEAT_JOB_ID, "clock heartbeat", beat)
            )
            jobs.append(Job.at_start_and_every(every.purge_s, PURGE_JOB_ID, "purge expired", purge))
        return jobs

    def build_scheduler(self, loop: asyncio.AbstractEventLoop | None = None) -> AsyncIOScheduler:
        """An unstarted scheduler holding `table()` (`loop`: the running one at `start()`)."""
        return build_scheduler([self._tracked(job) for job in self.table()], loop)

    def start(self) -> None:
        """Start the jobs; call from a coroutine on the loop that should run them."""
        self.scheduler = self.build_scheduler(asyncio.get_running_loop())
        self.scheduler.start()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Let the firings in progress finish, stop the jobs, then write the last partial
        minute and the last heartbeat. Call before the writer and the engine close."""
        scheduler, self.scheduler = self.scheduler, None
        if self.housekeeping is not None:
            self.housekeeping.stopping = True
        if scheduler is not None and scheduler.running:
            scheduler.pause()
            if self._running:
                await asyncio.wait(set(self._running), timeout=grace_s)
            scheduler.shutdown(wait=False)  # cancels a firing that outlived the grace
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a loop callback
        await self.rollup.flush_on_shutdown_async()
        if self.housekeeping is not None:
            await self.housekeeping.beat()

    def _tracked(self, job: Job) -> Job:
        """`job` with its firings kept in `_running`, so that `stop` can wait for them."""
        run = job.run

        async def tracked() -> None:
            task = asyncio.current_task()
            if task is not None:
                self._running.add(task)
            try:
                await run()
            finally:
                if task is not None:
                    self._running.discard(task)

        return dataclasses.replace(job, run=tracked, trigger=self.triggers.get(job.id, job.trigger))


def build_scheduler(
    jobs: Iterable[Job], loop: asyncio.AbstractEventLoop | None = None
) -> AsyncIOScheduler:
    """An unstarted AsyncIOScheduler with `jobs`, each coalescing missed firings into one and
    never running twice at once."""
    scheduler = AsyncIOScheduler(event_loop=loop, timezone=datetime.UTC)
    for job in jobs:
        extra = {"next_run_time": datetime.datetime.now(datetime.UTC)} if job.at_start else {}
        scheduler.add_job(
            job.run,
            job.trigger,
            id=job.id,
            name=job.name,
            misfire_grace_time=job.misfire_grace_s,
            coalesce=True,
            max_instances=1,
            **extra,
        )
    return scheduler
