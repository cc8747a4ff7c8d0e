"""Settings: defaults, config file, PN_* variables (which win), and one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from settings import Settings, SettingsError, load_settings, read_settings
from tests.support import settings_error

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.py"


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    assert (settings.HOST, settings.PORT) == ("127.0.0.1", 3000)
    assert Path("./data") == settings.DATA_DIR
    assert settings.database_url == "sqlite:///data/pn-relay.sqlite3"
    assert settings.key_file == Path("data/server_key.hex")
    assert settings.MAX_DATA_BYTES == 8192


def test_config_py_in_working_directory_then_environment(tmp_path: Path) -> None:
    (tmp_path / "config.py").write_text("PORT = 4000\nHOST = '0.0.0.0'\n")
    settings = load_settings(environ={"PN_PORT": "5000", "OTHER": "x"}, cwd=tmp_path)
    assert settings.PORT == 5000  # the environment wins
    assert settings.HOST == "0.0.0.0"


def test_explicit_config_file(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.py"
    config.write_text(f"DATA_DIR = {str(tmp_path / 'd')!r}\nDEDUP_WINDOW = 5\n")
    settings = load_settings(config, environ={}, cwd=tmp_path)
    assert tmp_path / "d" == settings.DATA_DIR
    assert settings.DEDUP_WINDOW == 5.0
    assert settings.token_key_file == tmp_path / "d" / "token_secret.hex"


@pytest.mark.parametrize(
    ("environ", "config", "message"),
    [
        ({"PN_PORT": "eighty"}, None, "PN_PORT: expected a whole number, got 'eighty'"),
        ({"PN_PORT": "70000"}, None, "PN_PORT: 70000 is outside 0..65535"),
        ({"PN_PORTT": "1"}, None, "PN_PORTT: unknown setting (see config.example.py)"),
        ({"PN_LOG_LEVEL": "LOUD"}, None, "PN_LOG_LEVEL: 'LOUD' is not one of"),
        ({"PN_DEDUP_WINDOW": "soon"}, None, "PN_DEDUP_WINDOW: expected a number of seconds"),
        ({}, "PORT = '80'\n", "PORT: expected a whole number, got a string, '80'"),
        ({}, "PORT = True\n", "PORT: expected a whole number, got True"),
        ({}, "SPEED = 1\n", "unknown setting SPEED"),
        ({}, "PORT = (\n", "syntax error on line 1"),
        ({}, "raise ValueError('boom')\n", "ValueError: boom"),
        ({}, "MAX_BODY_BYTES = 10\n", "MAX_BODY_BYTES: 10 is outside"),
    ],
)
def test_mistakes_are_one_line(
    tmp_path: Path, environ: dict[str, str], config: str | None, message: str
) -> None:
    assert message in settings_error(tmp_path, config, **environ)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "absent.py", environ={}, cwd=tmp_path)


def test_example_documents_every_setting_with_its_default(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    names = set(Settings.__dataclass_fields__)
    documented = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+) = ", text, re.MULTILINE))
    assert names == documented
    # Loading the example as it is gives exactly the defaults.
    assert load_settings(EXAMPLE, environ={}, cwd=tmp_path) == Settings()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("port = 3005\n", "port is not a setting; setting names are upper case: PORT"),
        ("Data_Dir = '/x'\n", "setting names are upper case: DATA_DIR"),
        ("DATA_DIRS = '/x'\n", "unknown setting DATA_DIRS (did you mean DATA_DIR?)"),
        ("BASE = '/srv'\n", "unknown setting BASE; names of your own must start with _"),
        ("apns_sandbox = True\n", "upper case: APNS_SANDBOX"),
    ],
)
def test_every_unknown_name_in_config_py_is_an_error(
    tmp_path: Path, config: str, message: str
) -> None:
    assert message in settings_error(tmp_path, config)


def test_config_py_may_hold_imports_helpers_and_private_names(tmp_path: Path) -> None:
    (tmp_path / "config.py").write_text(
        "import os\n"
        "import os.path\n"
        "from pathlib import Path\n"
        "from os import environ as _env, sep\n"
        "_BASE = Path('/srv/pn')\n"
        "def _under(name):\n"
        "    return str(_BASE / name)\n"
        "def helper():\n"
        "    return 1\n"
        "class Thing:\n"
        "    pass\n"
        "__all__ = ['PORT']\n"
        "DATA_DIR = _under('data')\n"
        "PORT = 4000 + helper()\n"
    )
    settings = load_settings(environ={}, cwd=tmp_path)
    assert (Path("/srv/pn/data"), 4001) == (settings.DATA_DIR, settings.PORT)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "PORT = '3005'\n",
            "PORT: expected a whole number, got a string, '3005'"
            " (write PORT = 3005, without quotes)",
        ),
        (
            'APNS_SANDBOX = "false"\n',
            "APNS_SANDBOX: expected True or False, got a string, 'false'"
            " (write APNS_SANDBOX = False, without quotes)",
        ),
        (
            "DEDUP_WINDOW = '2.5'\n",
            "DEDUP_WINDOW: expected a number of seconds, got a string, '2.5'"
            " (write DEDUP_WINDOW = 2.5, without quotes)",
        ),
        ("PORT = 'x'\n", "PORT: expected a whole number, got a string, 'x'"),
        ("APNS_SANDBOX = 1\n", "APNS_SANDBOX: expected True or False, got 1"),
        (
            "APNS_KEY_ID = 123\n",
            'APNS_KEY_ID: expected a string, got the number 123 (write APNS_KEY_ID = "123")',
        ),
        ("KEY_FILE = 5\n", "KEY_FILE: expected a file or directory path, got 5"),
        ("DATA_DIR = ''\n", "DATA_DIR: is empty; expected a file or directory path"),
    ],
)
def test_a_quoted_number_or_boolean_is_named_a_string(
    tmp_path: Path, config: str, message: str
) -> None:
    assert settings_error(tmp_path, config).endswith(message)


def test_the_environment_takes_text(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"PN_APNS_SANDBOX": "False", "PN_PORT": " 3005 ", "PN_DEDUP_WINDOW": "2.5"},
        cwd=tmp_path,
    )
    assert (settings.APNS_SANDBOX, settings.PORT, settings.DEDUP_WINDOW) == (False, 3005, 2.5)
    assert "PN_APNS_SANDBOX: expected true or false, got 'nope'" in settings_error(
        tmp_path, PN_APNS_SANDBOX="nope"
    )


def test_tilde_is_the_home_directory(tmp_path: Path) -> None:
    home = Path.home()
    (tmp_path / "config.py").write_text("DATA_DIR = '~/pn-data'\nKEY_FILE = '~/k.hex'\n")
    from_file = load_settings(environ={}, cwd=tmp_path)
    assert (home / "pn-data", home / "k.hex") == (from_file.DATA_DIR, from_file.KEY_FILE)
    assert from_file.database_url == f"sqlite:///{home / 'pn-data' / 'pn-relay.sqlite3'}"
    from_env = load_settings(
        environ={"PN_TOKEN_KEY_FILE": "~/t.hex", "PN_DATABASE_URL": "sqlite:///~/pn.db"},
        cwd=tmp_path,
    )
    assert home / "t.hex" == from_env.TOKEN_KEY_FILE
    assert from_env.database_url == f"sqlite:///{home / 'pn.db'}"


@pytest.mark.parametrize(
    ("environ", "config", "message"),
    [
        ({"PN_MAX_BODY_BYTES": "0"}, None, "PN_MAX_BODY_BYTES: 0 is outside 1024..67108864"),
        ({}, "MAX_BODY_BYTES = 0\n", "MAX_BODY_BYTES: 0 is outside 1024..67108864"),
        ({"PN_PUSH_RETRY_BASE": "0.001"}, None, "PN_PUSH_RETRY_BASE: 0.001 is outside 0.01..3600"),
        ({"PN_DEDUP_WINDOW": "1e9"}, None, "PN_DEDUP_WINDOW: 1e9 is outside 0..604800"),
    ],
)
def test_numbers_are_printed_as_written(
    tmp_path: Path, environ: dict[str, str], config: str | None, message: str
) -> None:
    assert settings_error(tmp_path, config, **environ) == message


def test_each_message_names_the_setting_as_the_user_set_it(tmp_path: Path) -> None:
    assert settings_error(tmp_path, "PORT = 70000\n") == "PORT: 70000 is outside 0..65535"
    assert settings_error(tmp_path, PN_PORT="70000") == "PN_PORT: 70000 is outside 0..65535"
    assert settings_error(tmp_path, PN_APNS_KEY_ID="K").startswith("PN_APNS_KEY_ID is set but")
    with pytest.raises(SettingsError, match=r"^--port: 70000 is outside"):
        read_settings(
            environ={}, overrides={"PORT": 70000}, override_labels={"PORT": "--port"}, cwd=tmp_path
        )
    loaded = read_settings(
        environ={"PN_APNS_KEY_FILE": "/k.p8", "PN_APNS_KEY_ID": "K", "PN_APNS_TEAM_ID": "T"},
        cwd=tmp_path,
    )
    # Later checks (files, the database) speak of settings by name: in the user's words too.
    assert loaded.in_user_words("APNS_KEY_FILE: /k.p8 is not a readable file") == (
        "PN_APNS_KEY_FILE: /k.p8 is not a readable file"
    )
    assert loaded.in_user_words("PN_APNS_KEY_FILE and APNS_KEY_FILES") == (
        "PN_APNS_KEY_FILE and APNS_KEY_FILES"
    )


@pytest.mark.parametrize(
    ("environ", "config", "message"),
    [
        (
            {"PN_APNS_KEY_ID": "ABC"},
            None,
            "PN_APNS_KEY_ID is set but APNS_KEY_FILE and APNS_TEAM_ID are not:"
            " APNs token auth needs all three",
        ),
        (
            {},
            "APNS_KEY_FILE = '/k.p8'\n",
            "APNS_KEY_FILE is set but APNS_KEY_ID and APNS_TEAM_ID are not:"
            " APNs token auth needs all three",
        ),
        (
            {"PN_APNS_TEAM_ID": "T"},
            "APNS_KEY_FILE = '/k.p8'\n",
            "APNS_KEY_FILE and PN_APNS_TEAM_ID are set but APNS_KEY_ID is not:"
            " APNs token auth needs all three",
        ),
        (
            {},
            "APNS_KEY_FILE = '/k.p8'\nAPNS_KEY_ID = 'K'\nAPNS_TEAM_ID = 'T'\nAPNS_TOPIC = ''\n",
            "APNS_TOPIC: is empty; APNs needs the app's bundle id",
        ),
        (
            {"PN_APNS_CERT_FILE": "/c.pem", "PN_APNS_KEY_ID": "K"},
            None,
            "PN_APNS_CERT_FILE and PN_APNS_KEY_ID: APNs takes a certificate or a signing key,"
            " not both; keep one",
        ),
        (
            {"PN_FCM_PROJECT_ID": "p"},
            None,
            "PN_FCM_PROJECT_ID is set but FCM_SERVICE_ACCOUNT_FILE is not",
        ),
        (
            {},
            "FCM_CA_FILE = '/ca.pem'\n",
            "FCM_CA_FILE is set but FCM_SERVICE_ACCOUNT_FILE is not",
        ),
        (
            {},
            "STATS_USERNAME = 'ops'\n",
            "STATS_USERNAME is set but STATS_PASSWORD_HASH (or STATS_PASSWORD) is not",
        ),
        ({"PN_STATS_PASSWORD": "x"}, None, "PN_STATS_PASSWORD is set but STATS_USERNAME is not"),
        (
            {"PN_STATS_PASSWORD": "x"},
            "STATS_USERNAME = 'ops'\nSTATS_PASSWORD_HASH = 'pbkdf2_sha256$1$a$b'\n",
            "PN_STATS_PASSWORD and STATS_PASSWORD_HASH: set one, not both",
        ),
    ],
)
def test_half_given_credentials_are_one_error_naming_what_is_missing(
    tmp_path: Path, environ: dict[str, str], config: str | None, message: str
) -> None:
    assert message in settings_error(tmp_path, config, **environ)


def test_whole_credentials_pass(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "PN_APNS_KEY_FILE": "/k.p8",
            "PN_APNS_KEY_ID": "K",
            "PN_APNS_TEAM_ID": "T",
            "PN_STATS_USERNAME": "ops",
            "PN_STATS_PASSWORD": "pw",
        },
        cwd=tmp_path,
    )
    assert settings.APNS_TEAM_ID == "T"
    assert load_settings(environ={"PN_APNS_CERT_FILE": "/c.pem"}, cwd=tmp_path).APNS_CERT_FILE


def test_an_unprefixed_variable_is_ignored_with_a_warning_saying_how(tmp_path: Path) -> None:
    loaded = read_settings(environ={"STATS_USERNAME": "ops", "PATH": "/bin"}, cwd=tmp_path)
    assert loaded.settings.STATS_USERNAME == ""
    assert loaded.warnings == (
        "STATS_USERNAME is set in the environment but ignored: pn-relay reads"
        " PN_STATS_USERNAME (or STATS_USERNAME in config.py)",
    )
    both = read_settings(environ={"PORT": "1", "PN_PORT": "2"}, cwd=tmp_path)
    assert both.warnings == ()


def test_an_unknown_variable_suggests_the_setting(tmp_path: Path) -> None:
    assert settings_error(tmp_path, PN_DATADIR="/x") == (
        "PN_DATADIR: unknown setting (see config.example.py); did you mean PN_DATA_DIR?"
    )


def test_log_format_and_access_log(tmp_path: Path) -> None:
    settings = load_settings(environ={"PN_LOG_FORMAT": "json", "PN_ACCESS_LOG": "on"}, cwd=tmp_path)
    assert (settings.LOG_FORMAT, settings.ACCESS_LOG) == ("json", True)
    assert "PN_LOG_FORMAT: 'xml' is not one of text, json" in settings_error(
        tmp_path, PN_LOG_FORMAT="xml"
    )
