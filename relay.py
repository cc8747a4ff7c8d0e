"""The composition root: `Relay(settings)` builds every part of one relay process, once.

Parts are built in the order they depend on each other, each from the settings through the
translation that lives beside its own configuration (`DispatchSettings.from_settings`,
`HandlerContext.from_settings`, `HealthSettings.from_settings`, `Intervals.from_settings`).
What can refuse the start without touching a file comes first (the senders' credentials,
the statistics password); then the database and the key files, checked against each other
(startup/). The whole build runs inside one `contextlib.ExitStack`: if any part fails, every
part built before it is closed again (the engine disposed, the writer's thread ended, the
thread pools shut down), and the error goes on to the caller.

Seams for tests, as keyword arguments: `senders` (instead of the ones the settings describe),
`clock` (the relay clock for persisted times), `rng` (the dispatcher's jitter) and
`wall_ms` (the statistics' UTC minutes). A sender is opened by its first push, so one built
here and never started holds nothing to close.

Lifecycle: `start()` listens, starts the dispatcher and the periodic jobs (jobs.py); `stop()`
stops taking requests, lets the ones in progress finish, drains the dispatcher, runs the jobs'
last writes, and closes everything the build opened, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from flask import Flask
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from app import AppParts, create_app, create_onion_core
from errors import StartupError
from handlers.endpoints import HandlerContext
from handlers.runner import WriteRunner
from jobs import Housekeeping, Intervals, RelayJobs
from logsetup import AccessLog, LoggedWSGIContainer
from lsrpc.paths import V2_PATH, V4_PATH
from push.dispatcher import Dispatcher, DispatchSettings, ProviderLane
from push.observed import observed
from push.outcome import ProviderSender
from push.senders import DeliveryConfigError, build_senders
from settings import Settings
from startup import open_storage
from stats.auth import StatsAuth
from stats.counters import Counters
from stats.healthz import PATH as HEALTH_PATH
from stats.healthz import HealthHandler, HealthProbe, HealthSettings
from stats.metrics import PushObservations, RelayMetrics
from stats.rollup import MinuteRollup, RetentionJob
from stats.worker_metrics import WorkerMetrics
from storage.clock import HeartbeatWriter, RelayClock, boot_id, resume_clock
from storage.protect import IdentifierProtector
from storage.queue import DeliveryQueue
from storage.records import Provider
from storage.store import RelayStore
from storage.writer import BatchWriter
from web.connections import CappedHTTPServer, fit_to_file_limit
from web.errorlog import RateLimitedLog
from web.h1server import H1Server
from web.onion import OnionCore
from web.onion_routes import GuardedFallbackHandler, OnionFront

log = logging.getLogger("pn_relay")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Senders = Mapping[Provider, ProviderSender | None]
T = TypeVar("T")

QUEUE_STATS_CACHE_S = 2.0  # scrapes closer together than this share one count
STATS_REFUSE_EVERYONE = (
    "the statistics endpoint refuses everyone: set STATS_USERNAME and STATS_PASSWORD_HASH in"
    " config.py (or PN_STATS_USERNAME and PN_STATS_PASSWORD_HASH in the environment);"
    " python -m stats.hash_password makes the hash"
)


def wall_ms() -> int:
    """Wall-clock milliseconds: for the statistics' UTC minutes, which follow the calendar."""
    return time.time_ns() // 1_000_000


class InFlight:
    """Counts requests being worked on in the thread pool, so shutdown can wait for them."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    def wrap(self, function: Callable[..., T]) -> Callable[..., T]:
        def counted(*args: Any) -> T:
            with self._lock:
                self._count += 1
            try:
                return function(*args)
            finally:
                with self._lock:
                    self._count -= 1

        return counted

    def wrap_async(
        self, function: Callable[[bytes], Awaitable[T]]
    ) -> Callable[[bytes], Awaitable[T]]:
        async def counted(body: bytes) -> T:
            with self._lock:
                self._count += 1
            try:
                return await function(body)
            finally:
                with self._lock:
                    self._count -= 1

        return counted

    def wrap_wsgi(self, app: WSGIApp) -> WSGIApp:
        # Materialise the body in the worker thread, so "done" means done.
        return self.wrap(lambda environ, start_response: list(app(environ, start_response)))


class Relay:
    """Every part of a running relay, built once from Settings (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        senders: Senders | None = None,
        clock: RelayClock | None = None,
        rng: random.Random | None = None,
        wall_ms: Callable[[], int] = wall_ms,
        worker_metrics: WorkerMetrics | None = None,
    ) -> None:
        """`worker_metrics`: one of several workers (supervisor.py), whose /metrics answers
        for all of them."""
        self.settings = settings
        self._worker_metrics = worker_metrics
        self.wall_ms = wall_ms
        with contextlib.ExitStack() as built:  # closes, on a failure, what was built so far
            # What can refuse the start without a file written comes first.
            if senders is None:
                senders = _senders_or_startup_error(settings)
            self.stats_auth = _stats_auth(settings)
            built.callback(self.stats_auth.close)
            self.engine, keys = open_storage(settings)
            built.callback(self.engine.dispose)
            if not self.stats_auth.configured:
                log.warning(STATS_REFUSE_EVERYONE)
            self.keypair = keys.server
            self.protector = IdentifierProtector(keys.identity, keys.token)
            boot = boot_id()
            if clock is None:
                with self.engine.connect() as conn:
                    clock = resume_clock(conn, boot=boot)
            self.clock = clock
            self.writer = BatchWriter(
                self.engine,
                max_batch=settings.WRITE_BATCH_MAX,
                gather_s=settings.WRITE_GATHER,
                on_loop=settings.SQLITE_SMALL_WRITES == "loop",
            )
            built.callback(self.writer.close)
            self.store = RelayStore(
                self.engine,
                self.writer,
                self.protector,
                clock.now_ms,
                max_devices=settings.MAX_DEVICES_PER_SESSION,
                max_members=settings.MAX_GROUP_MEMBERS,
                fanout_chunk=settings.FANOUT_CHUNK,
            )
            self.counters = Counters()
            self.in_flight = InFlight()
            self.errors = RateLimitedLog(log)  # unexpected errors: a line per kind and minute
            self.queue = DeliveryQueue(self.engine)
            self._queue_stats_cache: tuple[float, tuple[int, float]] | None = None
            self._dispatching = False
            # The lanes report their answers and latencies to `pushes`; the metrics, built
            # after the dispatcher, expose those and read the lanes' gauges.
            pushes = PushObservations() if settings.METRICS_ENABLED else None
            self.dispatcher = self._dispatcher(senders, rng, pushes)
            self.metrics = self._metrics(pushes) if pushes is not None else None
            if self.metrics is not None:
                built.callback(self.metrics.stop)
            self.jobs = self._jobs(HeartbeatWriter(self.engine, clock, boot))
            self.onion, self.app = self._apps()
            lanes = self.dispatcher.lanes
            self.health = HealthProbe(
                self.engine,
                self._dispatcher_alive,
                lanes=lambda: lanes,
                queue_age=self.oldest_queued_age_s,
                writer_commits=lambda: self.writer.commits,
                settings=HealthSettings.from_settings(settings),
            )
            built.callback(self.health.close)
            self.executor = ThreadPoolExecutor(settings.WEB_THREADS, thread_name_prefix="web")
            built.callback(self.executor.shutdown, wait=True)
            self._close = built.pop_all()
        self.http: H1Server | CappedHTTPServer | None = None
        self.port: int | None = None

    # -- the parts built from other parts ------------------------------------------------------

    def _metrics(self, pushes: PushObservations) -> RelayMetrics:
        lanes = self.dispatcher.lanes
        return RelayMetrics(
            self.counters,
            self.queue_stats,
            requests_in_flight=lambda: self.in_flight.count,
            pushes_in_flight=lambda: [(lane.provider, lane.in_flight) for lane in lanes],
            lanes_paused=lambda: [(lane.provider, lane.paused) for lane in lanes],
            database_errors=lambda: self.writer.failures,
            pushes=pushes,
            workers=self._worker_metrics,
        )

    def _dispatcher(
        self, senders: Senders, rng: random.Random | None, metrics: PushObservations | None
    ) -> Dispatcher:
        reporting = observed(dict(senders), metrics.observe_push_outcome if metrics else None)
        lane_settings = DispatchSettings.from_settings(self.settings)
        return Dispatcher(
            [
                ProviderLane(
                    provider,
                    sender,
                    writer=self.writer,
                    queue=self.queue,
                    protector=self.protector,
                    counters=self.counters,
                    settings=lane_settings,
                    observe_latency=metrics.observe_push_latency if metrics else None,
                    clock=self.clock,
                    rng=rng,
                )
                for provider, sender in reporting.items()
            ]
        )

    def _jobs(self, heartbeat: HeartbeatWriter) -> RelayJobs:
        settings = self.settings
        retention_days = settings.STATS_RETENTION_DAYS
        return RelayJobs(
            MinuteRollup(
                self.engine,
                self.counters,
                self.wall_ms,
                queue_depth=lambda: self.queue.depth(self.engine)[0],
            ),
            RetentionJob(self.engine, self.wall_ms, retention_days) if retention_days else None,
            Housekeeping(self.writer, self.store, heartbeat),
            intervals=Intervals.from_settings(settings),
        )

    def _apps(self) -> tuple[OnionCore, Flask]:
        """The onion core (served on the IOLoop) and the Flask app (everything else)."""
        settings = self.settings
        handlers = HandlerContext.from_settings(
            settings, self.store, self.counters, on_queued=self.dispatcher.wake
        )
        parts = AppParts(
            keypair=self.keypair,
            handlers=handlers,
            runner=WriteRunner(self.writer, self.errors),
            max_body_bytes=settings.MAX_BODY_BYTES,
            engine=self.engine,
            stats_auth=self.stats_auth,
            metrics=self.metrics,
            metrics_public=settings.METRICS_PUBLIC,
            dispatcher_alive=self._dispatcher_alive,
            clock_ms=self.wall_ms,
            errors=self.errors,
            queue_stats=self.queue_stats,
        )
        return create_onion_core(parts), create_app(parts)

    # -- what /healthz and /metrics read -----------------------------------------------------

    def _dispatcher_alive(self) -> bool:
        """For /healthz: the dispatcher runs (or was deliberately not started, in tests)."""
        return not self._dispatching or self.dispatcher.alive()

    def queue_stats(self) -> tuple[int, float]:
        """(deliveries waiting, age in seconds of the oldest) for /metrics, at scrape time.

        Read on a connection of its own, never through the writer (see DeliveryQueue.depth).
        """
        now = time.monotonic()
        cached = self._queue_stats_cache
        if cached is not None and now - cached[0] < QUEUE_STATS_CACHE_S:
            return cached[1]
        count, oldest = self.queue.depth(self.engine)
        age = self._age_s(oldest)
        self._queue_stats_cache = (now, (count, age))
        return count, age

    def oldest_queued_age_s(self) -> float:
        """Seconds the oldest queued push has waited (0 when none), for /healthz (uncached:
        health caches its own probe). Read beside the writer, like `queue_stats`."""
        _, oldest = self.queue.depth(self.engine)
        return self._age_s(oldest)

    def _age_s(self, created_at_ms: int | None) -> float:
        """Seconds since `created_at_ms` on the relay clock (0 for none, or for the future)."""
        if created_at_ms is None:
            return 0.0
        return max(0.0, (self.clock.now_ms() - created_at_ms) / 1000)

    # -- serving -----------------------------------------------------------------------------

    def http_front(self) -> OnionFront:
        """What the HTTP server runs: the onion paths answered by `OnionFront` (on the
        IOLoop, no RequestHandler), every other request by `tornado_app`."""
        in_flight, errors = self.in_flight, self.errors
        access = AccessLog(self.settings.ACCESS_LOG)

        def answered(method: str, path: str, status: int, seconds: float) -> None:
            log_server_error(errors, status, method, path)
            access.record(method, path, status, seconds)

        return OnionFront(
            {
                V2_PATH: in_flight.wrap_async(self.onion.answer_v2),
                V4_PATH: in_flight.wrap_async(self.onion.answer_v4),
            },
            self.tornado_app(access),
            max_body_bytes=self.settings.MAX_BODY_BYTES,
            errors=errors,
            answered=answered,
        )

    def tornado_app(self, access: AccessLog) -> Application:
        """/healthz on Tornado directly (on the IOLoop), all else on the Flask app; aliases
        of the onion paths reach neither Flask nor a web thread."""
        wsgi = LoggedWSGIContainer(
            self.in_flight.wrap_wsgi(self.app.wsgi_app),
            executor=self.executor,
            access_log=access,
        )
        errors = self.errors

        def log_request(handler: RequestHandler) -> None:
            log_server_errors(handler, errors)
            access.tornado(handler)

        return Application(
            [
                (HEALTH_PATH, HealthHandler, {"probe": self.health, "errors": errors}),
                (r".*", GuardedFallbackHandler, {"fallback": wsgi, "errors": errors}),
            ],
            log_function=log_request,
        )

    async def start(
        self, *, dispatch: bool = True, sockets: list[socket.socket] | None = None
    ) -> None:
        """Listen (on `sockets` if bound already: `serve` binds before any file is made),
        and (unless `dispatch` is False: tests that inspect the queue) push."""
        # Tornado refuses bodies past its own limit with a bare 400 before any handler sees
        # them; keep it well above MAX_BODY_BYTES so oversized bodies get a clear 413.
        tornado_limit = max(4 * self.settings.MAX_BODY_BYTES, 1024 * 1024)
        limits: dict[str, Any] = {
            "max_body_size": tornado_limit,
            "idle_connection_timeout": self.settings.IDLE_CONNECTION_TIMEOUT,
            "body_timeout": self.settings.BODY_TIMEOUT,
            "max_connections": fit_to_file_limit(self.settings.MAX_CONNECTIONS),
        }
        if sockets is None:
            sockets = bind_listening_sockets(self.settings)
        if self.settings.HTTP_SERVER == "tornado":
            tornado_http = CappedHTTPServer(self.http_front(), xheaders=False, **limits)
            tornado_http.add_sockets(sockets)
            self.http = tornado_http
            self.port = _bound_port(tornado_http)
        else:
            own_http = H1Server(self.http_front(), **limits)
            self.http = own_http
            await own_http.listen(sockets)
            self.port = own_http.port
        if dispatch:
            self.dispatcher.start()
        self._dispatching = dispatch
        self.jobs.start()
        if self.metrics is not None:
            self.metrics.start()
        log.info(
            "pn-relay listening on http://%s:%d (server public key %s)",
            self.settings.HOST,
            self.port,
            self.keypair.public_hex,
        )

    async def stop(self, grace_seconds: float = 10.0) -> None:
        if self.http is not None:
            self.http.stop()
            deadline = time.monotonic() + grace_seconds
            while self.in_flight.count and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # let the IOLoop write the last answers
            await self.http.close_all_connections()
        await self.dispatcher.stop(timeout=grace_seconds)
        # Nothing counts any more: stop the jobs, then their last writes (the partial minute,
        # the clock's heartbeat) while the writer and the engine are still open.
        await self.jobs.stop(grace_seconds)
        await asyncio.get_running_loop().run_in_executor(None, self.close)
        log.info("pn-relay stopped")

    def close(self) -> None:
        """Close what the build opened, in reverse order (blocking). `stop` ends with it; a
        relay that was built and never started needs only this."""
        self._close.close()


def _senders_or_startup_error(settings: Settings) -> dict[Provider, ProviderSender | None]:
    try:
        return build_senders(settings)
    except DeliveryConfigError as exc:
        raise StartupError(str(exc)) from None


def _stats_auth(settings: Settings) -> StatsAuth:
    try:
        return StatsAuth(
            settings.STATS_USERNAME,
            settings.STATS_PASSWORD or None,
            settings.STATS_PASSWORD_HASH or None,
            threads=settings.STATS_AUTH_THREADS,
            max_pending=settings.STATS_AUTH_MAX_PENDING,
            failures_per_minute=settings.STATS_AUTH_FAILURES_PER_MINUTE,
        )
    except ValueError as exc:  # both set, or a malformed hash: one line, at start
        raise StartupError(str(exc)) from None


def log_server_errors(handler: RequestHandler, errors: RateLimitedLog) -> None:
    """Tornado's per-request log, reduced to server errors (never a client's data), at most
    a line per status and minute."""
    # /healthz answers 503 on purpose, and stats/healthz.py logs each change of its answer.
    if not isinstance(handler, HealthHandler):
        status, method = handler.get_status(), handler.request.method or "-"
        log_server_error(errors, status, method, type(handler).__name__)


def log_server_error(errors: RateLimitedLog, status: int, method: str, where: str) -> None:
    """One line per server-error status and minute: the status, method and `where` (a
    handler's name or an onion path: never a client's data)."""
    if status >= 500:
        errors.log(logging.ERROR, f"status {status}", "%d %s %s", status, method, where)


def _bound_port(http: HTTPServer) -> int:
    for sock in http._sockets.values():
        return int(sock.getsockname()[1])
    raise StartupError("the HTTP server has no listening socket")


def bind_listening_sockets(settings: Settings) -> list[socket.socket]:
    """Bind HOST:PORT, or StartupError in one line (e.g. the port is in use)."""
    try:
        return bind_sockets(settings.PORT, settings.HOST, reuse_port=settings.REUSE_PORT)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {settings.HOST}:{settings.PORT}: {exc.strerror or exc}"
        ) from None
    except ValueError as exc:  # reuse_port where the system has none
        raise StartupError(f"REUSE_PORT: {exc}") from None
