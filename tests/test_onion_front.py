"""What the onion fast path (web/onion_routes.py OnionFront) decides by itself, over a real
socket to a real relay: the method, the body (chunked, oversized, cut short), the Host header,
several requests on one connection, and the answer's headers. Each answer is the one the
RequestHandler that served these paths before gave (bench/README.md has the byte-for-byte
comparison)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lsrpc.client import PreparedRequest
from tests.checks import wait_until
from tests.support import RunningRelay, random_apns_token, random_session_id

V2 = "/loki/v2/lsrpc"
V4 = "/oxen/v4/lsrpc"


@dataclass
class Answer:
    status_line: bytes
    headers: dict[str, str]
    body: bytes


class Connection:
    """One kept-alive connection, written and read as raw bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def answer(self, *, head: bool = False) -> Answer:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), self.buffer
        block, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = block.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(status_line, headers, body)

    def closed_by_server(self) -> bool:
        try:
            return not self._fill()
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connect(sqlite_relay: RunningRelay) -> Iterator[Connection]:
    connection = Connection(sqlite_relay.port)
    yield connection
    connection.close()


def request(
    method: str, path: str, body: bytes = b"", *, extra: str = "", length: bool = True
) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: relay\r\n{extra}"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def register_body(relay: RunningRelay, v4: bool = False) -> tuple[PreparedRequest, bytes]:
    params = {"token": random_apns_token(), "pubKey": random_session_id()}
    prepared = relay.client.v4("register", params) if v4 else relay.client.v2("register", params)
    return prepared, prepared.body


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def test_other_methods_get_a_plain_405_and_the_connection_stays_open(
    sqlite_relay: RunningRelay, connect: Connection
) -> None:
    for method in ("GET", "OPTIONS", "PUT", "DELETE", "PATCH"):
        connect.send(request(method, V2, b"ignored" if method == "PUT" else b""))
        answer = connect.answer()
        assert (answer.status_line, answer.body) == (
            b"HTTP/1.1 405 Method Not Allowed",
            b"Method Not Allowed\n",
        ), method
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert "allow" not in answer.headers and "server" not in answer.headers
    connect.send(request("HEAD", V4, length=False))
    head = connect.answer(head=True)
    assert head.status_line == b"HTTP/1.1 405 Method Not Allowed"
    assert head.headers["content-length"] == "19"  # the length of the GET's body, none sent
    prepared, body = register_body(sqlite_relay)
    connect.send(request("POST", V2, body))  # the same connection still serves
    answer = connect.answer()
    assert answer.status_line == b"HTTP/1.1 200 OK"
    assert prepared.open_v2_reply(answer.body) == (200, {"code": 1, "message": "Success"})


def test_the_answer_headers_are_those_of_before(
    sqlite_relay: RunningRelay, connect: Connection
) -> None:
    _, body = register_body(sqlite_relay, v4=True)
    connect.send(request("POST", V4, body))
    answer = connect.answer()
    assert answer.status_line == b"HTTP/1.1 200 OK"
    assert list(answer.headers) == ["content-type", "date", "content-length"]
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["date"].endswith(" GMT")


def test_a_chunked_body_is_read_whole(sqlite_relay: RunningRelay, connect: Connection) -> None:
    prepared, body = register_body(sqlite_relay)
    connect.send(
        request("POST", V2, chunked(body, 7), extra="Transfer-Encoding: chunked\r\n", length=False)
    )
    answer = connect.answer()
    assert answer.status_line == b"HTTP/1.1 200 OK"
    assert answer.headers["content-type"] == "application/json"
    assert answer.body.startswith(b'{"result": "') and answer.body.endswith(b'"}')  # as before
    assert prepared.open_v2_reply(answer.body) == (200, {"code": 1, "message": "Success"})


def test_an_oversized_body_is_a_413_and_the_connection_goes_on(
    sqlite_relay: RunningRelay, connect: Connection
) -> None:
    limit = sqlite_relay.settings.MAX_BODY_BYTES
    too_large = b"x" * (limit + 1)
    connect.send(request("POST", V2, too_large))
    connect.send(
        request(
            "POST",
            V4,
            chunked(too_large, 4096),
            extra="Transfer-Encoding: chunked\r\n",
            length=False,
        )
    )
    for _ in range(2):
        answer = connect.answer()
        assert (answer.status_line, answer.body) == (
            b"HTTP/1.1 413 Request Entity Too Large",
            b"Request body too large\n",
        )
    # At the limit, the body is the core's to judge (a plain 400 here: not an onion request).
    connect.send(request("POST", V2, b"x" * limit))
    answer = connect.answer()
    assert answer.status_line == b"HTTP/1.1 400 Bad Request"
    assert answer.body.startswith(b"Invalid onion request: ")


def test_pipelined_requests_are_answered_in_order(
    sqlite_relay: RunningRelay, connect: Connection
) -> None:
    first, first_body = register_body(sqlite_relay)
    second, second_body = register_body(sqlite_relay, v4=True)
    connect.send(
        request("POST", V2, first_body)
        + request("GET", V2)
        + request("POST", V4, second_body)
        + request("GET", "/healthz")
    )
    answers = [connect.answer() for _ in range(4)]
    assert [a.status_line.split(b" ")[1] for a in answers] == [b"200", b"405", b"200", b"200"]
    assert first.open_v2_reply(answers[0].body)[0] == 200
    assert second.open_v4_reply(answers[2].body)[0]["code"] == 200
    assert answers[3].body == b"ok\n"


def test_connection_close_and_http_1_0_close_after_the_answer(sqlite_relay: RunningRelay) -> None:
    for head in (
        b"POST /loki/v2/lsrpc HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n",
        b"POST /loki/v2/lsrpc HTTP/1.0\r\n",
    ):
        connection = Connection(sqlite_relay.port)
        try:
            connection.send(head + b"Content-Length: 3\r\n\r\nabc")
            answer = connection.answer()
            assert answer.status_line == b"HTTP/1.1 400 Bad Request"
            assert connection.closed_by_server()
        finally:
            connection.close()


def test_a_missing_or_repeated_host_is_tornados_bare_400(sqlite_relay: RunningRelay) -> None:
    for hosts in (b"", b"Host: a\r\nHost: b\r\n", b"Host: a b\r\n"):
        connection = Connection(sqlite_relay.port)
        try:
            connection.send(
                b"POST /loki/v2/lsrpc HTTP/1.1\r\n" + hosts + b"Content-Length: 3\r\n\r\nabc"
            )
            answer = connection.answer()
            assert (answer.status_line, answer.body) == (b"HTTP/1.1 400 Bad Request", b"")
            assert connection.closed_by_server()
        finally:
            connection.close()


def test_a_client_that_leaves_mid_body_gets_nothing_and_counts_nothing(
    sqlite_relay: RunningRelay,
) -> None:
    _, body = register_body(sqlite_relay)
    connection = Connection(sqlite_relay.port)
    connection.send(request("POST", V2, body)[: -len(body) // 2])
    connection.close()
    wait_until(
        lambda: (
            sqlite_relay.relay.http is not None and sqlite_relay.relay.http.open_connections == 0
        )
    )
    assert sqlite_relay.relay.in_flight.count == 0
    status, answer = sqlite_relay.call_v2(
        "register", {"token": random_apns_token(), "pubKey": random_session_id()}
    )
    assert (status, answer) == (200, {"code": 1, "message": "Success"})
