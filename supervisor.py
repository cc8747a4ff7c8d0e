"""`python server.py --workers N`: N relay processes behind one port, and their supervisor.

The supervisor is the parent process. It binds nothing that takes connections itself: it
reserves the port (a bound socket with SO_REUSEPORT that never listens, so `--port 0` means
one port for all, and a port in use is one line before any file is made), then forks the
workers. Each worker binds its own listening socket on that port with SO_REUSEPORT, and the
kernel spreads new connections over the workers evenly (a hash of the connection's
addresses). A socket bound once in the parent and inherited by every worker spreads them
badly under Tornado: every worker's epoll wakes for a connection and the first one awake
accepts all that are waiting, so a burst of keep-alive connections lands on one process
(bench/workers.py measures both).

Each worker is a whole relay (relay.Relay): it takes requests, runs the dispatcher lanes and
the statistics jobs, on the one database they share. Leases make delivery safe across
processes (storage/queue.py), the daily statistics retention runs in one process by its job
lease, the minute roll-up adds each process's counts, and on SQLite the writers take turns
on the one write lock (`BEGIN IMMEDIATE`, busy timeout).

What the supervisor does:

- start: all workers at once; each says on a pipe when it listens, or why it cannot start.
  If one cannot start, the others are stopped and the reason is the one line a single process
  would have printed (exit status 2).
- a worker that dies is restarted and logged. One that dies again soon after starting waits
  longer each time (up to a minute); one that exits with status 2 (it cannot start: a
  configuration error, a database it cannot open) is not restarted: the line says why, and
  the others carry on. When none is left, the supervisor exits with status 2.
- SIGTERM or SIGINT: SIGTERM to every worker; each stops taking connections, finishes its
  requests in flight and settles its pushes (as a single process does), then exits; then the
  supervisor exits.

Workers are forked, not executed afresh: they share the supervisor's loaded settings (a
restarted worker runs with the same settings as its siblings) and its imported modules. The
supervisor holds no thread, event loop or database connection, so forking it is safe; it maps
the shared memory in which the workers post their /metrics figures (stats/worker_metrics.py).
A worker whose supervisor dies gets SIGTERM (Linux: PR_SET_PDEATHSIG), so none is left
orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import eventloop
from errors import StartupError
from settings import LoadedSettings, Settings, SettingsError
from stats.worker_metrics import MetricsBoard

log = logging.getLogger("pn_relay")

STABLE_AFTER_S = 30.0  # a worker that ran this long before dying is restarted at once
BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 60.0
STOP_TIMEOUT_S = 60.0  # after SIGTERM, then SIGKILL (a worker's own stop takes ~10-20 s)
CANNOT_START = 2  # the exit status of a start refused for a reason that a retry cannot fix

_READY = b"R"
_FAILED = b"E"
_PR_SET_PDEATHSIG = 1


class SupervisorError(Exception):
    """The workers could not be started; the message is one line for the operator."""


@dataclass(frozen=True)
class WorkerContext:
    """What a worker gets from the supervisor (server.serve takes it)."""

    index: int  # 1..N: the slot, kept by a restarted worker
    listen: Callable[[], list[socket.socket]]  # the sockets to serve on, bound for this worker
    report_started: Callable[[], None]  # call once listening
    report_failed: Callable[[str], None]  # call with the one-line reason before exiting 2
    # The workers' shared figures for /metrics (stats/worker_metrics.py), if METRICS_ENABLED.
    metrics_board: MetricsBoard | None = None


# The body of a worker process: runs the relay until it is stopped; returns the exit status.
WorkerBody = Callable[[WorkerContext], int]


@dataclass
class _Slot:
    index: int
    pid: int = 0  # while running
    last_pid: int = 0
    restarts: int = 0
    status_fd: int = -1
    started_at: float = 0.0  # monotonic
    ready: bool = False
    failure: str = ""  # what a worker that could not start said
    quick_deaths: int = 0  # deaths in a row within STABLE_AFTER_S of starting
    restart_at: float | None = None  # monotonic, while waiting to restart
    retired: bool = False  # not restarted any more
    buffer: bytearray = field(default_factory=bytearray)

    @property
    def running(self) -> bool:
        return self.pid != 0


def _bind_all(host: str, port: int, options: list[int]) -> list[socket.socket]:
    """A socket bound to `port` (0: one free port for all) on each address of `host`, with
    the SOL_SOCKET `options` set; not listening."""
    bound: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
        seen: set[tuple[int, object]] = set()
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            for option in options:
                sock.setsockopt(socket.SOL_SOCKET, option, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            chosen = port or (bound[0].getsockname()[1] if len(bound) > 1 else 0)
            sock.bind((address[0], chosen, *address[2:]))
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """Bind `host:port` for the workers, without listening: the port is known (for port 0),
    workers bind beside these sockets, and no connection is ever queued on them.

    OSError (EADDRINUSE) if something listens on the port, even another relay's workers: the
    check binds as a single relay process would (SO_REUSEADDR, no SO_REUSEPORT). Then the
    reservation, with SO_REUSEPORT (and SO_REUSEADDR, or the connections a relay closed on
    this port in the last minute, in TIME_WAIT, would refuse it). So another relay started on
    the port while none of these workers listens (they are starting, or all just died) would
    pass the check and share the port; with one listening, it is refused.
    """
    checks = _bind_all(host, port, [socket.SO_REUSEADDR])
    port = int(checks[0].getsockname()[1])
    for sock in checks:
        sock.close()
    return _bind_all(host, port, [socket.SO_REUSEADDR, socket.SO_REUSEPORT])


def _set_parent_death_signal() -> None:
    """Linux: SIGTERM this process when its parent dies (best effort elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


class Supervisor:
    """Starts `count` workers running `body`, keeps them running, stops them on a signal."""

    def __init__(
        self,
        count: int,
        body: WorkerBody,
        listen: Callable[[], list[socket.socket]],
        *,
        on_started: Callable[[list[int]], None],
    ) -> None:
        """`listen` (called in each worker) binds that worker's sockets; `on_started` gets the
        workers' pids once every one listens (for the start-up log)."""
        self._count = count
        self._body = body
        self._listen = listen
        self._on_started = on_started
        self._slots = [_Slot(index) for index in range(1, count + 1)]
        self._stop_requested = False
        self._stopping_since: float | None = None
        self._killed = False
        self._wake_r = -1
        self._wake_w = -1
        self._parent_pid = os.getpid()

    # -- the parent ----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; the exit status (0: stopped cleanly). SupervisorError: a worker
        could not start (the others were stopped)."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        }
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            for slot in self._slots:
                self._start(slot)
            failure = self._wait_for_start()
            if failure is not None:
                self._stop_all()
                raise SupervisorError(failure)
            if not self._stop_requested:
                self._on_started([slot.pid for slot in self._slots])
            return self._supervise()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for slot in self._slots:
                self._close_status(slot)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop_requested = True

    def _start(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_fd)
            self._become_worker(slot, write_fd)  # never returns
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        slot.pid = slot.last_pid = pid
        slot.status_fd = read_fd
        slot.started_at = time.monotonic()
        slot.ready, slot.failure, slot.restart_at = False, "", None
        slot.buffer.clear()

    def _wait_for_start(self) -> str | None:
        """Wait until every worker listens or has exited; the first failure's line, if any."""
        failure: str | None = None
        while any(slot.running and not slot.ready for slot in self._slots):
            if self._stop_requested:
                return None  # Ctrl-C while starting: _supervise stops them
            self._wait(None)
            for slot, status in self._reap():
                self._drain(slot)
                if slot.ready:  # it did start: a death like any other
                    self._after_death(slot, status)
                elif failure is None:
                    failure = slot.failure or f"worker {slot.index} {_describe_exit(status)}"
        return failure

    def _supervise(self) -> int:
        clean = True
        while True:
            if self._stop_requested and self._stopping_since is None:
                log.info("shutting down %d workers", sum(s.running for s in self._slots))
                self._signal_all(signal.SIGTERM)
                self._stopping_since = time.monotonic()
            for slot, status in self._reap():
                self._drain(slot)
                if self._stopping_since is not None:
                    # (SIGTERM: one still starting, before it could take a request)
                    if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM):
                        clean = False
                        description = _describe_exit(status)
                        log.warning("worker %d %s while stopping", slot.index, description)
                else:
                    self._after_death(slot, status)
            if not any(slot.running for slot in self._slots):
                if self._stopping_since is not None:
                    log.info("workers stopped")
                    return 0 if clean and not self._killed else 1
                if all(slot.retired for slot in self._slots):
                    log.error("no worker is left; stopping")
                    return CANNOT_START
            self._restart_due()
            self._wait(self._next_deadline())
            self._kill_if_overdue()

    def _after_death(self, slot: _Slot, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        lived = time.monotonic() - slot.started_at
        if code == CANNOT_START and not slot.ready:
            slot.retired = True
            reason = slot.failure or "it could not start"
            alive = sum(s.running for s in self._slots)
            log.error(
                "worker %d cannot start: %s; not restarted (%d still running)",
                slot.index,
                reason,
                alive,
            )
            return
        slot.quick_deaths = slot.quick_deaths + 1 if lived < STABLE_AFTER_S else 0
        delay = 0.0
        if slot.quick_deaths > 1:
            delay = min(BACKOFF_FIRST_S * 2 ** (slot.quick_deaths - 2), BACKOFF_CAP_S)
        slot.restart_at = time.monotonic() + delay
        when = f"in {delay:g} s (it died {slot.quick_deaths} times in a row soon after starting)"
        log.warning(
            "worker %d (pid %d) %s after %.0f s; restarting it %s",
            slot.index,
            slot.last_pid,
            _describe_exit(status),
            lived,
            when if delay else "now",
        )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if self._stop_requested:
                return
            if slot.restart_at is not None and slot.restart_at <= now and not slot.running:
                slot.restarts += 1
                self._start(slot)

    def _next_deadline(self) -> float | None:
        times = [s.restart_at for s in self._slots if s.restart_at is not None and not s.running]
        if self._stopping_since is not None:
            times = [self._stopping_since + STOP_TIMEOUT_S]
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())

    def _kill_if_overdue(self) -> None:
        since = self._stopping_since
        if since is not None and not self._killed and time.monotonic() - since > STOP_TIMEOUT_S:
            self._killed = True
            log.error("workers still running %.0f s after SIGTERM: killing them", STOP_TIMEOUT_S)
            self._signal_all(signal.SIGKILL)

    def _stop_all(self) -> None:
        """After a failed start: stop the workers that did start, and wait for them all."""
        self._signal_all(signal.SIGTERM)
        self._stopping_since = time.monotonic()
        while any(slot.running for slot in self._slots):
            self._wait(1.0)
            for slot, _ in self._reap():
                self._drain(slot)
            self._kill_if_overdue()

    def _signal_all(self, signum: int) -> None:
        for slot in self._slots:
            if slot.running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    def _wait(self, timeout: float | None) -> None:
        """Sleep until a signal, a worker's message, or `timeout` seconds."""
        fds = [self._wake_r, *(s.status_fd for s in self._slots if s.status_fd >= 0)]
        readable, _, _ = select.select(fds, [], [], timeout)
        for fd in readable:
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
        for slot in self._slots:
            if slot.status_fd in readable:
                self._drain(slot)

    def _drain(self, slot: _Slot) -> None:
        """Read what the worker said on its pipe (until EOF once it has exited)."""
        while slot.status_fd >= 0:
            try:
                chunk = os.read(slot.status_fd, 4096)
            except BlockingIOError:
                break
            if not chunk:
                self._close_status(slot)
                break
            slot.buffer += chunk
        while b"\n" in slot.buffer:
            line, _, rest = bytes(slot.buffer).partition(b"\n")
            slot.buffer[:] = rest
            if line == _READY:
                slot.ready = True
                if slot.restarts:
                    log.info("worker %d restarted as pid %d", slot.index, slot.last_pid)
            elif line.startswith(_FAILED):
                slot.failure = line[1:].decode("utf-8", "replace")

    def _close_status(self, slot: _Slot) -> None:
        if slot.status_fd >= 0:
            os.close(slot.status_fd)
            slot.status_fd = -1

    def _reap(self) -> list[tuple[_Slot, int]]:
        """The workers that have exited since the last call, with their wait status."""
        exited: list[tuple[_Slot, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for slot in self._slots:
                if slot.pid == pid:
                    slot.pid = 0
                    exited.append((slot, status))
        return exited

    # -- the worker ------------------------------------------------------------------------------

    def _become_worker(self, slot: _Slot, status_fd: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            # Ctrl-C reaches every process of the terminal's group: the supervisor turns it
            # into SIGTERM for each worker (once serving, a worker stops on SIGINT as well).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _set_parent_death_signal()
            if os.getppid() != self._parent_pid:  # the supervisor died before that took hold
                os._exit(1)
            for fd in (self._wake_r, self._wake_w, *(s.status_fd for s in self._slots)):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)

            def say(message: bytes) -> None:
                with contextlib.suppress(OSError):
                    os.write(status_fd, message + b"\n")

            context = WorkerContext(
                index=slot.index,
                listen=self._listen,
                report_started=lambda: say(_READY),
                report_failed=lambda line: say(_FAILED + " ".join(line.split()).encode()),
            )
            code = self._body(context)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - the worker's last word, then its exit status
            traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(BaseException):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


# -- the relay's use of it (server.main) ---------------------------------------------------------

Serve = Callable[[LoadedSettings, WorkerContext], Coroutine[Any, Any, None]]
Bind = Callable[[Settings], list[socket.socket]]


def run_workers(loaded: LoadedSettings, serve: Serve, bind: Bind) -> int:
    """WORKERS > 1: `serve` in each worker, on sockets from `bind`; the exit status.

    StartupError: the port is taken, or a worker could not start (one line).
    """
    settings = loaded.settings
    reserved, worker_settings = reserve_worker_port(settings)
    worker_loaded = replace(loaded, settings=worker_settings)
    # Mapped before the workers are forked, so that each inherits it (and a restarted one too).
    board = MetricsBoard(settings.WORKERS) if settings.METRICS_ENABLED else None

    def run_worker(worker: WorkerContext) -> int:
        for sock in reserved:  # the worker binds its own
            sock.close()
        try:
            eventloop.run(
                serve(worker_loaded, replace(worker, metrics_board=board)), settings.EVENT_LOOP
            )
        except (SettingsError, StartupError) as exc:
            worker.report_failed(loaded.in_user_words(str(exc)))
            return CANNOT_START
        return 0

    def started(pids: list[int]) -> None:
        for warning in loaded.warnings:
            log.warning("%s", warning)
        log.info(
            "workers: %d processes (pids %s), sharing http://%s:%d (SO_REUSEPORT) and the"
            " database; each: onion requests on its %s event loop, %d threads for the other"
            " routes, the dispatcher",
            len(pids),
            ", ".join(map(str, pids)),
            settings.HOST,
            worker_settings.PORT,
            settings.EVENT_LOOP,
            settings.WEB_THREADS,
        )

    supervisor = Supervisor(
        settings.WORKERS, run_worker, lambda: bind(worker_settings), on_started=started
    )
    try:
        return supervisor.run()
    except SupervisorError as exc:
        raise StartupError(str(exc)) from None
    finally:
        for sock in reserved:
            sock.close()
        if board is not None:
            board.close()


def reserve_worker_port(settings: Settings) -> tuple[list[socket.socket], Settings]:
    """Reserve HOST:PORT for the workers (one line if it is taken); the workers' settings:
    that port, with REUSE_PORT."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise StartupError("WORKERS: several workers need SO_REUSEPORT, which this system lacks")
    try:
        reserved = reserve_port(settings.HOST, settings.PORT)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {settings.HOST}:{settings.PORT}: {exc.strerror or exc}"
        ) from None
    port = int(reserved[0].getsockname()[1])
    return reserved, replace(settings, PORT=port, REUSE_PORT=True)
