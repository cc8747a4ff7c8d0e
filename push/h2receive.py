"""The receiving side of the relay's HTTP/2 client: answers read without h2's general path.

h2's `receive_data` turns every frame into a hyperframe object, formats it for a trace log
whether anyone reads it or not (`repr(frame)`: flags, a hex dump of the body), dispatches it,
runs the connection's and the stream's state machines input by input and builds an event per
step. An answer from APNs is one HEADERS frame; from FCM a HEADERS and a DATA frame. Those
two frames, in their plain form, are read here (`ReceivingClient.receive`):

- HEADERS with END_HEADERS (END_STREAM or not), unpadded, no priority, for a stream of ours
  that sent its request whole (HALF_CLOSED_LOCAL) and had no answer yet;
- DATA (END_STREAM or not), unpadded, on such a stream once its answer's headers came;

on a connection that is open, with h2's inbound header checks and header decoding off (as
the relay configures it). Their effect on h2's state is what h2's own handling has: HPACK
decoded by the connection's decoder, both receive windows charged, the content length
tracked and checked, the stream's state machine moved to the state h2 moves it to (its
flags set as h2's transitions set them). Informational (1xx) answers, trailers and cookie
headers, once decoded, go to the stream's own `receive_headers`.

Every other frame (SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY, PUSH_PROMISE, padded or
prioritised frames, a header block continued in CONTINUATION frames, frames on streams in any
other state, frames past our SETTINGS_MAX_FRAME_SIZE, unknown types) is handed, in order and
as complete frames, to h2's `receive_data`, whose events go to the receiver. A protocol error
found here ends the connection with h2's GOAWAY, as h2 does.

tests/test_h2receive.py feeds the same bytes to this path and to h2's, whole and cut at
every point, and compares the answers, h2's state and the bytes queued in reply; it also
pins the h2 version and the private parts of h2 this relies on.
"""

from __future__ import annotations

import struct
from typing import Any, NoReturn, Protocol, cast

from h2.connection import ConnectionState, H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded
from h2.exceptions import DenialOfServiceError, ProtocolError
from h2.stream import StreamClosedBy, StreamState
from h2.utilities import is_informational_response
from hpack import HPACKError, OversizedHeaderListError

_HEAD = struct.Struct(">HBBBL")  # 24-bit length (16 + 8 bits), type, flags, stream id
_DATA, _HEADERS, _PUSH_PROMISE, _CONTINUATION = 0x0, 0x1, 0x5, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
_STREAM_ID = 0x7FFFFFFF  # the reserved bit is ignored on receipt (RFC 9113 section 4.1)

_CLIENT_OPEN = ConnectionState.CLIENT_OPEN
_HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
_CLOSED = StreamState.CLOSED
_RECV_END_STREAM = StreamClosedBy.RECV_END_STREAM


class Receiver(Protocol):
    """Who is told what arrived, in the order it arrived. `closed` stops the reading."""

    closed: bool

    def response(self, stream_id: int, headers: list[Any]) -> None: ...

    def data(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None: ...

    def ended(self, stream_id: int) -> None: ...

    def events(self, events: list[Any]) -> None:
        """Events of h2's own receiving (the frames this module does not read itself)."""


def tell_answer(receiver: Receiver, event: Any) -> bool:
    """Tell `receiver` one of h2's events that is part of an answer (its headers, data, end);
    False for any other event."""
    if isinstance(event, ResponseReceived):
        receiver.response(event.stream_id, event.headers)
    elif isinstance(event, DataReceived):
        receiver.data(event.stream_id, event.data, event.flow_controlled_length)
    elif isinstance(event, StreamEnded):
        receiver.ended(event.stream_id)
    else:
        return False
    return True


class ReceivingClient(H2Connection):
    """An h2 client connection that reads the frames of a plain answer itself."""

    _pending = b""  # the start of a frame not complete yet
    _continued = False  # a header block h2 read the start of goes on in CONTINUATION frames
    _h2_reads_all = False  # h2 holds the start of a frame: it reads all that follows

    def receive(self, data: bytes, receiver: Receiver) -> None:
        """Read `data` from the peer; raises ProtocolError as `receive_data` does (with h2's
        GOAWAY queued)."""
        if self._h2_reads_all:
            self._hand_to_h2(data, receiver)
            return
        if self._pending:
            data = self._pending + data
        config = self.config
        plain = not (config.validate_inbound_headers or config.header_encoding)
        size = len(data)
        position = 0
        handed = -1  # where the frames for h2 start, if some wait
        while size - position >= 9:
            high, low, kind, flags, stream_id = _HEAD.unpack_from(data, position)
            length = high << 8 | low
            end = position + 9 + length
            if end > size:
                if length > self.max_inbound_frame_size:
                    # An error once whole (h2 checks the length then): h2 buffers it as it
                    # would, and reads everything from now on.
                    self._h2_reads_all = True
                    self._pending = b""
                    self._hand_to_h2(data[position if handed < 0 else handed :], receiver)
                    return
                break
            if kind <= _HEADERS and plain and not self._continued:
                if handed >= 0:
                    self._hand_to_h2(data[handed:position], receiver)
                    handed = -1
                    if receiver.closed:
                        return
                stream = self._answering(stream_id & _STREAM_ID, length)
                if stream is not None and (
                    self._read_data(stream, flags, data[position + 9 : end], receiver)
                    if kind == _DATA
                    else self._read_headers(stream, flags, data[position + 9 : end], receiver)
                ):
                    position = end
                    if receiver.closed:
                        return
                    continue
            if handed < 0:
                handed = position
            if kind in (_HEADERS, _PUSH_PROMISE):
                self._continued = not flags & _END_HEADERS
            elif kind == _CONTINUATION and flags & _END_HEADERS:
                self._continued = False
            position = end
        self._pending = data[position:]
        if handed >= 0:
            self._hand_to_h2(data[handed:position], receiver)

    def _hand_to_h2(self, frames: bytes, receiver: Receiver) -> None:
        receiver.events(self.receive_data(frames))

    def _answering(self, stream_id: int, length: int) -> Any:
        """The stream a DATA or HEADERS frame of `length` bytes may answer here, or None."""
        if self.state_machine.state is not _CLIENT_OPEN or length > self.max_inbound_frame_size:
            return None
        stream = self.streams.get(stream_id)
        if stream is None or stream.state_machine.state is not _HALF_CLOSED_LOCAL:
            return None
        return stream

    def _read_data(self, stream: Any, flags: int, data: bytes, receiver: Receiver) -> bool:
        machine = stream.state_machine
        if flags & ~_END_STREAM or not machine.headers_received:
            return False
        end_stream = flags == _END_STREAM
        length = len(data)
        try:
            self._inbound_flow_control_window_manager.window_consumed(length)
            stream._inbound_window_manager.window_consumed(length)
            stream._track_content_length(length, end_stream)
        except ProtocolError as error:
            self._connection_error(error)
        if end_stream:
            machine.state = _CLOSED
            machine.stream_closed_by = _RECV_END_STREAM
        stream_id = stream.stream_id
        receiver.data(stream_id, data, length)
        if end_stream:
            receiver.ended(stream_id)
        return True

    def _read_headers(self, stream: Any, flags: int, block: bytes, receiver: Receiver) -> bool:
        machine = stream.state_machine
        if flags & ~_END_STREAM != _END_HEADERS or machine.headers_received:
            return False
        end_stream = flags & _END_STREAM == _END_STREAM
        stream_id = stream.stream_id
        try:
            headers = self._decode(block)
            if is_informational_response(headers) or any(h[0] == b"cookie" for h in headers):
                encoding = self.config.header_encoding
                receiver.events(stream.receive_headers(headers, end_stream, encoding)[1])
                return True
            machine.headers_received = True
            if end_stream:
                machine.state = _CLOSED
                machine.stream_closed_by = _RECV_END_STREAM
            stream._initialize_content_length(headers)
        except ProtocolError as error:
            self._connection_error(error)
        receiver.response(stream_id, headers)
        if end_stream:
            receiver.ended(stream_id)
        return True

    def _connection_error(self, error: ProtocolError) -> NoReturn:
        """What h2's `receive_data` does with a protocol error: GOAWAY, then raise."""
        self.close_connection(error.error_code)
        raise error

    def _decode(self, block: bytes) -> list[Any]:
        """The header block, decoded; HPACK's errors as h2 reports them."""
        try:
            return cast("list[Any]", self.decoder.decode(block, raw=True))
        except OversizedHeaderListError as error:
            raise DenialOfServiceError(f"Oversized header block: {error}") from error
        except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as error:
            raise ProtocolError(f"Error decoding header block: {error}") from error
