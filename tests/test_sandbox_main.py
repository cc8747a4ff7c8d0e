"""``python -m sandbox``: prints the PN_* settings, serves both fakes, logs pushes briefly."""

from __future__ import annotations

import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt

from sandbox.apns import DEFAULT_TOPIC
from sandbox.fcm import GOOGLE_TOKEN_ENDPOINT

ROOT = Path(__file__).resolve().parent.parent


def start_demo(directory: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`python -m sandbox` in `directory`, and the PN_* settings it printed before serving."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--dir", str(directory), *args],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    settings: dict[str, str] = {}
    for line in iter(process.stdout.readline, ""):
        if line.startswith("# Ctrl-C"):
            break
        if "=" in line and not line.startswith("#"):
            name, _, value = line.strip().partition("=")
            settings[name] = value
    return process, settings


def test_demo_prints_settings_and_logs_pushes_without_tokens(tmp_path):
    process, settings = start_demo(tmp_path)
    try:
        assert set(settings) == {
            "PN_APNS_ENDPOINT",
            "PN_APNS_CA_FILE",
            "PN_APNS_KEY_FILE",
            "PN_APNS_KEY_ID",
            "PN_APNS_TEAM_ID",
            "PN_APNS_SANDBOX",
            "PN_APNS_TOPIC",
            "PN_FCM_SERVICE_ACCOUNT_FILE",
            "PN_FCM_PROJECT_ID",
            "PN_FCM_ENDPOINT",
            "PN_FCM_CA_FILE",
        }
        assert settings["PN_APNS_ENDPOINT"].startswith("127.0.0.1:")
        assert settings["PN_FCM_ENDPOINT"].startswith("https://127.0.0.1:")
        assert settings["PN_APNS_SANDBOX"] == "true"

        apns_token = secrets.token_hex(32)
        provider = jwt.encode(
            {"iss": settings["PN_APNS_TEAM_ID"], "iat": int(time.time())},
            Path(settings["PN_APNS_KEY_FILE"]).read_text(),
            algorithm="ES256",
            headers={"kid": settings["PN_APNS_KEY_ID"]},
        )
        ca = ssl.create_default_context(cafile=settings["PN_APNS_CA_FILE"])
        with httpx.Client(http2=True, verify=ca) as client:
            response = client.post(
                f"https://{settings['PN_APNS_ENDPOINT']}/3/device/{apns_token}",
                headers={"authorization": f"bearer {provider}", "apns-topic": DEFAULT_TOPIC},
                content=b'{"aps":{"alert":"hi"}}',
            )
        assert response.status_code == 200

        account = json.loads(Path(settings["PN_FCM_SERVICE_ACCOUNT_FILE"]).read_text())
        assert account["token_uri"] == settings["PN_FCM_ENDPOINT"] + "/token"
        now = int(time.time())
        assertion = jwt.encode(
            {
                "iss": account["client_email"],
                "aud": GOOGLE_TOKEN_ENDPOINT,
                "iat": now,
                "exp": now + 3600,
            },
            account["private_key"],
            algorithm="RS256",
            headers={"kid": account["private_key_id"]},
        )
        fcm_ca = ssl.create_default_context(cafile=settings["PN_FCM_CA_FILE"])
        grant = httpx.post(
            account["token_uri"],
            verify=fcm_ca,
            data={
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": assertion,
            },
        )
        fcm_token = secrets.token_urlsafe(120)
        with httpx.Client(http2=True, verify=fcm_ca) as client:
            response = client.post(
                f"{settings['PN_FCM_ENDPOINT']}/v1/projects/{account['project_id']}/messages:send",
                headers={"Authorization": f"Bearer {grant.json()['access_token']}"},
                json={"message": {"token": fcm_token, "data": {"ENCRYPTED_DATA": "x"}}},
            )
        assert (response.status_code, response.http_version) == (200, "HTTP/2")
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert f"apns {apns_token[:6]}… 200" in stderr
    assert f"fcm  {fcm_token[:6]}… 200" in stderr
    assert apns_token[:7] not in stderr
    assert fcm_token[:7] not in stderr
    assert "stopped: apns 1 pushes" in stderr


def test_demo_with_plain_http_fcm(tmp_path):
    process, settings = start_demo(tmp_path, "--fcm-plain")
    try:
        assert settings["PN_FCM_ENDPOINT"].startswith("http://127.0.0.1:")
        assert "PN_FCM_CA_FILE" not in settings
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
    assert process.returncode == 0
