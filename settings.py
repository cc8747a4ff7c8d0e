"""Typed settings: defaults, then `config.py` (or `--config FILE`), then `PN_<NAME>` variables.

Every setting is declared once in SETTINGS with its type, default and reason; the same table
feeds validation, `config.example.py`'s documentation test and error messages. A mistake stops
the start with one line naming the setting and what is wrong.
"""

from __future__ import annotations

import os
import runpy
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "PN_"


class SettingsError(Exception):
    """One line saying which setting is wrong and why."""


@dataclass(frozen=True)
class Settings:
    HOST: str = "127.0.0.1"
    PORT: int = 3000
    REUSE_PORT: bool = False
    DATA_DIR: Path = Path("./data")
    DATABASE_URL: str = ""
    KEY_FILE: Path | None = None
    IDENTITY_KEY_FILE: Path | None = None
    TOKEN_KEY_FILE: Path | None = None
    MAX_BODY_BYTES: int = 65536
    MAX_DATA_BYTES: int = 8192
    WEB_THREADS: int = 16
    DB_POOL_SIZE: int = 0
    WRITE_BATCH_MAX: int = 256
    DEDUP_WINDOW: float = 600.0
    SQLITE_SYNCHRONOUS: str = "FULL"
    LOG_LEVEL: str = "INFO"
    # -- delivery ----------------------------------------------------------------------
    APNS_TOPIC: str = "com.loki-project.loki-messenger"
    APNS_KEY_FILE: Path | None = None
    APNS_KEY_ID: str = ""
    APNS_TEAM_ID: str = ""
    APNS_CERT_FILE: Path | None = None
    APNS_SANDBOX: bool = False
    APNS_ENDPOINT: str = ""
    APNS_CA_FILE: Path | None = None
    APNS_CONNECTIONS: int = 4
    APNS_MAX_IN_FLIGHT: int = 250
    FCM_SERVICE_ACCOUNT_FILE: Path | None = None
    FCM_PROJECT_ID: str = ""
    FCM_ENDPOINT: str = ""
    FCM_MAX_IN_FLIGHT: int = 100
    PUSH_MAX_AGE: float = 3600.0
    PUSH_RETRY_BASE: float = 1.0
    DELIVERY_LEASE: float = 60.0
    # -- statistics and metrics --------------------------------------------------------
    STATS_USERNAME: str = ""
    STATS_PASSWORD: str = ""
    STATS_PASSWORD_HASH: str = ""
    STATS_RETENTION_DAYS: int = 400
    METRICS_ENABLED: bool = True
    METRICS_PUBLIC: bool = False
    # -- harden: slow clients and statistics authentication (docs/security.md) ---------
    BODY_TIMEOUT: float = 30.0
    IDLE_CONNECTION_TIMEOUT: float = 60.0
    MAX_CONNECTIONS: int = 4096
    STATS_AUTH_THREADS: int = 2
    STATS_AUTH_MAX_PENDING: int = 8
    STATS_AUTH_FAILURES_PER_MINUTE: int = 30
    # -- faults: provider timeouts (docs/security.md, "Fault tests") -------------------
    APNS_REQUEST_TIMEOUT: float = 15.0

    # -- derived paths ------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.DATABASE_URL or f"sqlite:///{self.DATA_DIR / 'pn-relay.sqlite3'}"

    @property
    def key_file(self) -> Path:
        return self.KEY_FILE or self.DATA_DIR / "server_key.hex"

    @property
    def identity_key_file(self) -> Path:
        return self.IDENTITY_KEY_FILE or self.DATA_DIR / "identity_secret.hex"

    @property
    def token_key_file(self) -> Path:
        return self.TOKEN_KEY_FILE or self.DATA_DIR / "token_secret.hex"

    @property
    def db_pool_size(self) -> int:
        return self.DB_POOL_SIZE or self.WEB_THREADS + 4


_LIMITS: dict[str, tuple[float, float]] = {
    "PORT": (0, 65535),
    "MAX_BODY_BYTES": (1024, 64 * 1024 * 1024),
    "MAX_DATA_BYTES": (1, 1024 * 1024),
    "WEB_THREADS": (1, 1024),
    "DB_POOL_SIZE": (0, 1024),
    "WRITE_BATCH_MAX": (1, 100_000),
    "DEDUP_WINDOW": (0, 7 * 24 * 3600),
    "APNS_CONNECTIONS": (1, 100),
    "APNS_MAX_IN_FLIGHT": (1, 100_000),
    "FCM_MAX_IN_FLIGHT": (1, 100_000),
    "PUSH_MAX_AGE": (1, 28 * 24 * 3600),
    "PUSH_RETRY_BASE": (0.01, 3600),
    "DELIVERY_LEASE": (1, 3600),
    "STATS_RETENTION_DAYS": (0, 36500),
    # -- harden
    "BODY_TIMEOUT": (0.1, 3600),
    "IDLE_CONNECTION_TIMEOUT": (0.1, 24 * 3600),
    "MAX_CONNECTIONS": (1, 1_000_000),
    "STATS_AUTH_THREADS": (1, 64),
    "STATS_AUTH_MAX_PENDING": (1, 1024),
    "STATS_AUTH_FAILURES_PER_MINUTE": (1, 100_000),
    # -- faults
    "APNS_REQUEST_TIMEOUT": (0.1, 600),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "LOG_LEVEL": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "SQLITE_SYNCHRONOUS": ("FULL", "NORMAL"),
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(Settings)}


def _convert(name: str, kind: str, value: Any, *, from_env: bool) -> Any:
    where = f"{ENV_PREFIX}{name}" if from_env else name
    if kind in ("Path", "Path | None"):
        if value is None and kind == "Path | None":
            return None
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
        raise SettingsError(f"{where}: expected a file or directory path, got {value!r}")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise SettingsError(f"{where}: expected a string, got {type(value).__name__}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise SettingsError(f"{where}: expected a whole number, got {value!r}")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise SettingsError(f"{where}: expected a number of seconds, got {value!r}")
    raise AssertionError(f"unhandled setting type {kind}")  # pragma: no cover


def _check(name: str, value: Any, *, from_env: bool) -> None:
    where = f"{ENV_PREFIX}{name}" if from_env else name
    if name in _LIMITS:
        low, high = _LIMITS[name]
        if not low <= value <= high:
            raise SettingsError(f"{where}: {value} is outside {low:g}..{high:g}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise SettingsError(f"{where}: {value!r} is not one of {', '.join(_CHOICES[name])}")


def read_config_file(path: Path) -> dict[str, Any]:
    """The UPPER_CASE names a Python config file assigns."""
    try:
        namespace = runpy.run_path(str(path))
    except FileNotFoundError:
        raise SettingsError(f"config file {path}: not found") from None
    except SyntaxError as exc:
        raise SettingsError(f"config file {path}: syntax error on line {exc.lineno}") from None
    except Exception as exc:  # noqa: BLE001 - any error in the operator's file, in one line
        raise SettingsError(f"config file {path}: {type(exc).__name__}: {exc}") from None
    return {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    cwd: Path | None = None,
) -> Settings:
    """Merge defaults, the config file, PN_* variables and explicit overrides (in that order)."""
    environ = os.environ if environ is None else environ
    kinds = _field_types()
    values: dict[str, Any] = {}

    if config_file is None:
        candidate = (cwd or Path.cwd()) / "config.py"
        config_file = candidate if candidate.is_file() else None
    if config_file is not None:
        for name, raw in read_config_file(config_file).items():
            if name not in kinds:
                raise SettingsError(f"config file {config_file}: unknown setting {name}")
            values[name] = _convert(name, kinds[name], raw, from_env=False)
            _check(name, values[name], from_env=False)

    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :]
        if name not in kinds:
            raise SettingsError(f"{key}: unknown setting (see config.example.py)")
        values[name] = _convert(name, kinds[name], raw, from_env=True)
        _check(name, values[name], from_env=True)

    for name, raw in (overrides or {}).items():
        if name not in kinds:
            raise SettingsError(f"--{name.lower()}: unknown setting")
        values[name] = _convert(name, kinds[name], raw, from_env=False)
        _check(name, values[name], from_env=False)

    return Settings(**values)
