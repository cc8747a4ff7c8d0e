"""pn-relay: `python server.py [--config FILE] [--host H] [--port P] [--print-pubkey]`.

Builds every part once, wires them together, runs the IOLoop, and shuts down cleanly on
SIGTERM or Ctrl-C (in-flight requests finish, queued writes commit, the database closes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler
from tornado.wsgi import WSGIContainer

from app import AppParts, create_app, create_onion_endpoint, without_onion_routes
from handlers.endpoints import HandlerContext
from handlers.runner import OutcomeRunner
from lsrpc.keys import (
    KeyFileError,
    ServerKeypair,
    load_or_create_hex_secret,
    load_or_create_keypair,
)
from lsrpc.paths import V2_PATH, V4_PATH
from lsrpc.route import GuardedFallbackHandler, LsrpcHandler
from push.dispatcher import Dispatcher, DispatchSettings, LatencyObserver, ProviderLane
from push.observed import observed
from push.outcome import ProviderSender
from push.senders import DeliveryConfigError, build_senders
from settings import Settings, SettingsError, load_settings
from stats.auth import StatsAuth
from stats.counters import Counters
from stats.healthz import PATH as HEALTH_PATH
from stats.healthz import HealthHandler, HealthProbe
from stats.metrics import RelayMetrics
from stats.rollup import MinuteRollup, RetentionJob, StatsJobs
from stats.schema import create_stats_schema
from storage.clock import HeartbeatWriter, RelayClock, boot_id, resume_clock
from storage.engine import DatabaseConfigError, create_schema, make_engine
from storage.protect import IdentifierProtector
from storage.queue import DeliveryQueue
from storage.records import Provider
from storage.store import RelayStore
from storage.writer import BatchWriter, StorageError
from web.connections import CappedHTTPServer, fit_to_file_limit
from web.errorlog import RateLimitedLog

log = logging.getLogger("pn_relay")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
T = TypeVar("T")


class StartupError(Exception):
    """A reason the relay cannot start, said in one line."""


def now_ms() -> int:
    """Wall-clock milliseconds: for the statistics' UTC minutes, which follow the calendar."""
    return time.time_ns() // 1_000_000


HEARTBEAT_INTERVAL_S = 30.0  # how often the relay clock's heartbeat row is written
QUEUE_STATS_CACHE_S = 2.0  # scrapes closer together than this share one count


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
    """Every part of a running relay, built once from Settings."""

    def __init__(self, settings: Settings, *, clock: RelayClock | None = None) -> None:
        self.settings = settings
        try:  # a wrong URL is refused before any file is written
            self.engine: Engine = make_engine(
                settings.database_url,
                pool_size=settings.db_pool_size,
                sqlite_synchronous=settings.SQLITE_SYNCHRONOUS,
            )
        except DatabaseConfigError as exc:
            raise StartupError(str(exc)) from None
        self.keypair, created = _load_keypair(settings.key_file)
        if created:
            log.info("generated a new server key in %s", settings.key_file)
        self.protector = _load_protector(settings)
        try:
            create_schema(self.engine)  # stats.schema is imported above: its tables too
            create_stats_schema(self.engine)  # and columns for counters added since
        except DatabaseConfigError as exc:
            self.engine.dispose()
            raise StartupError(str(exc)) from None
        try:
            senders = build_senders(settings)
        except DeliveryConfigError as exc:
            self.engine.dispose()
            raise StartupError(str(exc)) from None
        boot = boot_id()
        if clock is None:
            with self.engine.connect() as conn:
                clock = resume_clock(conn, boot=boot)
        self.clock = clock
        self.heartbeat = HeartbeatWriter(self.engine, clock, boot)
        self.writer = BatchWriter(self.engine, max_batch=settings.WRITE_BATCH_MAX)
        self.store = RelayStore(self.engine, self.writer, self.protector, clock.now_ms)
        self.counters = Counters()
        self.in_flight = InFlight()
        self.errors = RateLimitedLog(log)  # unexpected errors: a line per kind and minute
        try:
            stats_auth = StatsAuth(
                settings.STATS_USERNAME,
                settings.STATS_PASSWORD or None,
                settings.STATS_PASSWORD_HASH or None,
                threads=settings.STATS_AUTH_THREADS,
                max_pending=settings.STATS_AUTH_MAX_PENDING,
                failures_per_minute=settings.STATS_AUTH_FAILURES_PER_MINUTE,
            )
        except ValueError as exc:  # both set, or a malformed hash: one line, at start
            self.writer.close()
            self.engine.dispose()
            raise StartupError(str(exc)) from None
        self.stats_auth = stats_auth
        if not stats_auth.configured:
            log.warning(
                "the statistics endpoint refuses everyone: set STATS_USERNAME and"
                " STATS_PASSWORD_HASH (python -m stats.hash_password)"
            )
        self.queue = DeliveryQueue(self.engine)
        self._queue_stats_cache: tuple[float, tuple[int, float]] | None = None
        self._dispatching = False
        self.metrics = (
            RelayMetrics(
                self.counters,
                self.queue_stats,
                requests_in_flight=lambda: self.in_flight.count,
                pushes_in_flight=lambda: [
                    (lane.provider, lane.in_flight) for lane in self.dispatcher.lanes
                ],
                lanes_paused=lambda: [
                    (lane.provider, lane.paused) for lane in self.dispatcher.lanes
                ],
                database_errors=lambda: self.writer.failures,
            )
            if settings.METRICS_ENABLED
            else None
        )
        self.stats_jobs = StatsJobs(
            MinuteRollup(self.engine, self.counters, now_ms),
            RetentionJob(self.engine, now_ms, settings.STATS_RETENTION_DAYS)
            if settings.STATS_RETENTION_DAYS
            else None,
        )
        self.dispatcher = build_dispatcher(
            observed(senders, self.metrics.observe_push_outcome if self.metrics else None),
            writer=self.writer,
            protector=self.protector,
            counters=self.counters,
            settings=settings,
            queue=self.queue,
            observe_latency=self.metrics.observe_push_latency if self.metrics else None,
            clock=clock,
        )
        handlers = HandlerContext(
            store=self.store,
            counters=self.counters,
            max_data_bytes=settings.MAX_DATA_BYTES,
            dedup_window_ms=int(settings.DEDUP_WINDOW * 1000),
            on_queued=self.dispatcher.wake,
        )
        parts = AppParts(
            keypair=self.keypair,
            handlers=handlers,
            runner=OutcomeRunner(self.writer, self.errors),
            max_body_bytes=settings.MAX_BODY_BYTES,
            engine=self.engine,
            stats_auth=stats_auth,
            metrics=self.metrics,
            metrics_public=settings.METRICS_PUBLIC,
            dispatcher_alive=self._dispatcher_alive,
            clock_ms=now_ms,
            errors=self.errors,
        )
        self.onion = create_onion_endpoint(parts)
        self.health = HealthProbe(self.engine, self._dispatcher_alive)
        self.app = create_app(parts, self.onion)
        self.executor = ThreadPoolExecutor(settings.WEB_THREADS, thread_name_prefix="web")
        self.http: CappedHTTPServer | None = None
        self.port: int | None = None
        self._housekeeping: asyncio.Task[None] | None = None

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
        age = 0.0 if oldest is None else max(0.0, (self.clock.now_ms() - oldest) / 1000)
        self._queue_stats_cache = (now, (count, age))
        return count, age

    def tornado_app(self) -> Application:
        """The onion paths and /healthz on Tornado directly (on the IOLoop), all else on the
        Flask app; aliases of the onion paths reach neither Flask nor a web thread."""
        wsgi = WSGIContainer(
            self.in_flight.wrap_wsgi(without_onion_routes(self.app)),
            executor=self.executor,
        )
        errors = self.errors
        onion_routes = [
            (path, LsrpcHandler, {"answer": self.in_flight.wrap_async(answer), "errors": errors})
            for path, answer in (
                (V2_PATH, self.onion.answer_v2_async),
                (V4_PATH, self.onion.answer_v4_async),
            )
        ]
        return Application(
            [
                *onion_routes,
                (HEALTH_PATH, HealthHandler, {"probe": self.health, "errors": errors}),
                (r".*", GuardedFallbackHandler, {"fallback": wsgi, "errors": errors}),
            ],
            log_function=lambda handler: log_server_errors(handler, errors),
        )

    async def start(self, *, dispatch: bool = True) -> None:
        """Listen, and (unless `dispatch` is False: tests that inspect the queue) push."""
        # Tornado refuses bodies past its own limit with a bare 400 before any handler sees
        # them; keep it well above MAX_BODY_BYTES so oversized bodies get a clear 413.
        tornado_limit = max(4 * self.settings.MAX_BODY_BYTES, 1024 * 1024)
        self.http = CappedHTTPServer(
            self.tornado_app(),
            max_body_size=tornado_limit,
            xheaders=False,
            idle_connection_timeout=self.settings.IDLE_CONNECTION_TIMEOUT,
            body_timeout=self.settings.BODY_TIMEOUT,
            max_connections=fit_to_file_limit(self.settings.MAX_CONNECTIONS),
        )
        self.http.listen(
            self.settings.PORT, address=self.settings.HOST, reuse_port=self.settings.REUSE_PORT
        )
        self.port = _bound_port(self.http)
        if dispatch:
            self.dispatcher.start()
        self._dispatching = dispatch
        self.stats_jobs.start()
        self._housekeeping = asyncio.create_task(self._housekeep())
        log.info(
            "pn-relay listening on http://%s:%d (server public key %s)",
            self.settings.HOST,
            self.port,
            self.keypair.public_hex,
        )

    async def _housekeep(self) -> None:
        """The clock's heartbeat every HEARTBEAT_INTERVAL_S; expired dedup fingerprints purged
        every window (at most hourly)."""
        purge_every = min(max(self.settings.DEDUP_WINDOW, 60.0), 3600.0)
        loop = asyncio.get_running_loop()
        last_purge = time.monotonic()
        while True:
            try:
                await self.writer.submit_on_loop(self.heartbeat.op(), loop)
                if time.monotonic() - last_purge >= purge_every:
                    last_purge = time.monotonic()
                    await self.writer.submit_on_loop(self.store.purge_expired_dedup_op(), loop)
            except StorageError as exc:
                log.warning("housekeeping write failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def stop(self, grace_seconds: float = 10.0) -> None:
        if self.http is not None:
            self.http.stop()
            deadline = time.monotonic() + grace_seconds
            while self.in_flight.count and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # let the IOLoop write the last answers
            await self.http.close_all_connections()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        await self.dispatcher.stop(timeout=grace_seconds)
        # Nothing counts any more: stop the roll-up and write the last, partial minute
        # while the engine is still open.
        await self.stats_jobs.stop()
        await asyncio.get_running_loop().run_in_executor(None, self._close_blocking)
        log.info("pn-relay stopped")

    def _close_blocking(self) -> None:
        self.executor.shutdown(wait=True)
        self.health.close()
        self.stats_auth.close()
        with contextlib.suppress(StorageError):
            self.writer.submit(self.heartbeat.op())
        self.writer.close()
        self.engine.dispose()


def build_dispatcher(
    senders: dict[Provider, ProviderSender | None],
    *,
    writer: BatchWriter,
    protector: IdentifierProtector,
    counters: Counters,
    settings: Settings,
    queue: DeliveryQueue,
    observe_latency: LatencyObserver | None = None,
    clock: RelayClock | None = None,
) -> Dispatcher:
    dispatch_settings = DispatchSettings(
        lease_ms=int(settings.DELIVERY_LEASE * 1000),
        max_age_ms=int(settings.PUSH_MAX_AGE * 1000),
        backoff_base_s=settings.PUSH_RETRY_BASE,
        config_pause_s=max(settings.PUSH_RETRY_BASE, 1.0) * 30,
    )
    lanes = [
        ProviderLane(
            provider,
            sender,
            writer=writer,
            queue=queue,
            protector=protector,
            counters=counters,
            settings=dispatch_settings,
            observe_latency=observe_latency,
            clock=clock,
        )
        for provider, sender in senders.items()
    ]
    return Dispatcher(lanes)


def log_server_errors(handler: RequestHandler, errors: RateLimitedLog) -> None:
    """Tornado's per-request log, reduced to server errors (never a client's data), at most
    a line per status and minute."""
    status = handler.get_status()
    if status >= 500:
        method = handler.request.method
        errors.log(
            logging.ERROR, f"status {status}", "%d %s %s", status, method, type(handler).__name__
        )


def _bound_port(http: HTTPServer) -> int:
    for sock in http._sockets.values():
        return int(sock.getsockname()[1])
    raise StartupError("the HTTP server has no listening socket")


def _load_keypair(path: Path) -> tuple[ServerKeypair, bool]:
    try:
        return load_or_create_keypair(path)
    except KeyFileError as exc:
        raise StartupError(str(exc)) from None


def _load_protector(settings: Settings) -> IdentifierProtector:
    try:
        identity, _ = load_or_create_hex_secret(settings.identity_key_file, what="identity secret")
        token, _ = load_or_create_hex_secret(settings.token_key_file, what="token secret")
    except KeyFileError as exc:
        raise StartupError(str(exc)) from None
    return IdentifierProtector(identity, token)


# Libraries whose DEBUG lines carry identifiers: hpack prints every HTTP/2 header (the APNs
# path holds the device token, `authorization` the JWT). Whatever LOG_LEVEL says, they stay
# at WARNING; tests/test_privacy_logs.py runs the relay at DEBUG to prove nothing leaks.
QUIET_LIBRARIES = ("hpack", "h2")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tornado's per-request access line costs throughput and says nothing an operator needs
    # (every request comes from a service node); the statistics endpoint counts instead.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    # aioapns logs every failed attempt (a flood while APNs is down); the dispatcher logs a
    # summary a minute instead.
    logging.getLogger("aioapns").setLevel(logging.CRITICAL)
    # APScheduler logs each minute's roll-up run at INFO; keep its warnings and errors.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server.py", description="pn-relay: push notifications for Session clients"
    )
    parser.add_argument("--config", type=Path, help="a Python settings file (default: ./config.py)")
    parser.add_argument("--host", help="address to listen on (setting HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (setting PORT)")
    parser.add_argument(
        "--print-pubkey",
        action="store_true",
        help="print the server's X25519 public key (64 hex characters) and exit",
    )
    return parser.parse_args(argv)


async def serve(settings: Settings) -> None:
    relay = Relay(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await relay.start()
    except OSError as exc:
        await relay.stop()
        raise StartupError(
            f"cannot listen on {settings.HOST}:{settings.PORT}: {exc.strerror}"
        ) from None
    await stop.wait()
    log.info("shutting down")
    await relay.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["HOST"] = args.host
    if args.port is not None:
        overrides["PORT"] = args.port
    try:
        settings = load_settings(args.config, overrides=overrides)
        if args.print_pubkey:
            keypair, _ = _load_keypair(settings.key_file)
            print(keypair.public_hex)
            return 0
        configure_logging(settings.LOG_LEVEL)
        asyncio.run(serve(settings))
    except (SettingsError, StartupError) as exc:
        print(f"pn-relay: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
