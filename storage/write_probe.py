"""One cheap write, to learn whether the database accepts writes right now (for /healthz).

A read (``SELECT 1``) succeeds on a read-only SQLite file, a full disk, a read-only PostgreSQL
transaction or a database whose write lock someone else holds; only a write shows them. The
probe upserts one row of `schema_meta` (key ``health_probe``, value: the time) in a
transaction of its own, on a connection of its own (never through the BatchWriter, so it
neither queues behind nor delays the relay's writes), waiting at most `timeout_s` for a lock:

- SQLite: `PRAGMA busy_timeout` lowered to `timeout_s` for the probe's ``BEGIN IMMEDIATE``
  (the relay's connections wait 30 s), and put back before the connection returns to the pool.
  The BatchWriter holds the write lock one transaction at a time, so the probe normally waits
  for one of them at most; `WriteCheck.locked` tells the caller that the wait ran out, which it
  weighs against whether the writer committed meanwhile (stats/healthz.py).
- PostgreSQL: ``lock_timeout`` (`timeout_s`) and ``statement_timeout`` (twice that) for this
  transaction only (``set_config(..., true)``).

The probe's connection comes from a small pool of its own (the engine's pool recreated: same
settings, same connect-time PRAGMAs), and is thrown away after a failed write: a connection
opened while the file was read-only stays read-only, and must not make the probe report a
recovered database as still refusing writes.

The row holds no identifier, so the database's message about it holds none either; only its
first line is kept.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite

from storage.schema import schema_meta
from storage.sql import Prepared

PROBE_KEY = "health_probe"
MAX_MESSAGE_LENGTH = 160
# SQLite's extended result names for "the lock wait ran out"; PostgreSQL's SQLSTATEs for
# lock_not_available (lock_timeout) and query_canceled (statement_timeout).
_SQLITE_LOCKED = ("SQLITE_BUSY", "SQLITE_LOCKED")
_PG_LOCKED = ("55P03", "57014")


@dataclass(frozen=True)
class WriteCheck:
    """What one probe found. `message` is the database's own words ('' when the write worked)."""

    ok: bool
    reachable: bool = True  # False: no connection could be opened at all
    locked: bool = False  # the write waited `timeout_s` for a lock and gave up
    message: str = ""


def database_message(exc: BaseException) -> str:
    """The first line of the database's own message for `exc` (SQLAlchemy-wrapped or not)."""
    original = getattr(exc, "orig", None) or exc
    diag = getattr(original, "diag", None)
    text = getattr(diag, "message_primary", None) or str(original) or type(original).__name__
    first = text.strip().splitlines()[0] if text.strip() else type(original).__name__
    return first[:MAX_MESSAGE_LENGTH]


def _is_lock_timeout(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(_SQLITE_LOCKED):
        return True
    return getattr(exc, "sqlstate", None) in _PG_LOCKED


class WriteProbe:
    """`run()` upserts the probe row and says whether that committed; blocking (a thread's)."""

    def __init__(self, engine: Engine, *, timeout_s: float = 1.0) -> None:
        self._pool = engine.pool.recreate()
        self._sqlite = engine.dialect.name == "sqlite"
        self.timeout_ms = max(1, int(timeout_s * 1000))
        insert = (sqlite.insert if self._sqlite else postgresql.insert)(schema_meta)
        self._upsert = Prepared.compile(
            insert.on_conflict_do_update(
                index_elements=[schema_meta.c.key], set_={"value": insert.excluded.value}
            ),
            engine.dialect,
            ["key", "value"],
        )
        self._dbapi_error: type[BaseException] = engine.dialect.loaded_dbapi.Error

    def run(self) -> WriteCheck:
        try:
            connection = self._pool.connect()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the database is not there
            return WriteCheck(ok=False, reachable=False, message=database_message(exc))
        healthy = False
        try:
            cursor = connection.cursor()
            try:
                self._write(cursor, connection)
            finally:
                with contextlib.suppress(self._dbapi_error):
                    cursor.close()
            healthy = True
            return WriteCheck(ok=True)
        except self._dbapi_error as exc:
            with contextlib.suppress(self._dbapi_error):
                connection.rollback()
            return WriteCheck(ok=False, locked=_is_lock_timeout(exc), message=database_message(exc))
        finally:
            if healthy:
                connection.close()  # back to the probe's pool, as it was
            else:
                # A connection that failed a write (or kept the short timeout) is not used
                # again: the next probe starts from a fresh one.
                with contextlib.suppress(self._dbapi_error):
                    connection.invalidate()

    def close(self) -> None:
        self._pool.dispose()

    def _write(self, cursor: Any, connection: Any) -> None:
        values = self._upsert.bind({"key": PROBE_KEY, "value": str(time.time_ns() // 1_000_000)})
        if not self._sqlite:
            # The lock wait ends first (and says so); the statement's bound covers the rest.
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true),"
                " set_config('statement_timeout', %s, true)",
                (f"{self.timeout_ms}ms", f"{2 * self.timeout_ms}ms"),
            )
            cursor.execute(self._upsert.sql, values)
            connection.commit()
            return
        cursor.execute("PRAGMA busy_timeout")
        row = cursor.fetchone()
        usual = int(row[0]) if row else 0
        cursor.execute(f"PRAGMA busy_timeout={self.timeout_ms}")
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(self._upsert.sql, values)
        connection.commit()
        # Only on success: a connection whose write failed is discarded, short timeout and all.
        cursor.execute(f"PRAGMA busy_timeout={usual}")
