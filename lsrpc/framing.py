"""The outer frame every onion request shares (v2 and v4), and opening its hop encryption.

| 4 bytes: N, unsigned, little-endian | N bytes: ciphertext | UTF-8 JSON trailer |
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from errors import ClientError
from lsrpc.crypto import ENC_TYPE_NAMES, DecryptionError, EncType, decrypt, derive_key, encrypt
from lsrpc.json_object import load_object
from lsrpc.keys import ServerKeypair

MAX_TRAILER_BYTES = 4096


class FramingError(ClientError):
    """The body cannot be opened: plain HTTP 400 with this short reason."""


@dataclass(frozen=True)
class OuterFrame:
    ciphertext: bytes
    ephemeral_key: bytes
    enc_type: EncType


@dataclass(frozen=True)
class OpenedRequest:
    """A decrypted request and what it takes to answer it in kind."""

    plaintext: bytes
    enc_type: EncType
    key: bytes

    def seal(self, reply_plaintext: bytes) -> bytes:
        return encrypt(self.enc_type, self.key, reply_plaintext)


def parse_outer(body: bytes) -> OuterFrame:
    if len(body) < 4:
        raise FramingError("body too short for the length prefix")
    (length,) = struct.unpack_from("<I", body, 0)
    end = 4 + length
    if end > len(body):
        raise FramingError("ciphertext length exceeds the body")
    trailer_raw = body[end:]
    if not trailer_raw:
        raise FramingError("missing JSON trailer")
    if len(trailer_raw) > MAX_TRAILER_BYTES:
        raise FramingError("JSON trailer too long")
    trailer = load_object(
        trailer_raw,
        FramingError,
        not_json="JSON trailer is not valid JSON",
        not_object="JSON trailer is not an object",
    )
    ephemeral_hex = trailer.get("ephemeral_key")
    if not isinstance(ephemeral_hex, str):
        raise FramingError("missing ephemeral_key")
    if len(ephemeral_hex) != 64:
        raise FramingError("ephemeral_key must be 64 hex characters")
    try:
        ephemeral_key = bytes.fromhex(ephemeral_hex)
    except ValueError:
        raise FramingError("ephemeral_key is not hex") from None
    enc_name = trailer.get("enc_type")
    enc_type = (
        ENC_TYPE_NAMES.get(enc_name) if enc_name is None or isinstance(enc_name, str) else None
    )
    if enc_type is None:
        raise FramingError("unsupported enc_type")
    return OuterFrame(ciphertext=body[4:end], ephemeral_key=ephemeral_key, enc_type=enc_type)


def open_request(body: bytes, keypair: ServerKeypair) -> OpenedRequest:
    """Parse the frame and decrypt it with the server key, or raise FramingError."""
    frame = parse_outer(body)
    try:
        shared = keypair.exchange(frame.ephemeral_key)
    except ValueError:  # an all-zero (low-order) point
        raise FramingError("invalid ephemeral_key") from None
    key = derive_key(frame.enc_type, shared, frame.ephemeral_key, keypair.public_bytes)
    try:
        plaintext = decrypt(frame.enc_type, key, frame.ciphertext)
    except DecryptionError as exc:
        raise FramingError(f"cannot decrypt: {exc}") from None
    return OpenedRequest(plaintext=plaintext, enc_type=frame.enc_type, key=key)


def build_outer(ciphertext: bytes, ephemeral_public: bytes, enc_type_name: str | None) -> bytes:
    """The client side of the frame (tests, benchmarks, the CLI)."""
    trailer: dict[str, str] = {"ephemeral_key": ephemeral_public.hex()}
    if enc_type_name is not None:
        trailer["enc_type"] = enc_type_name
    return struct.pack("<I", len(ciphertext)) + ciphertext + json.dumps(trailer).encode()
