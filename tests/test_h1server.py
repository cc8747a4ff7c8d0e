"""Our HTTP/1.1 server (web/h1server.py) against Tornado's HTTPServer, over real sockets: the
same delegate (OnionFront in front of a Tornado Application with a RequestHandler, a streamed
(chunked) answer and a WSGI app) served by both on one loop, the same raw bytes sent to each,
and the answers compared byte for byte (only the Date header's value masked)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import pytest
from flask import Flask, request
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, FallbackHandler, RequestHandler
from tornado.wsgi import WSGIContainer

from tests import loops
from tests.checks import SUCCESS
from tests.support import RunningRelay, random_apns_token, random_session_id
from tests.test_slow_clients import open_connections
from web.answers import PLAIN, HttpAnswer, plain
from web.connections import REFUSAL, CappedHTTPServer
from web.errorlog import RateLimitedLog
from web.h1server import H1Server
from web.onion_routes import OnionFront

ONION = "/loki/v2/lsrpc"
MAX_BODY_BYTES = 1000
MAX_BODY_SIZE = 4000  # the connection's limit: a bare 400 past it


async def echo(body: bytes) -> HttpAnswer:
    return plain(200, f"got {len(body)} bytes")


async def slow(body: bytes) -> HttpAnswer:
    await asyncio.sleep(0.05)
    return plain(200, f"slowly {len(body)}")


def answering(answer: HttpAnswer) -> Any:
    async def given(body: bytes) -> HttpAnswer:
        return answer

    return given


#: Onion answers with headers of their own: written by RequestConnection.write_answer in one
#: go, or (a name of ours, a name twice, a 304) through write_headers, as Tornado writes them.
OWN_HEADERS = {
    "/extra": plain(200, "x", [("x-custom", "a b"), ("CACHE-control", "no-store")]),
    "/latin1": plain(201, "x", [("X-Latin", "caf\xe9")]),
    "/clash": plain(200, "x", [("content-type", "text/html"), ("content-LENGTH", "9")]),
    "/connection": plain(200, "x", [("connection", "keep-alive"), ("Date", "never")]),
    "/twice": plain(200, "x", [("X-A", "1"), ("x-a", "2"), ("X-B", "3")]),
    "/unknown-status": HttpAnswer(299, "application/octet-stream", b"\x00\xff"),
    "/not-modified": HttpAnswer(304, PLAIN, b""),
}
#: A body where there must be none: Tornado's HTTPOutputError, the connection aborted.
NOT_MODIFIED_WITH_BODY = HttpAnswer(304, PLAIN, b"x")
#: Headers Tornado refuses to write (ValueError, UnicodeEncodeError): nothing is answered.
UNWRITABLE = {
    "/crlf": plain(200, "x", [("X-Bad", "a\r\nInjected: yes")]),
    "/lf-name": plain(200, "x", [("X-Bad\nInjected", "yes")]),
    "/content-type-crlf": HttpAnswer(200, "text/plain\r\nInjected: yes", b"x"),
    "/beyond-latin1": plain(200, "x", [("X-Euro", "\u20ac")]),
}


class Handler(RequestHandler):
    def get(self) -> None:
        self.write(f"hello {self.request.remote_ip} {self.request.protocol}")

    def post(self) -> None:
        self.write(b"posted %d" % len(self.request.body))


class Headers(RequestHandler):
    """The request's headers as read: every (name, value) and the combined values."""

    def get(self) -> None:
        headers = self.request.headers
        self.write(repr([list(headers.get_all()), sorted(headers.items())]).encode("utf-8"))


class Streamed(RequestHandler):
    async def get(self) -> None:
        self.write("first part ")
        await self.flush()
        self.write("second part")


class Waiting(RequestHandler):
    left: ClassVar[list[str]] = []

    async def get(self) -> None:
        await asyncio.sleep(0.3)
        self.write("late")

    def on_connection_close(self) -> None:
        Waiting.left.append(self.request.path)


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.route("/wsgi", methods=["GET", "POST"])
    def wsgi() -> str:
        return f"wsgi {request.method} {len(request.get_data())}"

    return app


class Both:
    """The same delegate served by H1Server and by Tornado's HTTPServer on one loop thread."""

    def __init__(self, **limits: Any) -> None:
        self.executor = ThreadPoolExecutor(2)
        self.loop = loops.new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        wsgi = WSGIContainer(flask_app().wsgi_app, executor=self.executor)

        def front() -> OnionFront:
            application = Application(
                [
                    (r"/handler", Handler),
                    (r"/headers", Headers),
                    (r"/stream", Streamed),
                    (r"/waiting", Waiting),
                    (r".*", FallbackHandler, {"fallback": wsgi}),
                ]
            )
            answers = {path: answering(a) for path, a in {**OWN_HEADERS, **UNWRITABLE}.items()}
            answers["/not-modified-with-body"] = answering(NOT_MODIFIED_WITH_BODY)
            return OnionFront(
                {ONION: echo, "/slow": slow, **answers},
                application,
                max_body_bytes=MAX_BODY_BYTES,
                errors=RateLimitedLog(logging.getLogger(__name__), interval_s=0),
            )

        async def listen() -> tuple[H1Server, HTTPServer]:
            own = H1Server(front(), max_body_size=MAX_BODY_SIZE, **limits)
            await own.listen(bind_sockets(0, "127.0.0.1"))
            tornado_limits = {k: v for k, v in limits.items() if k != "max_connections"}
            theirs = HTTPServer(front(), max_body_size=MAX_BODY_SIZE, **tornado_limits)
            theirs.add_sockets(bind_sockets(0, "127.0.0.1"))
            return own, theirs

        self.own, self.tornado = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        assert self.own.port is not None
        self.own_port: int = self.own.port
        self.tornado_port: int = next(iter(self.tornado._sockets.values())).getsockname()[1]

    def close(self) -> None:
        async def stop() -> None:
            for server in (self.own, self.tornado):
                server.stop()
                await server.close_all_connections()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.executor.shutdown()


@pytest.fixture(scope="module")
def both() -> Iterator[Both]:
    served = Both(idle_connection_timeout=5, body_timeout=5)
    yield served
    served.close()


def exchange(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send `parts` (pausing between them), then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for index, part in enumerate(parts):
            if index and pause:
                time.sleep(pause)
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # closed by the server (a timeout)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", received)


def same(both: Both, *parts: bytes, pause: float = 0.0) -> bytes:
    ours = exchange(both.own_port, *parts, pause=pause)
    theirs = exchange(both.tornado_port, *parts, pause=pause)
    assert ours == theirs
    return ours


LAST = b"GET /handler HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"


def post(path: str, body: bytes, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nHost: relay\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path.encode(),
        version,
        len(body),
        extra,
        body,
    )


def get(path: str, extra: bytes = b"", method: bytes = b"GET", version: bytes = b"1.1") -> bytes:
    return b"%s %s HTTP/%s\r\nHost: relay\r\n%s\r\n" % (method, path.encode(), version, extra)


def chunked(path: str, *chunks: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode()
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


KEPT_ALIVE = {
    "onion post": [post(ONION, b"x" * 100)],
    "onion get and head": [get(ONION), get(ONION, method=b"HEAD")],
    "onion too large": [post(ONION, b"x" * (MAX_BODY_BYTES + 1))],
    "onion chunked": [chunked(ONION, b"abc", b"d" * 300)],
    "onion chunked too large": [chunked(ONION, b"a" * 900, b"b" * 900)],
    "handler": [get("/handler"), get("/handler", method=b"HEAD"), post("/handler", b"12345")],
    "handler chunked": [chunked("/handler", b"x" * 10, b"y" * 20)],
    "unknown method": [get("/handler", method=b"DELETE")],
    "streamed answer": [get("/stream")],
    "wsgi": [get("/wsgi"), post("/wsgi", b"abc")],
    "wsgi 404": [get("/nothing/here")],
    "expect continue": [post(ONION, b"x" * 10, b"Expect: 100-continue\r\n")],
    "expect continue, handler": [post("/handler", b"x" * 10, b"Expect: 100-continue\r\n")],
    "lf only": [b"GET /handler HTTP/1.1\nHost: relay\n\n"],
    "blank lines between requests": [get("/handler") + b"\r\n" + post(ONION, b"x")],
    "query string": [post(ONION + "?a=b", b"x"), get("/handler?x=1&y")],
    "equal content lengths": [post(ONION, b"xy", b"Content-Length: 2\r\n")],
    "slow answers pipelined": [post("/slow", b"a") + post(ONION, b"bb") + post("/slow", b"ccc")],
    "pipelined mix": [post(ONION, b"1") + get("/handler") + get("/wsgi") + get(ONION)],
    "http/1.0 keep-alive": [
        get("/handler", b"Connection: keep-alive\r\n", version=b"1.0"),
        post(ONION, b"abc", b"Connection: keep-alive\r\n", version=b"1.0"),
    ],
    # Header blocks read (web/h1headers.py), echoed by the Headers handler.
    "headers: usual": [get("/headers", b"X-A: b\r\nAccept: */*\r\n")],
    "headers: empty values": [get("/headers", b"X-Empty:\r\nX-Spaces:   \r\nX-Tab:\t\r\n")],
    "headers: whitespace around values": [
        get("/headers", b"X-B:\tb \t\r\nX-C:  c  d  \r\nX-D:e\r\nX-T: a\tb\r\n")
    ],
    "headers: duplicates": [get("/headers", b"X-Dup: 1\r\nx-dup: 2\r\nX-DUP:\r\nAccept: a\r\n")],
    "headers: latin-1 bytes": [get("/headers", b"X-High: caf\xe9 \xff\x80\r\n")],
    "headers: colons in values": [get("/headers", b"X-Url: http://a:b/c?d=e:f\r\n")],
    "headers: mixed case names": [
        get("/headers", b"x-lower: 1\r\nX-UPPER: 2\r\ncontent-TYPE: text/plain\r\n")
    ],
    "headers: bare lf lines": [
        b"GET /headers HTTP/1.1\r\nHost: relay\nX-A: b\r\n\r\n",
        b"GET /headers HTTP/1.1\nHost: relay\r\nX-A: b\n\r\n",
        b"GET /headers HTTP/1.1\r\nHost: relay\r\nX-A: b\r\n\n",
    ],
    "headers: very many": [
        get("/headers", b"".join(b"X-N%d: %d\r\n" % (i, i) for i in range(500)))
    ],
    "headers: one name many times": [
        get("/headers", b"".join(b"X-Same: %d\r\n" % i for i in range(200)))
    ],
    "headers: onion with a browser's headers": [
        post(ONION, b"abc", b"User-Agent: x/1.0 (y)\r\nAccept: */*\r\nAccept-Encoding: gzip\r\n")
    ],
    # Onion answers with headers of their own.
    "own headers": [post(path, b"x") for path in OWN_HEADERS],
    "own headers, http/1.0 keep-alive": [
        post(path, b"x", b"Connection: keep-alive\r\n", version=b"1.0") for path in OWN_HEADERS
    ],
}


@pytest.mark.parametrize("requests", KEPT_ALIVE.values(), ids=KEPT_ALIVE.keys())
def test_kept_alive_connections_answer_as_tornado(both: Both, requests: list[bytes]) -> None:
    answer = same(both, *requests, LAST)
    assert answer.count(b"HTTP/1.1 ") >= len(requests) + 1


CLOSING = {
    "connection close": [post(ONION, b"x", b"Connection: close\r\n"), get("/handler")],
    "http/1.0": [post(ONION, b"abc", version=b"1.0"), get("/handler")],
    "http/1.0 get": [get("/handler", version=b"1.0")],
    "bad start line": [b"HELLO\r\n\r\n"],
    "bad version": [b"GET / HTTP/2.0\r\nHost: relay\r\n\r\n"],
    "bad header line": [b"GET /handler HTTP/1.1\r\nHost relay\r\n\r\n"],
    "two hosts onion": [post(ONION, b"x", b"Host: other\r\n")],
    "two hosts handler": [get("/handler", b"Host: other\r\n")],
    "bad host onion": [post(ONION, b"x").replace(b"Host: relay", b"Host: a b")],
    "no host http/1.1 onion": [post(ONION, b"x").replace(b"Host: relay\r\n", b"")],
    "body past max_body_size": [post(ONION, b"x" * (MAX_BODY_SIZE + 1))],
    "chunked past max_body_size": [chunked(ONION, b"x" * 3000, b"y" * 3000)],
    "content length not a number": [post(ONION, b"x").replace(b"Length: 1", b"Length: 1x")],
    "unequal content lengths": [post(ONION, b"xy", b"Content-Length: 3\r\n")],
    "content length and chunked": [post(ONION, b"x", b"Transfer-Encoding: chunked\r\n")],
    "other transfer encoding": [
        post(ONION, b"x").replace(b"Content-Length: 1", b"Transfer-Encoding: gzip")
    ],
    "bad chunk size": [chunked(ONION, b"abc").replace(b"3\r\n", b"3;x=y\r\n")],
    "chunk size too long": [chunked(ONION, b"abc").replace(b"3\r\n", b"0" * 70 + b"3\r\n")],
    "bad chunk end": [chunked(ONION, b"abc").replace(b"abc\r\n", b"abcXY")],
    "bad last chunk end": [chunked(ONION, b"abc")[:-2] + b"XY"],
    "headers too large": [get("/handler", b"X-Big: " + b"b" * 70_000 + b"\r\n")],
    "header name with a space": [get("/handler", b"Bad Name: x\r\n")],
    "after a 400 nothing more": [b"BAD\r\n\r\n" + get("/handler")],
    "headers: folded line": [get("/headers", b"X-A: one\r\n two\r\n")],
    "headers: folded with a tab": [get("/headers", b"X-A: one\r\n\ttwo\r\n")],
    "headers: first line starts with a space": [b"GET /headers HTTP/1.1\r\n Host: relay\r\n\r\n"],
    "headers: space before the colon": [get("/headers", b"X-A : b\r\n")],
    "headers: no colon among others": [get("/headers", b"X-A: b\r\nNoColon\r\nX-C: d\r\n")],
    "headers: empty name": [get("/headers", b": x\r\n")],
    "headers: byte >= 0x80 in a name": [get("/headers", b"X-\xe9: 1\r\n")],
    "headers: control character": [get("/headers", b"X-A: a\x01b\r\n")],
    "headers: nul": [get("/headers", b"X-A: \x00\r\n")],
    "headers: del": [get("/headers", b"X-A: a\x7f\r\n")],
    "headers: bare cr in a value": [get("/headers", b"X-A: b\rc\r\n")],
    "headers: cr cr lf": [get("/headers", b"X-A: b\r\r\n")],
    "headers: onion, folded": [post(ONION, b"x", b"X-A: one\r\n two\r\n")],
    "own headers, connection close": [
        post(path, b"x", b"Connection: close\r\n") for path in OWN_HEADERS
    ],
    "own headers, http/1.0": [post("/extra", b"x", version=b"1.0")],
    "304 with a body": [post("/not-modified-with-body", b"x"), get("/handler")],
}


@pytest.mark.parametrize("requests", CLOSING.values(), ids=CLOSING.keys())
def test_closed_connections_answer_as_tornado(both: Both, requests: list[bytes]) -> None:
    same(both, *requests, pause=0.02)


def test_the_bare_400(both: Both) -> None:
    assert same(both, b"HELLO\r\n\r\n") == b"HTTP/1.1 400 Bad Request\r\n\r\n"


def test_the_onion_answer_bytes(both: Both) -> None:
    answer = same(both, post(ONION, b"abc", b"Connection: close\r\n"))
    assert answer == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nDate: -\r\n"
        b"Content-Length: 12\r\nConnection: close\r\n\r\ngot 3 bytes\n"
    )


@pytest.mark.parametrize("path", UNWRITABLE)
def test_an_answer_header_tornado_refuses_is_not_written(
    both: Both, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A CR or LF (or a character beyond latin-1) in an answer's header: nothing is written,
    the error logged, on both servers."""
    for port in (both.own_port, both.tornado_port):
        caplog.clear()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(post(path, b"x"))
            assert _eventually(lambda: "writing an onion answer" in caplog.text)
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(1000)
        assert ("ValueError" if path != "/beyond-latin1" else "UnicodeEncodeError") in caplog.text


def test_expect_continue_before_the_body_is_sent(both: Both) -> None:
    head, body = post(ONION, b"x" * 10, b"Expect: 100-continue\r\nConnection: close\r\n").split(
        b"\r\n\r\n", 1
    )
    for port in (both.own_port, both.tornado_port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head + b"\r\n\r\n")
            assert sock.recv(100) == b"HTTP/1.1 100 (Continue)\r\n\r\n"
            sock.sendall(body)
            assert b"got 10 bytes" in sock.recv(1000)


def test_many_pipelined_requests_unread_are_all_answered_in_order(both: Both) -> None:
    requests = b"".join(post(ONION, b"x" * (i % 50)) for i in range(3000)) + LAST
    ours = same(both, requests)
    sizes = re.findall(rb"got (\d+) bytes", ours)
    assert [int(size) for size in sizes] == [i % 50 for i in range(3000)]


def test_a_client_leaving_mid_answer_is_told_to_the_handler(both: Both) -> None:
    for port in (both.own_port, both.tornado_port):
        Waiting.left.clear()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(get("/waiting"))
            time.sleep(0.05)
        assert _eventually(lambda: Waiting.left == ["/waiting"])
        time.sleep(0.4)  # the handler's late write goes nowhere, without an error
        assert exchange(port, LAST).startswith(b"HTTP/1.1 200 OK")


def test_a_client_leaving_mid_body_is_told_to_the_delegate(both: Both) -> None:
    for port in (both.own_port, both.tornado_port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(post(ONION, b"x" * 100)[:-50])
        assert b"got 1 bytes" in exchange(port, post(ONION, b"x", b"Connection: close\r\n"))
    assert both.own.open_connections == 0 or _eventually(lambda: both.own.open_connections == 0)


def _eventually(condition: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


@pytest.fixture
def quick() -> Iterator[Both]:
    served = Both(idle_connection_timeout=0.3, body_timeout=0.3)
    yield served
    served.close()


def test_an_idle_connection_is_closed_silently(quick: Both) -> None:
    started = time.monotonic()
    assert same(quick, get("/handler")).startswith(b"HTTP/1.1 200 OK")
    assert time.monotonic() - started < 3
    assert same(quick, b"GET /handler HTTP/1.1\r\n") == b""


def test_a_request_answered_before_its_body_arrived_keeps_its_connection_as_tornado(
    quick: Both,
) -> None:
    # (Held open until the idle timeout: with the short one here, not CLOSING's 5 s.)
    answered = same(quick, post("/handler", b"x" * 50)[:-40], b"x" * 40, pause=0.02)
    assert answered.startswith(b"HTTP/1.1 200 OK")


def test_a_slow_body_is_closed_silently(quick: Both) -> None:
    assert same(quick, post(ONION, b"x" * 100)[:-10]) == b""


def test_a_slow_request_trickled_past_the_idle_timeout_is_closed(quick: Both) -> None:
    parts = [b"GET /handler HTTP/1.1\r\n", b"Host: relay\r\n", b"X: y\r\n", b"\r\n"]
    assert same(quick, *parts, pause=0.15) == b""


def test_keep_alive_resets_the_idle_timeout(quick: Both) -> None:
    parts = [get("/handler"), get("/handler"), get("/handler"), LAST]
    answer = same(quick, *parts, pause=0.2)
    assert answer.count(b"HTTP/1.1 200 OK") == 4


def test_the_connection_cap_refuses_with_a_503() -> None:
    served = Both(max_connections=2)
    try:
        held = [socket.create_connection(("127.0.0.1", served.own_port)) for _ in range(2)]
        assert _eventually(lambda: served.own.open_connections == 2)
        assert exchange(served.own_port) == REFUSAL
        assert served.own.refused_connections == 1
        for sock in held:
            sock.close()
        assert _eventually(lambda: served.own.open_connections == 0)
        assert exchange(served.own_port, LAST).startswith(b"HTTP/1.1 200 OK")
    finally:
        served.close()


def test_stop_closes_the_listener_and_close_all_connections_drains() -> None:
    served = Both()
    try:
        kept = socket.create_connection(("127.0.0.1", served.own_port), timeout=5)
        kept.sendall(get("/handler"))
        assert kept.recv(1000).startswith(b"HTTP/1.1 200 OK")

        async def stop() -> None:
            served.own.stop()
            await served.own.close_all_connections()

        asyncio.run_coroutine_threadsafe(stop(), served.loop).result(10)
        assert kept.recv(1000) == b""
        kept.close()
        assert served.own.open_connections == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", served.own_port), timeout=2)
    finally:
        served.close()


@pytest.mark.parametrize("server", ["own", "tornado"])
def test_a_relay_on_either_server_serves_caps_and_stops(
    start_relay: Any, sqlite_url: str, server: str
) -> None:
    relay: RunningRelay = start_relay(sqlite_url, MAX_CONNECTIONS=2, HTTP_SERVER=server)
    kind = H1Server if server == "own" else CappedHTTPServer
    assert isinstance(relay.relay.http, kind)
    params = {"token": random_apns_token(), "pubKey": random_session_id()}
    assert relay.call_v2("register", params) == SUCCESS
    assert _eventually(lambda: open_connections(relay) == 0)  # that client's connection is closed
    held = [socket.create_connection(("127.0.0.1", relay.port), timeout=10) for _ in range(2)]
    try:
        assert _eventually(lambda: open_connections(relay) == 2)
        assert exchange(relay.port) == REFUSAL
    finally:
        for sock in held:
            sock.close()
    assert _eventually(lambda: open_connections(relay) == 0)
    assert relay.call_v2("register", params) == SUCCESS


def test_a_client_that_sends_more_than_is_held_before_reading_gets_every_answer(
    both: Both,
) -> None:
    """Past ~1 MiB of unanswered requests our server stops reading (the client's send then
    waits) until the client reads; nothing is lost or reordered."""
    count = 16_000
    requests = b"".join(post(ONION, b"x" * (80 + i % 7)) for i in range(count)) + LAST
    assert len(requests) > 2 * 1024 * 1024
    for port in (both.own_port, both.tornado_port):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sender = threading.Thread(target=sock.sendall, args=(requests,))
            sender.start()
            time.sleep(0.5)  # the server holds what it has, the client's send blocks
            received = b""
            while chunk := sock.recv(1 << 20):
                received += chunk
            sender.join(30)
        sizes = [int(size) for size in re.findall(rb"got (\d+) bytes", received)]
        assert sizes == [80 + i % 7 for i in range(count)]
