"""The server's long-term X25519 key: a file of 64 hex characters (a trailing newline allowed).

The format is the 2021 push server's: the private key, hex encoded. Clients pin the *public*
key, so the operator must keep this file; losing it means shipping new client builds.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from errors import ConfigurationError

log = logging.getLogger(__name__)


class KeyFileError(ConfigurationError):
    """The key file exists but cannot be used; the message says why and where."""


@dataclass(frozen=True)
class ServerKeypair:
    private: X25519PrivateKey
    public_bytes: bytes

    @property
    def public_hex(self) -> str:
        return self.public_bytes.hex()

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> ServerKeypair:
        private = X25519PrivateKey.from_private_bytes(raw)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private=private, public_bytes=public)

    def exchange(self, peer_public: bytes) -> bytes:
        return self.private.exchange(X25519PublicKey.from_public_bytes(peer_public))


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
    """Create `path` with mode 0600 atomically; never overwrite an existing file."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # DATA_DIR: owner only
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def load_or_create_hex_secret(path: Path, *, what: str) -> tuple[bytes, bool]:
    """Read a 32-byte hex secret from `path`, generating it (mode 0600) if absent.

    Returns the secret and whether it was just created.
    """
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        secret = os.urandom(32)
        try:
            write_secret_file(path, secret.hex() + "\n")
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create_hex_secret(path, what=what)
        except OSError as exc:
            raise KeyFileError(f"{what} {path}: cannot create it: {exc.strerror}") from None
        return secret, True
    except UnicodeDecodeError:
        raise KeyFileError(f"{what} {path}: not a text file of hex characters") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: cannot read it: {exc.strerror}") from None
    return parse_key_text(text, where=f"{what} {path}"), False


def load_or_create_keypair(path: Path) -> tuple[ServerKeypair, bool]:
    """Load the server keypair, generating the key file on first start."""
    raw, created = load_or_create_hex_secret(path, what="key file")
    return ServerKeypair.from_private_bytes(raw), created
