"""Reading the 2021 Session push server's registrations, in either of its two formats.

- the TinyDB JSON file `session_pn_server_db.json` (2021):
  `{"token_pubkey_table": {"1": {"pubKey": "05…", "token": ["…", …]}, …},
    "closed_group_table": {"1": {"closedGroupPublicKey": "05…", "members": ["05…", …]}, …}}`
- the SQLite file `session_pn_server.db` (2022): `token_pubkey_table(pubKey, token)` and
  `closed_group_table(closedGroupPublicKey, pubKey)`.

Which one a file is, its content says (SQLite's header, or a JSON object), never its name.
A source yields raw pairs exactly as stored (any type: validating them is the importer's
job) or a `Malformed` entry for a row whose very shape is wrong. A file that is neither
format, or has neither table, raises LegacySourceError with one line saying why.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from errors import unreadable

SQLITE_MAGIC = b"SQLite format 3\x00"
REGISTRATIONS_TABLE = "token_pubkey_table"
GROUPS_TABLE = "closed_group_table"
LEGACY_TABLES = (REGISTRATIONS_TABLE, GROUPS_TABLE)


class LegacySourceError(Exception):
    """The file cannot be read as the 2021 server's database; the message says why."""


@dataclass(frozen=True)
class Pair:
    """One stored pair: (pubKey, token) for a registration, (group key, member) for a group."""

    first: Any
    second: Any


@dataclass(frozen=True)
class Malformed:
    """A stored row whose shape is wrong (not an object, a list that is not a list, …)."""

    reason: str


Entry = Pair | Malformed


class LegacySource(Protocol):
    description: str
    ignored_tables: tuple[str, ...]

    def count_registrations(self) -> int: ...

    def count_memberships(self) -> int: ...

    def registrations(self) -> Iterator[Entry]:
        """(pubKey, token) pairs, in the order the 2021 server stored them."""
        ...

    def memberships(self) -> Iterator[Entry]:
        """(closedGroupPublicKey, member pubKey) pairs."""
        ...

    def close(self) -> None: ...


def open_legacy_source(path: Path) -> LegacySource:
    """Open `path` as whichever of the two formats its content is."""
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        reason = unreadable(exc, "the 2021 server's database")
        raise LegacySourceError(f"{path}: {reason}") from None
    if head.startswith(SQLITE_MAGIC):
        return SqliteSource(path)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return TinyDbSource(path)
    if not head:
        raise LegacySourceError(f"{path}: the file is empty")
    raise LegacySourceError(
        f"{path}: neither a SQLite database nor a JSON object"
        " (expected session_pn_server_db.json or session_pn_server.db)"
    )


def _no_tables_error(path: Path) -> LegacySourceError:
    return LegacySourceError(
        f"{path}: has neither {REGISTRATIONS_TABLE} nor {GROUPS_TABLE};"
        " is it the 2021 server's database?"
    )


# -- TinyDB JSON (2021) ----------------------------------------------------------------------


class TinyDbSource:
    """The whole JSON document, read at once (TinyDB kept it as one JSON object)."""

    def __init__(self, path: Path) -> None:
        try:
            with path.open("rb") as handle:
                document = json.load(handle)
        except UnicodeDecodeError:
            raise LegacySourceError(f"{path}: not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise LegacySourceError(
                f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from None
        except RecursionError:
            raise LegacySourceError(f"{path}: JSON nested too deeply") from None
        except OSError as exc:
            raise LegacySourceError(f"{path}: cannot read it: {exc.strerror}") from None
        if not isinstance(document, dict):
            raise LegacySourceError(f"{path}: the JSON document is not an object")
        if not any(name in document for name in LEGACY_TABLES):
            raise _no_tables_error(path)
        self._tables: dict[str, dict[str, Any]] = {}
        for name in LEGACY_TABLES:
            table = document.get(name, {})
            if not isinstance(table, dict):
                raise LegacySourceError(
                    f"{path}: {name} is a JSON {_json_type(table)}, not an object of documents"
                )
            self._tables[name] = table
        self.description = f"{path} (the 2021 server's TinyDB JSON)"
        self.ignored_tables = tuple(sorted(k for k in document if k not in LEGACY_TABLES))

    def count_registrations(self) -> int:
        return sum(_list_length(doc, "token") for doc in self._tables[REGISTRATIONS_TABLE].values())

    def count_memberships(self) -> int:
        return sum(_list_length(doc, "members") for doc in self._tables[GROUPS_TABLE].values())

    def registrations(self) -> Iterator[Entry]:
        return self._pairs(REGISTRATIONS_TABLE, "pubKey", "token")

    def memberships(self) -> Iterator[Entry]:
        return self._pairs(GROUPS_TABLE, "closedGroupPublicKey", "members")

    def _pairs(self, table: str, key_field: str, list_field: str) -> Iterator[Entry]:
        for doc in self._tables[table].values():
            if not isinstance(doc, dict):
                yield Malformed(f"{table}: a document is a JSON {_json_type(doc)}, not an object")
                continue
            values = doc.get(list_field)
            if not isinstance(values, list):
                shape = "missing" if values is None else f"a JSON {_json_type(values)}"
                yield Malformed(f"{table}: {list_field} is {shape}, not a list")
                continue
            owner = doc.get(key_field)
            for value in values:
                yield Pair(owner, value)

    def close(self) -> None:
        self._tables = {}


def _list_length(doc: Any, field: str) -> int:
    """How many pairs a document yields (a malformed document counts as one entry)."""
    values = doc.get(field) if isinstance(doc, dict) else None
    return len(values) if isinstance(values, list) else 1


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


# -- SQLite (2022) ----------------------------------------------------------------------------


class SqliteSource:
    """Read-only; rows in the table's stored order (the order the 2022 server loaded them)."""

    _COLUMNS: ClassVar[dict[str, tuple[str, str]]] = {
        REGISTRATIONS_TABLE: ("pubKey", "token"),
        GROUPS_TABLE: ("closedGroupPublicKey", "pubKey"),
    }
    _SELECT: ClassVar[dict[str, str]] = {
        REGISTRATIONS_TABLE: "SELECT pubKey, token FROM token_pubkey_table",
        GROUPS_TABLE: "SELECT closedGroupPublicKey, pubKey FROM closed_group_table",
    }
    _COUNT: ClassVar[dict[str, str]] = {
        REGISTRATIONS_TABLE: "SELECT count(*) FROM token_pubkey_table",
        GROUPS_TABLE: "SELECT count(*) FROM closed_group_table",
    }

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._db = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,  # opened here, read on the writer's thread
            )
        except sqlite3.Error as exc:
            raise LegacySourceError(f"{path}: cannot open it: {exc}") from None
        try:
            # One read transaction for the whole import: both passes see the same rows.
            self._db.execute("BEGIN")
            tables = {
                name
                for (name,) in self._db.execute(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
                )
            }
            if not any(name in tables for name in LEGACY_TABLES):
                raise _no_tables_error(path)
            self._present = tuple(name for name in LEGACY_TABLES if name in tables)
            for name in self._present:
                self._check_columns(name)
        except sqlite3.Error as exc:
            self._db.close()
            raise LegacySourceError(f"{path}: cannot read it: {exc}") from None
        except LegacySourceError:
            self._db.close()
            raise
        self.description = f"{path} (the 2022 server's SQLite database)"
        self.ignored_tables = tuple(
            sorted(t for t in tables if t not in LEGACY_TABLES and not t.startswith("sqlite_"))
        )

    def _check_columns(self, table: str) -> None:
        found = {row[1].lower() for row in self._db.execute(f'PRAGMA table_info("{table}")')}
        for column in self._COLUMNS[table]:
            if column.lower() not in found:
                raise LegacySourceError(f"{self._path}: {table} has no column {column}")

    def _count(self, table: str) -> int:
        if table not in self._present:
            return 0
        return int(self._read(self._COUNT[table]).fetchone()[0])

    def _read(self, sql: str) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql)
        except sqlite3.Error as exc:
            raise LegacySourceError(f"{self._path}: cannot read it: {exc}") from None

    def count_registrations(self) -> int:
        return self._count(REGISTRATIONS_TABLE)

    def count_memberships(self) -> int:
        return self._count(GROUPS_TABLE)

    def registrations(self) -> Iterator[Entry]:
        return self._pairs(REGISTRATIONS_TABLE)

    def memberships(self) -> Iterator[Entry]:
        return self._pairs(GROUPS_TABLE)

    def _pairs(self, table: str) -> Iterator[Entry]:
        if table not in self._present:
            return
        cursor = self._read(self._SELECT[table])
        while True:
            try:
                rows = cursor.fetchmany(2000)
            except sqlite3.Error as exc:
                raise LegacySourceError(f"{self._path}: cannot read it: {exc}") from None
            if not rows:
                return
            for a, b in rows:
                yield Pair(a, b)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
