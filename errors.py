"""The relay's exceptions, in one tree. Each module raises its own subclass; callers catch
the branch they handle.

    PnRelayError
    ├── StartupError               the relay cannot start; the message is one line for the
    │   │                          operator (server.main prints it and exits 2)
    │   └── ConfigurationError     ...because a setting or a file it names is wrong
    │       ├── SettingsError          settings.py: a value, a name, a missing companion
    │       ├── DatabaseConfigError    storage/engine.py: DATABASE_URL, schema version
    │       ├── KeyFileError           lsrpc/keys.py: a key or secret file
    │       ├── DeliveryConfigError    push/config_checks.py: provider credentials and endpoints
    │       └── PasswordHashError      stats/auth.py: STATS_PASSWORD_HASH
    ├── ClientError                a request is malformed; the message names what is wrong
    │   │                          and may be returned to the client (never an identifier)
    │   ├── FramingError           lsrpc/framing.py: the v2 outer frame
    │   ├── V2RequestError         lsrpc/v2.py: the decrypted v2 request
    │   ├── V4FramingError         lsrpc/v4.py: the decrypted v4 request
    │   ├── BencodeError           lsrpc/bencode.py
    │   ├── InvalidParameter       handlers/validation.py: an endpoint's parameter
    │   └── BadRequest             stats/query.py: the statistics request body
    └── StorageError               storage/writer.py: the database refused or failed a write;
        └── WriterClosedError      the message names only the error type

Errors that never leave their module (a sealed token that does not open, a decryption
failure, a provider stream reset) stay plain exceptions there. Where a parser's error was a
`ValueError` before this tree existed, it still is one too (multiple inheritance), so that
callers written against `ValueError` keep working.
"""

from __future__ import annotations


class PnRelayError(Exception):
    """Every exception the relay defines for others to catch."""


class StartupError(PnRelayError):
    """A reason the relay cannot start, said in one line."""


class ConfigurationError(StartupError):
    """A setting, or a file a setting names, is wrong; the message says which and why."""


class ClientError(PnRelayError):
    """A malformed request; the message may be returned to the client."""


def unreadable(exc: OSError, expected: str) -> str:
    """Why a file an operator named could not be read, in their words: "no such file", "is a
    directory, not <expected>", or "cannot read it: <the system's reason>"."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return f"is a directory, not {expected}"
    return f"cannot read it: {exc.strerror}"
