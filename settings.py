"""Typed settings: defaults, then `config.py` (or `--config FILE`), then `PN_<NAME>` variables.

Every setting is declared once in `Settings` with its type, its default and, where it has
them, the range or the words its value must be (`setting`); `config.example.py`
documents each (a test checks it). A mistake stops the start with one line naming the
setting as the operator wrote it (`PN_PORT` from the environment, `PORT` from the file) and
what is wrong. What config.py may hold besides settings is in `read_config_file`.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import runpy
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from errors import ConfigurationError

ENV_PREFIX = "PN_"
T = TypeVar("T")


class SettingsError(ConfigurationError):
    """One line saying which setting is wrong and why."""


def setting(
    default: T, *, within: tuple[float, float] | None = None, one_of: tuple[str, ...] = ()
) -> T:
    """A setting's default, with the range (`within`, both ends allowed) or the words
    (`one_of`) its value must be, checked whenever one is read (`_check`)."""
    rules: dict[str, Any] = {}
    if within is not None:
        rules["within"] = within
    if one_of:
        rules["one_of"] = one_of
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class Settings:
    HOST: str = "127.0.0.1"
    PORT: int = setting(3000, within=(0, 65535))
    REUSE_PORT: bool = False
    DATA_DIR: Path = Path("./data")
    DATABASE_URL: str = ""
    KEY_FILE: Path | None = None
    IDENTITY_KEY_FILE: Path | None = None
    TOKEN_KEY_FILE: Path | None = None
    MAX_BODY_BYTES: int = setting(65536, within=(1024, 64 * 1024 * 1024))
    MAX_DATA_BYTES: int = setting(8192, within=(1, 1024 * 1024))
    WEB_THREADS: int = setting(16, within=(1, 1024))
    DB_POOL_SIZE: int = setting(0, within=(0, 1024))
    WRITE_BATCH_MAX: int = setting(256, within=(1, 100_000))
    WRITE_GATHER: float = setting(0.004, within=(0, 0.1))
    # SQLite with one worker: a small batch of the event loop's writes runs on the loop's own
    # thread ("loop") or always on the writer thread ("thread")
    SQLITE_SMALL_WRITES: str = setting("loop", one_of=("loop", "thread"))
    DEDUP_WINDOW: float = setting(600.0, within=(0, 7 * 24 * 3600))
    SQLITE_SYNCHRONOUS: str = setting("FULL", one_of=("FULL", "NORMAL"))
    LOG_LEVEL: str = setting("INFO", one_of=("DEBUG", "INFO", "WARNING", "ERROR"))
    # -- delivery ----------------------------------------------------------------------
    APNS_TOPIC: str = "com.loki-project.loki-messenger"
    APNS_KEY_FILE: Path | None = None
    APNS_KEY_ID: str = ""
    APNS_TEAM_ID: str = ""
    APNS_CERT_FILE: Path | None = None
    APNS_SANDBOX: bool = False
    APNS_ENDPOINT: str = ""
    APNS_CA_FILE: Path | None = None
    APNS_CONNECTIONS: int = setting(4, within=(1, 100))
    APNS_MAX_IN_FLIGHT: int = setting(250, within=(1, 100_000))
    FCM_SERVICE_ACCOUNT_FILE: Path | None = None
    FCM_PROJECT_ID: str = ""
    FCM_ENDPOINT: str = ""
    FCM_MAX_IN_FLIGHT: int = setting(250, within=(1, 100_000))
    PUSH_MAX_AGE: float = setting(3600.0, within=(1, 28 * 24 * 3600))
    PUSH_RETRY_BASE: float = setting(1.0, within=(0.01, 3600))
    DELIVERY_LEASE: float = setting(60.0, within=(1, 3600))
    PUSH_GATHER: float = setting(0.01, within=(0, 1))
    # -- statistics and metrics --------------------------------------------------------
    STATS_USERNAME: str = ""
    STATS_PASSWORD: str = ""
    STATS_PASSWORD_HASH: str = ""
    STATS_RETENTION_DAYS: int = setting(400, within=(0, 36500))
    METRICS_ENABLED: bool = True
    METRICS_PUBLIC: bool = False
    # -- harden: slow clients and statistics authentication (docs/security.md) ---------
    BODY_TIMEOUT: float = setting(30.0, within=(0.1, 3600))
    IDLE_CONNECTION_TIMEOUT: float = setting(60.0, within=(0.1, 24 * 3600))
    MAX_CONNECTIONS: int = setting(4096, within=(1, 1_000_000))
    STATS_AUTH_THREADS: int = setting(2, within=(1, 64))
    STATS_AUTH_MAX_PENDING: int = setting(8, within=(1, 1024))
    STATS_AUTH_FAILURES_PER_MINUTE: int = setting(30, within=(1, 100_000))
    # -- fcm-h2
    FCM_CA_FILE: Path | None = None
    # -- config-keys -------------------------------------------------------------------
    LOG_FORMAT: str = setting("text", one_of=("text", "json"))
    ACCESS_LOG: bool = False
    # -- dash: health that tells the truth (issue 11) ------------------------------------
    HEALTH_MAX_QUEUE_AGE: float = setting(1800.0, within=(0, 28 * 24 * 3600))
    # -- abuse: limits that need no IP address (issue 12; docs/security.md) -------------
    MAX_DEVICES_PER_SESSION: int = setting(20, within=(1, 100_000))
    MAX_GROUP_MEMBERS: int = setting(200, within=(1, 1_000_000))
    NOTIFY_PER_MINUTE: int = setting(120, within=(1, 1_000_000))
    NOTIFY_BURST: int = setting(60, within=(1, 1_000_000))
    FANOUT_CHUNK: int = setting(500, within=(10, 100_000))
    # -- workers (issue 10) ------------------------------------------------------------
    # "auto" in config.py, PN_WORKERS or --workers: the usable CPUs
    WORKERS: int = setting(1, within=(1, 256))
    # the event loop under Tornado (eventloop.py)
    EVENT_LOOP: str = setting("uvloop", one_of=("uvloop", "asyncio"))
    # the HTTP/1.1 server: ours (web/h1server.py) or Tornado's HTTPServer
    HTTP_SERVER: str = setting("own", one_of=("own", "tornado"))
    # -- faults: provider timeouts (docs/security.md, "Fault tests") -------------------
    APNS_REQUEST_TIMEOUT: float = setting(15.0, within=(0.1, 600))

    # -- derived paths ------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        if self.DATABASE_URL.startswith("sqlite:///~"):  # "~" is home, as in the paths
            return f"sqlite:///{Path(self.DATABASE_URL[len('sqlite:///') :]).expanduser()}"
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


_RULES: Mapping[str, Mapping[str, Any]] = {f.name: f.metadata for f in fields(Settings)}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_KIND_WORDS = {
    "int": "a whole number",
    "float": "a number of seconds",
    "bool": "true or false",
    "str": "a string",
    "Path": "a file or directory path",
    "Path | None": "a file or directory path",
}


# Whole-number settings that also take the word "auto": what it means, computed when read.
AUTO = "auto"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. under taskset or a cgroup)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_AUTO_VALUES: dict[str, Callable[[], int]] = {"WORKERS": usable_cpus}


def _resolve_auto(label: str, name: str, raw: Any) -> Any:
    """`raw` with "auto" replaced by its number, for the settings that take it."""
    if name not in _AUTO_VALUES or not isinstance(raw, str):
        return raw
    if raw.strip().lower() == AUTO:
        return _AUTO_VALUES[name]()
    try:
        int(raw.strip())
    except ValueError:
        raise SettingsError(f"{label}: expected a whole number or auto, got {raw!r}") from None
    return raw  # a number as text: as for any whole-number setting (refused in config.py)


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(Settings)}


def _number_text(value: float) -> str:
    """A number as one would write it: 67108864, not 6.71089e+07; 0.5 stays 0.5."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _python_literal(kind: str, text: str) -> str | None:
    """What a quoted number or boolean in config.py should have been, or None."""
    stripped = text.strip()
    if kind == "bool" and stripped.lower() in _TRUE + _FALSE:
        return "True" if stripped.lower() in _TRUE else "False"
    if kind in ("int", "float"):
        try:
            number = int(stripped) if kind == "int" else float(stripped)
        except ValueError:
            return None
        return _number_text(number)
    return None


def _convert_env(label: str, kind: str, text: str) -> Any:
    """A PN_* variable's text as the setting's type."""
    stripped = text.strip()
    if kind in ("Path", "Path | None"):
        if not stripped:
            raise SettingsError(f"{label}: is empty; expected a file or directory path")
        return Path(stripped).expanduser()
    if kind == "str":
        return text
    if kind == "bool":
        if stripped.lower() in _TRUE + _FALSE:
            return stripped.lower() in _TRUE
        raise SettingsError(f"{label}: expected true or false, got {text!r}")
    try:
        return int(stripped) if kind == "int" else float(stripped)
    except ValueError:
        raise SettingsError(f"{label}: expected {_KIND_WORDS[kind]}, got {text!r}") from None


def _convert_python(label: str, kind: str, value: Any) -> Any:
    """A value from config.py (or an override) as the setting's type: Python types, no guessing.

    A quoted number or boolean is refused with the line to write instead, so that
    `APNS_SANDBOX = "false"` never quietly means True or False by accident.
    """
    expected = _KIND_WORDS[kind]
    if kind == "bool":
        expected = "True or False"
    if isinstance(value, str):
        if kind == "str":
            return value
        if kind in ("Path", "Path | None"):
            if not value.strip():
                raise SettingsError(f"{label}: is empty; expected a file or directory path")
            return Path(value.strip()).expanduser()
        literal = _python_literal(kind, value)
        hint = f" (write {label} = {literal}, without quotes)" if literal is not None else ""
        raise SettingsError(f"{label}: expected {expected}, got a string, {value!r}{hint}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("Path", "Path | None"):
        if isinstance(value, Path):
            return value.expanduser()
        if value is None and kind == "Path | None":
            return None
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and number and isinstance(value, int):
        return value
    if kind == "float" and number:
        return float(value)
    if kind == "str" and number:
        raise SettingsError(
            f'{label}: expected a string, got the number {value!r} (write {label} = "{value}")'
        )
    raise SettingsError(f"{label}: expected {expected}, got {value!r}")


def _check(label: str, name: str, value: Any, written: str) -> None:
    rules = _RULES[name]
    if "within" in rules:
        low, high = rules["within"]
        if not low <= value <= high:
            raise SettingsError(
                f"{label}: {written} is outside {_number_text(low)}..{_number_text(high)}"
            )
    if "one_of" in rules and value not in rules["one_of"]:
        raise SettingsError(f"{label}: {value!r} is not one of {', '.join(rules['one_of'])}")


def _imported_names(source: str) -> set[str]:
    """Names that top-level import statements of a config file bind."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


_NOT_SETTINGS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings a Python config file assigns.

    The rule: every top-level name the file binds must be a setting (exactly as written in
    config.example.py, upper case), except names starting with `_` (your own helpers, and
    Python's dunders), names bound by `import`, and functions and classes the file defines.
    Anything else (`port = 3005`, `DATA_DIRS = ...`, `BASE = "/srv"`) is an error, so that a
    typo cannot be ignored in silence.
    """
    try:
        source = path.read_text(encoding="utf-8")
        imported = _imported_names(source)
        namespace = runpy.run_path(str(path))
    except FileNotFoundError:
        raise SettingsError(f"config file {path}: not found") from None
    except SyntaxError as exc:
        raise SettingsError(f"config file {path}: syntax error on line {exc.lineno}") from None
    except Exception as exc:  # noqa: BLE001 - any error in the operator's file, in one line
        raise SettingsError(f"config file {path}: {type(exc).__name__}: {exc}") from None
    known = _field_types()
    found: dict[str, Any] = {}
    for name, value in namespace.items():
        if name.startswith("_") or name in imported or isinstance(value, _NOT_SETTINGS):
            continue
        if name not in known:
            raise SettingsError(f"config file {path}: {_unknown_name(name, known)}")
        found[name] = value
    return found


def _unknown_name(name: str, known: Mapping[str, str]) -> str:
    if name.upper() in known:
        return f"{name} is not a setting; setting names are upper case: {name.upper()}"
    close = difflib.get_close_matches(name.upper(), list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (
        f"unknown setting {name}{hint}; names of your own must start with _ (see config.example.py)"
    )


@dataclass(frozen=True)
class LoadedSettings:
    """Settings, and where each given one came from (for messages in the user's words)."""

    settings: Settings
    labels: Mapping[str, str]  # setting -> the name the user set it by: PN_PORT, PORT, --port
    warnings: tuple[str, ...]

    def label(self, name: str) -> str:
        return self.labels.get(name, name)

    def in_user_words(self, message: str) -> str:
        """`message` with every setting name replaced by the name the user set it by."""
        renamed = {name: label for name, label in self.labels.items() if label != name}
        if not renamed:
            return message
        pattern = r"(?<![\w-])(" + "|".join(map(re.escape, renamed)) + r")(?!\w)"
        return re.sub(pattern, lambda match: renamed[match.group(1)], message)


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _check_together(settings: Settings, label: Callable[[str], str]) -> None:
    """Settings that only mean something together: half of them is one error naming the rest."""

    def given(name: str) -> bool:
        return getattr(settings, name) not in (None, "")

    token_auth = ["APNS_KEY_FILE", "APNS_KEY_ID", "APNS_TEAM_ID"]
    present = [name for name in token_auth if given(name)]
    if given("APNS_CERT_FILE") and present:
        raise SettingsError(
            f"{label('APNS_CERT_FILE')} and {_join([label(n) for n in present])}: APNs takes"
            " a certificate or a signing key, not both; keep one"
        )
    if present and len(present) < len(token_auth):
        missing = [name for name in token_auth if not given(name)]
        verb = "is" if len(present) == 1 else "are"
        raise SettingsError(
            f"{_join([label(n) for n in present])} {verb} set but {_join(missing)}"
            f" {'is' if len(missing) == 1 else 'are'} not: APNs token auth needs all three"
        )
    if (present or given("APNS_CERT_FILE")) and not given("APNS_TOPIC"):
        raise SettingsError(f"{label('APNS_TOPIC')}: is empty; APNs needs the app's bundle id")
    for name in ("FCM_PROJECT_ID", "FCM_ENDPOINT", "FCM_CA_FILE"):
        if given(name) and not given("FCM_SERVICE_ACCOUNT_FILE"):
            raise SettingsError(
                f"{label(name)} is set but FCM_SERVICE_ACCOUNT_FILE is not: FCM needs the"
                " service account key"
            )
    passwords = [name for name in ("STATS_PASSWORD", "STATS_PASSWORD_HASH") if given(name)]
    if len(passwords) == 2:
        raise SettingsError(
            f"{label('STATS_PASSWORD')} and {label('STATS_PASSWORD_HASH')}: set one, not both"
        )
    if given("STATS_USERNAME") and not passwords:
        raise SettingsError(
            f"{label('STATS_USERNAME')} is set but STATS_PASSWORD_HASH (or STATS_PASSWORD)"
            " is not: make a hash with python -m stats.hash_password"
        )
    if passwords and not given("STATS_USERNAME"):
        raise SettingsError(f"{label(passwords[0])} is set but STATS_USERNAME is not")


def read_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    cwd: Path | None = None,
    override_labels: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Merge defaults, the config file, PN_* variables and explicit overrides (in that order).

    `override_labels` names how an override was given (e.g. PORT -> --port) for messages.
    """
    environ = os.environ if environ is None else environ
    kinds = _field_types()
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    warnings: list[str] = []

    if config_file is None:
        candidate = (cwd or Path.cwd()) / "config.py"
        config_file = candidate if candidate.is_file() else None
    if config_file is not None:
        for name, given in read_config_file(config_file).items():
            raw = _resolve_auto(name, name, given)
            values[name] = _convert_python(name, kinds[name], raw)
            _check(name, name, values[name], repr(raw) if isinstance(raw, str) else str(raw))
            labels[name] = name

    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            if key in kinds and ENV_PREFIX + key not in environ:
                warnings.append(
                    f"{key} is set in the environment but ignored: pn-relay reads"
                    f" {ENV_PREFIX}{key} (or {key} in config.py)"
                )
            continue
        name = key[len(ENV_PREFIX) :]
        if name not in kinds:
            close = difflib.get_close_matches(name.upper(), list(kinds), n=1)
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
            raise SettingsError(f"{key}: unknown setting (see config.example.py){hint}")
        values[name] = _convert_env(key, kinds[name], str(_resolve_auto(key, name, raw)))
        _check(key, name, values[name], raw.strip())
        labels[name] = key

    for name, given in (overrides or {}).items():
        label = (override_labels or {}).get(name, name)
        if name not in kinds:
            raise SettingsError(f"{label}: unknown setting")
        raw = _resolve_auto(label, name, given)
        values[name] = _convert_python(label, kinds[name], raw)
        _check(label, name, values[name], str(raw))
        labels[name] = label

    settings = Settings(**values)
    _check_together(settings, lambda name: labels.get(name, name))
    return LoadedSettings(settings, labels, tuple(warnings))


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    cwd: Path | None = None,
) -> Settings:
    """The merged settings (see `read_settings`)."""
    return read_settings(config_file, environ, overrides, cwd=cwd).settings
