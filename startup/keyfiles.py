"""The relay's three key files, and the one rule for creating them.

A typo in a key path must never make a new key: clients pin the server key, and the two
secrets are what the stored registrations are keyed and sealed with. So a missing key file is
created only

- by `python server.py --init` (any missing file, named or default), or
- on the first start, when DATA_DIR does not exist or holds nothing but key files (say, the
  2021 server's key copied in), and only for files whose setting was not given.

Everything else with a missing file is an error naming the file and what to do. New keys are
made in memory first and written only once the database agreed to them (`KeyDirectory.write`);
DATA_DIR is locked meanwhile so that processes starting together make one set of keys.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lsrpc.keys import KeyFileError, ServerKeypair, new_secret, read_key_file, write_secret_file
from settings import Settings
from startup.created import CreatedFiles


@dataclass(frozen=True)
class KeyFile:
    setting: str  # KEY_FILE, IDENTITY_KEY_FILE or TOKEN_KEY_FILE
    path: Path
    named: bool  # the setting was given (else: the default in DATA_DIR)
    what: str  # "server key", ...


def key_files(settings: Settings) -> tuple[KeyFile, ...]:
    """KEY_FILE, IDENTITY_KEY_FILE and TOKEN_KEY_FILE, as the settings resolve them."""
    return (
        KeyFile("KEY_FILE", settings.key_file, settings.KEY_FILE is not None, "server key"),
        KeyFile(
            "IDENTITY_KEY_FILE",
            settings.identity_key_file,
            settings.IDENTITY_KEY_FILE is not None,
            "identity secret",
        ),
        KeyFile(
            "TOKEN_KEY_FILE",
            settings.token_key_file,
            settings.TOKEN_KEY_FILE is not None,
            "token secret",
        ),
    )


@dataclass(frozen=True)
class Keys:
    """The keys loaded; `new` are those made by this start, not on disk until written."""

    files: tuple[KeyFile, ...]
    secrets: tuple[bytes, ...]
    new: tuple[KeyFile, ...]

    def secret_of(self, key_file: KeyFile) -> bytes:
        return self.secrets[self.files.index(key_file)]

    def _of(self, setting: str) -> bytes:
        for key_file, secret in zip(self.files, self.secrets, strict=True):
            if key_file.setting == setting:
                return secret
        raise LookupError(f"{setting} was not loaded")

    @property
    def server(self) -> ServerKeypair:
        return ServerKeypair.from_private_bytes(self._of("KEY_FILE"))

    @property
    def identity(self) -> bytes:
        return self._of("IDENTITY_KEY_FILE")

    @property
    def token(self) -> bytes:
        return self._of("TOKEN_KEY_FILE")


def _missing_named(key_file: KeyFile) -> KeyFileError:
    return KeyFileError(
        f"{key_file.setting}: {key_file.path} does not exist; fix the path (a {key_file.what}"
        " is never made for a path you named), or create a new one there with"
        " python server.py --init"
    )


def _missing_default(key_file: KeyFile, data_dir: Path) -> KeyFileError:
    return KeyFileError(
        f"{key_file.what} {key_file.path} does not exist, and {data_dir} is not a new DATA_DIR"
        f" (new keys are made only on the first start): restore the file from your backup or"
        f" set {key_file.setting} to where it is; python server.py --init makes a new one"
    )


class KeyDirectory:
    """Loads the key files; makes missing ones when the rule allows; undoes that on failure.

    Use as a context manager around everything that must succeed before new keys may stay:
    on an exception, files and directories it created are removed before DATA_DIR's lock is
    released.
    """

    def __init__(
        self, settings: Settings, created: CreatedFiles, *, server_key: bool = True
    ) -> None:
        """`server_key=False`: the two secrets only (tools that never make a server key)."""
        self._data_dir = settings.DATA_DIR
        self._all_files = key_files(settings)
        self._files = tuple(f for f in self._all_files if server_key or f.setting != "KEY_FILE")
        self._created = created
        self._lock_fd: int | None = None
        self._written: set[KeyFile] = set()

    def __enter__(self) -> KeyDirectory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                self._created.remove_all()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None

    def _read_all(self) -> dict[KeyFile, bytes | None]:
        return {f: read_key_file(f.path, what=f.what) for f in self._files}

    def _lock_data_dir(self) -> None:
        """Hold DATA_DIR's lock (creating it) so that concurrent starts agree on new keys."""
        if self._lock_fd is None:
            try:
                self._created.mkdir(self._data_dir)
                self._lock_fd = os.open(self._data_dir, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise KeyFileError(f"DATA_DIR {self._data_dir}: {exc.strerror}") from None
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def _is_new_data_dir(self) -> bool:
        """DATA_DIR holds nothing but key files (or nothing at all)."""
        own = {f.path.resolve() for f in self._all_files}
        return all(entry.resolve() in own for entry in self._data_dir.iterdir())

    def load(self, *, init: bool = False) -> Keys:
        """The keys, with missing ones made in memory where allowed (`init`: all missing)."""
        if not init:
            for key_file in self._files:
                if key_file.named and not key_file.path.exists():
                    raise _missing_named(key_file)
        if any(not f.named for f in self._files):
            # Read DATA_DIR's files under its lock, held until this start has succeeded or
            # undone what it made: another process starting beside this one (WORKERS) may be
            # writing new key files (one could be read half-written) or about to remove them
            # again (its start failed).
            self._lock_data_dir()
        found = self._read_all()
        missing = [f for f in self._files if found[f] is None]
        if not init:
            for key_file in missing:
                if key_file.named:
                    raise _missing_named(key_file)
        if missing and not init and not self._is_new_data_dir():
            raise _missing_default(missing[0], self._data_dir)
        secrets = tuple(found[f] or new_secret() for f in self._files)
        return Keys(self._files, secrets, tuple(missing))

    def write(self, keys: Keys) -> None:
        """Write the keys made by this start (mode 0600); removed again if the start fails."""
        for key_file in keys.new:
            if key_file in self._written:
                continue
            self._created.mkdir(key_file.path.parent)
            try:
                write_secret_file(key_file.path, keys.secret_of(key_file).hex() + "\n")
            except FileExistsError:
                raise KeyFileError(
                    f"{key_file.what} {key_file.path}: appeared while this start made one;"
                    " start again"
                ) from None
            except OSError as exc:
                raise KeyFileError(
                    f"{key_file.what} {key_file.path}: cannot create it: {exc.strerror}"
                ) from None
            self._created.add_file(key_file.path)
            self._written.add(key_file)
