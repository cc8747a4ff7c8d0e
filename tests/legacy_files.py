"""The 2021 server's two database formats, written as it wrote them (for tests and bench/).

- TinyDB JSON: `{"token_pubkey_table": {"1": {"pubKey": …, "token": [...]}, …},
  "closed_group_table": {"1": {"closedGroupPublicKey": …, "members": [...]}, …}, …}`
- SQLite (2022): `token_pubkey_table(pubKey TEXT NOT NULL, token TEXT NOT NULL)`,
  `closed_group_table(closedGroupPublicKey TEXT NOT NULL, pubKey TEXT NOT NULL)` and its
  statistics table beside them. (NOT NULL as the 2022 server declared it; tests that need a
  NULL pass `not_null=False`.)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# One TinyDB document: the owner (pubKey or group key) and its list (tokens or members), or
# any JSON value at all for a malformed document.
Doc = tuple[Any, Any] | Any


def tinydb_document(
    registrations: Iterable[Doc],
    groups: Iterable[Doc],
    *,
    raw_registration_docs: Iterable[tuple[int, Any]] = (),
    raw_group_docs: Iterable[tuple[int, Any]] = (),
) -> dict[str, Any]:
    """The JSON object; `raw_*_docs` put arbitrary values at given positions."""

    def table(docs: Iterable[Doc], key: str, values: str, raw: Iterable[tuple[int, Any]]) -> Any:
        rows: list[Any] = [{key: owner, values: items} for owner, items in docs]
        for position, value in raw:
            rows.insert(position, value)
        return {str(number): row for number, row in enumerate(rows, start=1)}

    return {
        "_default": {},
        "token_pubkey_table": table(registrations, "pubKey", "token", raw_registration_docs),
        "closed_group_table": table(groups, "closedGroupPublicKey", "members", raw_group_docs),
        "statistics_table": {
            "1": {"start_date": "2021-05-04 03:40:47", "end_date": "2021-05-04 03:41:47"}
        },
    }


def write_tinydb(path: Path, document: dict[str, Any]) -> Path:
    # TinyDB wrote with ensure_ascii=False, as one line.
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


def write_legacy_sqlite(
    path: Path,
    registrations: Iterable[tuple[Any, Any]],
    memberships: Iterable[tuple[Any, Any]],
    *,
    not_null: bool = True,
) -> Path:
    constraint = " NOT NULL" if not_null else ""
    db = sqlite3.connect(path)
    try:
        db.executescript(
            f"""
            CREATE TABLE token_pubkey_table (pubKey TEXT{constraint}, token TEXT{constraint});
            CREATE TABLE closed_group_table (
                closedGroupPublicKey TEXT{constraint}, pubKey TEXT{constraint});
            CREATE TABLE statistics_table (start_date REAL, end_date REAL,
                ios_pn_number INTEGER, android_pn_number INTEGER, total_message_number INTEGER,
                closed_group_message_number INTEGER, untracked_message_number INTEGER,
                deduplicated_1_1_message_number INTEGER);
            INSERT INTO statistics_table VALUES (1620099647, 1620099707, 1, 2, 3, 0, 0, 0);
            """
        )
        db.executemany("INSERT INTO token_pubkey_table VALUES (?, ?)", registrations)
        db.executemany("INSERT INTO closed_group_table VALUES (?, ?)", memberships)
        db.commit()
    finally:
        db.close()
    return path


def flat_pairs(docs: Iterable[tuple[Any, list[Any]]]) -> list[tuple[Any, Any]]:
    """TinyDB documents as the 2022 SQLite rows: one row per (owner, item), same order."""
    return [(owner, item) for owner, items in docs for item in items]
