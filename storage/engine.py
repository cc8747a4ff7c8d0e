"""Engine set-up: SQLite (the embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from storage.migrations import SchemaVersionError, upgrade

log = logging.getLogger(__name__)


class DatabaseConfigError(Exception):
    """DATABASE_URL names something the relay cannot use; the message says what."""


# SQLITE_SYNCHRONOUS: FULL makes every commit durable across power loss (an fsync of the WAL
# per commit, shared by every write of a group commit); NORMAL only survives a crash of the
# process, and an answered notify may be rolled back by a power cut or kernel panic.
SQLITE_SYNCHRONOUS_MODES = ("FULL", "NORMAL")


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

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


def create_schema(engine: Engine) -> None:
    """Create missing tables, or bring an earlier release's up to date (storage/migrations.py).

    Existing data is kept. A database written by a newer release is refused.
    """
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    try:
        with engine.begin() as conn:
            found, now = upgrade(conn)
    except SchemaVersionError as exc:
        raise DatabaseConfigError(str(exc)) from None
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise DatabaseConfigError(
            f"cannot open the database: {type(cause).__name__}: {cause}"
        ) from exc
    if found is not None and found != now:
        log.info("database schema upgraded from version %d to %d", found, now)
