"""Build the provider senders from settings; a provider without credentials is off.

Inconsistent credentials (a key without its id, a file that does not exist) stop the start
with one line; absent credentials only switch that provider off, with a log line saying how
to switch it on. Pushes for a provider that is off are counted as failed and dropped.
"""

from __future__ import annotations

import json
import logging
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from firebase_admin import credentials

from errors import ConfigurationError
from push import apns, fcm
from push.outcome import ProviderSender
from settings import Settings
from storage.records import Provider

log = logging.getLogger(__name__)


class DeliveryConfigError(ConfigurationError):
    """One line naming the delivery setting that is wrong."""


def _readable(path: Path, setting: str) -> Path:
    if not path.is_file():
        raise DeliveryConfigError(f"{setting}: {path} is not a readable file")
    return path


def _endpoint(value: str, setting: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeliveryConfigError(f"{setting}: expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def apns_config(settings: Settings) -> apns.APNsConfig | None:
    if settings.APNS_KEY_FILE is None and settings.APNS_CERT_FILE is None:
        return None
    if settings.APNS_KEY_FILE is not None and settings.APNS_CERT_FILE is not None:
        raise DeliveryConfigError("APNS_KEY_FILE and APNS_CERT_FILE: set one, not both")
    if settings.APNS_KEY_FILE is not None:
        _readable(settings.APNS_KEY_FILE, "APNS_KEY_FILE")
        if not settings.APNS_KEY_ID or not settings.APNS_TEAM_ID:
            raise DeliveryConfigError("APNS_KEY_FILE needs APNS_KEY_ID and APNS_TEAM_ID too")
    if settings.APNS_CERT_FILE is not None:
        _readable(settings.APNS_CERT_FILE, "APNS_CERT_FILE")
    if settings.APNS_CA_FILE is not None:
        _readable(settings.APNS_CA_FILE, "APNS_CA_FILE")
    if settings.APNS_ENDPOINT:
        host, port = _endpoint(settings.APNS_ENDPOINT, "APNS_ENDPOINT")
    else:
        host, port = (apns.SANDBOX_HOST if settings.APNS_SANDBOX else apns.PRODUCTION_HOST), 443
    config = apns.APNsConfig(
        topic=settings.APNS_TOPIC,
        host=host,
        port=port,
        key_file=settings.APNS_KEY_FILE,
        key_id=settings.APNS_KEY_ID or None,
        team_id=settings.APNS_TEAM_ID or None,
        cert_file=settings.APNS_CERT_FILE,
        ca_file=settings.APNS_CA_FILE,
        max_connections=settings.APNS_CONNECTIONS,
        request_timeout_s=settings.APNS_REQUEST_TIMEOUT,
    )
    _check_apns_files(config)
    return config


def _check_apns_files(config: apns.APNsConfig) -> None:
    """Read the files APNs will use now, not at the first push: a wrong one stops the start."""
    try:
        apns.provider_tokens(config)
    except (ValueError, OSError):
        raise DeliveryConfigError(
            f"APNS_KEY_FILE: {config.key_file} is not an APNs signing key"
            " (the .p8 file from Apple: an EC P-256 private key in PEM)"
        ) from None
    if config.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(config.ca_file))
        except (ValueError, OSError):
            raise DeliveryConfigError(
                f"APNS_CA_FILE: {config.ca_file} holds no PEM certificate to trust"
            ) from None
    if config.cert_file is not None:
        try:
            apns.ssl_context(config)
        except (ValueError, OSError):
            raise DeliveryConfigError(
                f"APNS_CERT_FILE: {config.cert_file} is not a PEM certificate with its private key"
            ) from None


def fcm_config(settings: Settings) -> fcm.FCMConfig | None:
    path = settings.FCM_SERVICE_ACCOUNT_FILE
    if path is None:
        return None
    _readable(path, "FCM_SERVICE_ACCOUNT_FILE")
    try:
        account = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError):
        raise DeliveryConfigError(f"FCM_SERVICE_ACCOUNT_FILE: {path} is not JSON") from None
    if not isinstance(account, dict) or account.get("type") != "service_account":
        raise DeliveryConfigError(
            f"FCM_SERVICE_ACCOUNT_FILE: {path} is not a Google service account key"
        )
    if not settings.FCM_PROJECT_ID and not account.get("project_id"):
        raise DeliveryConfigError("FCM_PROJECT_ID: the service account names no project")
    try:
        credentials.Certificate(str(path))
    except ValueError:
        raise DeliveryConfigError(
            f"FCM_SERVICE_ACCOUNT_FILE: {path} is not a usable service account key"
        ) from None
    endpoint = settings.FCM_ENDPOINT.rstrip("/") or None
    if endpoint is not None:
        _url(endpoint, "FCM_ENDPOINT")
    if settings.FCM_CA_FILE is not None:
        _readable(settings.FCM_CA_FILE, "FCM_CA_FILE")
    return fcm.FCMConfig(
        service_account_file=path,
        project_id=settings.FCM_PROJECT_ID or None,
        endpoint=endpoint,
        ca_file=settings.FCM_CA_FILE,
    )


def _url(value: str, setting: str) -> None:
    url = urlsplit(value)
    try:
        port = url.port
    except ValueError:
        port = -1
    if url.scheme not in ("http", "https") or not url.hostname or port == -1:
        raise DeliveryConfigError(f"{setting}: expected an http(s) URL, got {value!r}")


def build_senders(settings: Settings) -> dict[Provider, ProviderSender | None]:
    senders: dict[Provider, ProviderSender | None] = {}
    apns_settings = apns_config(settings)
    if apns_settings is None:
        log.warning(
            "APNs is off: no credentials. iOS pushes are counted as failed and dropped."
            " To enable, set APNS_KEY_FILE, APNS_KEY_ID and APNS_TEAM_ID (or APNS_CERT_FILE)."
        )
        senders[Provider.APNS] = None
    else:
        log.info("APNs: %s", apns.describe(apns_settings))
        senders[Provider.APNS] = apns.APNsSender(
            apns_settings, max_in_flight=settings.APNS_MAX_IN_FLIGHT
        )
    fcm_settings = fcm_config(settings)
    if fcm_settings is None:
        log.warning(
            "FCM is off: no credentials. Android pushes are counted as failed and dropped."
            " To enable, set FCM_SERVICE_ACCOUNT_FILE."
        )
        senders[Provider.FCM] = None
    else:
        log.info("FCM: %s", fcm.describe(fcm_settings))
        senders[Provider.FCM] = fcm.FCMSender(
            fcm_settings, max_in_flight=settings.FCM_MAX_IN_FLIGHT
        )
    return senders
