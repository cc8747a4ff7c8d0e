"""Slow and idle connections (issue 12): 500 of them do not keep a normal client out; the
timeouts close them; beyond MAX_CONNECTIONS a connection gets a short 503 and is closed.

Every wait here is for a state (a connection closed, a count reached) with a generous bound,
never an assertion about how long something took."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.checks import SUCCESS, wait_until
from tests.support import RunningRelay, random_apns_token, random_session_id
from web.connections import REFUSAL


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def connect(relay: RunningRelay, opened: list[socket.socket]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=60)
    opened.append(sock)
    return sock


def open_connections(relay: RunningRelay) -> int:
    async def count() -> int:
        assert relay.relay.http is not None
        return relay.relay.http.open_connections

    result: int = relay.call(count())
    return result


def slow_starts(relay: RunningRelay) -> list[bytes]:
    """What a slow client has sent so far: part of the headers, or all of them and part of a
    body (a valid onion request that never finishes)."""
    body = relay.client.v2("register", {"token": random_apns_token(), "pubKey": "05" + "ab" * 32})
    head = (
        f"POST /loki/v2/lsrpc HTTP/1.1\r\nHost: relay\r\nContent-Length: {len(body.body)}\r\n\r\n"
    ).encode()
    return [b"POST /loki/v2/lsrpc HTTP/1.1\r\nHost: re", head + body.body[: len(body.body) // 2]]


def read_until_closed(sock: socket.socket) -> bytes:
    """Blocks until the server closes the connection (EOF or reset); what it sent before."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def test_a_normal_client_is_served_while_500_slow_connections_are_open(
    start_relay: Any, sqlite_url: str, sockets: list[socket.socket]
) -> None:
    relay: RunningRelay = start_relay(sqlite_url)
    starts = slow_starts(relay)
    for i in range(500):
        sock = connect(relay, sockets)
        if i % 5:  # 4 in 5 trickle bytes, 1 in 5 sends nothing at all
            sock.sendall(starts[i % 2])
    wait_until(lambda: open_connections(relay) >= 500)
    for sock in sockets[1::5]:  # and some trickle one more byte
        sock.sendall(b"x")
    session_id = random_session_id()
    assert relay.call_v4("register", {"token": random_apns_token(), "pubKey": session_id}) == (
        200,
        {"code": 1, "message": "Success"},
    )
    assert relay.call_v2("notify", {"send_to": session_id, "data": "aGk="}) == SUCCESS
    assert open_connections(relay) >= 500  # the slow ones are all still there


def test_idle_slow_header_and_slow_body_connections_are_closed(
    start_relay: Any, sqlite_url: str, sockets: list[socket.socket]
) -> None:
    relay: RunningRelay = start_relay(sqlite_url, IDLE_CONNECTION_TIMEOUT=0.5, BODY_TIMEOUT=0.5)
    idle = connect(relay, sockets)
    slow_header, slow_body = (connect(relay, sockets) for _ in range(2))
    partial_header, partial_body = slow_starts(relay)
    slow_header.sendall(partial_header)
    slow_body.sendall(partial_body)
    # After one request a kept-alive connection is idle too.
    kept_alive = connect(relay, sockets)
    kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
    assert read_until_closed(kept_alive).startswith(b"HTTP/1.1 200 OK")
    for sock in (idle, slow_header, slow_body):
        assert read_until_closed(sock) == b""  # closed without an answer
    wait_until(lambda: open_connections(relay) == 0)


def test_connections_beyond_the_cap_get_a_503_and_are_closed(
    start_relay: Any, sqlite_url: str, sockets: list[socket.socket]
) -> None:
    relay: RunningRelay = start_relay(sqlite_url, MAX_CONNECTIONS=20)
    for _ in range(20):
        connect(relay, sockets)
    wait_until(lambda: open_connections(relay) == 20)

    extra = connect(relay, sockets)
    answer = b""
    while chunk := extra.recv(4096):
        answer += chunk
    assert answer == REFUSAL
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    # A real client is refused too, never served: the 503, or (when its request crossed the
    # refusal on the wire, and the kernel resets a socket closed with unread data) a reset.
    params = {"token": random_apns_token(), "pubKey": random_session_id()}
    try:
        refused = relay.post("/loki/v2/lsrpc", relay.client.v2("register", params).body)
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        pass
    else:
        assert (refused.status, refused.body) == (503, b"Too many connections, try again later\n")
    assert relay.relay.http is not None
    assert relay.relay.http.refused_connections == 2

    for sock in sockets[:20]:
        sock.close()
    wait_until(lambda: open_connections(relay) == 0)
    params = {"token": random_apns_token(), "pubKey": random_session_id()}
    assert relay.call_v2("register", params) == SUCCESS


def test_idle_connections_holding_the_cap_time_out_and_free_it(
    start_relay: Any, sqlite_url: str, sockets: list[socket.socket]
) -> None:
    relay: RunningRelay = start_relay(sqlite_url, MAX_CONNECTIONS=10, IDLE_CONNECTION_TIMEOUT=0.5)
    held = [connect(relay, sockets) for _ in range(10)]
    for sock in held:
        assert read_until_closed(sock) == b""
    wait_until(lambda: open_connections(relay) == 0)
    params = {"token": random_apns_token(), "pubKey": random_session_id()}
    assert relay.call_v2("register", params) == SUCCESS
