"""What the pool (push/httppool.py) sees of a connection, whichever HTTP version carries it
(push/h2conn.py, push/h1conn.py): `ready` once it may carry exchanges, `usable` while it takes
new ones, and one loss that fails what it carried and tells the pool."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

MAX_RESPONSE_BYTES = 1 << 16  # an FCM answer is a few hundred bytes


class PoolListener(Protocol):
    def released(self, connection: Any) -> None: ...

    def lost(self, connection: Any) -> None: ...


class PooledConnection(asyncio.Protocol):
    def __init__(self, listener: PoolListener) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self.usable = False  # accepts new exchanges
        self.closed = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(f"connection lost ({type(exc).__name__})" if exc else "connection closed")

    def _fail_carried(self, reason: str) -> None:
        """Fail every exchange the connection carries: it is lost for `reason`."""
        raise NotImplementedError

    def _lose(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.usable = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
            self.ready.exception()  # retrieved: the pool may have stopped waiting
        self._fail_carried(reason)
        self._listener.lost(self)
