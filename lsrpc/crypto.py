"""Hop encryption of onion requests: AES-GCM and XChaCha20-Poly1305 (PROTOCOL.md section 2).

Pure functions over bytes. `cryptography` does X25519, HMAC and AES-GCM; PyNaCl only
XChaCha20-Poly1305, which `cryptography` lacks.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os

import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class EncType(enum.Enum):
    AES_GCM = "aes-gcm"
    XCHACHA20 = "xchacha20"


ENC_TYPE_NAMES: dict[str | None, EncType] = {
    None: EncType.AES_GCM,
    "aes-gcm": EncType.AES_GCM,
    "gcm": EncType.AES_GCM,
    "xchacha20": EncType.XCHACHA20,
    "xchacha20-poly1305": EncType.XCHACHA20,
}

GCM_IV_BYTES = 12
XCHACHA_NONCE_BYTES = 24
TAG_BYTES = 16


class DecryptionError(Exception):
    """The ciphertext is too short or its tag does not verify."""


def derive_key(
    enc_type: EncType, shared_secret: bytes, ephemeral_public: bytes, server_public: bytes
) -> bytes:
    """The symmetric hop key from the X25519 shared secret."""
    if enc_type is EncType.AES_GCM:
        # The string LOKI is the HMAC *key*, the shared secret the message.
        return hmac.new(b"LOKI", shared_secret, hashlib.sha256).digest()
    return hashlib.blake2b(
        shared_secret + ephemeral_public + server_public, digest_size=32
    ).digest()


def decrypt(enc_type: EncType, key: bytes, ciphertext: bytes) -> bytes:
    if enc_type is EncType.AES_GCM:
        if len(ciphertext) < GCM_IV_BYTES + TAG_BYTES:
            raise DecryptionError("ciphertext too short")
        try:
            return AESGCM(key).decrypt(ciphertext[:GCM_IV_BYTES], ciphertext[GCM_IV_BYTES:], None)
        except InvalidTag:
            raise DecryptionError("authentication failed") from None
    if len(ciphertext) < XCHACHA_NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("ciphertext too short")
    try:
        plaintext: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext[XCHACHA_NONCE_BYTES:], None, ciphertext[:XCHACHA_NONCE_BYTES], key
        )
    except nacl.exceptions.CryptoError:
        raise DecryptionError("authentication failed") from None
    return plaintext


def encrypt(enc_type: EncType, key: bytes, plaintext: bytes) -> bytes:
    """Encrypt with a fresh random IV/nonce, laid out as `nonce ‖ ct ‖ tag`."""
    if enc_type is EncType.AES_GCM:
        iv = os.urandom(GCM_IV_BYTES)
        return iv + AESGCM(key).encrypt(iv, plaintext, None)
    nonce = os.urandom(XCHACHA_NONCE_BYTES)
    sealed: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, None, nonce, key
    )
    return nonce + sealed
