"""The checks every provider's settings translation shares, and the error they raise.

Each sender module turns its settings into its config (`config_from_settings`, named in
push/providers.py's table); inconsistent credentials, a file that does not exist or an
endpoint that is not one stop the start with one line naming the setting.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from errors import ConfigurationError


class DeliveryConfigError(ConfigurationError):
    """One line naming the delivery setting that is wrong."""


def readable(path: Path, setting: str) -> Path:
    if not path.is_file():
        raise DeliveryConfigError(f"{setting}: {path} is not a readable file")
    return path


def host_port(value: str, setting: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeliveryConfigError(f"{setting}: expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def http_url(value: str, setting: str) -> None:
    url = urlsplit(value)
    try:
        port = url.port
    except ValueError:
        port = -1
    if url.scheme not in ("http", "https") or not url.hostname or port == -1:
        raise DeliveryConfigError(f"{setting}: expected an http(s) URL, got {value!r}")
