"""Everything that happens before the relay serves: keys, database, and their agreement.

The order is what makes a failed start harmless: settings are checked first (no file
touched), the port is bound by the caller, then `open_storage` reaches the database, checks
the key files against it, and only then writes new key files. If anything fails, what this
start created (key files, the SQLite file, DATA_DIR) is removed again, and the reason is one
line (`StartupError`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from errors import StartupError
from lsrpc.keys import KeyFileError
from settings import Settings
from startup.created import CreatedFiles
from startup.fingerprints import KeyMismatchError, reconcile
from startup.keyfiles import KeyDirectory, Keys
from stats.schema import create_stats_schema
from storage.engine import DatabaseConfigError, create_schema, make_engine

log = logging.getLogger("pn_relay")

__all__ = ["StartupError", "load_keys", "one_line", "open_storage"]


def one_line(text: str) -> str:
    """Drivers' messages span lines (psycopg adds a hint): the start-up error is one."""
    return "; ".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def describe_new_keys(keys: Keys) -> str:
    names = ", ".join(str(f.path) for f in keys.new)
    files = "the key files" if len(keys.new) > 1 else "the key file"
    return f"first start: made {files} {names} (mode 0600); back them up"


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return one_line(f"{where}{exc.strerror or exc}")


def _sqlite_file(engine: Engine) -> Path | None:
    if engine.dialect.name == "sqlite" and engine.url.database:
        return Path(engine.url.database)
    return None


def open_storage(settings: Settings, *, server_key: bool = True) -> tuple[Engine, Keys]:
    """The database (schema created) and the keys, checked against each other.

    `server_key=False` (tools/import_legacy.py): the two secrets only; the server key is
    neither read nor made, and its fingerprint is left alone.
    """
    try:
        engine = make_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            sqlite_synchronous=settings.SQLITE_SYNCHRONOUS,
        )
    except DatabaseConfigError as exc:
        raise StartupError(one_line(str(exc))) from None
    created = CreatedFiles()
    try:
        with KeyDirectory(settings, created, server_key=server_key) as directory:
            try:
                keys = directory.load()
                database = _sqlite_file(engine)
                if database is not None:
                    created.mkdir(database.parent)
                    created.add_sqlite_if_new(database)
                create_schema(engine)  # stats.schema is imported above: its tables too
                create_stats_schema(engine)  # and columns for counters added since
                warnings = reconcile(engine, keys, lambda: directory.write(keys))
            except BaseException:
                engine.dispose()  # before its files are removed
                raise
    except (DatabaseConfigError, KeyFileError, KeyMismatchError) as exc:
        raise StartupError(one_line(str(exc))) from None
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise StartupError(
            one_line(f"cannot open the database: {type(cause).__name__}: {cause}")
        ) from None
    except OSError as exc:  # DATA_DIR or the database's directory cannot be made or read
        raise StartupError(_os_error(exc)) from None
    for warning in warnings:
        log.warning("%s", warning)
    if keys.new:
        log.info("%s", describe_new_keys(keys))
    log.info("database: %s", engine.url.render_as_string(hide_password=True))
    return engine, keys


def load_keys(settings: Settings, *, init: bool = False) -> Keys:
    """The keys without the database: for --print-pubkey (first-start rule) and --init.

    New keys are written at once. Their fingerprints are recorded by the next start.
    """
    try:
        with KeyDirectory(settings, CreatedFiles()) as directory:
            keys = directory.load(init=init)
            directory.write(keys)
    except KeyFileError as exc:
        raise StartupError(one_line(str(exc))) from None
    except OSError as exc:
        raise StartupError(_os_error(exc)) from None
    return keys
