"""`python server.py` as an operator runs it: a real process, real signals."""

from __future__ import annotations

import base64
import http.client
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lsrpc.client import OnionClient
from sandbox.certs import generate_apns_key
from tests.support import random_apns_token, random_session_id

ROOT = Path(__file__).resolve().parents[1]
SERVER = [sys.executable, str(ROOT / "server.py")]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PN_")}
    env.update(extra)
    return env


class ServerProcess:
    def __init__(self, cwd: Path, **env: str) -> None:
        self.process = subprocess.Popen(
            [*SERVER, "--port", "0"],
            cwd=cwd,
            env=clean_env(**env),
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(30):
            self.process.kill()
            raise AssertionError(f"server did not start: {self.lines}")
        found = re.search(
            r"listening on http://127.0.0.1:(\d+) \(server public key ([0-9a-f]{64})\)", self.log
        )
        assert found, self.log
        self.port, self.public_key = int(found.group(1)), found.group(2)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "listening on" in line:
                self._listening.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("POST", path, body=body)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self._reader.join(5)
        return code


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_print_pubkey_creates_the_key_once(workdir: Path) -> None:
    first = subprocess.run(
        [*SERVER, "--print-pubkey"],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    second = subprocess.run(
        [*SERVER, "--print-pubkey"],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.fullmatch(r"[0-9a-f]{64}\n", first.stdout)
    assert first.stdout == second.stdout
    key_file = workdir / "data" / "server_key.hex"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_key_file_of_the_2021_server_is_used(workdir: Path) -> None:
    (workdir / "data").mkdir()
    private = "2f4d1c0d28e137777ec0a316e9f4f763e3e66662a6c51994c6315c9ef34b6deb"
    (workdir / "data" / "server_key.hex").write_text(private + "\n")
    out = subprocess.run(
        [*SERVER, "--print-pubkey"],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "8388de69bc0d4b6196133233ad9a46ba0473474bc67718aad96a3a33c257f726"


def test_start_serve_and_stop_on_sigterm(workdir: Path) -> None:
    server = ServerProcess(workdir)
    assert "generated a new server key" in server.log
    client = OnionClient(bytes.fromhex(server.public_key))
    request = client.v2("register", {"token": random_apns_token(), "pubKey": random_session_id()})
    status, body = server.post("/loki/v2/lsrpc", request.body)
    assert status == 200
    assert request.open_v2_reply(body) == (200, {"code": 1, "message": "Success"})
    assert server.terminate() == 0
    assert "pn-relay stopped" in server.log
    assert "Traceback" not in server.log


def test_sigterm_finishes_in_flight_requests_and_loses_no_accepted_notify(workdir: Path) -> None:
    # APNs is configured but unreachable, so every accepted notify stays queued for a retry.
    key = generate_apns_key(workdir)
    server = ServerProcess(
        workdir,
        PN_APNS_KEY_FILE=str(key.key_file),
        PN_APNS_KEY_ID=key.key_id,
        PN_APNS_TEAM_ID=key.team_id,
        PN_APNS_ENDPOINT="127.0.0.1:9",
        # 800 notifies to one recipient: lift its rate limit (tests/test_abuse_limits.py)
        PN_NOTIFY_PER_MINUTE="1000000",
        PN_NOTIFY_BURST="1000000",
    )
    client = OnionClient(bytes.fromhex(server.public_key))
    recipient = random_session_id()
    register = client.v2("register", {"token": random_apns_token(), "pubKey": recipient})
    assert server.post("/loki/v2/lsrpc", register.body)[0] == 200

    accepted: list[int] = []
    failures: list[str] = []

    def send(worker: int) -> None:
        for index in range(100):
            data = base64.b64encode(f"{worker}-{index}".encode() * 10).decode()
            request = client.v2("notify", {"data": data, "send_to": recipient})
            try:
                status, body = server.post("/loki/v2/lsrpc", request.body)
            except OSError:
                return  # the server stopped listening: not accepted, fine
            if status != 200 or request.open_v2_reply(body) != (
                200,
                {"code": 1, "message": "Success"},
            ):
                failures.append(f"{status} {body[:80]!r}")
            accepted.append(1)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    while len(accepted) < 100:
        time.sleep(0.005)
    assert server.terminate() == 0
    for thread in threads:
        thread.join(30)
    assert not failures
    with sqlite3.connect(workdir / "data" / "pn-relay.sqlite3") as db:
        (stored,) = db.execute("SELECT count(*) FROM deliveries").fetchone()
    assert stored == len(accepted)


@pytest.mark.parametrize(
    ("env", "files", "message"),
    [
        ({"PN_PORT": "abc"}, {}, "pn-relay: PN_PORT: expected a whole number, got 'abc'\n"),
        ({"PN_NOPE": "1"}, {}, "pn-relay: PN_NOPE: unknown setting (see config.example.py)\n"),
        ({}, {"config.py": "PORT = 'x'\n"}, "pn-relay: PORT: expected a whole number, got 'x'\n"),
        ({}, {"data/server_key.hex": "abc\n"}, "expected 64 hex characters, found 3 characters\n"),
        ({}, {"data/server_key.hex": "z" * 64}, "not hexadecimal\n"),
        (
            {"PN_DATABASE_URL": "mysql://x/y"},
            {},
            "pn-relay: DATABASE_URL: unsupported database 'mysql'",
        ),
        (
            {"PN_DATABASE_URL": "sqlite://"},
            {},
            "pn-relay: DATABASE_URL: an in-memory SQLite database",
        ),
        (
            {"PN_DATABASE_URL": "not a url"},
            {},
            "pn-relay: DATABASE_URL is not a valid database URL\n",
        ),
    ],
)
def test_bad_settings_stop_the_start_with_one_line(
    workdir: Path, env: dict[str, str], files: dict[str, str], message: str
) -> None:
    for name, content in files.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text(content)
    result = subprocess.run(
        SERVER, cwd=workdir, env=clean_env(**env), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_port_in_use_is_one_line(workdir: Path) -> None:
    server = ServerProcess(workdir)
    try:
        result = subprocess.run(
            [*SERVER, "--port", str(server.port)],
            cwd=workdir,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert f"pn-relay: cannot listen on 127.0.0.1:{server.port}" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        server.terminate()


def test_reuse_port_lets_two_processes_share_a_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"PN_REUSE_PORT": "true", "PN_PORT": str(port)}
    first = subprocess.Popen(
        [*SERVER], cwd=tmp_path, env=clean_env(**env), stderr=subprocess.PIPE, text=True
    )
    second = subprocess.Popen(
        [*SERVER], cwd=tmp_path, env=clean_env(**env), stderr=subprocess.PIPE, text=True
    )
    try:
        for process in (first, second):
            assert process.stderr is not None
            for line in process.stderr:
                if "listening on" in line:
                    assert f":{port} " in line
                    break
            else:
                raise AssertionError("a process did not start")
    finally:
        for process in (first, second):
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
