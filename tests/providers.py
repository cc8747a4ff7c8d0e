"""The sandbox providers, started for a test, and the settings that point a relay at them."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from push.apns import APNsConfig, APNsSender
from sandbox.apns import FakeApns
from sandbox.fcm import FakeFcm


@dataclass
class Providers:
    apns: FakeApns
    fcm: FakeFcm
    settings: dict[str, Any]

    def environment(self, **extra: str) -> dict[str, str]:
        """The settings as a relay process reads them (PN_* variables), with `extra`."""
        env = {f"PN_{name}": str(value) for name, value in self.settings.items()}
        env.update(extra)
        return env


def start_providers(directory: Path, *, fcm_tls: bool = True) -> Generator[Providers, None, None]:
    """The fake FCM speaks HTTP/2 over TLS, as Google's does; `fcm_tls=False`: plain http://,
    where the relay falls back to HTTP/1.1."""
    apns = FakeApns.create(directory / "apns")
    apns.start()
    fcm = FakeFcm.create(directory / "fcm", use_tls=fcm_tls)
    fcm.start()
    try:
        account = fcm.write_service_account(directory / "service-account.json")
        settings: dict[str, Any] = {
            "APNS_KEY_FILE": apns.apns_key.key_file,
            "APNS_KEY_ID": apns.key_id,
            "APNS_TEAM_ID": apns.team_id,
            "APNS_ENDPOINT": apns.endpoint,
            "APNS_CA_FILE": apns.tls.ca_file,
            "FCM_SERVICE_ACCOUNT_FILE": account.file,
            "FCM_ENDPOINT": fcm.base_url,
            "PUSH_RETRY_BASE": 0.05,
        }
        if fcm.tls is not None:
            settings["FCM_CA_FILE"] = fcm.tls.ca_file
        yield Providers(apns=apns, fcm=fcm, settings=settings)
    finally:
        apns.stop()
        fcm.stop()


def apns_sender(fake: FakeApns, **config: Any) -> APNsSender:
    """The relay's own APNs sender (push/apns.py) pointed at `fake`; `config` sets the other
    APNsConfig fields (max_connections, request_timeout_s...)."""
    return APNsSender(
        APNsConfig(
            topic=fake.topic,
            host="127.0.0.1",
            port=fake.port,
            key_file=fake.apns_key.key_file,
            key_id=fake.key_id,
            team_id=fake.team_id,
            ca_file=fake.tls.ca_file,
            **config,
        )
    )


def reset_apns(fake: FakeApns) -> None:
    """What a test may have changed on a shared fake APNs, back to its defaults."""
    fake.set_down(False)
    fake.global_delay = 0.0
    fake.scripts.clear()
    fake.pushes.clear()
