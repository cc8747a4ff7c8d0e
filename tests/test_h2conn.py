"""The HTTP/2 client's own request framing (`_Client.send_request`, push/h2conn.py) against h2's.

Two clients built as the relay builds its connections, each with a real h2 server connection
across an in-memory wire, take the same requests: one through `send_request`, one through
h2's `send_headers` and `send_data`. Their bytes must be identical and their h2 state (the
connection, every stream, the HPACK table) equal; an h2 server with its checks on must read
the requests, and answers, resets and window updates must reach the framed streams. Last, the
relay's APNs sender against the sandbox's fake APNs (a real HTTP/2 server over TLS), with
bodies held back by flow control and header blocks larger than a frame.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes, Settings
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame

from push.h2conn import _Client
from push.h2flow import raw_headers_config
from push.hpack_cache import CachingDecoder, CachingEncoder
from push.outcome import Push, Verdict
from push.payloads import apns_payload
from sandbox.apns import FakeApns
from sandbox.certs import generate_apns_key, generate_tls
from storage.records import Provider
from tests.providers import apns_sender
from tests.support import random_apns_token

FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's least (and default) value

Headers = list[tuple[bytes, bytes]]


def client() -> _Client:
    """A client connection as H2ClientConnection builds its own."""
    h2 = _Client(config=raw_headers_config(client_side=True))
    h2.encoder = CachingEncoder()
    h2.decoder = CachingDecoder(h2.decoder.max_header_list_size)
    return h2


class Wire:
    """A client and a real h2 server connection, their handshake done and a first request
    sent on stream 1 through h2 (it opens the connection in h2's state machine; until then
    `send_request` leaves the work to h2); `deliver` carries what the client queued to the
    server and returns the server's events, `answer` the other way."""

    def __init__(self, *, window: int = 65535, frame: int = FRAME, streams: int = 100) -> None:
        self.client = client()
        self.server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.server.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.INITIAL_WINDOW_SIZE: window,
                SettingCodes.MAX_FRAME_SIZE: frame,
                SettingCodes.MAX_CONCURRENT_STREAMS: streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20,
            },
        )
        self.server.decoder.max_header_list_size = 1 << 20
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.deliver()
        self.answer()
        self.client.send_headers(1, fcm_headers(b"Bearer first"), end_stream=True)
        self.deliver()
        assert self.client.state_machine.state is ConnectionState.CLIENT_OPEN

    def deliver(self) -> list[Any]:
        return self.server.receive_data(self.client.data_to_send())

    def answer(self) -> list[Any]:
        return self.client.receive_data(self.server.data_to_send())


def through_h2(h2: H2Connection, stream_id: int, headers: Headers, body: bytes) -> bool:
    """What the connection did before `send_request`: h2's own calls."""
    h2.send_headers(stream_id, headers)
    if len(body) > min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size):
        return False
    h2.send_data(stream_id, body, end_stream=True)
    return True


def state(h2: H2Connection) -> dict[str, Any]:
    """Everything h2 keeps about the connection's sending side and its streams."""
    streams = {}
    for stream_id, stream in h2.streams.items():
        fields = {k: v for k, v in vars(stream).items() if k not in ("config", "state_machine")}
        fields["_inbound_window_manager"] = vars(stream._inbound_window_manager)
        fields["state_machine"] = vars(stream.state_machine)
        streams[stream_id] = fields
    table = h2.encoder.header_table
    return {
        "connection": h2.state_machine.state,
        "window": h2.outbound_flow_control_window,
        "highest": h2.highest_outbound_stream_id,
        "streams": streams,
        "hpack": (list(table.dynamic_entries), table.maxsize, table.resized),
    }


def apns_headers(token: bytes, authorization: bytes = b"bearer one") -> Headers:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        NeverIndexedHeaderTuple(b":path", b"/3/device/" + token),
        (b"host", b"api.push.apple.com"),
        NeverIndexedHeaderTuple(b"apns-id", str(uuid.uuid4()).encode()),
        (b"apns-topic", b"com.loki-project.loki-messenger"),
        (b"apns-push-type", b"alert"),
        (b"apns-priority", b"10"),
        NeverIndexedHeaderTuple(b"apns-expiration", b"1700000000"),
        (b"authorization", authorization),
    ]


def fcm_headers(authorization: bytes) -> Headers:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"fcm.googleapis.com"),
        (b":path", b"/v1/projects/p/messages:send"),
        (b"content-type", b"application/json"),
        (b"authorization", authorization),
        (b"x-goog-api-format-version", b"2"),
    ]


def requests(kind: str) -> list[tuple[Headers, bytes]]:
    """A run of requests on one connection: repeated fields (the HPACK caches at work), a
    changed authorization, bodies of every size the windows allow, and header blocks of one,
    two and three frames (one exactly two frames long)."""
    token = random_apns_token().encode
    body = os.urandom
    if kind == "apns":
        first = [(apns_headers(token()), body(300)) for _ in range(4)]
        renewed = [(apns_headers(token(), b"bearer two"), body(n)) for n in (0, 1, 4000)]
        return first + renewed + [(apns_headers(token()), body(FRAME))]
    if kind == "fcm":
        return [(fcm_headers(b"Bearer %d" % (n // 3)), body(500 + n)) for n in range(8)]
    assert kind == "large headers"
    out = [(apns_headers(b"a" * n), body(200)) for n in (FRAME, 2 * FRAME + 5000, 20000)]
    exact = [(frames_long(n), body(100)) for n in (1, 2)]
    return [*out, *exact, (apns_headers(token()), body(10))]


def frames_long(count: int) -> Headers:
    """APNs headers whose block, once the other fields are indexed, is `count` frames long."""
    encoder = CachingEncoder()
    encoder.encode(apns_headers(b"warm"))
    for n in range(count * FRAME - 200, count * FRAME):
        headers = apns_headers(b"b" * n)
        if len(encoder.encode(headers)) == count * FRAME:
            return headers
    raise AssertionError(f"no path length gives a block of {count} frames")


@pytest.mark.parametrize("frame", [FRAME, 3 * FRAME + 7])
@pytest.mark.parametrize("kind", ["apns", "fcm", "large headers"])
def test_framed_requests_are_h2s_bytes_and_state(kind: str, frame: int) -> None:
    """Byte for byte, at the least frame size and a larger one the server chose."""
    ours, theirs = Wire(frame=frame), Wire(frame=frame)
    for n, (headers, body) in enumerate(requests(kind)):
        stream_id = 2 * n + 3
        assert ours.client.send_request(stream_id, headers, body) is True
        assert through_h2(theirs.client, stream_id, headers, body) is True
        assert ours.client.data_to_send() == theirs.client.data_to_send(), n
        assert state(ours.client) == state(theirs.client), n
        # The window goes back to both alike, so later requests still fit.
        for wire in (ours, theirs):
            if body:
                wire.server.increment_flow_control_window(len(body))
            wire.answer()


def test_closed_streams_are_purged_as_h2s_are() -> None:
    """h2 forgets closed streams when it counts the open ones (the connection counts them
    every 512 streams): 600 requests, each answered, leave the same streams behind."""
    ours, theirs = Wire(), Wire()
    for n in range(600):
        stream_id = 2 * n + 3
        headers = fcm_headers(b"Bearer t")
        assert ours.client.send_request(stream_id, headers, b"{}")
        assert through_h2(theirs.client, stream_id, headers, b"{}")
        for wire in (ours, theirs):
            wire.deliver()
            wire.server.send_headers(stream_id, [(b":status", b"200")], end_stream=True)
            wire.server.increment_flow_control_window(2)
            wire.answer()
    assert state(ours.client) == state(theirs.client)
    assert len(ours.client.streams) < 600


def test_bodies_the_windows_do_not_take_wait_as_h2s_would() -> None:
    """A stream window of 1,000: a body of 1,000 goes, one of 1,001 does not (its headers
    do); then the connection's window (65,535) runs out: 1,000 does not fit the 535 left,
    535 does, and an empty body still goes; a body over the frame size never goes whole."""
    ours, theirs = Wire(window=1000), Wire(window=1000)
    sizes = [1000, 1001, 0, *([1000] * 64), 1000, 535, 0]
    stream_id = 3
    for size in sizes:
        body = os.urandom(size)
        headers = apns_headers(random_apns_token().encode())
        went = ours.client.send_request(stream_id, headers, body)
        assert went is through_h2(theirs.client, stream_id, headers, body)
        assert ours.client.data_to_send() == theirs.client.data_to_send()
        assert state(ours.client) == state(theirs.client)
        stream_id += 2
    assert ours.client.outbound_flow_control_window == 0
    states = [s.state_machine.state.name for s in ours.client.streams.values()]
    assert states.count("HALF_CLOSED_LOCAL") == 1 + 68 and states.count("OPEN") == 2

    wide = Wire(window=1 << 20)
    wide.server.increment_flow_control_window(1 << 20)
    wide.answer()
    assert wide.client.send_request(3, apns_headers(b"cd"), os.urandom(FRAME + 1)) is False
    assert wide.client.send_request(5, apns_headers(b"ef"), os.urandom(FRAME)) is True


def test_the_server_reads_framed_requests() -> None:
    """An h2 server with its header checks on reads each request whole: its headers as sent,
    its body, its end."""
    wire = Wire()
    wire.server.increment_flow_control_window(1 << 20)
    wire.answer()
    sent = requests("apns") + requests("large headers")
    for n, (headers, body) in enumerate(sent):
        stream_id = 2 * n + 3
        assert wire.client.send_request(stream_id, headers, body)
        events = wire.deliver()
        request = [e for e in events if isinstance(e, RequestReceived)]
        assert len(request) == 1 and request[0].stream_id == stream_id
        assert [tuple(h) for h in request[0].headers] == [tuple(h) for h in headers]
        assert [type(h) is NeverIndexedHeaderTuple for h in request[0].headers] == [
            isinstance(h, HeaderTuple) and not h.indexable for h in headers
        ]
        received = b"".join(e.data for e in events if isinstance(e, DataReceived))
        assert received == body
        ended = [e.stream_id for e in events if isinstance(e, StreamEnded)]
        assert ended == [stream_id]
        if body:
            wire.server.increment_flow_control_window(len(body))


def test_the_frames_are_what_h2_would_write() -> None:
    """The frames, as hyperframe parses them: HEADERS, CONTINUATIONs cut at the peer's frame
    size with END_HEADERS on the last only, then one DATA frame ending the stream."""
    wire = Wire()
    headers = apns_headers(b"z" * (2 * FRAME + 100))
    assert wire.client.send_request(3, headers, b"body")
    data = wire.client.data_to_send()
    frames: list[Any] = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    assert [type(f) for f in frames] == [
        HeadersFrame,
        ContinuationFrame,
        ContinuationFrame,
        DataFrame,
    ]
    assert [f.stream_id for f in frames] == [3, 3, 3, 3]
    assert [len(f.data) for f in frames[:2]] == [FRAME, FRAME]
    assert [set(f.flags) for f in frames] == [set(), set(), {"END_HEADERS"}, {"END_STREAM"}]
    assert frames[3].data == b"body"


def test_framed_streams_take_answers_resets_window_updates_and_goaway() -> None:
    """The streams `send_request` opened are h2's: an answer, a reset, a WINDOW_UPDATE for
    a body left waiting (which h2 then sends) and a GOAWAY reach them as they would."""
    wire = Wire(window=100)
    client, server = wire.client, wire.server
    assert client.send_request(3, apns_headers(b"a1"), b"x" * 100)
    assert client.send_request(5, apns_headers(b"b2"), b"y" * 10)
    assert not client.send_request(7, apns_headers(b"c3"), b"z" * 101)  # waits for window
    assert client.send_request(9, apns_headers(b"d4"), b"w")
    wire.deliver()

    server.send_headers(3, [(b":status", b"200"), (b"apns-id", b"id")])
    server.send_data(3, b"{}", end_stream=True)
    server.reset_stream(5, ErrorCodes.REFUSED_STREAM)
    server.increment_flow_control_window(1, 7)
    events = wire.answer()
    kinds = [(type(e), getattr(e, "stream_id", None)) for e in events]
    assert (ResponseReceived, 3) in kinds and (DataReceived, 3) in kinds
    assert (StreamEnded, 3) in kinds
    reset = [e for e in events if isinstance(e, StreamReset)]
    assert [(e.stream_id, e.error_code) for e in reset] == [(5, ErrorCodes.REFUSED_STREAM)]
    assert (WindowUpdated, 7) in kinds
    assert client.streams[3].closed and client.streams[5].closed
    assert client.local_flow_control_window(7) == 101
    client.send_data(7, b"z" * 101, end_stream=True)  # h2 sends the rest as it would
    events = wire.deliver()
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == b"z" * 101
    assert [e.stream_id for e in events if isinstance(e, StreamEnded)] == [7]

    goaway = GoAwayFrame(0)
    goaway.last_stream_id = 9  # graceful (NO_ERROR), written here: h2's server would close
    (terminated,) = client.receive_data(goaway.serialize())
    assert isinstance(terminated, ConnectionTerminated) and terminated.last_stream_id == 9
    server.send_headers(9, [(b":status", b"200")], end_stream=True)
    events = wire.answer()  # after a graceful GOAWAY stream 9 still gets its answer
    assert [type(e) for e in events] == [ResponseReceived, StreamEnded]
    assert client.streams[9].closed


# -- a real exchange with the sandbox's fake APNs --------------------------------------------


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeApns]:
    """The RFC's default windows, given back only as requests are read, and device tokens
    of any length (a long one makes a header block larger than a frame)."""
    directory = tmp_path_factory.mktemp("apns")
    server = FakeApns(
        generate_tls(directory / "tls"),
        generate_apns_key(directory / "key"),
        strict_flow_control=True,
        check_token_format=False,
    ).start()
    yield server
    server.stop()


def test_a_real_exchange_with_held_bodies_and_long_header_blocks(fake: FakeApns) -> None:
    """40 pushes of ~3.9 KB bodies (the 65,535-byte window holds 16) at once, some with
    tokens of 20,000 and 40,000 characters: each is accepted and arrives once, whole, and the
    fake saw no frame past its window or its frame size."""
    data = base64.b64encode(os.urandom(2796)).decode()
    body, _ = apns_payload(data)
    tokens = [
        "c" * 20000 if n % 7 == 3 else "d" * 40000 if n % 11 == 5 else random_apns_token()
        for n in range(40)
    ]
    pushes = [
        Push(n, Provider.APNS, token, data, str(uuid.uuid4()), int(time.time()) + 3600)
        for n, token in enumerate(tokens)
    ]

    async def send() -> list[Verdict]:
        sender = apns_sender(fake, max_connections=1, request_timeout_s=30.0)
        try:
            return [outcome.verdict for outcome in await sender.send(pushes)]
        finally:
            await sender.close()

    assert asyncio.run(send()) == [Verdict.ACCEPTED] * 40
    assert fake.violations == []
    delivered = fake.delivered()
    assert sorted(p.apns_id for p in delivered) == sorted(p.apns_id for p in pushes)
    assert {p.apns_id: (p.token, p.body) for p in delivered} == {
        p.apns_id: (p.token, body) for p in pushes
    }
