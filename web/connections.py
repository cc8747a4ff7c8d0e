"""A cap on open connections, for our HTTP/1.1 server (web/h1server.py) and for Tornado's
HTTPServer (`HTTP_SERVER = "tornado"`; Tornado has no cap of its own).

With the settings' timeouts (`idle_connection_timeout`: the time a connection may sit between
requests or take to send a request's headers; `body_timeout`: the time to send a body), slow
and idle clients are closed; the cap bounds how many there can be at once, so one client
cannot exhaust the process's file descriptors. A connection beyond the cap gets a short 503
and is closed, without reading its request.
"""

from __future__ import annotations

import logging
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError

from web.errorlog import RateLimitedLog

log = logging.getLogger(__name__)

_REFUSAL_BODY = b"Too many connections, try again later\n"
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"Retry-After: 1\r\n"
    b"\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class ConnectionCap:
    """At most `max_connections` open at once (0: no cap): `admit()` counts one in, or
    counts a refusal (logged at most once a minute) and says no; `release()` counts one out."""

    def __init__(self, max_connections: int = 0) -> None:
        self.max_connections = max_connections
        self.open_connections = 0
        self.refused_connections = 0
        self._warnings = RateLimitedLog(log)

    def admit(self) -> bool:
        if self.max_connections and self.open_connections >= self.max_connections:
            self.refused_connections += 1
            self._warnings.log(
                logging.WARNING,
                "connection cap",
                "%d connections open (MAX_CONNECTIONS): refusing new ones",
                self.open_connections,
            )
            return False
        self.open_connections += 1
        return True

    def release(self) -> None:
        self.open_connections -= 1


class Capped:
    """A server's counts of its `cap` (tests and shutdown read them)."""

    cap: ConnectionCap

    @property
    def open_connections(self) -> int:
        return self.cap.open_connections

    @property
    def refused_connections(self) -> int:
        return self.cap.refused_connections


class CappedHTTPServer(Capped, HTTPServer):
    """`HTTPServer(..., max_connections=N)`: at most N connections open; 0 means no cap."""

    def initialize(self, *args: Any, max_connections: int = 0, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.cap = ConnectionCap(max_connections)

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if not self.cap.admit():
            IOLoop.current().add_callback(_refuse, stream)
            return
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self.cap.release()
        super().on_close(server_conn)


async def _refuse(stream: IOStream) -> None:
    try:
        await stream.write(REFUSAL)
    except StreamClosedError:
        pass  # the client left first
    finally:
        stream.close()


#: File descriptors kept for everything but client connections (database pool, provider
#: connections, key files, logs).
RESERVED_FILES = 256


def fit_to_file_limit(max_connections: int) -> int:
    """The connection cap the process can honour: raises the open-file limit (soft, up to
    the hard limit) to fit `max_connections` plus RESERVED_FILES, else lowers the cap with a
    warning. Past the limit accept() would fail instead of the cap refusing cleanly."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - not POSIX
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + RESERVED_FILES
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return max_connections
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft >= wanted:
        return max_connections
    fitted = max(1, soft - RESERVED_FILES)
    log.warning(
        "MAX_CONNECTIONS=%d does not fit the open-file limit (%d): capping connections at %d",
        max_connections,
        soft,
        fitted,
    )
    return fitted
