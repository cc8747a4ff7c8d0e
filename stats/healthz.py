"""`GET /healthz` on Tornado's IOLoop: "ok", or 503 and every reason it is not, in one line.

Served on the IOLoop, so a flood of statistics or metrics requests (web threads, the
statistics auth's PBKDF2 pool) never makes an orchestrator's probe time out. It checks:

- **the database accepts writes**: a real write (storage/write_probe.py), because a read
  succeeds on a read-only file, a full disk or a database someone else holds locked. The
  probe runs on one thread of its own, at most once every `write_probe_interval_s`; its
  result is cached between, and concurrent requests share a probe in progress. If the probe
  gave up waiting for a lock while the relay's own BatchWriter committed, the lock was the
  writer's (busy, not stuck): writes work. A probe that has not answered within
  `answer_within_s` (a PostgreSQL that does not answer at all) is a 503 too.
- **the dispatcher runs**, and **no provider lane is paused** for a configuration error
  (push/dispatcher.py: the lane logs which setting to check).
- **the oldest queued push** is younger than `max_queue_age_s` (HEALTH_MAX_QUEUE_AGE; 0: not
  checked), read with the write probe from `queue_age` (DeliveryQueue.depth, on its own
  connection, never through the writer).

The answer names the database's own message ("database refuses writes: attempt to write a
readonly database"), and so does the log: one line when the verdict changes (unhealthy, and
why; healthy again), never one per probe. The message is about the probe's own row, which
holds no identifier. A connection failure's message (it may name the database's host) goes to
the log only: /healthz is often reachable from outside.

The bare WSGI app (`app.create_app` alone, without the relay's Tornado server) answers
/healthz from `create_health_blueprint`: the database answers a read, the dispatcher runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, dataclass, field
from typing import Protocol

from flask import Blueprint, Response
from sqlalchemy import Engine, text

from settings import Settings
from storage.write_probe import WriteProbe
from web.answers import plain, send, to_flask
from web.errorlog import RateLimitedLog
from web.handlers import PlainErrorsHandler

log = logging.getLogger(__name__)

PATH = "/healthz"


class Lane(Protocol):
    """What health needs of a push/dispatcher.py ProviderLane."""

    @property
    def name(self) -> str: ...

    @property
    def paused(self) -> bool: ...


@dataclass(frozen=True)
class HealthSettings:
    max_queue_age_s: float = 1800.0  # 0: the queue's age is not checked
    write_probe_interval_s: float = 5.0
    write_timeout_s: float = 1.0
    answer_within_s: float = 3.0

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthSettings:
        return cls(max_queue_age_s=settings.HEALTH_MAX_QUEUE_AGE)


@dataclass(frozen=True)
class Reason:
    """Why health is not ok: `text` for the answer, `detail` for the log only."""

    text: str
    detail: str = ""

    @property
    def logged(self) -> str:
        return f"{self.text}: {self.detail}" if self.detail else self.text


@dataclass(frozen=True)
class DatabaseVerdict:
    """The cached result of one probe: the reasons it found (none: healthy)."""

    reasons: tuple[Reason, ...]
    at: float  # monotonic seconds


@dataclass(eq=False)
class HealthProbe:
    """What /healthz checks (module docstring); each source None: not checked."""

    engine: Engine
    dispatcher_alive: Callable[[], bool] | None = None
    _: KW_ONLY
    lanes: Callable[[], Iterable[Lane]] | None = None
    queue_age: Callable[[], float] | None = None
    writer_commits: Callable[[], int] | None = None
    settings: HealthSettings = HealthSettings()
    monotonic: Callable[[], float] = time.monotonic
    probes: int = field(default=0, init=False)  # write probes run so far

    def __post_init__(self) -> None:
        self._write_probe = WriteProbe(self.engine, timeout_s=self.settings.write_timeout_s)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="healthz")
        self._running: asyncio.Future[DatabaseVerdict] | None = None
        self._cached: DatabaseVerdict | None = None
        self._last_reasons: tuple[Reason, ...] = ()

    async def check(self) -> tuple[int, str]:
        """(200, "ok") or (503, "reason; reason"): on the IOLoop."""
        reasons = (*await self._database_reasons(), *self._loop_reasons())
        self._log_change(reasons)
        if reasons:
            return 503, "; ".join(reason.text for reason in reasons)
        return 200, "ok"

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._write_probe.close()

    # -- what is read on the loop (cheap, every request) ----------------------------------

    def _loop_reasons(self) -> list[Reason]:
        reasons: list[Reason] = []
        dispatcher = dispatcher_reason(self.dispatcher_alive)
        if dispatcher is not None:
            return [dispatcher]
        for lane in self.lanes() if self.lanes is not None else ():
            if lane.paused:
                reasons.append(
                    Reason(
                        f"{lane.name} pushes paused: the provider refused our configuration"
                        " (the log says which setting to check)"
                    )
                )
        return reasons

    # -- what needs the database (a thread, cached) -----------------------------------------

    async def _database_reasons(self) -> tuple[Reason, ...]:
        cached = self._cached
        interval = self.settings.write_probe_interval_s
        if cached is not None and self.monotonic() - cached.at < interval:
            return cached.reasons
        if self._running is None or self._running.done():
            self._running = asyncio.wrap_future(self._executor.submit(self._probe))
        try:
            verdict = await asyncio.wait_for(
                asyncio.shield(self._running), self.settings.answer_within_s
            )
        except TimeoutError:
            # Not cached: the probe goes on, and the next request joins it.
            return (Reason(f"database did not answer within {self.settings.answer_within_s:g} s"),)
        self._cached = verdict
        return verdict.reasons

    def _probe(self) -> DatabaseVerdict:
        """Blocking, on the probe's own thread: the write probe, then the queue's age."""
        self.probes += 1
        commits_before = self._commits()
        check = self._write_probe.run()
        reasons: list[Reason] = []
        if not check.reachable:
            # Its message may name the database's host: the log's, not the open answer's.
            reasons.append(Reason("database unreachable", check.message))
        elif not check.ok and not (check.locked and self._commits() != commits_before):
            reasons.append(Reason(f"database refuses writes: {check.message}"))
        limit = self.settings.max_queue_age_s
        if check.reachable and limit > 0 and self.queue_age is not None:
            try:
                age = self.queue_age()
            except Exception as exc:  # noqa: BLE001 - the write verdict above says enough
                log.debug("health check: queue age unreadable (%s)", type(exc).__name__)
            else:
                if age > limit:
                    reasons.append(
                        Reason(
                            f"oldest queued push waited more than {limit:g} s"
                            " (HEALTH_MAX_QUEUE_AGE)"
                        )
                    )
        return DatabaseVerdict(tuple(reasons), self.monotonic())

    def _commits(self) -> int:
        return self.writer_commits() if self.writer_commits is not None else 0

    def _log_change(self, reasons: tuple[Reason, ...]) -> None:
        if reasons == self._last_reasons:
            return
        self._last_reasons = reasons
        if reasons:
            log.warning("health: unhealthy: %s", "; ".join(reason.logged for reason in reasons))
        else:
            log.info("health: ok again")


def dispatcher_reason(dispatcher_alive: Callable[[], bool] | None) -> Reason | None:
    """Why the dispatcher makes health fail, or None (`dispatcher_alive` None: no dispatcher)."""
    if dispatcher_alive is None:
        return None
    try:
        alive = bool(dispatcher_alive())
    except Exception as exc:  # noqa: BLE001 - any failure means: not healthy
        log.warning("health check: dispatcher check failed (%s)", type(exc).__name__)
        return Reason("dispatcher check failed")
    return None if alive else Reason("dispatcher not running")


def database_reachable(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means: not healthy
        log.warning("health check: database unreachable (%s)", type(exc).__name__)
        return False
    return True


def create_health_blueprint(
    engine: Engine, dispatcher_alive: Callable[[], bool] | None = None
) -> Blueprint:
    """`GET /healthz` of the bare WSGI app (app.create_app alone): the database answers a read,
    and the dispatcher runs. A running relay answers /healthz with `HealthHandler` instead."""
    blueprint = Blueprint("health", __name__)

    @blueprint.get(PATH)
    def healthz() -> Response:
        reason = None if database_reachable(engine) else Reason("database unreachable")
        reason = reason or dispatcher_reason(dispatcher_alive)
        status, line = (200, "ok") if reason is None else (503, reason.text)
        return to_flask(plain(status, line))

    return blueprint


class HealthHandler(PlainErrorsHandler):
    SUPPORTED_METHODS = ("GET", "HEAD")

    def initialize(  # type: ignore[override]
        self, probe: HealthProbe, errors: RateLimitedLog
    ) -> None:
        super().initialize(errors)
        self._probe = probe

    async def get(self) -> None:
        status, reason = await self._probe.check()
        send(self, plain(status, reason, [("Cache-Control", "no-store")]))

    async def head(self) -> None:
        await self.get()  # Tornado sends the headers (and Content-Length) without the body
