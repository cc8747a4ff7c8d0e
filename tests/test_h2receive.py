"""The client's own reading of answers (`ReceivingClient.receive`, push/h2receive.py) against h2's.

Twin wires: two clients built as the relay builds its connections, each with a real h2 server
connection, take the same requests; the servers answer alike (their bytes are compared), and
one client reads the answers through `receive`, whole or a byte at a time, the other through
h2's `receive_data`. What each is told (headers with their HPACK kinds, data, ends, h2's other
events), the exception raised if any, h2's whole state (the connection, its receive window,
every stream with its windows, content lengths and state machine, both HPACK tables) and the
bytes queued in reply (WINDOW_UPDATE, PING and SETTINGS acks, RST_STREAM, GOAWAY) must be
the same: plain answers, bodies in several frames, errors, informational answers, trailers,
cookies, padding, priority, CONTINUATION, control frames between answers, resets, GOAWAY,
and protocol errors (bad HPACK, a window overrun, a wrong content length, DATA before
HEADERS, frames past the frame size or on closed streams).
"""

from __future__ import annotations

import asyncio
import random
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import h2
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, StreamEnded
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from h2.stream import StreamClosedBy, StreamState
from h2.windows import WindowManager
from hyperframe.frame import GoAwayFrame, HeadersFrame

from push.exchange import Exchange
from push.h2conn import H2ClientConnection
from push.h2receive import ReceivingClient, tell_answer
from tests import loops
from tests.test_h2conn import Wire, apns_headers, fcm_headers, state

Answer = Callable[[Any, list[int]], bytes]  # (server, stream ids) -> raw bytes to append


class Recorder:
    """A receiver that writes down what it is told, and acknowledges data as the relay does."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.closed = False
        self.told: list[Any] = []

    def response(self, stream_id: int, headers: list[Any]) -> None:
        self.told.append(("response", stream_id, _headers(headers)))

    def data(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        self.told.append(("data", stream_id, bytes(data), flow_controlled_length))
        if flow_controlled_length:
            self.client.acknowledge_received_data(flow_controlled_length, stream_id)

    def ended(self, stream_id: int) -> None:
        self.told.append(("ended", stream_id))

    def events(self, events: list[Any]) -> None:
        for event in events:
            if not tell_answer(self, event):
                fields = {
                    k: _headers(v) if k == "headers" else repr(v)
                    for k, v in sorted(vars(event).items())
                    if k not in ("stream_ended", "priority_updated")
                }
                self.told.append((type(event).__name__, fields))


def _headers(headers: list[Any]) -> list[Any]:
    return [(type(h).__name__, tuple(h)) for h in headers]


def full_state(client: Any) -> dict[str, Any]:
    out = state(client)
    out["receive window"] = vars(client._inbound_flow_control_window_manager)
    table = client.decoder.header_table
    out["decoder"] = (list(table.dynamic_entries), table.maxsize)
    out["settings"] = (dict(client.local_settings), dict(client.remote_settings))
    return out


class Twins:
    """Two wires alike; `ours` reads through `receive`, `theirs` through h2."""

    def __init__(self, count: int = 6, **wire: Any) -> None:
        self.ours, self.theirs = Wire(**wire), Wire(**wire)
        client = self.ours.client
        assert isinstance(client, ReceivingClient)
        self.handed: list[bytes] = []  # what `receive` left to h2's `receive_data`
        receive_data = client.receive_data

        def handed(data: bytes) -> list[Any]:
            self.handed.append(bytes(data))
            return receive_data(data)

        client.receive_data = handed  # type: ignore[method-assign,assignment]
        self.next_stream = 3
        self.more(count)

    def more(self, count: int) -> None:
        """`count` new requests, which the next answer answers."""
        self.streams = list(range(self.next_stream, self.next_stream + 2 * count, 2))
        self.next_stream += 2 * count
        for stream_id in self.streams:
            for side in (self.ours, self.theirs):
                headers = fcm_headers(b"Bearer t") if stream_id % 4 == 1 else apns_headers(b"ab")
                assert side.client.send_request(stream_id, headers, b'{"x":1}')
                side.deliver()

    def answer(self, answer: Answer, *, byte_by_byte: bool = False) -> list[Any]:
        """Both servers answer; both clients read it; everything must agree. Returns what
        was told."""
        sent = []
        for side in (self.ours, self.theirs):
            raw = answer(side.server, self.streams)
            sent.append(side.server.data_to_send() + raw)
        assert sent[0] == sent[1]
        data = sent[0]

        ours = Recorder(self.ours.client)
        ours_error = theirs_error = None
        try:
            if byte_by_byte:
                for n in range(len(data)):
                    self.ours.client.receive(data[n : n + 1], ours)
            else:
                self.ours.client.receive(data, ours)
        except ProtocolError as error:
            ours_error = type(error)
        theirs = Recorder(self.theirs.client)
        try:
            for frame in frames(data):  # each frame's events handled before the next, as ours
                theirs.events(self.theirs.client.receive_data(frame))
        except ProtocolError as error:
            theirs_error = type(error)
        assert ours_error == theirs_error
        assert ours.told == theirs.told
        assert full_state(self.ours.client) == full_state(self.theirs.client)
        assert self.ours.client.data_to_send() == self.theirs.client.data_to_send()
        return ours.told


def frames(data: bytes) -> list[bytes]:
    """`data` cut into its frames."""
    out = []
    while data:
        length = int.from_bytes(data[:3], "big")
        out.append(data[: 9 + length])
        data = data[9 + length :]
    return out


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    length = len(payload)
    return struct.pack(">HBBBL", length >> 8, length & 0xFF, kind, flags, stream_id) + payload


# -- answers ----------------------------------------------------------------------------------


def apns_ok(server: Any, streams: list[int]) -> bytes:
    for stream_id in streams:
        apns_id = str(uuid.UUID(int=stream_id)).encode()
        server.send_headers(stream_id, [(b":status", b"200"), (b"apns-id", apns_id)], True)
    return b""


def fcm_ok(server: Any, streams: list[int]) -> bytes:
    for stream_id in streams:
        body = b'{"name": "projects/p/messages/0:%d"}' % (stream_id * 7919)
        server.send_headers(
            stream_id,
            [
                (b":status", b"200"),
                (b"content-type", b"application/json; charset=UTF-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        )
        server.send_data(stream_id, body, end_stream=True)
    return b""


def bodies_in_pieces(server: Any, streams: list[int]) -> bytes:
    """No content length; a body in three DATA frames, the last empty; errors with
    Retry-After; answers interleaved across streams."""
    for stream_id in streams:
        status = b"429" if stream_id % 3 == 0 else b"400"
        server.send_headers(stream_id, [(b":status", status), (b"retry-after", b"7")])
    for stream_id in streams:
        server.send_data(stream_id, b'{"error": {"status": ')
    for stream_id in reversed(streams):
        server.send_data(stream_id, b'"UNAVAILABLE"}}')
        server.send_data(stream_id, b"", end_stream=True)
    return b""


def informational_trailers_cookies(server: Any, streams: list[int]) -> bytes:
    a, b, c, d, *_ = streams
    server.send_headers(a, [(b":status", b"100")])
    server.send_headers(a, [(b":status", b"200")], end_stream=True)
    server.send_headers(b, [(b":status", b"200")])
    server.send_data(b, b"{}")
    server.send_headers(b, [(b"grpc-status", b"0")], end_stream=True)  # trailers
    cookies = [(b"cookie", b"a=1"), (b"cookie", b"b=2")]
    server.send_headers(c, [(b":status", b"200"), *cookies], end_stream=True)
    block = server.encoder.encode([(b":status", b"204")])  # with PRIORITY (h2 would not send it)
    return raw_frame(0x1, 0x25, d, struct.pack(">LB", a, 20) + block)


def padding_and_continuation(server: Any, streams: list[int]) -> bytes:
    """Padded DATA and HEADERS, a header block in three frames, then plain answers (read
    without h2 again: `test_answers_are_read_as_h2_reads_them`)."""
    a, b, c, d, e, f = streams
    server.send_headers(a, [(b":status", b"200")])
    server.send_data(a, b"padded", end_stream=True, pad_length=9)
    block = server.encoder.encode([(b":status", b"204")])  # static: no table change
    frame = HeadersFrame(c, flags=["END_HEADERS", "END_STREAM", "PADDED"])
    frame.pad_length, frame.data = 3, block
    server.send_headers(b, [(b":status", b"200"), (b"x-big", b"0123456789abcdef" * 2500)])
    fcm_ok(server, [d, e, f])
    server.send_data(b, b"{}", end_stream=True)
    return frame.serialize()


def control_frames(server: Any, streams: list[int]) -> bytes:
    """PING, SETTINGS, WINDOW_UPDATEs, a reset and an unknown frame type among answers."""
    a, b, c, d, e, f = streams
    server.send_headers(a, [(b":status", b"200")], end_stream=True)
    server.ping(b"12345678")
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 50})
    server.increment_flow_control_window(1000)
    server.increment_flow_control_window(10, b)
    server.send_headers(b, [(b":status", b"200")])
    server.reset_stream(c)
    server.send_data(b, b"x" * 100, end_stream=True)
    server.send_headers(d, [(b":status", b"200")], end_stream=True)
    unknown = raw_frame(0xFA, 0xFF, e, b"whatever")
    server.send_headers(e, [(b":status", b"500")], end_stream=True)
    return unknown + raw_frame(0x1, 0x5, f | 1 << 31, server.encoder.encode([(b":status", b"200")]))


def graceful_goaway(server: Any, streams: list[int]) -> bytes:
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = streams[-1]
    return goaway.serialize() + apns_ok(server, streams) + b""


def goaway_with_error(server: Any, streams: list[int]) -> bytes:
    apns_ok(server, streams[:2])
    goaway = GoAwayFrame(0)
    goaway.last_stream_id, goaway.error_code = streams[1], 2
    return goaway.serialize()


ANSWERS = [
    apns_ok,
    fcm_ok,
    bodies_in_pieces,
    informational_trailers_cookies,
    padding_and_continuation,
    control_frames,
    graceful_goaway,
    goaway_with_error,
]


@pytest.mark.parametrize("byte_by_byte", [False, True])
@pytest.mark.parametrize("answer", ANSWERS, ids=[a.__name__ for a in ANSWERS])
def test_answers_are_read_as_h2_reads_them(answer: Answer, byte_by_byte: bool) -> None:
    twins = Twins()
    told = twins.answer(answer, byte_by_byte=byte_by_byte)
    assert told  # something arrived
    if answer in (apns_ok, fcm_ok, bodies_in_pieces):
        assert twins.handed == []  # plain answers: all read without h2's receive_data
    if answer is padding_and_continuation:
        handed = {(f[3], int.from_bytes(f[5:9], "big")) for f in frames(b"".join(twins.handed))}
        a, b, c, *_ = twins.streams
        assert handed == {(0, a), (1, b), (9, b), (1, c)}  # the rest read here
    if answer not in (graceful_goaway, goaway_with_error):  # later answers read alike, fast
        twins.more(4)
        twins.handed.clear()
        twins.answer(fcm_ok)
        assert twins.handed == []


def test_a_long_run_of_answers_keeps_h2s_state() -> None:
    """300 requests answered in random batches (APNs and FCM answers, split at random
    points): the windows and HPACK tables stay as h2's, WINDOW_UPDATEs go out alike."""
    rng = random.Random(7)
    twins = Twins(count=0, window=1 << 16)
    stream_id = 3
    for _round in range(30):
        twins.streams = []
        for _ in range(10):
            for side in (twins.ours, twins.theirs):
                assert side.client.send_request(stream_id, fcm_headers(b"Bearer t"), b"{}")
                side.deliver()
                side.server.increment_flow_control_window(2)
            twins.streams.append(stream_id)
            stream_id += 2
        twins.answer(rng.choice([apns_ok, fcm_ok, bodies_in_pieces]), byte_by_byte=_round % 7 == 0)
    streams = twins.ours.client.streams
    assert all(s.closed for stream_id, s in streams.items() if stream_id > 1)


# -- protocol errors --------------------------------------------------------------------------


def bad_hpack(server: Any, streams: list[int]) -> bytes:
    return raw_frame(0x1, 0x5, streams[0], b"\xff\xff\xff\xff\x7f")


def window_overrun(server: Any, streams: list[int]) -> bytes:
    server.send_headers(streams[0], [(b":status", b"200")])
    chunk = raw_frame(0x0, 0, streams[0], b"z" * 16384)
    return chunk * 5  # 81,920 bytes into a 65,535-byte window


def wrong_content_length(server: Any, streams: list[int]) -> bytes:
    server.send_headers(streams[0], [(b":status", b"200"), (b"content-length", b"5")])
    return raw_frame(0x0, 0x1, streams[0], b"abc")


def bad_content_length(server: Any, streams: list[int]) -> bytes:
    block = server.encoder.encode([(b":status", b"200"), (b"content-length", b"x5")])
    return raw_frame(0x1, 0x5, streams[0], block)


def data_before_headers(server: Any, streams: list[int]) -> bytes:
    return raw_frame(0x0, 0x1, streams[0], b"{}")


def informational_ending_the_stream(server: Any, streams: list[int]) -> bytes:
    block = server.encoder.encode([(b":status", b"103")])
    return raw_frame(0x1, 0x5, streams[0], block)


def frame_too_large(server: Any, streams: list[int]) -> bytes:
    server.send_headers(streams[0], [(b":status", b"200")])
    return raw_frame(0x0, 0x1, streams[0], b"y" * 16385)


def headers_on_an_ended_stream(server: Any, streams: list[int]) -> bytes:
    server.send_headers(streams[0], [(b":status", b"200")], end_stream=True)
    return raw_frame(0x1, 0x5, streams[0], server.encoder.encode([(b":status", b"200")]))


def data_on_an_ended_stream(server: Any, streams: list[int]) -> bytes:
    server.send_headers(streams[0], [(b":status", b"200")], end_stream=True)
    return raw_frame(0x0, 0x1, streams[0], b"late")


def headers_on_an_unknown_stream(server: Any, streams: list[int]) -> bytes:
    return raw_frame(0x1, 0x5, 4, server.encoder.encode([(b":status", b"200")]))


def continuation_interrupted(server: Any, streams: list[int]) -> bytes:
    block = server.encoder.encode([(b":status", b"200"), (b"x", b"y")])
    return raw_frame(0x1, 0x1, streams[0], block[:1]) + raw_frame(0x0, 0x1, streams[0], b"{}")


def oversized_frame_under_way(server: Any, streams: list[int]) -> bytes:
    """A frame announced past our frame size, its start only: no error until it is whole
    (as h2), and no buffering of megabytes here (h2 holds it)."""
    apns_ok(server, streams[:1])
    return struct.pack(">HBBBL", 1 << 12, 0, 0x0, 0x1, streams[1]) + b"w" * 300  # 1 MiB


def test_an_oversized_frame_is_left_to_h2_whole() -> None:
    """Its start handed to h2 at once; its end an error for both, the same GOAWAY."""
    twins = Twins()
    twins.answer(oversized_frame_under_way)
    assert twins.handed and twins.ours.client._pending == b""
    rest = b"w" * ((1 << 20) - 300)
    twins.answer(lambda server, streams: rest)


def continuation_interrupted_by_an_answer(server: Any, streams: list[int]) -> bytes:
    block = server.encoder.encode([(b":status", b"200"), (b"x", b"y")])
    answer = server.encoder.encode([(b":status", b"200")])
    return raw_frame(0x1, 0x1, streams[0], block[:1]) + raw_frame(0x1, 0x5, streams[1], answer)


ERRORS = [
    oversized_frame_under_way,
    continuation_interrupted_by_an_answer,
    bad_hpack,
    window_overrun,
    wrong_content_length,
    bad_content_length,
    data_before_headers,
    informational_ending_the_stream,
    frame_too_large,
    headers_on_an_ended_stream,
    data_on_an_ended_stream,
    headers_on_an_unknown_stream,
    continuation_interrupted,
]


@pytest.mark.parametrize("byte_by_byte", [False, True])
@pytest.mark.parametrize("answer", ERRORS, ids=[a.__name__ for a in ERRORS])
def test_protocol_errors_end_the_connection_as_h2_does(answer: Answer, byte_by_byte: bool) -> None:
    """The same error (or none: h2 resets a stream for some), the same GOAWAY or
    RST_STREAM queued, the same state."""
    Twins().answer(answer, byte_by_byte=byte_by_byte)


def test_a_reset_stream_answered_late_is_left_to_h2() -> None:
    """Our reset (a timeout) then the server's answer: h2 ignores or resets it, as before."""
    twins = Twins()
    for side in (twins.ours, twins.theirs):
        side.client.reset_stream(twins.streams[0])
        side.client.data_to_send()
    twins.answer(fcm_ok)


def test_what_the_fast_path_relies_on_in_h2() -> None:
    """The h2 version is the pinned one (an upgrade must come with a look at push/h2receive.py:
    it sets h2's stream state as h2's transitions do), and the private parts it uses exist."""
    pinned = Path(__file__).resolve().parents[1] / "requirements.txt"
    assert f"h2=={h2.__version__}" in pinned.read_text().split()
    twins = Twins(count=1)
    client = twins.ours.client
    stream = client.streams[twins.streams[0]]
    assert isinstance(client._inbound_flow_control_window_manager, WindowManager)
    assert isinstance(stream._inbound_window_manager, WindowManager)
    assert callable(stream._track_content_length) and callable(stream._initialize_content_length)
    machine = stream.state_machine
    assert machine.state is StreamState.HALF_CLOSED_LOCAL and machine.headers_received is None
    assert {"headers_received", "stream_closed_by", "state"} <= set(vars(machine))
    assert StreamClosedBy.RECV_END_STREAM.name == "RECV_END_STREAM"


# -- the relay's connection over a real socket ------------------------------------------------


def _exchange_with(answer: Answer) -> tuple[Exchange, H2ClientConnection, list[Any]]:
    """One FCM-like request on the relay's H2ClientConnection to an h2 server on a local
    socket, answered by `answer`; returns the exchange once done, the connection and what
    the server saw of the connection's end."""

    async def main() -> tuple[Exchange, H2ClientConnection, list[Any]]:
        loop = asyncio.get_running_loop()
        ended: list[Any] = []

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = cast(asyncio.Transport, transport)
                self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
                self.h2.initiate_connection()
                self.transport.write(self.h2.data_to_send())

            def data_received(self, data: bytes) -> None:
                raw = b""
                for event in self.h2.receive_data(data):
                    if isinstance(event, StreamEnded):
                        raw += answer(self.h2, [event.stream_id])
                    elif isinstance(event, ConnectionTerminated):
                        ended.append(event.error_code)
                self.transport.write(self.h2.data_to_send() + raw)

        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        listener = Listener()
        connection = H2ClientConnection(listener, "127.0.0.1", "/v1/x", max_streams=10)
        await loop.create_connection(lambda: connection, "127.0.0.1", port)
        await asyncio.wait_for(connection.ready, 5)
        done = loop.create_future()
        exchange = Exchange(b"{}", "Bearer t", 0, on_done=done.set_result)
        connection.start(exchange)
        await asyncio.wait_for(done, 5)
        await asyncio.sleep(0.05)  # the GOAWAY, if any, reaches the server
        before_close = list(ended)
        connection.close()
        server.close()
        return exchange, connection, before_close

    return loops.run(main())


class Listener:
    def __init__(self) -> None:
        self.events: list[str] = []

    def released(self, connection: Any) -> None:
        self.events.append("released")

    def lost(self, connection: Any) -> None:
        self.events.append("lost")


def test_the_relays_connection_reads_an_answer_over_a_socket() -> None:
    exchange, _connection, ended = _exchange_with(fcm_ok)
    assert exchange.status == 200 and not exchange.failure
    assert bytes(exchange.response).startswith(b'{"name": "projects/p/messages/0:')
    assert ended == []  # no GOAWAY for an error


def test_the_relays_connection_ends_on_a_protocol_error_with_h2s_goaway() -> None:
    """A content length the body does not match: the exchange fails, the server gets a
    GOAWAY with PROTOCOL_ERROR, the connection is lost (never a traceback)."""
    exchange, connection, ended = _exchange_with(wrong_content_length)
    assert exchange.failure == "HTTP/2 protocol error" and exchange.status == 200
    assert connection.closed
    assert ended == [ErrorCodes.PROTOCOL_ERROR]
