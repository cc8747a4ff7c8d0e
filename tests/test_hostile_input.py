"""Hostile input on a real socket: no shape of request gets a 500 or a traceback, onion-path
aliases never reach the blocking WSGI route, and an unexpected failure is a generic answer
logged once per kind (issue 12)."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

import pytest
from sqlalchemy import func, select
from tornado.web import Application
from werkzeug.test import Client

from handlers.reply import Reply
from handlers.runner import WriteRunner
from lsrpc.call import ClientCall
from lsrpc.client import OnionClient
from lsrpc.keys import ServerKeypair
from storage.schema import devices
from tests.served import Served
from tests.support import RunningRelay, random_apns_token, random_session_id
from web.answers import HttpAnswer
from web.errorlog import RateLimitedLog
from web.onion import OnionCore
from web.onion_routes import OnionFront

ISSUE_BODY = b"\0\0\0\0" + b"[" * 2000
DEEP = "[" * 2000


def no_traceback_logged(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()


def bencoded(*parts: bytes) -> bytes:
    return b"l" + b"".join(b"%d:%s" % (len(p), p) for p in parts) + b"e"


# -- the issue's body, on both paths ---------------------


@pytest.mark.parametrize("path", ["/loki/v2/lsrpc", "/oxen/v4/lsrpc"])
def test_the_nested_trailer_is_a_plain_400(
    sqlite_relay: RunningRelay, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = sqlite_relay.post(path, ISSUE_BODY)
    assert (answer.status, answer.body) == (
        400,
        b"Invalid onion request: JSON trailer is not valid JSON\n",
    )
    no_traceback_logged(caplog)


V2_NESTED = [
    (DEEP.encode(), "Request is not valid JSON"),
    (json.dumps({"endpoint": "register", "body": DEEP}).encode(), "Request body is not valid JSON"),
]
V4_NESTED = [
    (bencoded(b'{"endpoint":"/register"}', DEEP.encode()), "Request body is not valid JSON"),
    (bencoded(DEEP.encode()), "meta is not valid JSON"),
]


@pytest.mark.parametrize(("plaintext", "message"), V2_NESTED)
def test_nested_v2_json_is_an_encrypted_400(
    sqlite_relay: RunningRelay, caplog: pytest.LogCaptureFixture, plaintext: bytes, message: str
) -> None:
    caplog.set_level(logging.DEBUG)
    status, body = sqlite_relay.send_v2(sqlite_relay.client.seal(plaintext))
    assert (status, body) == (400, {"code": 0, "message": message})
    no_traceback_logged(caplog)


@pytest.mark.parametrize(("plaintext", "message"), V4_NESTED)
def test_nested_v4_json_is_an_encrypted_400(
    sqlite_relay: RunningRelay, caplog: pytest.LogCaptureFixture, plaintext: bytes, message: str
) -> None:
    caplog.set_level(logging.DEBUG)
    meta, body = sqlite_relay.send_v4(sqlite_relay.client.seal(plaintext, "xchacha20"))
    assert (meta["code"], body) == (400, {"code": 0, "message": message})
    no_traceback_logged(caplog)


def test_a_nested_statistics_body_is_a_400(start_relay: Any, sqlite_url: str) -> None:
    running = start_relay(sqlite_url, STATS_USERNAME="u", STATS_PASSWORD="p")
    answer = running.post(
        "/get_statistics_data",
        b"[" * 5000,
        {"Authorization": "Basic dTpw", "Content-Type": "application/json"},
    )
    assert answer.status == 400
    assert json.loads(answer.body) == {"code": 1, "message": "the body is JSON nested too deeply"}


# -- aliases of the onion paths ---------------------------------------------------------------

ALIASES = [
    "/loki/v2/%6Csrpc",
    "/loki/v2/%6csrpc",
    "/%6Coki/v2/lsrpc",
    "/loki%2Fv2%2Flsrpc",
    "/loki/v2/%256Csrpc",
    "//loki/v2/lsrpc",
    "/loki//v2/lsrpc",
    "/loki/v2/lsrpc/",
    "/loki/v2/lsrpc//",
    "/./loki/v2/lsrpc",
    "/loki/v2/../v2/lsrpc",
    "/LOKI/v2/lsrpc",
    "/loki/V2/LSRPC",
    "/oxen/v4/%6Csrpc",
    "//oxen/v4/lsrpc",
    "/oxen/v4/lsrpc/",
    "/OXEN/V4/LSRPC",
]


def raw_post(port: int, target: str, body: bytes) -> tuple[bytes, bytes]:
    """POST with the request target exactly as given (http.client would not send some)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            f"POST {target} HTTP/1.1\r\nHost: relay\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return status_line, rest.partition(b"\r\n\r\n")[2]


def test_aliases_of_the_onion_paths_are_refused(sqlite_relay: RunningRelay) -> None:
    """Each alias carries a valid register: had it reached the WSGI onion route, the relay
    would have answered 200 and stored a device."""
    for target in [*ALIASES, f"http://127.0.0.1:{sqlite_relay.port}/loki/v2/lsrpc"]:
        params = {"token": random_apns_token(), "pubKey": random_session_id()}
        body = sqlite_relay.client.v2("register", params).body
        status_line, answer = raw_post(sqlite_relay.port, target, body)
        assert status_line.split(b" ")[1] == b"404", (target, status_line)
        assert answer == b"Not Found\n", target
    with sqlite_relay.relay.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(devices)).scalar_one() == 0
    # The exact paths still work, with a query string too.
    params = {"token": random_apns_token(), "pubKey": random_session_id()}
    status_line, _ = raw_post(
        sqlite_relay.port, "/loki/v2/lsrpc?x=1", sqlite_relay.client.v2("register", params).body
    )
    assert status_line == b"HTTP/1.1 200 OK"


def test_the_wsgi_app_has_no_onion_route(sqlite_relay: RunningRelay) -> None:
    """The second lock: were a spelling to get past the Tornado guard, the WSGI app has no
    onion route to run it on (here: called directly); it answers the plain 404 of any
    unknown path, and its other answers stay plain lines."""
    wsgi = Client(sqlite_relay.relay.app)
    body = sqlite_relay.client.v2(
        "register", {"token": random_apns_token(), "pubKey": random_session_id()}
    ).body
    for path in ("/loki/v2/lsrpc", "/oxen/v4/lsrpc", "//loki/v2/lsrpc", "/loki/v2/%6Csrpc"):
        response = wsgi.post(path, data=body)
        assert (response.status_code, response.data) == (404, b"Not Found\n"), path
    assert wsgi.get("/healthz").status_code == 200
    assert wsgi.post("/nowhere").status_code == 404
    response = wsgi.get("/get_statistics_data")
    assert (response.status_code, response.data) == (405, b"Method Not Allowed\n")
    with sqlite_relay.relay.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(devices)).scalar_one() == 0


# -- a failure nobody foresaw ---------------------------------------------------------------


KEYPAIR = ServerKeypair.from_private_bytes(bytes(range(1, 33)))


def failing_route(call: ClientCall) -> Reply:
    raise KeyError(call.params.get("pubKey"))  # a bug that would quote request data


def test_an_unexpected_error_is_generic_and_logged_once_per_kind(
    serve: Callable[[OnionFront], Served], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    errors = RateLimitedLog(logging.getLogger("test.unexpected"))
    core = OnionCore(KEYPAIR, failing_route, WriteRunner(cast(Any, None)), 65536, errors)

    async def broken_answer(body: bytes) -> HttpAnswer:
        raise RuntimeError(body[:8])

    served = serve(
        OnionFront(
            {"/loki/v2/lsrpc": core.answer_v2, "/broken": broken_answer},
            Application(),
            max_body_bytes=65536,
            errors=errors,
        )
    )
    client = OnionClient(KEYPAIR.public_bytes)
    secret = random_session_id()
    for _ in range(5):
        request = client.v2("register", {"pubKey": secret})
        status, body = served.post("/loki/v2/lsrpc", request.body)
        assert status == 200
        assert request.open_v2_reply(body) == (500, {"code": 0, "message": "Internal error"})
        assert served.post("/broken", b"12345678") == (500, b"Internal Server Error\n")

    lines = [r.getMessage() for r in caplog.records if r.name == "test.unexpected"]
    assert len(lines) == 2, lines  # one per kind, not one per request
    assert lines[0].startswith("unexpected KeyError while handling a request (")
    assert "test_hostile_input.py" in lines[0]  # where, not what
    assert lines[1].startswith("unexpected RuntimeError while answering an onion path")
    text = caplog.text
    assert secret not in text and "12345678" not in text
    no_traceback_logged(caplog)


def test_the_rate_limited_log_counts_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    errors = RateLimitedLog(logging.getLogger("test.limited"), 60.0, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, "test.limited")
    assert errors.log(logging.ERROR, "a", "kind a")
    assert not errors.log(logging.ERROR, "a", "kind a")
    assert errors.log(logging.ERROR, "b", "kind b")
    now[0] = 59.0
    assert not errors.log(logging.ERROR, "a", "kind a")
    now[0] = 60.0
    assert errors.log(logging.ERROR, "a", "kind a")
    assert [r.getMessage() for r in caplog.records] == [
        "kind a",
        "kind b",
        "kind a (2 more like it since the last report)",
    ]
