"""FCM settings → the sender's configuration, and one-line errors for each mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from push.config_checks import DeliveryConfigError
from push.fcm import FCMConfig
from push.fcm import config_from_settings as fcm_config
from sandbox.certs import generate_service_account
from settings import load_settings


def account(tmp_path: Path) -> Path:
    return generate_service_account(
        tmp_path / "sa.json", token_uri="https://oauth2.googleapis.com/token"
    ).file


def config_for(tmp_path: Path, **environ: str) -> FCMConfig | None:
    settings = load_settings(environ={f"PN_{k}": v for k, v in environ.items()}, cwd=tmp_path)
    return fcm_config(settings)


def test_fcm_is_off_without_a_service_account(tmp_path: Path) -> None:
    assert config_for(tmp_path) is None


def test_endpoint_and_private_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here; the TLS context reads it")
    config = config_for(
        tmp_path,
        FCM_SERVICE_ACCOUNT_FILE=str(account(tmp_path)),
        FCM_ENDPOINT="https://127.0.0.1:8443/",
        FCM_CA_FILE=str(ca),
    )
    assert config is not None
    assert config.endpoint == "https://127.0.0.1:8443"
    assert config.ca_file == ca


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("FCM_CA_FILE", "/nonexistent/ca.pem", "FCM_CA_FILE: /nonexistent/ca.pem is not a"),
        ("FCM_ENDPOINT", "ftp://127.0.0.1", "FCM_ENDPOINT: expected an http(s) URL"),
        ("FCM_ENDPOINT", "https://127.0.0.1:99999", "FCM_ENDPOINT: expected an http(s) URL"),
        ("FCM_ENDPOINT", "https://", "FCM_ENDPOINT: expected an http(s) URL"),
    ],
)
def test_mistakes_name_the_setting(tmp_path: Path, setting: str, value: str, message: str) -> None:
    environ = {"FCM_SERVICE_ACCOUNT_FILE": str(account(tmp_path)), setting: value}
    with pytest.raises(
        DeliveryConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")
    ):
        config_for(tmp_path, **environ)


def test_a_service_account_with_a_broken_key_is_refused_at_start(tmp_path: Path) -> None:
    path = account(tmp_path)
    document = json.loads(path.read_text())
    document["private_key"] = "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n"
    path.write_text(json.dumps(document))
    with pytest.raises(DeliveryConfigError, match="not a usable service account key"):
        config_for(tmp_path, FCM_SERVICE_ACCOUNT_FILE=str(path))
