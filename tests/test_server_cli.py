"""`python server.py` as an operator runs it: a real process, real signals."""

from __future__ import annotations

import base64
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lsrpc.client import OnionClient
from sandbox.certs import generate_apns_key
from tests.checks import SUCCESS
from tests.server_process import SERVER, ServerProcess, clean_env, run_server
from tests.support import random_apns_token, random_session_id


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_print_pubkey_creates_the_key_once(workdir: Path) -> None:
    first, second = (run_server("--print-pubkey", cwd=workdir, check=True) for _ in range(2))
    assert re.fullmatch(r"[0-9a-f]{64}\n", first.stdout)
    assert first.stdout == second.stdout
    key_file = workdir / "data" / "server_key.hex"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_key_file_of_the_2021_server_is_used(workdir: Path) -> None:
    (workdir / "data").mkdir()
    private = "2f4d1c0d28e137777ec0a316e9f4f763e3e66662a6c51994c6315c9ef34b6deb"
    (workdir / "data" / "server_key.hex").write_text(private + "\n")
    out = run_server("--print-pubkey", cwd=workdir, check=True)
    assert out.stdout.strip() == "8388de69bc0d4b6196133233ad9a46ba0473474bc67718aad96a3a33c257f726"


def test_start_serve_and_stop_on_sigterm(workdir: Path) -> None:
    server = ServerProcess(workdir)
    assert "INFO pn_relay: first start: made the key files data/server_key.hex," in server.log
    client = OnionClient(bytes.fromhex(server.public_key))
    request = client.v2("register", {"token": random_apns_token(), "pubKey": random_session_id()})
    status, body = server.post("/loki/v2/lsrpc", request.body)
    assert status == 200
    assert request.open_v2_reply(body) == SUCCESS
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
            if status != 200 or request.open_v2_reply(body) != SUCCESS:
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
        (
            {},
            {"config.py": "PORT = 'x'\n"},
            "pn-relay: PORT: expected a whole number, got a string, 'x'\n",
        ),
        ({}, {"data/server_key.hex": "abc\n"}, "expected 64 hex characters, found 3 characters\n"),
        ({}, {"data/server_key.hex": "z" * 64}, "not hexadecimal\n"),
        (
            {"PN_DATABASE_URL": "mysql://x/y"},
            {},
            "pn-relay: PN_DATABASE_URL: unsupported database 'mysql'",
        ),
        (
            {"PN_DATABASE_URL": "sqlite://"},
            {},
            "pn-relay: PN_DATABASE_URL: an in-memory SQLite database",
        ),
        (
            {"PN_DATABASE_URL": "not a url"},
            {},
            "pn-relay: PN_DATABASE_URL is not a valid database URL\n",
        ),
        (
            {},
            {"config.py": "DATABASE_URL = 'not a url'\n"},
            "pn-relay: DATABASE_URL is not a valid database URL\n",
        ),
        (
            {"PN_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:9/test"},
            {},
            "pn-relay: cannot open the database: OperationalError: connection failed:",
        ),
        (
            {},
            {"config.py": 'APNS_SANDBOX = "false"\n'},
            "pn-relay: APNS_SANDBOX: expected True or False, got a string, 'false'"
            " (write APNS_SANDBOX = False, without quotes)\n",
        ),
        (
            {},
            {"config.py": "PORT = '3005'\n"},
            "pn-relay: PORT: expected a whole number, got a string, '3005'"
            " (write PORT = 3005, without quotes)\n",
        ),
        (
            {},
            {"config.py": "port = 3005\n"},
            "port is not a setting; setting names are upper case: PORT\n",
        ),
        (
            {"PN_MAX_BODY_BYTES": "0"},
            {},
            "pn-relay: PN_MAX_BODY_BYTES: 0 is outside 1024..67108864\n",
        ),
        (
            {"PN_APNS_KEY_ID": "ABC123"},
            {},
            "pn-relay: PN_APNS_KEY_ID is set but APNS_KEY_FILE and APNS_TEAM_ID are not:"
            " APNs token auth needs all three\n",
        ),
        (
            {
                "PN_APNS_KEY_FILE": "/nonexistent/k.p8",
                "PN_APNS_KEY_ID": "K",
                "PN_APNS_TEAM_ID": "T",
            },
            {},
            "pn-relay: PN_APNS_KEY_FILE: /nonexistent/k.p8 is not a readable file\n",
        ),
        (
            {"PN_STATS_USERNAME": "ops"},
            {},
            "pn-relay: PN_STATS_USERNAME is set but STATS_PASSWORD_HASH (or STATS_PASSWORD) is"
            " not: make a hash with python -m stats.hash_password\n",
        ),
        (
            {"PN_STATS_USERNAME": "ops", "PN_STATS_PASSWORD_HASH": "md5$x"},
            {},
            "pn-relay: PN_STATS_PASSWORD_HASH: expected pbkdf2_sha256$",
        ),
        (
            {"PN_KEY_FILE": "/srv/old-2021-key.hx"},
            {},
            "pn-relay: PN_KEY_FILE: /srv/old-2021-key.hx does not exist; fix the path",
        ),
        (
            {"PN_DATA_DIR": "~/pn-relay-test-never-made", "PN_TOKEN_KEY_FILE": "/nope.hex"},
            {},
            "pn-relay: PN_TOKEN_KEY_FILE: /nope.hex does not exist",
        ),
    ],
)
def test_bad_settings_stop_the_start_with_one_line_and_leave_nothing(
    workdir: Path, env: dict[str, str], files: dict[str, str], message: str
) -> None:
    for name, content in files.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text(content)
    before = sorted(workdir.rglob("*"))
    result = run_server(cwd=workdir, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p for p in workdir.rglob("*") if p.name != "__pycache__") == before
    assert not (Path.home() / "pn-relay-test-never-made").exists()


def test_port_in_use_is_one_line_and_makes_nothing(workdir: Path) -> None:
    (workdir / "first").mkdir()
    second = workdir / "second"
    second.mkdir()
    with ServerProcess(workdir / "first") as server:
        result = run_server("--port", str(server.port), cwd=second, timeout=30)
        assert result.returncode == 2
        assert result.stderr == (
            f"pn-relay: cannot listen on 127.0.0.1:{server.port}: Address already in use\n"
        )
        assert list(second.iterdir()) == []  # neither keys nor a database
        assert server.terminate() == 0


def test_help_says_where_settings_come_from() -> None:
    result = run_server("--help", check=True)
    for words in ("config.py", "PN_<NAME>", "PN_PORT=3005", "config.example.py", "--init"):
        assert words in result.stdout


def test_init_makes_missing_key_files_even_named_ones_and_never_overwrites(workdir: Path) -> None:
    def init() -> subprocess.CompletedProcess[str]:
        return run_server("--init", cwd=workdir, check=True, env={"PN_KEY_FILE": "keys/server.hex"})

    first = init()
    assert re.fullmatch(r"[0-9a-f]{64}\n", first.stdout)
    assert first.stderr.splitlines() == [
        "pn-relay: made server key keys/server.hex (mode 0600)",
        "pn-relay: made identity secret data/identity_secret.hex (mode 0600)",
        "pn-relay: made token secret data/token_secret.hex (mode 0600)",
    ]
    for path in ("keys/server.hex", "data/identity_secret.hex", "data/token_secret.hex"):
        assert (workdir / path).stat().st_mode & 0o777 == 0o600
    again = init()
    assert again.stdout == first.stdout
    assert again.stderr == "pn-relay: every key file exists; nothing made\n"
    # And the relay starts with them, recording their fingerprints.
    with ServerProcess(workdir, PN_KEY_FILE="keys/server.hex") as server:
        assert server.terminate() == 0
    assert server.public_key == first.stdout.strip()
    assert "made the key file" not in server.log


def test_print_pubkey_never_makes_a_named_key(workdir: Path) -> None:
    result = run_server("--print-pubkey", cwd=workdir, env={"PN_KEY_FILE": "typo.hex"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("pn-relay: PN_KEY_FILE: typo.hex does not exist;")
    assert list(workdir.iterdir()) == []


def test_a_wrong_secret_in_front_of_registrations_refuses_in_one_line(workdir: Path) -> None:
    with ServerProcess(workdir) as server:
        client = OnionClient(bytes.fromhex(server.public_key))
        params = {"token": random_apns_token(), "pubKey": random_session_id()}
        assert server.post("/loki/v2/lsrpc", client.v2("register", params).body)[0] == 200
        assert server.terminate() == 0
    other = workdir / "other_token_secret.hex"
    other.write_text("11" * 32 + "\n")
    result = run_server(cwd=workdir, env={"PN_TOKEN_KEY_FILE": str(other)})
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"pn-relay: PN_TOKEN_KEY_FILE: {other} is not the token secret this database was"
        " written with, and the database holds registrations made with the old one: restore"
        " the file from your backup, or set PN_TOKEN_KEY_FILE to where it is"
    )
    assert len(result.stderr.splitlines()) == 1


def test_an_unprefixed_variable_is_named_in_a_warning(workdir: Path) -> None:
    with ServerProcess(workdir, STATS_USERNAME="ops") as server:
        assert server.terminate() == 0
    assert (
        "WARNING pn_relay: STATS_USERNAME is set in the environment but ignored: pn-relay reads"
        " PN_STATS_USERNAME (or STATS_USERNAME in config.py)"
    ) in server.log
    assert (
        "set STATS_USERNAME and STATS_PASSWORD_HASH in config.py (or PN_STATS_USERNAME and"
        " PN_STATS_PASSWORD_HASH in the environment)"
    ) in server.log


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
    public_keys = set()
    try:
        for process in (first, second):
            assert process.stderr is not None
            for line in process.stderr:
                if "listening on" in line:
                    assert f":{port} " in line
                    public_keys.add(line.rsplit(" ", 1)[1])
                    break
            else:
                raise AssertionError("a process did not start")
        # Both started on an empty DATA_DIR at once, and made one set of keys together.
        assert len(public_keys) == 1
        assert sorted(p.name for p in (tmp_path / "data").iterdir() if "key" in p.name) == [
            "server_key.hex"
        ]
    finally:
        for process in (first, second):
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
