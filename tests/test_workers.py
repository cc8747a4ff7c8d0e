"""`python server.py --workers N`, and relays on several machines sharing one PostgreSQL.

Real processes (the supervisor forks real workers), real signals, the sandbox providers in
this process; on SQLite (one WAL file for all workers) and PostgreSQL.
"""

from __future__ import annotations

import base64
import concurrent.futures
import fcntl
import http.client
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, select

from lsrpc.client import OnionClient
from settings import load_settings
from startup import load_keys
from storage.schema import notifications
from tests.checks import SUCCESS
from tests.http_calls import http_request
from tests.providers import Providers
from tests.server_process import ROOT, ServerProcess, run_server
from tests.support import random_apns_token, random_fcm_token, random_session_id, settings_error


def worker_pids(server: ServerProcess, count: int) -> list[int]:
    found = server.wait_for_line(rf"workers: {count} processes \(pids ([\d, ]+)\)")
    return [int(pid) for pid in found.group(1).split(", ")]


def served_by(server: ServerProcess) -> dict[int, int]:
    """Onion requests answered, by the pid of the worker that answered (the access log)."""
    counts: dict[int, int] = {}
    for pid in re.findall(r"pn_relay\.access\[(\d+)\]: POST /loki/v2/lsrpc 200", server.log):
        counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


@dataclass
class Recipient:
    session_id: str
    apns_token: str = field(default_factory=random_apns_token)
    fcm_token: str = field(default_factory=random_fcm_token)


@dataclass
class Node:
    """A relay to send to: its port and public key."""

    server: ServerProcess

    def post(self, body: bytes) -> tuple[int, bytes]:
        return self.server.post("/loki/v2/lsrpc", body)


class NotifyStream:
    """Notifies from a few threads, each on a new connection (so the kernel spreads them over
    the workers), to the nodes in turn; remembers the ones answered with success."""

    def __init__(self, nodes: list[Node], client: OnionClient, recipients: list[Recipient]):
        self.nodes = nodes
        self.client = client
        self.recipients = recipients
        self.accepted: dict[str, Recipient] = {}  # data -> to whom
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._sent = 0

    def send(self, count: int, threads: int = 6) -> None:
        def one(index: int) -> None:
            recipient = self.recipients[index % len(self.recipients)]
            data = base64.b64encode(f"{index}:".encode() + os.urandom(24)).decode()
            request = self.client.v2("notify", {"data": data, "send_to": recipient.session_id})
            node = self.nodes[index % len(self.nodes)]
            try:
                status, body = node.post(request.body)
            except (OSError, http.client.HTTPException):
                return  # a worker killed or stopping: not accepted, nothing promised
            if status == 200 and request.open_v2_reply(body) == SUCCESS:
                with self._lock:
                    self.accepted[data] = recipient
            else:
                self.failures.append(f"{status} {body[:80]!r}")

        with self._lock:
            start, self._sent = self._sent, self._sent + count
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(start, start + count)))


def register_all(node: Node, client: OnionClient, recipients: list[Recipient]) -> None:
    for recipient in recipients:
        for token in (recipient.apns_token, recipient.fcm_token):
            request = client.v2("register", {"token": token, "pubKey": recipient.session_id})
            status, body = node.post(request.body)
            assert (status, request.open_v2_reply(body)) == (200, SUCCESS)


def check_delivered(
    providers: Providers, accepted: dict[str, Recipient], *, exactly_once: bool
) -> None:
    """Every accepted notify reached the APNs and the FCM token of its recipient, and no
    other token (`exactly_once`: and once each)."""
    deadline = time.monotonic() + 120
    while True:
        apns = [(p.json()["ENCRYPTED_DATA"], p.token) for p in providers.apns.pushes.snapshot()]
        fcm = [(p.data["ENCRYPTED_DATA"], p.token) for p in providers.fcm.pushes.snapshot()]
        if {d for d, _ in apns} >= accepted.keys() and {d for d, _ in fcm} >= accepted.keys():
            break
        if time.monotonic() > deadline:
            missing = len(accepted.keys() - {d for d, _ in apns} - {d for d, _ in fcm})
            raise AssertionError(f"{missing} accepted notifies were never pushed")
        time.sleep(0.05)
    for data, token in apns:
        if data in accepted:
            assert token == accepted[data].apns_token
    for data, token in fcm:
        if data in accepted:
            assert token == accepted[data].fcm_token
    print(f"{len(accepted)} accepted; pushed {len(apns)} to APNs and {len(fcm)} to FCM")
    if exactly_once:
        assert sorted(d for d, _ in apns) == sorted(accepted)
        assert sorted(d for d, _ in fcm) == sorted(accepted)


def assert_every_scrape_counts_both_workers(
    server: ServerProcess, pids: list[int], *, pushed: int
) -> None:
    """/metrics, whichever worker answers (each scrape on a new connection, so the kernel
    spreads them), counts every push of both: until both workers have answered a scrape with
    the whole count (a worker shares its figures every second)."""
    answered_whole: set[int] = set()
    scraped = r"pn_relay\.access\[(\d+)\]: GET /metrics 200"
    deadline = time.monotonic() + 30
    while answered_whole != set(pids):
        assert time.monotonic() < deadline, f"scrapes with every push: {answered_whole}"
        before = len(re.findall(scraped, server.log))
        answer = http_request(server.port, "GET", "/metrics")
        assert answer.status == 200
        while len(by := re.findall(scraped, server.log)) == before:  # its access log line
            assert time.monotonic() < deadline
            time.sleep(0.01)
        text = answer.body.decode()
        found = {
            (family.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        sent = [
            found.get(("pn_relay_pushes", (("outcome", "sent"), ("provider", p))), 0)
            for p in ("apns", "fcm")
        ]
        workers = {labels for (name, labels) in found if name == "process_resident_memory_bytes"}
        if sent == [pushed, pushed] and found[("pn_relay_workers_reporting", ())] == 2:
            assert workers == {(("worker", "1"),), (("worker", "2"),)}
            answered_whole.add(int(by[-1]))
        else:
            assert max(sent) <= pushed, sent  # never more than was pushed
            time.sleep(0.2)


def provider_env(providers: Providers, database_url: str, **extra: str) -> dict[str, str]:
    return providers.environment(
        PN_DATABASE_URL=database_url, PN_ACCESS_LOG="true", PN_WEB_THREADS="4", **extra
    )


@pytest.fixture
def workers_server(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers started by a test, killed at its end if it failed before stopping them."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.__exit__()


def start_workers(
    started: list[ServerProcess], cwd: Path, count: int, **env: str
) -> tuple[ServerProcess, list[int]]:
    cwd.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(cwd, "--workers", str(count), **env)
    started.append(server)
    return server, worker_pids(server, count)


# -- the setting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "overrides", "expected"),
    [
        ({}, {}, 1),
        ({"PN_WORKERS": "3"}, {}, 3),
        ({"PN_WORKERS": " Auto "}, {}, len(os.sched_getaffinity(0))),
        ({}, {"WORKERS": "auto"}, len(os.sched_getaffinity(0))),
        ({"PN_WORKERS": "4"}, {"WORKERS": 2}, 2),
    ],
)
def test_workers_is_a_number_or_auto(
    tmp_path: Path, environ: dict[str, str], overrides: dict[str, object], expected: int
) -> None:
    workers = load_settings(environ=environ, overrides=overrides, cwd=tmp_path).WORKERS
    assert workers == expected


@pytest.mark.parametrize(
    ("environ", "config", "message"),
    [
        ({"PN_WORKERS": "many"}, None, "PN_WORKERS: expected a whole number or auto, got 'many'"),
        ({"PN_WORKERS": "0"}, None, "PN_WORKERS: 0 is outside 1..256"),
        ({}, "WORKERS = '2'\n", "WORKERS: expected a whole number, got a string, '2'"),
        ({}, "WORKERS = 'all'\n", "WORKERS: expected a whole number or auto, got 'all'"),
    ],
)
def test_a_bad_workers_value_is_named(
    tmp_path: Path, environ: dict[str, str], config: str | None, message: str
) -> None:
    assert message in settings_error(tmp_path, config, **environ)


def test_the_workers_option_takes_a_number_or_auto(tmp_path: Path) -> None:
    result = run_server("--workers", "lots", cwd=tmp_path)
    assert result.returncode == 2
    assert "argument --workers: expected a whole number or auto, got 'lots'" in result.stderr
    assert list(tmp_path.iterdir()) == []


# -- several workers on one machine -----------------------------------------------------------


def test_two_workers_share_the_notifies_and_deliver_each_to_its_tokens(
    tmp_path: Path,
    providers: Providers,
    database_url: str,
    workers_server: list[ServerProcess],
) -> None:
    server, pids = start_workers(
        workers_server,
        tmp_path,
        2,
        **provider_env(providers, database_url),
        PN_METRICS_PUBLIC="true",
    )
    assert len(set(pids)) == 2
    assert server.log.count("first start: made the key files") == 1  # by one of the two
    assert len(set(re.findall(r"server public key ([0-9a-f]{64})", server.log))) == 1
    node = Node(server)
    client = OnionClient(bytes.fromhex(server.public_key))
    recipients = [Recipient(random_session_id()) for _ in range(8)]
    register_all(node, client, recipients)

    stream = NotifyStream([node], client, recipients)
    stream.send(120)
    assert not stream.failures
    assert len(stream.accepted) == 120
    check_delivered(providers, stream.accepted, exactly_once=True)

    served = served_by(server)
    assert set(served) == set(pids), served  # both workers answered onion requests
    assert sum(served.values()) == 120 + 2 * len(recipients)
    assert_every_scrape_counts_both_workers(server, pids, pushed=120)
    assert server.terminate() == 0
    assert "workers stopped" in server.log
    assert server.log.count("pn-relay stopped") == 2
    assert "Traceback" not in server.log


def test_a_worker_killed_mid_stream_loses_no_accepted_notify_and_is_restarted(
    tmp_path: Path,
    providers: Providers,
    database_url: str,
    workers_server: list[ServerProcess],
) -> None:
    # Slow providers: a worker killed mid-stream holds pushes it was sending (leased).
    providers.apns.global_delay = providers.fcm.global_delay = 0.3
    env = provider_env(providers, database_url, PN_DELIVERY_LEASE="1")
    server, pids = start_workers(workers_server, tmp_path, 2, **env)
    node = Node(server)
    client = OnionClient(bytes.fromhex(server.public_key))
    recipients = [Recipient(random_session_id()) for _ in range(8)]
    register_all(node, client, recipients)
    stream = NotifyStream([node], client, recipients)

    victim = pids[0]
    sending = threading.Thread(target=stream.send, args=(160,))
    sending.start()
    while len(stream.accepted) < 60 and sending.is_alive():
        time.sleep(0.01)
    assert victim in served_by(server)  # it took some of them
    os.kill(victim, signal.SIGKILL)
    sending.join(120)
    restarted = server.wait_for_line(r"worker 1 restarted as pid (\d+)")
    stream.send(40)  # and the restarted worker serves too

    assert not stream.failures
    check_delivered(providers, stream.accepted, exactly_once=False)
    killed = r"worker 1 \(pid (\d+)\) was killed by SIGKILL after \d+ s; restarting it now"
    assert int(server.wait_for_line(killed).group(1)) == victim
    assert int(restarted.group(1)) not in pids
    assert server.terminate() == 0
    assert "workers stopped" in server.log


def test_sigterm_to_the_supervisor_stops_every_worker_and_loses_nothing(
    tmp_path: Path,
    providers: Providers,
    database_url: str,
    workers_server: list[ServerProcess],
) -> None:
    # Providers down: every accepted notify stays queued, so the database shows what was kept.
    providers.apns.set_down(True, refuse=True)
    providers.fcm.set_down(True, refuse=True)
    server, pids = start_workers(
        workers_server, tmp_path, 2, **provider_env(providers, database_url)
    )
    node = Node(server)
    client = OnionClient(bytes.fromhex(server.public_key))
    recipients = [Recipient(random_session_id()) for _ in range(4)]
    register_all(node, client, recipients)
    stream = NotifyStream([node], client, recipients)
    sending = threading.Thread(target=stream.send, args=(400,))
    sending.start()
    while len(stream.accepted) < 80 and sending.is_alive():
        time.sleep(0.005)
    assert server.terminate() == 0
    sending.join(60)
    assert not stream.failures
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(select(notifications.c.data)).scalars())
    finally:
        engine.dispose()
    assert stream.accepted.keys() <= stored
    assert server.log.count("pn-relay stopped") == 2
    assert "Traceback" not in server.log


def test_a_start_up_error_is_one_line_with_workers_too(tmp_path: Path) -> None:
    result = run_server("--workers", "3", cwd=tmp_path, env={"PN_KEY_FILE": "typo.hex"})
    assert result.returncode == 2
    assert result.stderr.startswith("pn-relay: PN_KEY_FILE: typo.hex does not exist;")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_taken_port_is_one_line_with_workers_too(
    tmp_path: Path, workers_server: list[ServerProcess]
) -> None:
    first, _ = start_workers(workers_server, tmp_path / "first", 2)
    (tmp_path / "second").mkdir()
    result = run_server("--workers", "2", "--port", str(first.port), cwd=tmp_path / "second")
    assert result.returncode == 2
    assert result.stderr == (
        f"pn-relay: cannot listen on 127.0.0.1:{first.port}: Address already in use\n"
    )
    assert list((tmp_path / "second").iterdir()) == []
    assert first.terminate() == 0


def test_a_worker_that_cannot_start_again_is_not_restarted(
    tmp_path: Path, workers_server: list[ServerProcess]
) -> None:
    server, pids = start_workers(workers_server, tmp_path, 2)
    # The server key is damaged while the relay runs: a new worker cannot start.
    (tmp_path / "data" / "server_key.hex").write_text("not a key\n")
    os.kill(pids[1], signal.SIGKILL)
    refused = server.wait_for_line(r"ERROR pn_relay\[\d+\]: worker 2 cannot start: (.*)$")
    assert "server key data/server_key.hex" in refused.group(1)
    assert refused.group(1).endswith("not restarted (1 still running)")
    node = Node(server)  # the other carries on
    client = OnionClient(bytes.fromhex(server.public_key))
    register_all(node, client, [Recipient(random_session_id())])
    assert server.terminate() == 0
    assert server.log.count("restarting it") == 1
    assert server.log.count("cannot start") == 1


def test_a_worker_that_keeps_dying_at_start_is_restarted_later_each_time(tmp_path: Path) -> None:
    # The supervisor alone, with a worker body that serves once, then dies at every start.
    script = textwrap.dedent(
        f"""
        import logging, os, socket, sys
        sys.path.insert(0, {str(ROOT)!r})
        from supervisor import Supervisor
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        marker = {str(tmp_path / "served")!r}

        def body(worker):
            if os.path.exists(marker):
                return 1  # dies before it listens
            open(marker, "w").close()
            worker.report_started()
            return 1  # served a moment, then died

        supervisor = Supervisor(1, body, lambda: [], on_started=lambda pids: print("started"))
        sys.exit(supervisor.run())
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "restarting it in 2 s" in line:
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    restarts = [line for line in lines if "restarting it" in line]
    assert [line.rsplit("restarting it ", 1)[1].split(" (")[0] for line in restarts] == [
        "now\n",
        "in 1 s",
        "in 2 s",
    ], lines


def test_starts_read_new_key_files_only_under_the_data_dir_lock(tmp_path: Path) -> None:
    """A worker starting beside one that is writing the first key files waits for it, rather
    than reading a key file created but not yet written."""
    data = tmp_path / "data"
    data.mkdir()
    settings = load_settings(environ={}, overrides={"DATA_DIR": data}, cwd=tmp_path)
    lock = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another start, making the keys
    (data / "server_key.hex").write_text("")  # created, its content not written yet
    loaded: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            loaded.append(load_keys(settings).server.public_hex)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join(0.3)  # (it waits on the lock; without the lock it would fail meanwhile)
    (data / "server_key.hex").write_text("11" * 32 + "\n")
    for name in ("identity_secret.hex", "token_secret.hex"):
        (data / name).write_text("22" * 32 + "\n")
    os.close(lock)
    thread.join(30)
    assert not errors
    assert loaded == [load_keys(settings).server.public_hex]


# -- several machines: nodes sharing one PostgreSQL and the key files ---------------------------


def test_two_nodes_on_one_postgresql_survive_a_kill_9_of_one(
    tmp_path: Path,
    providers: Providers,
    postgres_url: str,
    workers_server: list[ServerProcess],
) -> None:
    # The same three key files on every node (here: one directory both name).
    keys = tmp_path / "keys"
    key_env = {
        "PN_KEY_FILE": str(keys / "server_key.hex"),
        "PN_IDENTITY_KEY_FILE": str(keys / "identity_secret.hex"),
        "PN_TOKEN_KEY_FILE": str(keys / "token_secret.hex"),
    }
    run_server("--init", cwd=tmp_path, env=key_env, check=True)
    providers.apns.global_delay = providers.fcm.global_delay = 0.3
    env = provider_env(providers, postgres_url, PN_DELIVERY_LEASE="1", **key_env)
    nodes = []
    for name in ("node-a", "node-b"):  # each its own DATA_DIR, port and process
        (tmp_path / name).mkdir()
        server = ServerProcess(tmp_path / name, **env)
        workers_server.append(server)
        nodes.append(Node(server))
    a, b = nodes
    assert a.server.port != b.server.port
    assert a.server.public_key == b.server.public_key
    client = OnionClient(bytes.fromhex(a.server.public_key))
    recipients = [Recipient(random_session_id()) for _ in range(8)]
    register_all(a, client, recipients)
    stream = NotifyStream([a, b], client, recipients)

    sending = threading.Thread(target=stream.send, args=(160,))
    sending.start()
    while len(stream.accepted) < 60 and sending.is_alive():
        time.sleep(0.01)
    a.server.process.send_signal(signal.SIGKILL)
    a.server.process.wait(30)
    sending.join(120)
    stream.nodes = [b]
    stream.send(20)

    assert not stream.failures
    assert len(stream.accepted) >= 80
    check_delivered(providers, stream.accepted, exactly_once=False)
    assert b.server.terminate() == 0
