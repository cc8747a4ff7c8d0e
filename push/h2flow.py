"""The sending side of an h2 connection, shared by the relay's client (push/h2conn.py) and the
sandbox's fakes and test client (sandbox/h2server.py, sandbox/h2client.py).

- `send_within_window`: as much of a body as the stream's and the connection's flow-control
  windows and the peer's SETTINGS_MAX_FRAME_SIZE allow, the last frame ending the stream;
- `WaitingBodies`: the bodies (or what is left of them) that wait for window, sent as
  WINDOW_UPDATEs (or a larger SETTINGS_INITIAL_WINDOW_SIZE) arrive, oldest first;
- `Outbox`: what h2 has queued, written to the transport at most once per loop iteration;
- `raw_headers_config`: h2 with header validation and normalisation off, bytes in and out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import H2Error


def raw_headers_config(*, client_side: bool) -> H2Configuration:
    """No validation or normalisation of headers either way: the relay sends fixed names and
    checked values and reads two or three, and a fake takes a request's headers as sent."""
    return H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )


def send_within_window(h2: H2Connection, stream_id: int, data: bytes) -> bytes:
    """Send what the windows and the frame size let go of `data`; return the rest."""
    window = h2.local_flow_control_window(stream_id)
    frame = h2.max_outbound_frame_size
    while data and window > 0:
        size = min(window, frame, len(data))
        h2.send_data(stream_id, data[:size], end_stream=size == len(data))
        data = data[size:]
        window -= size
    return data


class WaitingBodies:
    """Bodies waiting for flow-control window, by stream id, oldest first.

    `sent(stream_id)`, if given, is called once a body's last byte has gone (END_STREAM with it);
    `failed(stream_id)` when h2 refuses to send on the stream (reset or closed meanwhile),
    the body dropped.
    """

    __slots__ = ("_failed", "_h2", "_sent", "waiting")

    def __init__(
        self,
        h2: H2Connection,
        *,
        failed: Callable[[int], None],
        sent: Callable[[int], None] | None = None,
    ) -> None:
        self._h2 = h2
        self._sent = sent
        self._failed = failed
        self.waiting: dict[int, bytes] = {}

    def send(self, stream_id: int, body: bytes) -> None:
        """Send `body` on `stream_id` now as far as the window goes, the rest as it opens."""
        self.waiting[stream_id] = body
        self.drain(stream_id)

    def drain(self, stream_id: int) -> None:
        data = self.waiting.get(stream_id)
        if data is None:
            return
        try:
            data = send_within_window(self._h2, stream_id, data)
        except H2Error:
            self.waiting.pop(stream_id, None)
            self._failed(stream_id)
            return
        if data:
            self.waiting[stream_id] = data
        else:
            del self.waiting[stream_id]
            if self._sent is not None:
                self._sent(stream_id)

    def drain_all(self) -> None:
        for stream_id in list(self.waiting):
            if self._h2.outbound_flow_control_window <= 0:
                break
            self.drain(stream_id)

    def drop(self, stream_id: int) -> bool:
        """Forget `stream_id`'s body; True if some of it had not gone yet."""
        return self.waiting.pop(stream_id, None) is not None

    def take(self) -> dict[int, bytes]:
        """Every waiting body, forgotten here (the connection is lost)."""
        waiting, self.waiting = self.waiting, {}
        return waiting


class Outbox:
    """Writes what h2 has queued to `transport`; `flush_soon` coalesces the writes of one loop
    iteration into one. Set `transport` to None once nothing more may be written."""

    __slots__ = ("_h2", "_scheduled", "transport")

    def __init__(self, h2: H2Connection) -> None:
        self._h2 = h2
        self.transport: asyncio.Transport | None = None
        self._scheduled = False

    def flush_soon(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        transport = self.transport
        if transport is not None:
            data = self._h2.data_to_send()
            if data:
                transport.write(data)
