"""/healthz is served on the IOLoop: it answers while password checks hold the statistics
auth's PBKDF2 pool and the web threads (issue 12: 32 concurrent /metrics requests with random
credentials took /healthz from 6 ms to 3.4 s). Asserted by state, never by timing: the pool
is held busy by the test, and /healthz must answer while it is."""

from __future__ import annotations

import base64
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from stats.auth import hash_password
from tests.checks import wait_until
from tests.http_calls import Received, request
from tests.support import RunningRelay

USER, PASSWORD = "stats", "right"


def random_credentials() -> dict[str, str]:
    raw = f"{secrets.token_hex(4)}:{secrets.token_hex(8)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def submit_with_random_credentials(
    clients: ThreadPoolExecutor, relay: RunningRelay, method: str, path: str, count: int
) -> list[Future[Received]]:
    """`count` requests at once, each with a wrong user name and password of its own."""
    return [
        clients.submit(request, relay, method, path, random_credentials()) for _ in range(count)
    ]


@pytest.fixture
def held_pool() -> Iterator[Callable[[RunningRelay], threading.Event]]:
    """Occupies every thread of a relay's PBKDF2 pool until the returned event is set."""
    events: list[threading.Event] = []

    def hold(relay: RunningRelay) -> threading.Event:
        release = threading.Event()
        events.append(release)
        auth = relay.relay.stats_auth
        for _ in range(relay.settings.STATS_AUTH_THREADS):
            auth.pool.submit(release.wait)
        return release

    yield hold
    for event in events:
        event.set()


def hashed_relay(start_relay: Any, sqlite_url: str, **settings: Any) -> RunningRelay:
    running: RunningRelay = start_relay(
        sqlite_url,
        STATS_USERNAME=USER,
        STATS_PASSWORD_HASH=hash_password(PASSWORD, iterations=1000),
        **settings,
    )
    return running


def test_healthz_answers_while_32_metrics_requests_hold_the_pbkdf2_pool(
    start_relay: Any, sqlite_url: str, held_pool: Callable[[RunningRelay], threading.Event]
) -> None:
    relay = hashed_relay(start_relay, sqlite_url, WEB_THREADS=8, STATS_AUTH_MAX_PENDING=4)
    auth = relay.relay.stats_auth
    release = held_pool(relay)
    with ThreadPoolExecutor(32) as clients:
        scrapes = submit_with_random_credentials(clients, relay, "GET", "/metrics", 32)
        # Four checks wait for the held pool; the other 28 are refused at once.
        wait_until(lambda: auth.pending == 4 and sum(f.done() for f in scrapes) == 28)
        assert auth.kdf_runs == 0  # nothing has been hashed: the pool is held
        health = request(relay, "GET", "/healthz", {})
        assert (health.status, health.body) == (200, b"ok\n")
        assert health.headers["content-type"] == "text/plain; charset=utf-8"
        refused = [f.result() for f in scrapes if f.done()]
        assert {a.status for a in refused} == {429}
        assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
        release.set()
        answers = Counter(f.result(60).status for f in scrapes)
    assert answers == {429: 28, 401: 4}
    assert auth.kdf_runs == 4
    # The right credentials still get in.
    right = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    ok = request(relay, "GET", "/metrics", {"Authorization": f"Basic {right}"})
    assert ok.status == 200


def test_healthz_answers_while_every_web_thread_waits_on_a_password_check(
    start_relay: Any, sqlite_url: str, held_pool: Callable[[RunningRelay], threading.Event]
) -> None:
    """With as many pending checks allowed as web threads, the whole WSGI pool is blocked:
    statistics wait, /healthz does not."""
    relay = hashed_relay(start_relay, sqlite_url, WEB_THREADS=4, STATS_AUTH_MAX_PENDING=4)
    auth = relay.relay.stats_auth
    release = held_pool(relay)
    with ThreadPoolExecutor(8) as clients:
        scrapes = submit_with_random_credentials(clients, relay, "POST", "/get_statistics_data", 8)
        wait_until(lambda: auth.pending == 4)
        assert not any(f.done() for f in scrapes)  # all four web threads are held
        for method in ("GET", "HEAD"):
            health = request(relay, method, "/healthz", {})
            assert health.status == 200
            assert health.body == (b"ok\n" if method == "GET" else b"")
        release.set()
        statuses = {f.result(60).status for f in scrapes}
    assert statuses <= {401, 429}
    assert 401 in statuses


def test_healthz_on_the_loop_answers_like_the_flask_route(
    start_relay: Any, sqlite_url: str
) -> None:
    relay: RunningRelay = start_relay(sqlite_url, dispatch=True)
    flask = relay.relay.app.test_client()
    served = request(relay, "GET", "/healthz", {})
    direct = flask.get("/healthz")
    assert (served.status, served.body) == (direct.status_code, direct.data) == (200, b"ok\n")
    assert served.headers["content-type"] == direct.headers["Content-Type"]
    refused = request(relay, "POST", "/healthz", {})
    assert (refused.status, refused.body) == (405, b"Method Not Allowed\n")
    # The dispatcher's state comes from the same health() as Flask's answer.
    relay.call(relay.relay.dispatcher.stop(timeout=5))
    down = request(relay, "GET", "/healthz", {})
    assert (down.status, down.body) == (503, b"dispatcher not running\n")
    assert flask.get("/healthz").data == b"dispatcher not running\n"
