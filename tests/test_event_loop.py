"""EVENT_LOOP: a relay on each loop it offers (one process, workers, and the tests' in-process
relay) takes a notify over a real socket and pushes it to the fake APNs; a bad value is one
line naming the setting.

Which loop a process runs on is read from outside through /proc: libuv (under uvloop) holds an
eventfd for its wake-ups, asyncio's own loop a socket pair, so a process holds an eventfd if and
only if it runs on uvloop.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import eventloop
from lsrpc.client import OnionClient
from settings import Settings
from tests.checks import SUCCESS
from tests.providers import Providers
from tests.server_process import ServerProcess, run_server
from tests.support import RunningRelay, random_apns_token, random_session_id, settings_error

LOOPS = ["uvloop", "asyncio"]


def holds_an_eventfd(pid: int) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except FileNotFoundError:  # closed meanwhile
            continue
    return "anon_inode:[eventfd]" in targets


def notify_is_pushed(
    post: Callable[[bytes], tuple[int, bytes]], public_key: bytes, providers: Providers
) -> None:
    """Register an APNs token, notify its Session ID, and see the push reach the fake APNs."""
    client = OnionClient(public_key)
    session_id, token = random_session_id(), random_apns_token()
    request = client.v2("register", {"token": token, "pubKey": session_id})
    status, body = post(request.body)
    assert (status, request.open_v2_reply(body)) == (200, SUCCESS)
    data = base64.b64encode(os.urandom(24)).decode()
    request = client.v2("notify", {"data": data, "send_to": session_id})
    status, body = post(request.body)
    assert (status, request.open_v2_reply(body)) == (200, SUCCESS)
    (push,) = providers.apns.pushes.wait_for(1, timeout=30)
    assert (push.token, push.json()["ENCRYPTED_DATA"]) == (token, data)


def notify_is_pushed_then_stop(server: ServerProcess, providers: Providers) -> None:
    notify_is_pushed(
        lambda body: server.post("/loki/v2/lsrpc", body),
        bytes.fromhex(server.public_key),
        providers,
    )
    assert server.terminate() == 0  # a clean stop on this loop


@pytest.mark.parametrize("choice", LOOPS)
def test_a_relay_process_runs_on_the_chosen_loop(
    tmp_path: Path, providers: Providers, choice: str
) -> None:
    with ServerProcess(tmp_path, **providers.environment(PN_EVENT_LOOP=choice)) as server:
        assert f"onion requests on its {choice} event loop" in server.log
        assert holds_an_eventfd(server.process.pid) == (choice == "uvloop")
        notify_is_pushed_then_stop(server, providers)


@pytest.mark.parametrize("choice", LOOPS)
def test_every_worker_runs_on_the_chosen_loop(
    tmp_path: Path, providers: Providers, choice: str
) -> None:
    env = providers.environment(PN_EVENT_LOOP=choice)
    with ServerProcess(tmp_path, "--workers", "2", **env) as server:
        found = server.wait_for_line(r"workers: 2 processes \(pids ([\d, ]+)\)")
        pids = [int(pid) for pid in found.group(1).split(", ")]
        assert f"each: onion requests on its {choice} event loop" in found.string
        assert [holds_an_eventfd(pid) for pid in pids] == [choice == "uvloop"] * 2
        assert not holds_an_eventfd(server.process.pid)  # the supervisor runs no loop
        notify_is_pushed_then_stop(server, providers)


@pytest.mark.parametrize("choice", LOOPS)
def test_the_tests_in_process_relay_runs_on_the_chosen_loop(
    tmp_path: Path, providers: Providers, sqlite_url: str, start_relay: Any, choice: str
) -> None:
    relay: RunningRelay = start_relay(
        sqlite_url, dispatch=True, EVENT_LOOP=choice, **providers.settings
    )
    assert eventloop.loop_name(relay.loop) == choice

    def post(body: bytes) -> tuple[int, bytes]:
        answer = relay.post("/loki/v2/lsrpc", body)
        return answer.status, answer.body

    notify_is_pushed(post, relay.relay.keypair.public_bytes, providers)


@pytest.mark.parametrize(
    ("environ", "config", "message"),
    [
        ({"PN_EVENT_LOOP": "trio"}, None, "PN_EVENT_LOOP: 'trio' is not one of uvloop, asyncio"),
        ({"PN_EVENT_LOOP": "UVLOOP"}, None, "PN_EVENT_LOOP: 'UVLOOP' is not one of uvloop"),
        ({}, "EVENT_LOOP = 'libuv'\n", "EVENT_LOOP: 'libuv' is not one of uvloop, asyncio"),
        ({}, "EVENT_LOOP = None\n", "EVENT_LOOP: expected a string, got None"),
    ],
)
def test_a_bad_event_loop_is_named(
    tmp_path: Path, environ: dict[str, str], config: str | None, message: str
) -> None:
    assert message in settings_error(tmp_path, config, **environ)


def test_a_relay_given_a_bad_event_loop_says_so_and_does_not_start(tmp_path: Path) -> None:
    result = run_server(cwd=tmp_path, env={"PN_EVENT_LOOP": "tokio"})
    assert result.returncode == 2
    assert result.stderr == "pn-relay: PN_EVENT_LOOP: 'tokio' is not one of uvloop, asyncio\n"
    assert not (tmp_path / "data").exists()  # refused before any file was made


def test_the_setting_offers_exactly_the_loops_eventloop_builds(tmp_path: Path) -> None:
    for choice in LOOPS:
        loop = eventloop.loop_factory(choice)()
        try:
            assert eventloop.loop_name(loop) == choice
        finally:
            loop.close()
    assert Settings.__dataclass_fields__["EVENT_LOOP"].metadata["one_of"] == tuple(
        eventloop.FACTORIES
    )
    with pytest.raises(ValueError, match="EVENT_LOOP: 'trio' is not one of uvloop, asyncio"):
        eventloop.loop_factory("trio")
