"""pn-relay: `python server.py [--config FILE] [--host H] [--port P] [--workers N|auto]
[--print-pubkey] [--init]` (several workers: supervisor.py).

Builds every part once, wires them together, runs the IOLoop, and shuts down cleanly on
SIGTERM or Ctrl-C (in-flight requests finish, queued writes commit, the database closes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from app import AppParts, create_app, create_onion_core
from errors import StartupError as StartupError  # noqa: PLC0414 - re-exported
from handlers.endpoints import HandlerContext
from handlers.notify_limit import NotifyRateLimit
from handlers.runner import WriteRunner
from logsetup import AccessLog, LoggedWSGIContainer, held_until_started
from logsetup import configure_logging as configure_logging  # noqa: PLC0414 - re-exported
from lsrpc.paths import V2_PATH, V4_PATH
from push.dispatcher import Dispatcher, DispatchSettings, LatencyObserver, ProviderLane
from push.observed import observed
from push.outcome import ProviderSender
from push.senders import DeliveryConfigError, build_senders
from settings import LoadedSettings, Settings, SettingsError, read_settings
from startup import load_keys, open_storage
from stats.auth import StatsAuth
from stats.counters import Counters
from stats.healthz import PATH as HEALTH_PATH
from stats.healthz import HealthHandler, HealthProbe, HealthSettings
from stats.metrics import RelayMetrics
from stats.rollup import MinuteRollup, RetentionJob, StatsJobs
from storage.clock import HeartbeatWriter, RelayClock, boot_id, resume_clock
from storage.protect import IdentifierProtector
from storage.queue import DeliveryQueue
from storage.records import Provider
from storage.store import RelayStore
from storage.writer import BatchWriter, StorageError
from supervisor import WorkerContext, run_workers
from web.connections import CappedHTTPServer, fit_to_file_limit
from web.errorlog import RateLimitedLog
from web.onion_routes import GuardedFallbackHandler, LsrpcHandler

log = logging.getLogger("pn_relay")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
T = TypeVar("T")


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
        # What can refuse the start without a file written comes first; then the database
        # and the key files, checked against each other (nothing is left behind on failure).
        try:
            senders = build_senders(settings)
        except DeliveryConfigError as exc:
            raise StartupError(str(exc)) from None
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
            raise StartupError(str(exc)) from None
        self.engine: Engine
        self.engine, keys = open_storage(settings)
        self.keypair = keys.server
        self.protector = IdentifierProtector(keys.identity, keys.token)
        boot = boot_id()
        if clock is None:
            with self.engine.connect() as conn:
                clock = resume_clock(conn, boot=boot)
        self.clock = clock
        self.heartbeat = HeartbeatWriter(self.engine, clock, boot)
        self.writer = BatchWriter(self.engine, max_batch=settings.WRITE_BATCH_MAX)
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
        self.stats_auth = stats_auth
        if not stats_auth.configured:
            log.warning(
                "the statistics endpoint refuses everyone: set STATS_USERNAME and"
                " STATS_PASSWORD_HASH in config.py (or PN_STATS_USERNAME and"
                " PN_STATS_PASSWORD_HASH in the environment); python -m stats.hash_password"
                " makes the hash"
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
            MinuteRollup(
                self.engine,
                self.counters,
                now_ms,
                queue_depth=lambda: self.queue.depth(self.engine)[0],
            ),
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
            notify_limit=NotifyRateLimit(settings.NOTIFY_PER_MINUTE, settings.NOTIFY_BURST),
        )
        parts = AppParts(
            keypair=self.keypair,
            handlers=handlers,
            runner=WriteRunner(self.writer, self.errors),
            max_body_bytes=settings.MAX_BODY_BYTES,
            engine=self.engine,
            stats_auth=stats_auth,
            metrics=self.metrics,
            metrics_public=settings.METRICS_PUBLIC,
            dispatcher_alive=self._dispatcher_alive,
            clock_ms=now_ms,
            errors=self.errors,
            queue_stats=self.queue_stats,
        )
        self.onion = create_onion_core(parts)
        self.health = HealthProbe(
            self.engine,
            self._dispatcher_alive,
            lanes=lambda: self.dispatcher.lanes,
            queue_age=self.oldest_queued_age_s,
            writer_commits=lambda: self.writer.commits,
            settings=HealthSettings(max_queue_age_s=settings.HEALTH_MAX_QUEUE_AGE),
        )
        self.app = create_app(parts)
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

    def oldest_queued_age_s(self) -> float:
        """Seconds the oldest queued push has waited (0 when none), for /healthz (uncached:
        health caches its own probe). Read beside the writer, like `queue_stats`."""
        _, oldest = self.queue.depth(self.engine)
        return 0.0 if oldest is None else max(0.0, (self.clock.now_ms() - oldest) / 1000)

    def tornado_app(self) -> Application:
        """The onion paths and /healthz on Tornado directly (on the IOLoop), all else on the
        Flask app; aliases of the onion paths reach neither Flask nor a web thread."""
        access = AccessLog(self.settings.ACCESS_LOG)
        wsgi = LoggedWSGIContainer(
            self.in_flight.wrap_wsgi(self.app.wsgi_app),
            executor=self.executor,
            access_log=access,
        )
        errors = self.errors

        def log_request(handler: RequestHandler) -> None:
            log_server_errors(handler, errors)
            access.tornado(handler)

        onion_routes = [
            (path, LsrpcHandler, {"answer": self.in_flight.wrap_async(answer), "errors": errors})
            for path, answer in (
                (V2_PATH, self.onion.answer_v2),
                (V4_PATH, self.onion.answer_v4),
            )
        ]
        return Application(
            [
                *onion_routes,
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
        self.http = CappedHTTPServer(
            self.tornado_app(),
            max_body_size=tornado_limit,
            xheaders=False,
            idle_connection_timeout=self.settings.IDLE_CONNECTION_TIMEOUT,
            body_timeout=self.settings.BODY_TIMEOUT,
            max_connections=fit_to_file_limit(self.settings.MAX_CONNECTIONS),
        )
        if sockets is None:
            sockets = bind_listening_sockets(self.settings)
        self.http.add_sockets(sockets)
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
        """The clock's heartbeat every HEARTBEAT_INTERVAL_S; expired dedup fingerprints and
        fan-outs abandoned mid-way by a process that died purged at start, then every window
        (at most hourly)."""
        purge_every = min(max(self.settings.DEDUP_WINDOW, 60.0), 3600.0)
        loop = asyncio.get_running_loop()
        last_purge: float | None = None
        while True:
            try:
                await self.writer.submit_on_loop(self.heartbeat.op(), loop)
                if last_purge is None or time.monotonic() - last_purge >= purge_every:
                    last_purge = time.monotonic()
                    await self.writer.submit_on_loop(self.store.purge_expired_dedup_op(), loop)
                    # A chunk per operation, so other writes run in between.
                    while await self.writer.submit_on_loop(
                        self.store.purge_abandoned_fanouts_op(), loop
                    ):
                        pass
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
    # /healthz answers 503 on purpose, and stats/healthz.py logs each change of its answer.
    if status >= 500 and not isinstance(handler, HealthHandler):
        method = handler.request.method
        errors.log(
            logging.ERROR, f"status {status}", "%d %s %s", status, method, type(handler).__name__
        )


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


HELP_EPILOG = """\
settings: config.py in the working directory (or --config FILE), then environment
variables PN_<NAME> (e.g. PN_PORT=3005, PN_DATABASE_URL=...), which win over the file;
--host and --port win over both. config.example.py lists every setting with its default.

key files: made only on the first start (DATA_DIR new or holding only key files) or by
--init; a key file you name that does not exist stops the start.
"""


def workers_argument(text: str) -> int | str:
    """--workers N or --workers auto."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or auto, got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="pn-relay: push notifications for Session clients",
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", type=Path, help="a Python settings file (default: ./config.py if present)"
    )
    parser.add_argument("--host", help="address to listen on (setting HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (setting PORT)")
    parser.add_argument(
        "--workers",
        type=workers_argument,
        help="relay processes sharing the port and the database, or auto: one per CPU"
        " (setting WORKERS, default 1)",
    )
    parser.add_argument(
        "--print-pubkey",
        action="store_true",
        help="print the server's X25519 public key (64 hex characters) and exit; on the"
        " first start (a new DATA_DIR) this makes the key files",
    )
    parser.add_argument(
        "--init",
        action="store_true",
        help="make the missing key files (KEY_FILE, IDENTITY_KEY_FILE, TOKEN_KEY_FILE; never"
        " overwriting one), print the public key, and exit",
    )
    return parser.parse_args(argv)


async def serve(loaded: LoadedSettings, worker: WorkerContext | None = None) -> None:
    """Run one relay process until SIGTERM or SIGINT; `worker`: as one of several (WORKERS)."""
    settings = loaded.settings
    # Nothing is shown until the relay listens: a failed start says one line, from main().
    with held_until_started(discard_on=(StartupError,)):
        if worker is None:
            for warning in loaded.warnings:  # (the supervisor logs them once for all)
                log.warning("%s", warning)
        # Bound before any file is made.
        sockets = bind_listening_sockets(settings) if worker is None else worker.listen()
        try:
            relay = Relay(settings)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        if worker is None:
            log.info(
                "workers: 1 process (onion requests on its event loop, %d threads for the other"
                " routes)%s",
                settings.WEB_THREADS,
                "; REUSE_PORT lets more processes share the port" if settings.REUSE_PORT else "",
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await relay.start(sockets=sockets)
        except BaseException:
            await relay.stop()
            raise
    if worker is not None:
        worker.report_started()
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
    if args.workers is not None:
        overrides["WORKERS"] = args.workers
    loaded: LoadedSettings | None = None
    try:
        loaded = read_settings(
            args.config,
            overrides=overrides,
            override_labels={"HOST": "--host", "PORT": "--port", "WORKERS": "--workers"},
        )
        if args.init or args.print_pubkey:
            keys = load_keys(loaded.settings, init=args.init)
            for key_file in keys.new:
                print(
                    f"pn-relay: made {key_file.what} {key_file.path} (mode 0600)", file=sys.stderr
                )
            if args.init and not keys.new:
                print("pn-relay: every key file exists; nothing made", file=sys.stderr)
            print(keys.server.public_hex)
            return 0
        workers = loaded.settings.WORKERS
        configure_logging(
            loaded.settings.LOG_LEVEL, loaded.settings.LOG_FORMAT, with_pid=workers > 1
        )
        if workers > 1:
            return run_workers(loaded, serve, bind_listening_sockets)
        asyncio.run(serve(loaded))
    except (SettingsError, StartupError) as exc:
        message = loaded.in_user_words(str(exc)) if loaded is not None else str(exc)
        print(f"pn-relay: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
