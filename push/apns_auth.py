"""APNs token authentication: the provider JWT (ES256), signed with `cryptography` directly.

Apple wants a JWT with header `{"alg": "ES256", "kid": <key id>}` and claims `{"iss": <team
id>, "iat": <seconds>}`, signed with the team's .p8 key; it refuses a token older than an hour
and one refreshed more often than every 20 minutes (TooManyProviderTokenUpdates). So one token
per team serves every connection and is signed again every 30 minutes, counted on the
monotonic clock (a step of the wall clock neither keeps a stale token nor signs a flood);
`iat` is the wall clock's, which Apple compares with its own.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

JWT_REFRESH_SECONDS = 30 * 60  # Apple: not more often than every 20 minutes, before 60


def load_signing_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """The APNs signing key from a .p8 file's text; ValueError if it is not one."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not a PEM private key without a password") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an EC P-256 private key")
    return key


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _json(value: dict[str, str | int]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def provider_jwt(key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, issued_at: int) -> str:
    """The JWT (RFC 7519, JWS compact form, ES256: the signature as r || s, 32 bytes each)."""
    signing_input = (
        _b64(_json({"alg": "ES256", "kid": key_id}))
        + b"."
        + _b64(_json({"iss": team_id, "iat": issued_at}))
    )
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return (signing_input + b"." + _b64(signature)).decode("ascii")


JWT_MIN_RENEW_SECONDS = 60.0


@dataclass(eq=False)
class ProviderTokens:
    """The `authorization` header value for one team, signed again every `refresh_s`."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    key_id: str
    team_id: str
    _: KW_ONLY
    refresh_s: float = JWT_REFRESH_SECONDS
    wall_clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    signed: int = field(default=0, init=False)  # how many tokens were signed
    _header: bytes | None = field(default=None, init=False, repr=False)
    _signed_at: float = field(default=0.0, init=False, repr=False)  # monotonic
    # monotonic: the last renewal APNs asked for
    _renewed_at: float | None = field(default=None, init=False, repr=False)

    def renew(self, rejected: bytes | None) -> bool:
        """APNs called `rejected` expired (ExpiredProviderToken): sign a new one next time, if
        `rejected` is still the current token and none was renewed in the last
        JWT_MIN_RENEW_SECONDS (with a wrong host clock every new token is "expired" too, and
        renewing at each answer would earn TooManyProviderTokenUpdates). True if renewed."""
        now = self.monotonic()
        if rejected is None or rejected is not self._header:
            return False
        if self._renewed_at is not None and now - self._renewed_at < JWT_MIN_RENEW_SECONDS:
            return False
        self._renewed_at = now
        self._header = None
        return True

    def header(self) -> bytes:
        """`bearer <jwt>`: the same bytes object until the next signing."""
        now = self.monotonic()
        if self._header is None or now - self._signed_at >= self.refresh_s:
            token = provider_jwt(self.key, self.key_id, self.team_id, int(self.wall_clock()))
            self._header = b"bearer " + token.encode("ascii")
            self._signed_at = now
            self.signed += 1
        return self._header
