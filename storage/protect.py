"""Identifiers protected at rest.

Session IDs and group keys become HMAC-SHA256 digests under the identity secret; device
tokens are sealed with AES-GCM under the token secret, with an HMAC beside them so a token
stays unique. Both secrets live in files under DATA_DIR, never in the database: a dump of the
database alone shows neither who owns a token nor any token.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_TOKEN_AAD = b"pn-relay device token v1"
_NONCE_BYTES = 12


class SealedTokenError(Exception):
    """A sealed token does not open under this server's token secret."""


class IdentifierProtector:
    def __init__(self, identity_secret: bytes, token_secret: bytes) -> None:
        self._identity_secret = identity_secret
        self._token_hash_key = hmac.new(token_secret, b"token-hash", hashlib.sha256).digest()
        self._dedup_key = hmac.new(identity_secret, b"notify-dedup", hashlib.sha256).digest()
        self._aead = AESGCM(hmac.new(token_secret, b"token-seal", hashlib.sha256).digest())

    def identity(self, session_id_or_group_key: str) -> bytes:
        """The keyed hash stored in place of a Session ID or closed-group key."""
        return hmac.new(
            self._identity_secret, session_id_or_group_key.lower().encode(), hashlib.sha256
        ).digest()

    def token_hash(self, token: str) -> bytes:
        return hmac.new(self._token_hash_key, token.encode(), hashlib.sha256).digest()

    def dedup_key(self, send_to: str, data: str) -> bytes:
        message = send_to.lower().encode() + b"\x00" + data.encode()
        return hmac.new(self._dedup_key, message, hashlib.sha256).digest()

    def seal_token(self, token: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, token.encode(), _TOKEN_AAD)

    def open_token(self, sealed: bytes) -> str:
        try:
            return self._aead.decrypt(
                sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _TOKEN_AAD
            ).decode()
        except (InvalidTag, ValueError):
            raise SealedTokenError("sealed token does not open with this token key") from None
