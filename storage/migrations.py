"""Versioned schema changes: bring a database written by an earlier release up to date.

`schema_meta.schema_version` says which layout a database has. At start, `upgrade` runs every
numbered step above it, in order, in one transaction (with PostgreSQL's advisory lock, so two
processes starting together migrate once), then records the new version. A fresh database is
created at the current version directly. A database newer than this code is refused.

Adding a schema change: bump `storage.schema.SCHEMA_VERSION`, change the models, and append
a step here that turns the previous layout into the new one (tests/test_migrations.py builds
a database with the previous release's own tables and rows and upgrades it).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Table, insert, inspect, select, text, update

from storage.schema import SCHEMA_VERSION, Base, deliveries, devices, notifications, schema_meta

VERSION_KEY = "schema_version"
_PG_LOCK_ID = 0x706E_7265_6C61  # "pnrela": one advisory lock for schema changes


class SchemaVersionError(Exception):
    """The database was written by a newer pn-relay than this one."""


def _sqlite_rebuild(conn: Connection, table: Table, *, highest_id: int) -> None:
    """Re-create `table` from its current model (SQLite cannot add AUTOINCREMENT in place).

    The ids already handed out stay; the AUTOINCREMENT sequence starts above `highest_id`
    (and above every id still in the table).
    """
    name = table.name
    old = f"{name}_schema1"
    columns = [c["name"] for c in inspect(conn).get_columns(name)]
    for (index_name,) in conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
        (name,),
    ).all():
        conn.exec_driver_sql(f'DROP INDEX "{index_name}"')
    conn.exec_driver_sql(f'ALTER TABLE "{name}" RENAME TO "{old}"')
    table.create(conn)
    shared = ", ".join(f'"{c}"' for c in columns if c in table.c)
    # S608: every name here is one of our own tables' and columns', never input.
    conn.exec_driver_sql(f'INSERT INTO "{name}" ({shared}) SELECT {shared} FROM "{old}"')  # noqa: S608
    conn.exec_driver_sql(f'DROP TABLE "{old}"')
    highest = max(highest_id, _highest(conn, f'SELECT max(id) FROM "{name}"'))  # noqa: S608
    conn.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = ?", (name,))
    conn.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, highest))


def _highest(conn: Connection, *queries: str) -> int:
    """The largest of the single values `queries` select (0 for none)."""
    return max(int(conn.exec_driver_sql(query).scalar() or 0) for query in queries)


def _to_2(conn: Connection) -> None:
    """Schema 2: registrations have a generation, deliveries name it and carry a lease token,
    ids are never reused (SQLite AUTOINCREMENT), and queue age is indexed."""
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        # Schema 1 on SQLite handed the highest ids out again after a delete, so the only
        # trace of some ids it handed out (a deleted device's, say) is in the rows dropped
        # just below: read the highest ids first, for the new sequences to start above them.
        highest = {
            devices.name: _highest(
                conn, "SELECT max(id) FROM devices", "SELECT max(device_id) FROM deliveries"
            ),
            notifications.name: _highest(
                conn,
                "SELECT max(id) FROM notifications",
                "SELECT max(notification_id) FROM deliveries",
            ),
            deliveries.name: _highest(conn, "SELECT max(id) FROM deliveries"),
        }
    # Deliveries whose device is gone could only ever have reached a stranger: drop them, and
    # the notifications this leaves with no delivery (data never outlives its deliveries).
    conn.exec_driver_sql("DELETE FROM deliveries WHERE device_id NOT IN (SELECT id FROM devices)")
    conn.exec_driver_sql(
        "DELETE FROM notifications WHERE id NOT IN (SELECT notification_id FROM deliveries)"
    )
    if sqlite:
        for table in (devices, notifications, deliveries):
            _sqlite_rebuild(conn, table, highest_id=highest[table.name])
        return
    conn.exec_driver_sql(
        "ALTER TABLE devices ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL DEFAULT 1"
    )
    conn.exec_driver_sql(
        "ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS device_generation BIGINT NOT NULL"
        " DEFAULT 1, ADD COLUMN IF NOT EXISTS lease_token BIGINT NOT NULL DEFAULT 0"
    )
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_deliveries_device_id ON deliveries (device_id)"
    )
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS ix_deliveries_created_at ON deliveries (created_at)"
    )


def _to_3(conn: Connection) -> None:
    """Schema 3: `statistics_minutes` gains `queue_depth`, the delivery queue's depth sampled
    at each minute's end (stats/rollup.py; nullable, no default: the minutes before the
    upgrade read as "not sampled", not as an empty queue); and a notification is `ready`
    (claimable) only once its whole fan-out is written (storage/store.py), every one written
    before is. Each change is skipped where the column is there already (SQLite's step 2
    re-creates `notifications` from the current model; create_stats_schema adds queue_depth)."""
    inspector = inspect(conn)
    if inspector.has_table("statistics_minutes") and not any(
        c["name"] == "queue_depth" for c in inspector.get_columns("statistics_minutes")
    ):
        conn.exec_driver_sql("ALTER TABLE statistics_minutes ADD COLUMN queue_depth BIGINT")
    if not any(c["name"] == "ready" for c in inspector.get_columns(notifications.name)):
        default = "1" if conn.dialect.name == "sqlite" else "true"
        conn.exec_driver_sql(
            f"ALTER TABLE notifications ADD COLUMN ready BOOLEAN NOT NULL DEFAULT {default}"
        )


# version reached -> the step that reaches it from the version before
STEPS: dict[int, Callable[[Connection], None]] = {2: _to_2, 3: _to_3}


def _read_version(conn: Connection) -> int | None:
    if not inspect(conn).has_table(schema_meta.name):
        return None
    found = conn.execute(
        select(schema_meta.c.value).where(schema_meta.c.key == VERSION_KEY)
    ).scalar()
    return None if found is None else int(found)


def upgrade(conn: Connection) -> tuple[int | None, int]:
    """Create or migrate the relay's tables inside `conn`'s transaction.

    Returns (the version found, or None for a fresh database; the version now).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
    found = _read_version(conn)
    if found is None and inspect(conn).has_table(devices.name):
        found = 1  # the first release wrote its tables before it wrote a version row
    if found is not None and found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the database was written by a newer pn-relay (schema {found});"
            f" this one knows schema {SCHEMA_VERSION}"
        )
    if found is not None:
        for version in range(found + 1, SCHEMA_VERSION + 1):
            STEPS[version](conn)
    Base.metadata.create_all(conn)
    if _read_version(conn) is None:
        conn.execute(insert(schema_meta).values(key=VERSION_KEY, value=str(SCHEMA_VERSION)))
    else:
        conn.execute(
            update(schema_meta)
            .where(schema_meta.c.key == VERSION_KEY)
            .values(value=str(SCHEMA_VERSION))
        )
    return found, SCHEMA_VERSION
