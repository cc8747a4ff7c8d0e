"""StatsAuth, the password-hash format and `python -m stats.hash_password`."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable

import pytest

from stats import hash_password as cli
from stats.auth import (
    DEFAULT_ITERATIONS,
    PasswordHashError,
    StatsAuth,
    hash_password,
    parse_basic_authorization,
    parse_password_hash,
)


def header(user: str, password: str, scheme: str = "Basic") -> str:
    return f"{scheme} " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_hash_format_is_pbkdf2_sha256_with_iterations_salt_and_hash() -> None:
    line = hash_password("s3cret", iterations=1000, salt=b"0123456789abcdef")
    algorithm, iterations, salt, digest = line.split("$")
    assert (algorithm, iterations) == ("pbkdf2_sha256", "1000")
    assert base64.b64decode(salt) == b"0123456789abcdef"
    assert len(base64.b64decode(digest)) == 32
    assert parse_password_hash(line)[0] == 1000
    assert hash_password("s3cret", iterations=1000) != hash_password("s3cret", iterations=1000)
    assert hash_password("x").split("$")[1] == str(DEFAULT_ITERATIONS)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "s3cret",
        "sha256$1000$c2FsdA==$" + base64.b64encode(bytes(32)).decode(),
        "pbkdf2_sha256$many$c2FsdA==$" + base64.b64encode(bytes(32)).decode(),
        "pbkdf2_sha256$1000$not base64!$" + base64.b64encode(bytes(32)).decode(),
        "pbkdf2_sha256$1000$c2FsdA==$" + base64.b64encode(bytes(16)).decode(),
        "pbkdf2_sha256$10$c2FsdA==$" + base64.b64encode(bytes(32)).decode(),
        "pbkdf2_sha256$1000$$" + base64.b64encode(bytes(32)).decode(),
    ],
)
def test_a_malformed_hash_is_refused_at_start_up(line: str) -> None:
    with pytest.raises(PasswordHashError, match="STATS_PASSWORD_HASH"):
        StatsAuth("user", password_hash=line or "x")


def test_password_and_hash_together_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="not both"):
        StatsAuth("user", "pw", hash_password("pw", iterations=1000))


def test_plain_and_hashed_passwords() -> None:
    for auth in (
        StatsAuth("user", "pw"),
        StatsAuth("user", password_hash=hash_password("pw", iterations=1000)),
    ):
        assert auth.configured
        assert auth.check("user", "pw")
        assert auth.check("user", "pw")  # hashed: now from the remembered digest
        assert not auth.check("user", "pw2")
        assert not auth.check("user", "p")
        assert not auth.check("User", "pw")
        assert not auth.check("", "")
        assert auth.check_header(header("user", "pw"))
        assert auth.check_header(header("user", "pw", scheme="BASIC"))
        assert not auth.check_header(header("user", "pw", scheme="Digest"))
        assert not auth.check_header(None)
        assert not auth.check_header("")


def test_passwords_with_colons_and_non_ascii() -> None:
    auth = StatsAuth("ünïcode", "a:b:c ✓")
    assert auth.check_header(header("ünïcode", "a:b:c ✓"))
    assert not auth.check_header(header("ünïcode", "a:b"))


@pytest.mark.parametrize(
    "value",
    [None, "", "Basic", "Basic ", "Basic ???", "Basic dXNlcg==", "Token dXNlcjpwdw=="],
)
def test_unusable_authorization_headers(value: str | None) -> None:
    assert parse_basic_authorization(value) is None


def test_no_default_password_anywhere() -> None:
    for auth in (StatsAuth(None), StatsAuth(""), StatsAuth("admin"), StatsAuth(None, "pw")):
        assert not auth.configured
        for user, password in (("", ""), ("admin", "admin"), ("admin", ""), ("", "pw")):
            assert not auth.check(user, password)


def prompter(replies: list[str]) -> Callable[[str], str]:
    def prompt(_: str) -> str:
        return replies.pop(0)

    return prompt


def test_hash_password_cli_prints_a_usable_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--iterations", "1000"], prompt=prompter(["pw", "pw"])) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("pbkdf2_sha256$1000$")
    assert StatsAuth("user", password_hash=line).check("user", "pw")


@pytest.mark.parametrize(
    ("argv", "replies", "message"),
    [
        (["--iterations", "1000"], ["pw", "wp"], "differ"),
        (["--iterations", "1000"], ["", ""], "empty"),
        (["--iterations", "10"], ["pw", "pw"], "at least"),
    ],
)
def test_hash_password_cli_refuses(
    capsys: pytest.CaptureFixture[str], argv: list[str], replies: list[str], message: str
) -> None:
    assert cli.main(argv, prompt=prompter(replies)) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_hash_password_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stats.hash_password", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert "STATS_PASSWORD_HASH" in done.stdout
