"""contrib/: the systemd unit and the nginx front, checked by the real tools when present.

`systemd-analyze` (package systemd) verifies the unit and scores its hardening; `nginx`
(package nginx-light or nginx) runs the front for real, terminating TLS before a running
relay. Without them those tests skip and say which package would run them; the static
checks (the unit's key hardening lines, the proxy's limits against the relay's settings)
always run.
"""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.certs import TlsFiles, client_ssl_context, generate_tls
from settings import Settings
from tests.support import RunningRelay, random_apns_token, random_session_id

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "contrib" / "pn-relay.service"
NGINX = REPO / "contrib" / "nginx.conf"
HOSTNAME = "push.example.org"


def unit_settings() -> dict[str, list[str]]:
    """Key -> every value it is given (systemd allows a key several times)."""
    values: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def unit_for_this_machine(directory: Path) -> Path:
    """The unit with its /opt/pn-relay paths pointed at this checkout and interpreter."""
    text = UNIT.read_text()
    text = text.replace("/opt/pn-relay/.venv/bin/python", sys.executable)
    text = text.replace("/opt/pn-relay", str(REPO))
    path = directory / "pn-relay.service"
    path.write_text(text)
    return path


def test_the_unit_runs_hardened_with_its_own_state_directory() -> None:
    unit = unit_settings()
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "pn-relay",
        "StateDirectoryMode": "0700",
        "UMask": "0077",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",  # a configuration error: restarting cannot help
    }
    assert {key: unit.get(key, ["<missing>"])[-1] for key in expected} == expected
    assert "PN_DATA_DIR=/var/lib/pn-relay" in unit["Environment"]  # = StateDirectory
    assert unit["ExecStart"] == ["/opt/pn-relay/.venv/bin/python server.py"]


def test_the_proxy_matches_the_relay_settings() -> None:
    conf = NGINX.read_text()
    size = re.search(r"^\s*client_max_body_size (\d+)k;", conf, re.M)
    assert size is not None
    assert int(size[1]) * 1024 == Settings().MAX_BODY_BYTES
    upstream = re.search(r"^\s*server 127\.0\.0\.1:(\d+);", conf, re.M)
    assert upstream is not None
    port = f"PN_PORT={upstream[1]}"
    assert port in unit_settings()["Environment"]
    assert upstream[1] == str(Settings().PORT)


def needs_systemd_analyze(otherwise: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which("systemd-analyze") is None,
        reason=f"systemd-analyze is not installed (Debian package systemd): {otherwise}",
    )


@needs_systemd_analyze("the unit is not verified")
def test_systemd_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    unit = unit_for_this_machine(tmp_path)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify
    assert verify.stdout + verify.stderr == ""  # an unknown or misspelt key is only a warning


@needs_systemd_analyze("no exposure score")
def test_systemd_rates_the_unit_exposure_low(tmp_path: Path) -> None:
    unit = unit_for_this_machine(tmp_path)
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in security.stderr:  # systemd before 252 cannot rate a unit file offline
        pytest.skip("this systemd-analyze cannot rate a unit file offline (needs systemd 252)")
    match = re.search(r"Overall exposure level for pn-relay\.service: ([\d.]+)", security.stdout)
    assert match is not None, security
    assert float(match[1]) <= 2.0, security.stdout


# -- nginx in front of a running relay ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nginx did not listen on {port}")


@pytest.fixture
def nginx_front(tmp_path: Path, sqlite_relay: RunningRelay) -> Iterator[tuple[int, int, TlsFiles]]:
    """contrib/nginx.conf as shipped, but with test ports and a test certificate."""
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx is None:
        pytest.skip("nginx is not installed (Debian package nginx-light): the front is not run")
    tls = generate_tls(tmp_path / "tls", hostnames=(HOSTNAME,), ip_addresses=("127.0.0.1",))
    https_port, http_port = free_port(), free_port()
    site = NGINX.read_text()
    site = site.replace("server 127.0.0.1:3000;", f"server 127.0.0.1:{sqlite_relay.port};")
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = "\n".join(line for line in site.splitlines() if "listen [::]" not in line)
    site = site.replace(f"/etc/letsencrypt/live/{HOSTNAME}/fullchain.pem", str(tls.cert_file))
    site = site.replace(f"/etc/letsencrypt/live/{HOSTNAME}/privkey.pem", str(tls.key_file))
    (tmp_path / "site.conf").write_text(site)
    temp = tmp_path / "nginx-temp"
    temp.mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"""
        pid {tmp_path}/nginx.pid;
        error_log {tmp_path}/error.log warn;
        events {{ worker_connections 64; }}
        http {{
            access_log off;
            client_body_temp_path {temp}/body;
            proxy_temp_path {temp}/proxy;
            fastcgi_temp_path {temp}/fastcgi;
            uwsgi_temp_path {temp}/uwsgi;
            scgi_temp_path {temp}/scgi;
            include {tmp_path}/site.conf;
        }}
        """
    )
    command = [nginx, "-p", str(tmp_path), "-e", str(tmp_path / "error.log")]
    command += ["-c", str(tmp_path / "nginx.conf")]
    check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([*command, "-g", "daemon off;"])
    try:
        wait_for_port(https_port, process)
        yield https_port, http_port, tls
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_nginx_terminates_tls_in_front_of_the_relay(
    nginx_front: tuple[int, int, TlsFiles], sqlite_relay: RunningRelay
) -> None:
    https_port, http_port, tls = nginx_front
    context = client_ssl_context(tls)  # verifies the certificate, for 127.0.0.1

    def post(body: bytes) -> http.client.HTTPResponse:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", https_port, context=context, timeout=30
        )
        connection.request(
            "POST",
            "/loki/v2/lsrpc",
            body=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        return connection.getresponse()

    # An onion request through the proxy gets the relay's encrypted answer, unchanged.
    request = sqlite_relay.client.v2(
        "register", {"token": random_apns_token(), "pubKey": random_session_id()}
    )
    answer = post(request.body)
    assert answer.status == 200
    status, body = request.open_v2_reply(answer.read())
    assert (status, body["code"]) == (200, 1)

    # The body limit is the relay's MAX_BODY_BYTES.
    assert post(b"\x00" * Settings().MAX_BODY_BYTES).status != 413
    assert post(b"\x00" * (Settings().MAX_BODY_BYTES + 1)).status == 413

    # Plain HTTP is sent to HTTPS.
    plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    plain.request("GET", "/loki/v2/lsrpc", headers={"Host": HOSTNAME})
    redirect = plain.getresponse()
    assert redirect.status == 301
    assert redirect.getheader("Location") == f"https://{HOSTNAME}/loki/v2/lsrpc"
