"""A bounded pool of connections to one HTTPS (or HTTP) endpoint, for one kind of request.

Each connection is HTTP/2 when TLS negotiated ALPN "h2" (many exchanges at once, up to the
stream limit), else HTTP/1.1 (one at a time, kept alive); `http2_only` speaks HTTP/2 whatever
ALPN said (APNs). The pool learns which from its connections and bounds them:
`max_h2_connections` or `max_h1_connections` (`PoolLimits`), opening one more only when every
open one is full. Exchanges that find no free slot wait in a queue (FIFO) and start as slots free,
without a task each. Opening a connection (TCP, TLS, the server's HTTP/2 SETTINGS) is bounded
by `connect_timeout_s`; when it fails and no connection is left, the waiting exchanges fail
with the reason. `run` sends a list of exchanges and waits for all of them, by a deadline.

Used by push/fcm.py and push/apns.py (`name` says which in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from dataclasses import dataclass

from h2.exceptions import H2Error

from push.exchange import Exchange
from push.h1conn import H1ClientConnection
from push.h2conn import H2ClientConnection

log = logging.getLogger(__name__)

Connection = H2ClientConnection | H1ClientConnection


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path: str  # the request path, e.g. /v1/projects/p/messages:send
    ssl_context: ssl.SSLContext | None  # None: plain http

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.ssl_context is not None else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class PoolLimits:
    """How many connections a pool may open, how many streams each, how long connecting may
    take, and whether to speak HTTP/2 whatever ALPN said (APNs)."""

    max_h2_connections: int = 4
    max_streams: int = 100  # per HTTP/2 connection (the server's own limit may be lower)
    max_h1_connections: int = 16
    connect_timeout_s: float = 10.0
    http2_only: bool = False


class _Handshake(asyncio.Protocol):
    """Chooses HTTP/2 or HTTP/1.1 from ALPN once TLS is up, and hands the transport over."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.connection: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        connection = self.pool._new_connection(alpn)
        transport.set_protocol(connection)
        self.connection = connection
        connection.connection_made(transport)


class ConnectionPool:
    def __init__(self, endpoint: Endpoint, limits: PoolLimits, *, name: str) -> None:
        self.endpoint = endpoint
        self.limits = limits
        self.name = name
        self.protocol: str | None = None  # "h2" or "http/1.1", once a connection said so
        self.connections: list[Connection] = []
        self.connections_opened = 0
        self._connecting = 0
        self._waiting: deque[Exchange] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the caller's side -----------------------------------------------------------------
    def submit(self, exchange: Exchange) -> None:
        if self._closed:
            exchange.fail("pool closed")
            return
        if self._waiting or not self._place(exchange):
            self._waiting.append(exchange)
            self._grow()

    async def run(self, exchanges: list[Exchange], timeout_at: float) -> None:
        """Send these exchanges at once; return once each is answered or failed.

        Those still open at `timeout_at` (loop time) fail as "timeout", their streams reset;
        if the caller is cancelled, they are reset and released all the same. No task or
        future per exchange: one future for the lot.
        """
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        remaining = len(exchanges)

        def on_done(_: Exchange) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0 and not finished.done():
                finished.set_result(None)

        for exchange in exchanges:
            exchange.on_done = on_done
        try:
            for exchange in exchanges:
                self.submit(exchange)
            if remaining:
                async with asyncio.timeout_at(timeout_at):
                    await finished
        except TimeoutError:
            pass
        finally:
            for exchange in exchanges:
                if not exchange.done:
                    self.cancel(exchange, "timeout")

    def cancel(self, exchange: Exchange, reason: str) -> None:
        """Give up on `exchange`: reset its stream (or forget it in the queue), release it."""
        if exchange.done:
            return
        connection = exchange.connection
        if connection is not None:
            connection.cancel(exchange, reason)
        else:
            exchange.fail(reason)  # still queued: skipped when its turn comes

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self.connections):
            connection.close()
        self._fail_waiting("pool closed")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what connections call -------------------------------------------------------------
    def released(self, connection: Connection) -> None:
        waiting = self._waiting
        while waiting and connection.free_slots() > 0:
            exchange = waiting.popleft()
            if not exchange.done:
                self._start(connection, exchange)

    def lost(self, connection: Connection) -> None:
        with contextlib.suppress(ValueError):
            self.connections.remove(connection)
        if self._waiting:
            self._grow()

    # -- internals -------------------------------------------------------------------------
    def _new_connection(self, alpn: str | None) -> Connection:
        endpoint = self.endpoint
        if alpn == "h2" or self.limits.http2_only:
            return H2ClientConnection(
                self, endpoint.authority, endpoint.path, self.limits.max_streams
            )
        return H1ClientConnection(self, endpoint.authority, endpoint.path)

    def _place(self, exchange: Exchange) -> bool:
        for connection in self.connections:
            if connection.free_slots() > 0:
                self._start(connection, exchange)
                return True
        return False

    def _start(self, connection: Connection, exchange: Exchange) -> None:
        try:
            connection.start(exchange)
        except (H2Error, OSError, RuntimeError) as exc:
            log.debug("%s: starting a request failed: %s", self.name, type(exc).__name__)
            exchange.fail(f"send failed ({type(exc).__name__})")
            connection.close()

    def _grow(self) -> None:
        """Open a connection if the waiting exchanges need one and the bounds allow it."""
        if self._closed:
            return
        if self.protocol == "http/1.1":
            wanted = min(len(self._waiting), self.limits.max_h1_connections - len(self.connections))
            wanted -= self._connecting
        else:  # HTTP/2, or not known yet: one connection at a time
            room = self.limits.max_h2_connections - len(self.connections)
            wanted = 1 if self._connecting == 0 and room > 0 else 0
        for _ in range(max(0, wanted)):
            self._connecting += 1
            task = asyncio.get_running_loop().create_task(self._connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        endpoint = self.endpoint
        loop = asyncio.get_running_loop()
        connection: Connection | None = None
        try:
            async with asyncio.timeout(self.limits.connect_timeout_s):
                _, handshake = await loop.create_connection(
                    lambda: _Handshake(self),
                    endpoint.host,
                    endpoint.port,
                    ssl=endpoint.ssl_context,
                    server_hostname=endpoint.host if endpoint.ssl_context else None,
                )
                connection = handshake.connection
                assert connection is not None
                await connection.ready
        except (OSError, TimeoutError, ConnectionError) as exc:
            self._connecting -= 1
            if connection is not None:
                connection.close()
            reason = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            log.debug("%s: connecting to %s failed: %s", self.name, endpoint.authority, reason)
            if not self.connections:
                self._fail_waiting(f"connect: {reason}")
            return
        except asyncio.CancelledError:
            self._connecting -= 1
            if connection is not None:
                connection.close()
            raise
        self._connecting -= 1
        self.connections_opened += 1
        self.protocol = connection.protocol
        log.debug("%s: connected to %s (%s)", self.name, endpoint.authority, connection.protocol)
        if self._closed:
            connection.close()
            return
        self.connections.append(connection)
        self.released(connection)
        if self._waiting:
            self._grow()

    def _fail_waiting(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, deque()
        for exchange in waiting:
            exchange.fail(reason)

    def __repr__(self) -> str:
        return f"ConnectionPool({self.endpoint.authority}, {self.protocol})"
