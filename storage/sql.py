"""Statements compiled once, run on a DBAPI cursor: the write path's low-overhead executor.

The relay's statements are written as SQLAlchemy Core, so they stay dialect-aware and
checked against the models; `Prepared.compile` turns each into its SQL string once, at
start. Executing the string on the writer's own DBAPI cursor skips SQLAlchemy's per-call
execution machinery, which cost more than SQLite itself (measured: ~100 µs per statement
against ~15 µs; bench/README.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.sql import Executable


@dataclass(frozen=True)
class Prepared:
    sql: str
    positional_names: tuple[str, ...] | None
    defaults: Mapping[str, Any]

    @classmethod
    def compile(
        cls, statement: Executable, dialect: Dialect, columns: Sequence[str] | None = None
    ) -> Prepared:
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, column_keys=list(columns) if columns else None, for_executemany=True
        )
        names = tuple(compiled.positiontup) if compiled.positional else None
        defaults = {k: v for k, v in compiled.params.items() if v is not None}
        return cls(sql=compiled.string, positional_names=names, defaults=defaults)

    def bind(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        merged = {**self.defaults, **values} if self.defaults else values
        if self.positional_names is None:
            return merged
        return tuple(merged[name] for name in self.positional_names)


class Tx:
    """One transaction of the writer, as seen by an operation."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, statement: Prepared, values: Mapping[str, Any]) -> int:
        """Run a statement; return the number of rows it changed."""
        self._cursor.execute(statement.sql, statement.bind(values))
        return int(self._cursor.rowcount)

    def execute_many(self, statement: Prepared, rows: Iterable[Mapping[str, Any]]) -> int:
        """Run a statement once per row; return the rows changed, summed over all of them."""
        self._cursor.executemany(statement.sql, [statement.bind(row) for row in rows])
        return int(self._cursor.rowcount)

    def all(self, statement: Prepared, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        self._cursor.execute(statement.sql, statement.bind(values))
        return list(self._cursor.fetchall())

    def scalar(self, statement: Prepared, values: Mapping[str, Any]) -> Any:
        self._cursor.execute(statement.sql, statement.bind(values))
        row = self._cursor.fetchone()
        return None if row is None else row[0]
