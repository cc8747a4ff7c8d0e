"""Settings: defaults, config file, PN_* variables (which win), and one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from settings import Settings, SettingsError, load_settings

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.py"


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    assert (settings.HOST, settings.PORT) == ("127.0.0.1", 3000)
    assert Path("./data") == settings.DATA_DIR
    assert settings.database_url == "sqlite:///data/pn-relay.sqlite3"
    assert settings.key_file == Path("data/server_key.hex")
    assert settings.MAX_DATA_BYTES == 8192


def test_config_py_in_working_directory_then_environment(tmp_path: Path) -> None:
    (tmp_path / "config.py").write_text("PORT = 4000\nHOST = '0.0.0.0'\nlowercase_ignored = 1\n")
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
        ({}, "PORT = '80'\n", "PORT: expected a whole number, got '80'"),
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
    config_file = None
    if config is not None:
        config_file = tmp_path / "bad.py"
        config_file.write_text(config)
    with pytest.raises(SettingsError) as caught:
        load_settings(config_file, environ=environ, cwd=tmp_path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


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
