"""HTTP Basic authentication for the statistics (and metrics) endpoints.

There is no default password: without a username and a password (or password hash) the
endpoints answer 401 to everyone.

Stored hash format (stdlib only, the same shape as Django's)::

    pbkdf2_sha256$<iterations>$<salt, base64>$<PBKDF2-HMAC-SHA256 of the password, base64>

`python -m stats.hash_password` prompts for a password and prints such a line. Checking a
600,000-iteration hash costs a fraction of a second of CPU, so the last credentials that
verified are remembered (as a keyed digest, never in clear) and a dashboard polling with them
pays that once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading

ALGORITHM = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000
MIN_ITERATIONS = 1_000
REALM = "pn-relay statistics"
WWW_AUTHENTICATE = f'Basic realm="{REALM}"'


class PasswordHashError(ValueError):
    """STATS_PASSWORD_HASH is not a `pbkdf2_sha256$...` line; the message says what is wrong."""


def hash_password(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> str:
    """The `pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>` line for `password`."""
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"iterations must be at least {MIN_ITERATIONS}")
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join(
        (
            ALGORITHM,
            str(iterations),
            base64.b64encode(salt).decode(),
            base64.b64encode(digest).decode(),
        )
    )


def parse_password_hash(line: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, digest) of a hash line, or PasswordHashError."""
    parts = line.strip().split("$")
    if len(parts) != 4 or parts[0] != ALGORITHM:
        raise PasswordHashError(
            f"STATS_PASSWORD_HASH: expected {ALGORITHM}$<iterations>$<salt>$<hash>"
            " (make one with: python -m stats.hash_password)"
        )
    try:
        iterations = int(parts[1])
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except (ValueError, binascii.Error):
        raise PasswordHashError(
            "STATS_PASSWORD_HASH: iterations must be a number, salt and hash base64"
        ) from None
    if iterations < MIN_ITERATIONS or not salt or len(digest) != 32:
        raise PasswordHashError(
            f"STATS_PASSWORD_HASH: needs at least {MIN_ITERATIONS} iterations, a salt and a"
            " 32-byte hash"
        )
    return iterations, salt, digest


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def parse_basic_authorization(header: str | None) -> tuple[str, str] | None:
    """(username, password) from an `Authorization: Basic ...` header, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        text = decoded.decode("latin-1")
    username, colon, password = text.partition(":")
    if not colon:
        return None
    return username, password


class StatsAuth:
    """Checks Basic credentials against one configured username and password (or hash).

    Configured only when a non-empty `username` and exactly one of `password` /
    `password_hash` are given; otherwise every check fails. Both set, or a malformed hash,
    is a configuration error raised here (at start-up).
    """

    def __init__(
        self,
        username: str | None,
        password: str | None = None,
        password_hash: str | None = None,
    ) -> None:
        if password and password_hash:
            raise ValueError("set STATS_PASSWORD or STATS_PASSWORD_HASH, not both")
        self._username = _sha256((username or "").encode())
        self._password = _sha256(password.encode()) if password else None
        self._hash = parse_password_hash(password_hash) if password_hash else None
        self.configured = bool(username) and (self._password is not None or self._hash is not None)
        # Remembers the last credentials that verified against the (slow) hash.
        self._memo_key = secrets.token_bytes(32)
        self._memo: bytes | None = None
        self._memo_lock = threading.Lock()

    def check_header(self, authorization: str | None) -> bool:
        """True if an `Authorization` header carries the configured credentials."""
        credentials = parse_basic_authorization(authorization)
        if credentials is None:
            return False
        return self.check(*credentials)

    def check(self, username: str, password: str) -> bool:
        if not self.configured:
            return False
        # Compare digests, so neither the lengths nor a common prefix show in the timing;
        # the username and the password are both always checked.
        username_ok = hmac.compare_digest(_sha256(username.encode()), self._username)
        return self._check_password(password) & username_ok

    def _check_password(self, password: str) -> bool:
        if self._password is not None:
            return hmac.compare_digest(_sha256(password.encode()), self._password)
        assert self._hash is not None
        memo = hmac.new(self._memo_key, password.encode(), "sha256").digest()
        with self._memo_lock:
            remembered = self._memo
        if remembered is not None and hmac.compare_digest(memo, remembered):
            return True
        iterations, salt, expected = self._hash
        ok = hmac.compare_digest(
            hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations), expected
        )
        if ok:
            with self._memo_lock:
                self._memo = memo
        return ok
