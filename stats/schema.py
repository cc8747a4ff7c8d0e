"""The statistics tables, declared on the relay's own `storage.schema.Base` metadata.

Importing this module is what makes `storage.engine.create_schema` (which runs
`Base.metadata.create_all`) create them; `create_stats_schema` does the same for these tables
alone and also adds a column for any counter name added to `COUNTER_NAMES` since the table
was created (``ALTER TABLE ... ADD COLUMN ... DEFAULT 0``; existing rows read as zero).

`statistics_minutes`: one row per UTC minute. `minute_start` is integer milliseconds since the
Unix epoch (the house convention for times), always a multiple of 60,000, and the primary key:
on SQLite it is the rowid itself (``INTEGER PRIMARY KEY``), so a date-range query is one
B-tree range scan over the table; on PostgreSQL a BIGINT primary key with its B-tree index.
Every other column is one counter of `stats.counters.COUNTER_NAMES`, except `queue_depth`:
the delivery queue's depth sampled when the minute ended (schema 3; the largest sample when
several processes share the database; NULL where nothing was sampled, as for every minute
before the upgrade).

`job_leases`: one row per periodic job that must run in one process only, however many share
the database; a process claims it by a compare-and-set on `expires_at` (see
`stats.rollup.claim_lease`).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Engine, Integer, String, Table, inspect, text

from stats.counters import COUNTER_NAMES
from storage.schema import Base

QUEUE_DEPTH = "queue_depth"

# SQLite: INTEGER PRIMARY KEY is the rowid (the table's own B-tree); BIGINT would add an index.
_Key64 = BigInteger().with_variant(Integer(), "sqlite")

statistics_minutes = Table(
    "statistics_minutes",
    Base.metadata,
    Column("minute_start", _Key64, primary_key=True, autoincrement=False),
    *(
        Column(name, BigInteger, nullable=False, default=0, server_default=text("0"))
        for name in COUNTER_NAMES
    ),
    Column(QUEUE_DEPTH, BigInteger, nullable=True),
)

job_leases = Table(
    "job_leases",
    Base.metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

STATS_TABLES = (statistics_minutes, job_leases)


def create_stats_schema(engine: Engine) -> None:
    """Create the statistics tables if missing, and add columns for new counter names (and
    `queue_depth`, which storage/migrations.py's step 3 adds to a versioned database)."""
    Base.metadata.create_all(engine, tables=list(STATS_TABLES))
    present = {column["name"] for column in inspect(engine).get_columns("statistics_minutes")}
    missing = {name: "BIGINT NOT NULL DEFAULT 0" for name in COUNTER_NAMES if name not in present}
    if QUEUE_DEPTH not in present:
        missing[QUEUE_DEPTH] = "BIGINT"
    if not missing:
        return
    preparer = engine.dialect.identifier_preparer
    table = preparer.quote("statistics_minutes")
    with engine.begin() as conn:
        for name, kind in missing.items():
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {preparer.quote(name)} {kind}")
