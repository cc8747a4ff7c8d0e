"""Key files: 64 hex characters (a trailing newline allowed), and the server's X25519 key.

The format is the 2021 push server's: the private key, hex encoded. Clients pin the *public*
key, so the operator must keep this file; losing it means shipping new client builds. The two
secrets protecting identifiers at rest use the same format. When a missing key file may be
created is decided in `startup.keyfiles`, never here.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from errors import ConfigurationError, unreadable
from lsrpc.x25519 import Exchange, exchange_with


class KeyFileError(ConfigurationError):
    """The key file exists but cannot be used; the message says why and where."""


@dataclass(frozen=True)
class ServerKeypair:
    private: X25519PrivateKey
    public_bytes: bytes
    # The X25519 exchange with this private key (lsrpc/x25519.py).
    _exchange: Exchange = field(repr=False, compare=False)

    @property
    def public_hex(self) -> str:
        return self.public_bytes.hex()

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> ServerKeypair:
        private = X25519PrivateKey.from_private_bytes(raw)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private=private, public_bytes=public, _exchange=exchange_with(raw))

    def exchange(self, peer_public: bytes) -> bytes:
        """The shared secret with `peer_public`; ValueError for a key that is not 32 bytes or
        a low-order point."""
        return self._exchange(peer_public)


def parse_key_text(text: str, *, where: str) -> bytes:
    """Return the 32 raw bytes of a 64-hex-character key text, or raise KeyFileError."""
    stripped = text.strip()
    if len(stripped) != 64:
        raise KeyFileError(f"{where}: expected 64 hex characters, found {len(stripped)} characters")
    try:
        return bytes.fromhex(stripped)
    except ValueError:
        raise KeyFileError(f"{where}: not hexadecimal") from None


def write_secret_file(path: Path, content: str) -> None:
    """Create `path` with mode 0600 atomically; never overwrite an existing file.

    Raises FileExistsError if it exists, OSError if it cannot be written. The caller creates
    the directory (and knows whether it did, to remove it again if the start fails).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        path.unlink(missing_ok=True)
        raise


def read_key_file(path: Path, *, what: str) -> bytes | None:
    """The 32 bytes of a hex key file, None if there is no such file, else KeyFileError."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise KeyFileError(f"{what} {path}: not a text file of hex characters") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: {unreadable(exc, 'a key file')}") from None
    return parse_key_text(text, where=f"{what} {path}")


def new_secret() -> bytes:
    """32 random bytes: an X25519 private key or an HMAC/AEAD secret."""
    return os.urandom(32)


def fingerprint(secret: bytes, purpose: str) -> str:
    """A keyed digest that tells secrets apart and reveals nothing of them (hex, 64 chars)."""
    label = b"pn-relay key fingerprint\x00" + purpose.encode()
    return hmac.new(secret, label, "sha256").hexdigest()
