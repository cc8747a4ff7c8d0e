"""Engine set-up: SQLite (the embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from errors import ConfigurationError
from storage.migrations import SchemaVersionError, upgrade

log = logging.getLogger(__name__)


class DatabaseConfigError(ConfigurationError):
    """DATABASE_URL names something the relay cannot use; the message says what."""


PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def prepare_private_sqlite_file(database: str) -> None:
    """Make the database file owner-only (0600) before SQLite opens it.

    SQLite creates the -wal and -shm files with the database file's own mode, so they are
    owner-only too; any left readable by an older version are tightened here. The directory
    is create_schema's business (0700 when it makes it); a missing one is not made here, so
    that a vanished directory still reads as an unreachable database.
    """
    path = Path(database)
    # Any OSError here (no such directory, read-only, not ours) is left for SQLite to report
    # when it opens the file, as the one-line DatabaseConfigError it becomes.
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(OSError):
            if name.stat().st_mode & 0o077:
                name.chmod(PRIVATE_FILE_MODE)


# SQLITE_SYNCHRONOUS: FULL makes every commit durable across power loss (an fsync of the WAL
# per commit, shared by every write of a group commit); NORMAL only survives a crash of the
# process, and an answered notify may be rolled back by a power cut or kernel panic.
SQLITE_SYNCHRONOUS_MODES = ("FULL", "NORMAL")


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    database = engine.url.database

    @event.listens_for(engine, "do_connect")
    def _before_connect(*_args: Any) -> None:
        if database:
            prepare_private_sqlite_file(database)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below: the sqlite3 module's
        # own deferred BEGIN lets two writers read, then one loses its update.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_engine(url: str, *, pool_size: int, sqlite_synchronous: str = "FULL") -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseConfigError("DATABASE_URL is not a valid database URL") from None
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                raise DatabaseConfigError(
                    "DATABASE_URL: an in-memory SQLite database would lose every notification;"
                    " name a file"
                )
            if sqlite_synchronous.upper() not in SQLITE_SYNCHRONOUS_MODES:
                raise DatabaseConfigError(
                    f"SQLITE_SYNCHRONOUS: expected FULL or NORMAL, got {sqlite_synchronous!r}"
                )
            return _sqlite_engine(url, sqlite_synchronous.upper())
        if backend == "postgresql":
            if parsed.get_driver_name() != "psycopg":
                raise DatabaseConfigError(
                    "DATABASE_URL: use the psycopg 3 driver, postgresql+psycopg://…"
                )
            return create_engine(
                url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size
            )
    except NoSuchModuleError:
        raise DatabaseConfigError(f"DATABASE_URL: no driver for {parsed.drivername}") from None
    raise DatabaseConfigError(
        f"DATABASE_URL: unsupported database {backend!r}; use sqlite:/// or postgresql+psycopg://"
    )


def _unwritable(engine: Engine) -> str:
    """For SQLite, a hint when the database's directory cannot be written: SQLite then says
    only "unable to open database file" (it needs to create the -wal and -shm files there)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database:
        return ""
    directory = Path(database).resolve().parent
    if directory.is_dir() and not os.access(directory, os.W_OK):
        return f" ({directory} is not writable: a read-only filesystem, or not the relay's)"
    return ""


def create_schema(engine: Engine) -> None:
    """Create missing tables, or bring an earlier release's up to date (storage/migrations.py).

    Existing data is kept. A database written by a newer release is refused.
    """
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database:
        Path(database).parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    try:
        with engine.begin() as conn:
            found, now = upgrade(conn)
    except SchemaVersionError as exc:
        raise DatabaseConfigError(str(exc)) from None
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise DatabaseConfigError(
            f"cannot open the database: {type(cause).__name__}: {cause}{_unwritable(engine)}"
        ) from exc
    if found is not None and found != now:
        log.info("database schema upgraded from version %d to %d", found, now)
