"""A throwaway PostgreSQL schema: created, its URL handed out, dropped afterwards.

For the tests (tests/support.py, one schema per test, so tests never see each other's rows)
and the benchmarks (bench/, one per run); the relay itself never creates schemas.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import psycopg

CONNECT_TIMEOUT_S = 10  # an unreachable server fails the caller quickly


@contextlib.contextmanager
def scratch_schema(base: str, *, prefix: str) -> Iterator[str]:
    """A fresh schema named `prefix` + random hex in the database of `base` (a
    `postgresql+psycopg://` URL); yields `base` with its search_path set to that schema."""
    schema = prefix + secrets.token_hex(6)
    plain = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(plain, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
