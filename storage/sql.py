"""Statements compiled once, run on a DBAPI cursor: the write path's low-overhead executor.

The relay's statements are written as SQLAlchemy Core, so they stay dialect-aware and
checked against the models; `Prepared.compile` turns each into its SQL string once, at
start. Executing the string on the writer's own DBAPI cursor skips SQLAlchemy's per-call
execution machinery, which cost more than SQLite itself (measured: ~100 µs per statement
against ~15 µs; bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Generic, TypeVar

from sqlalchemy import Dialect
from sqlalchemy.sql import Executable

T = TypeVar("T")


@dataclass(frozen=True)
class Prepared:
    sql: str
    positional_names: tuple[str, ...] | None
    defaults: Mapping[str, Any]
    # The positional parameters out of a mapping, in order (an itemgetter: no dict is built).
    _pick: Callable[[Mapping[str, Any]], Any] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        names = self.positional_names
        if names:
            pick = itemgetter(*names)
            if len(names) == 1:
                object.__setattr__(self, "_pick", lambda values: (pick(values),))
            else:
                object.__setattr__(self, "_pick", pick)

    @classmethod
    def compile(
        cls, statement: Executable, dialect: Dialect, columns: Sequence[str] | None = None
    ) -> Prepared:
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, column_keys=list(columns) if columns else None, for_executemany=True
        )
        names = tuple(compiled.positiontup) if compiled.positional else None
        # Only values the statement carries (a literal's parameter): a required parameter's
        # placeholder is no default, and leaving it out spares a merged dict per call.
        binds = compiled.binds
        defaults = {
            k: v
            for k, v in compiled.params.items()
            if v is not None and not (k in binds and binds[k].required)
        }
        return cls(sql=compiled.string, positional_names=names, defaults=defaults)

    def bind(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        if self.defaults:
            values = {**self.defaults, **values}
        if self._pick is None:
            return values if self.positional_names is None else ()
        return self._pick(values)  # type: ignore[no-any-return]


class Sent:
    """A statement sent ahead: its rows are read once they arrive."""

    def rows(self) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def rowcount(self) -> int:
        """The number of rows a statement without RETURNING changed."""
        raise NotImplementedError


class _OnCursor(Sent):
    """A statement run at once on a cursor of its own (outside the writer's pipeline)."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def rows(self) -> list[tuple[Any, ...]]:
        try:
            return list(self._cursor.fetchall())
        finally:
            self._cursor.close()

    def rowcount(self) -> int:
        try:
            return int(self._cursor.rowcount)
        finally:
            self._cursor.close()


@dataclass(frozen=True)
class RowsStatement:
    """A statement taking rows (as arrays, `unnest`) and giving one answer row per row, in
    order: in the writer's pipeline, one statement for a run of consecutive operations that
    send one row each with the same `scalars` (`Tx.send_row`)."""

    statement: Prepared
    # The statement's values for `scalars` and a run of rows.
    values: Callable[[Mapping[str, Any], Sequence[tuple[Any, ...]]], Mapping[str, Any]]
    # The same for a run of one row, cheaper for the server: its parameters are the scalars
    # and the row's values named by `columns`.
    one: Prepared
    columns: tuple[str, ...]

    def alone(self, scalars: Mapping[str, Any], row: tuple[Any, ...]) -> Mapping[str, Any]:
        """`one`'s values for `row`."""
        return {**scalars, **dict(zip(self.columns, row, strict=True))}


class Tx:
    """One transaction of the writer, as seen by an operation."""

    def __init__(self, cursor: Any, connection: Any = None) -> None:
        self._cursor = cursor
        self._connection = connection

    @property
    def cursor(self) -> Any:
        return self._cursor

    @property
    def connection(self) -> Any:
        return self._connection

    def send(self, statement: Prepared, values: Mapping[str, Any]) -> Sent:
        """Run a statement on a cursor of its own, its rows read later (`Sent.rows`). In the
        writer's pipeline (storage/pgpipe.py's `Batch`) it is only queued, and the statements
        of several operations go in one round trip."""
        cursor = self._connection.cursor() if self._connection is not None else self._cursor
        cursor.execute(statement.sql, statement.bind(values))
        return _OnCursor(cursor)

    def send_row(
        self, statement: RowsStatement, scalars: Mapping[str, Any], row: tuple[Any, ...]
    ) -> Sent:
        """Like `send`, for one row of a `RowsStatement`: its `rows()` is that row's answer.
        (Here the statement for one row; the writer's pipeline joins a run of them.)"""
        return self.send(statement.one, statement.alone(scalars, row))

    def execute(self, statement: Prepared, values: Mapping[str, Any]) -> int:
        """Run a statement; return the number of rows it changed."""
        self._cursor.execute(statement.sql, statement.bind(values))
        return int(self._cursor.rowcount)

    def insert(self, statement: Prepared, values: Mapping[str, Any]) -> int:
        """Insert one row; return its id: the row the statement's RETURNING gives, or, for a
        statement without one (SQLite's, which spares fetching a row), the cursor's
        `lastrowid`."""
        cursor = self._cursor
        cursor.execute(statement.sql, statement.bind(values))
        if cursor.description is None:
            return int(cursor.lastrowid)
        return int(cursor.fetchone()[0])

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


@dataclass(frozen=True)
class FollowUp(Generic[T]):
    """What a `PipelinedOperation` still has to do once its answer is read: `operation` runs
    the rest and gives the operation's result. (The writer may have committed the statements
    sent by then: it runs `operation` in a transaction of its own.)"""

    operation: Callable[[Tx], T]


class PipelinedOperation(Generic[T]):
    """An operation in two halves: `send` sends its statements (`Tx.send`) and returns what
    `receive` needs; `receive` reads the answers, running no statement, and gives the result
    or, when more must be written (rare: a fan-out larger than a chunk), a `FollowUp`.

    The writer sends a batch made only of such operations in one round trip, BEGIN and COMMIT
    included (libpq's pipeline, storage/pgpipe.py), then receives them, then runs each
    follow-up in a transaction of its own; in a batch with other operations it sends each run
    of them in one round trip, and runs a follow-up in the same transaction. Anywhere else it
    is one call."""

    def send(self, tx: Tx) -> Any:
        raise NotImplementedError

    def receive(self, sent: Any) -> T | FollowUp[T]:
        raise NotImplementedError

    def __call__(self, tx: Tx) -> T:
        return finish_in(tx, self.receive(self.send(tx)))


def finish_in(tx: Tx, result: T | FollowUp[T]) -> T:
    """A received result, with its follow-up (if any) run in the same transaction."""
    if isinstance(result, FollowUp):
        return result.operation(tx)
    return result
