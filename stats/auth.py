"""HTTP Basic authentication for the statistics (and metrics) endpoints.

There is no default password: without a username and a password (or password hash) the
endpoints answer 401 to everyone.

`requires_auth(auth, answer)` puts a Flask view behind it (the statistics endpoint, /stats,
/metrics): a refusal is answered before the view runs, in the view's own form of answer.

Stored hash format (stdlib only, the same shape as Django's)::

    pbkdf2_sha256$<iterations>$<salt, base64>$<PBKDF2-HMAC-SHA256 of the password, base64>

`python -m stats.hash_password` prompts for a password and prints such a line.

Why not werkzeug.security (installed with Flask): its lines
(`pbkdf2:sha256:<iterations>$<salt>$<hex>`) keep the salt as text and hash its UTF-8 bytes,
while ours are 16 random bytes, which are rarely valid UTF-8; so no line already in an
operator's configuration could be rewritten in its format, and verifying ours needs
`hashlib.pbkdf2_hmac` anyway. What werkzeug would add is that function and
`hmac.compare_digest`, both used here directly.

Checking costs the same whatever part of the credentials is wrong: the username and the
password are always both compared (digests, in constant time) and a wrong username still pays
the PBKDF2. A 600,000-iteration PBKDF2 costs a fraction of a second of CPU, so:

- it runs on this object's own small thread pool (`threads`), never more than `max_pending`
  checks running or waiting at once; beyond that the answer is "throttled" (HTTP 429) at once;
- failed checks spend a budget of `failures_per_minute` (refilled continuously, bursts up to
  the same number); once it is spent, further attempts are throttled without any hashing,
  the right password included (else a guess could still get through): only the remembered
  credentials below are still accepted;
- the last credentials that verified are remembered (a keyed digest of the username and the
  password together, never in clear) and consulted only when the username matched, so a
  dashboard polling with them pays the PBKDF2 once, and a right password with a wrong
  username costs the full check like any other wrong attempt.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from flask import Response, request

from errors import ConfigurationError
from web.answers import HttpAnswer, to_flask

ALGORITHM = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000
MIN_ITERATIONS = 1_000
DEFAULT_THREADS = 2
DEFAULT_MAX_PENDING = 8
DEFAULT_FAILURES_PER_MINUTE = 30
REALM = "pn-relay statistics"
WWW_AUTHENTICATE = f'Basic realm="{REALM}"'
THROTTLED_MESSAGE = "too many failed attempts or password checks at once; try again later"

T = TypeVar("T")
Answer = Callable[[int, str, Sequence[tuple[str, str]]], T]  # (status, message, headers)


class PasswordHashError(ConfigurationError, ValueError):
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


class Verdict(enum.Enum):
    OK = "ok"
    DENIED = "denied"  # HTTP 401
    THROTTLED = "throttled"  # HTTP 429: too many failures, or too many checks at once


class FailureBudget:
    """A token bucket: `per_minute` failures a minute, in bursts of up to `per_minute`."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self._capacity = float(max(1, per_minute))
        self._rate = self._capacity / 60.0
        self._clock = clock
        self._tokens = self._capacity
        self._at = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now

    def take(self) -> bool:
        with self._lock:
            self._refill()
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def give_back(self) -> None:
        with self._lock:
            self._tokens = min(self._capacity, self._tokens + 1.0)

    def seconds_until_next(self) -> int:
        with self._lock:
            self._refill()
            missing = max(0.0, 1.0 - self._tokens)
        return max(1, math.ceil(missing / self._rate))


def _length_prefixed(*parts: str) -> bytes:
    return b"".join(len(raw).to_bytes(4, "big") + raw for raw in (p.encode() for p in parts))


class StatsAuth:
    """Checks Basic credentials against one configured username and password (or hash).

    Configured only when a non-empty `username` and exactly one of `password` /
    `password_hash` are given; otherwise every check fails. Both set, or a malformed hash,
    is a configuration error raised here (at start-up). `close()` stops the hashing threads.
    """

    def __init__(
        self,
        username: str | None,
        password: str | None = None,
        password_hash: str | None = None,
        *,
        threads: int = DEFAULT_THREADS,
        max_pending: int = DEFAULT_MAX_PENDING,
        failures_per_minute: int = DEFAULT_FAILURES_PER_MINUTE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if password and password_hash:
            raise ValueError("set STATS_PASSWORD or STATS_PASSWORD_HASH, not both")
        self._username = _sha256((username or "").encode())
        self._password = _sha256(password.encode()) if password else None
        self._hash = parse_password_hash(password_hash) if password_hash else None
        self.configured = bool(username) and (self._password is not None or self._hash is not None)
        # The PBKDF2 threads: created now, started by the first hashed check.
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="stats-auth")
        self._max_pending = max(1, max_pending)
        self._pending = 0
        self._failures = FailureBudget(failures_per_minute, clock)
        self._lock = threading.Lock()
        self.kdf_runs = 0  # PBKDF2 computations so far (the tests count them)
        # The last credentials that verified, as a keyed digest of username and password.
        self._memo_key = secrets.token_bytes(32)
        self._memo: bytes | None = None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    # -- checks ------------------------------------------------------------------------------

    def verify_header(self, authorization: str | None) -> Verdict:
        """The verdict on an `Authorization` header (no header: DENIED, without any work)."""
        credentials = parse_basic_authorization(authorization)
        if credentials is None:
            return Verdict.DENIED
        return self.verify(*credentials)

    def refusal(self, authorization: str | None, answer: Answer[T]) -> T | None:
        """None when an `Authorization` header carries the credentials; else the refusal, as
        `answer(status, message, headers)` builds it (429 with Retry-After, 401 with
        WWW-Authenticate): one gate for the statistics endpoint, /stats and /metrics."""
        verdict = self.verify_header(authorization)
        if verdict is Verdict.THROTTLED:
            return answer(429, THROTTLED_MESSAGE, [("Retry-After", str(self.retry_after()))])
        if verdict is not Verdict.OK:
            return answer(401, "authentication required", [("WWW-Authenticate", WWW_AUTHENTICATE)])
        return None

    def check_header(self, authorization: str | None) -> bool:
        """True if an `Authorization` header carries the configured credentials."""
        return self.verify_header(authorization) is Verdict.OK

    def check(self, username: str, password: str) -> bool:
        return self.verify(username, password) is Verdict.OK

    def retry_after(self) -> int:
        """Seconds a throttled client should wait (for the Retry-After header)."""
        return self._failures.seconds_until_next()

    def verify(self, username: str, password: str) -> Verdict:
        if not self.configured:
            return Verdict.DENIED
        # Digests compared in constant time: neither lengths nor common prefixes show.
        username_ok = hmac.compare_digest(_sha256(username.encode()), self._username)
        memo = hmac.new(self._memo_key, _length_prefixed(username, password), "sha256").digest()
        with self._lock:
            remembered = self._memo
        memo_hit = hmac.compare_digest(memo, remembered or bytes(len(memo)))
        if username_ok and memo_hit and remembered is not None:
            return Verdict.OK
        if not self._failures.take():
            return Verdict.THROTTLED
        password_ok = self._password_matches(password)
        if password_ok is None:
            self._failures.give_back()  # nothing was tried
            return Verdict.THROTTLED
        if password_ok and username_ok:
            self._failures.give_back()  # only failures spend the budget
            with self._lock:
                self._memo = memo
            return Verdict.OK
        return Verdict.DENIED

    def _password_matches(self, password: str) -> bool | None:
        """The password check, the same work for every password; None: too many at once."""
        if self._password is not None:
            return hmac.compare_digest(_sha256(password.encode()), self._password)
        with self._lock:
            if self._pending >= self._max_pending:
                return None
            self._pending += 1
        try:
            return self.pool.submit(self._pbkdf2_matches, password).result()
        except RuntimeError:  # the pool is shut down: the relay is stopping
            return False
        finally:
            with self._lock:
                self._pending -= 1

    def _pbkdf2_matches(self, password: str) -> bool:
        assert self._hash is not None
        iterations, salt, expected = self._hash
        derived = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        with self._lock:
            self.kdf_runs += 1
        return hmac.compare_digest(derived, expected)

    @property
    def pending(self) -> int:
        """Hashed checks running or waiting for a thread of `pool`."""
        with self._lock:
            return self._pending


def requires_auth(
    auth: StatsAuth, answer: Answer[HttpAnswer]
) -> Callable[[Callable[[], Response]], Callable[[], Response]]:
    """A Flask view behind `auth`: refused (see `StatsAuth.refusal`) before it runs."""

    def decorate(view: Callable[[], Response]) -> Callable[[], Response]:
        @functools.wraps(view)
        def guarded() -> Response:
            refused = auth.refusal(request.headers.get("Authorization"), answer)
            return view() if refused is None else to_flask(refused)

        return guarded

    return decorate
