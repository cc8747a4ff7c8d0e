"""An HTTP/1.1 client connection (h11 on an asyncio transport): one exchange at a time.

The fallback when the endpoint offers no HTTP/2 (a plain http:// FCM_ENDPOINT, a proxy
speaking only HTTP/1.1). Keep-alive; a response that says `Connection: close` (or that h11
cannot parse) ends the connection. An exchange cancelled mid-way closes the connection, the
only way HTTP/1.1 has to abandon a request.
"""

from __future__ import annotations

import asyncio
from typing import cast

import h11

from push.exchange import Exchange
from push.poolconn import MAX_RESPONSE_BYTES, PooledConnection, PoolListener


class H1ClientConnection(PooledConnection):
    protocol = "http/1.1"
    capacity = 1

    def __init__(self, listener: PoolListener, authority: str, path: str) -> None:
        super().__init__(listener)
        self._authority = authority.encode()
        self._path = path.encode()
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_BYTES)
        self.exchange: Exchange | None = None

    # -- what the pool uses ----------------------------------------------------------------
    def free_slots(self) -> int:
        return 1 if self.usable and self.exchange is None else 0

    def start(self, exchange: Exchange) -> None:
        assert self._transport is not None and self.exchange is None
        self.exchange = exchange
        exchange.connection = self
        conn = self._h11
        request = h11.Request(
            method=b"POST",
            target=self._path,
            headers=[
                (b"host", self._authority),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(exchange.body)).encode()),
                (b"authorization", exchange.authorization.encode()),
                (b"x-goog-api-format-version", b"2"),
            ],
        )
        self._transport.write(
            b"".join(
                (
                    conn.send(request) or b"",
                    conn.send(h11.Data(data=exchange.body)) or b"",
                    conn.send(h11.EndOfMessage()) or b"",
                )
            )
        )

    def cancel(self, exchange: Exchange, reason: str) -> None:
        if exchange is not self.exchange:
            return
        self.exchange = None
        exchange.fail(reason)
        self.close()

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()
        self._lose("closed")

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's and uvloop's TLS transports both write and close; uvloop's is not
        # an asyncio.Transport subclass, so no isinstance check.
        self._transport = cast(asyncio.Transport, transport)
        self.usable = True
        self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        conn = self._h11
        conn.receive_data(data)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                self._broken("bad HTTP/1.1 answer")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            exchange = self.exchange
            if isinstance(event, h11.Response):
                if exchange is not None:
                    exchange.status = event.status_code
                    for name, value in event.headers:
                        if name == b"retry-after":
                            exchange.retry_after = value.decode("latin-1")
            elif isinstance(event, h11.Data):
                if exchange is not None:
                    exchange.response += event.data
                    if len(exchange.response) > MAX_RESPONSE_BYTES:
                        self._broken("answer too large")
                        return
            elif isinstance(event, h11.EndOfMessage):
                self.exchange = None
                if exchange is not None:
                    exchange.answered()
                self._next_cycle()
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._broken("connection closed")
                return

    # -- internals -------------------------------------------------------------------------
    def _next_cycle(self) -> None:
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._listener.released(self)
        else:  # MUST_CLOSE (Connection: close, HTTP/1.0) or a state we do not continue from
            self.close()

    def _broken(self, reason: str) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.fail(reason)
        self.close()

    def _fail_carried(self, reason: str) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.fail(reason)
