"""PostgreSQL: a batch's statements sent through libpq's pipeline directly (psycopg's `pgconn`).

psycopg's own pipeline mode (`Connection.pipeline()` and a cursor per statement) flushes the
socket and polls it after every statement sent, makes a cursor and converts the query for
each: measured at ~30 % of the writer's CPU on a batch of notifies (bench/README.md). Here a
batch is converted and dumped first (psycopg's `Transformer`, the same dumpers a cursor
uses, so the values reach the server exactly as before), then sent as libpq calls into its
output buffer, one `pipeline_sync`, flushed and read back in one wait loop. Each statement is
prepared once per connection (by its query and its parameters' types) and run by name after.

Only the writer's thread uses its connection, between psycopg's own calls: psycopg sees an
idle connection before and after, with the transaction state libpq reports.
"""

from __future__ import annotations

import re
import select
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg.abc import Buffer
from psycopg.abc import Transformer as AdaptContext
from psycopg.adapt import PyFormat, Transformer

from storage.sql import Prepared, RowsStatement, Sent, Tx

# A placeholder of SQLAlchemy's psycopg dialect ("pyformat"), or an escaped percent sign.
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
# Distinct queries (by parameter types) prepared on one connection; past it, sent unprepared.
MAX_PREPARED = 64
_AUTO = PyFormat.AUTO
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_READ = select.POLLIN | select.POLLERR | select.POLLHUP


def to_numbered(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """`sql` with `%(name)s` placeholders as `$1`, `$2`... (one number per name), and the
    names in their numbers' order."""
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in names:
            names[name] = len(names) + 1
        return f"${names[name]}"

    return _PLACEHOLDER.sub(number, sql).encode(), tuple(names)


class Answer(Sent):
    """A statement's result, read after its batch came back."""

    def __init__(self, transformer: AdaptContext) -> None:
        self._transformer = transformer
        self.result: pq.abc.PGresult | None = None

    def rows(self) -> list[tuple[Any, ...]]:
        result = self._answered()
        transformer = self._transformer
        transformer.set_pgresult(result)
        return transformer.load_rows(0, result.ntuples, tuple)

    def rowcount(self) -> int:
        return self._answered().command_tuples or 0

    def _answered(self) -> pq.abc.PGresult:
        if self.result is None:
            raise psycopg.InterfaceError("the statement's batch was not run")
        return self.result


class PgPipeline:
    """Sends batches of statements on one psycopg connection, a round trip each."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._pgconn = connection.pgconn
        self._encoding = connection.info.encoding
        self._transformer: AdaptContext = Transformer(connection)
        self._queries: dict[str, tuple[bytes, tuple[str, ...]]] = {}
        self._prepared: dict[tuple[bytes, Sequence[int]], bytes] = {}
        self._names = 0  # statements prepared so far: each a name of its own

    def answer(self) -> Answer:
        return Answer(self._transformer)

    def run(
        self, statements: Sequence[tuple[Prepared, Mapping[str, Any], Answer]], *, transaction: bool
    ) -> None:
        """Send `statements` (in a BEGIN ... COMMIT of their own if `transaction`) in one
        round trip and give each its `Answer`. The first statement that fails is raised as
        psycopg would raise it, once every answer is in; the server skipped the rest (COMMIT
        too), and the transaction is left for the caller to roll back."""
        calls = self._calls(statements)  # a value psycopg cannot adapt is raised here
        pgconn = self._pgconn
        try:
            pgconn.enter_pipeline_mode()
            if transaction:
                pgconn.send_query_params(b"BEGIN", None)
            for call in calls:
                if call.prepare and call.name:
                    pgconn.send_prepare(call.name, call.query, call.types)
                if call.name:
                    pgconn.send_query_prepared(call.name, call.params, call.formats)
                else:
                    pgconn.send_query_params(call.query, call.params, call.types, call.formats)
            if transaction:
                pgconn.send_query_params(b"COMMIT", None)
            pgconn.pipeline_sync()
            results = self._communicate()
            expected = sum(1 + call.prepare for call in calls) + (2 if transaction else 0)
            if len(results) != expected:
                raise psycopg.InterfaceError("a statement of the batch gave several results")
            pgconn.exit_pipeline_mode()
        except BaseException:
            # Half-sent, or answers unread: nobody can use this connection any more. Closed,
            # the caller's rollback fails and the writer takes a new connection.
            pgconn.finish()
            raise
        # One result per command sent: BEGIN, [PREPARE,] statement, ..., COMMIT.
        at = 1 if transaction else 0
        for (_, _, answer), call in zip(statements, calls, strict=True):
            if call.prepare:
                if call.name and results[at].status == pq.ExecStatus.COMMAND_OK:
                    self._prepared[call.query, call.types] = call.name
                at += 1
            answer.result = results[at]
            at += 1
        for result in results:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise errors.error_from_result(result, encoding=self._encoding)

    def _calls(
        self, statements: Sequence[tuple[Prepared, Mapping[str, Any], Answer]]
    ) -> list[_Call]:
        """How to send each statement, its values dumped: by the name it was prepared under,
        prepared first if it is new (a query, by its parameters' types, prepared on this
        connection by no earlier batch), or unprepared past MAX_PREPARED."""
        transformer = self._transformer
        prepared = self._prepared
        fresh: dict[tuple[bytes, Sequence[int]], bytes] = {}
        calls: list[_Call] = []
        for statement, values, _ in statements:
            converted = self._queries.get(statement.sql)
            if converted is None:
                converted = self._queries[statement.sql] = to_numbered(statement.sql)
            query, names = converted
            bound = statement.bind(values)
            params = [bound[name] for name in names]  # type: ignore[call-overload]
            dumped = transformer.dump_sequence(params, [_AUTO] * len(params))
            types = transformer.types or ()
            key = (query, types)
            name = prepared.get(key) or fresh.get(key)
            prepare = False
            if name is None and len(prepared) + len(fresh) < MAX_PREPARED:
                self._names += 1
                name = b"pn_%d" % self._names
                fresh[key] = name
                prepare = True
            calls.append(_Call(query, dumped, types, transformer.formats or (), name, prepare))
        return calls

    def _communicate(self) -> list[pq.abc.PGresult]:
        """Flush what was sent and read every result up to the pipeline's sync: one for each
        command (no statement of the relay's gives more than one)."""
        pgconn = self._pgconn
        fd = pgconn.socket
        poll = select.poll()  # not select(): a busy relay's descriptors pass FD_SETSIZE
        results: list[pq.abc.PGresult] = []
        got = False  # a result of the command being read came (libpq ends each with None)
        writing = True
        while True:
            if writing:
                writing = pgconn.flush() != 0
            # What libpq holds already (a flush that cannot send reads what it can), then
            # what arrives.
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    if not got:
                        break
                    got = False
                elif result.status == _SYNC:
                    return results
                else:
                    results.append(result)
                    got = True
            poll.register(fd, _READ | select.POLLOUT if writing else _READ)
            if any(events & _READ for _, events in poll.poll()):
                pgconn.consume_input()  # raises if the connection is gone


@dataclass(frozen=True, slots=True)
class _Call:
    query: bytes
    params: Sequence[Buffer | None]
    types: Sequence[int]
    formats: Sequence[pq.Format]
    name: bytes | None  # prepared under this name (by this call, if `prepare`)
    prepare: bool


# PostgreSQL array literals for `CAST(... AS type[])`, built in one pass: psycopg's list
# dumpers convert element by element in Python.


def bigint_array(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, map(int, values))) + "}"


def bool_array(values: Iterable[bool]) -> str:
    return "{" + ",".join("t" if value else "f" for value in values) + "}"


def bytea_array(values: Iterable[bytes | None]) -> str:
    return (
        "{"
        + ",".join(
            '"\\\\x' + value.hex() + '"' if value is not None else "NULL" for value in values
        )
        + "}"
    )


def text_array(values: Iterable[str]) -> str:
    return "{" + ",".join(map(_quoted, values)) + "}"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Batch(Tx):
    """The writer's transaction while a batch's operations send: `send` only queues the
    statement, for `PgPipeline.run` to send with the others; `send_row` joins a row to the
    statement queued just before it if that one is the same `RowsStatement` with the same
    scalars (consecutive notifies: one statement for the run)."""

    def __init__(self, pipeline: PgPipeline, cursor: Any, connection: Any) -> None:
        super().__init__(cursor, connection)
        self._pipeline = pipeline
        self._queued: list[tuple[Prepared, Mapping[str, Any] | _Run, Answer]] = []

    def send(self, statement: Prepared, values: Mapping[str, Any]) -> Answer:
        answer = self._pipeline.answer()
        self._queued.append((statement, values, answer))
        return answer

    def send_row(
        self, statement: RowsStatement, scalars: Mapping[str, Any], row: tuple[Any, ...]
    ) -> Sent:
        last = self._queued[-1][1] if self._queued else None
        if not (isinstance(last, _Run) and last.statement is statement and last.scalars == scalars):
            last = _Run(statement, scalars, self._pipeline.answer())
            self._queued.append((statement.statement, last, last.answer))
        last.rows.append(row)
        return _RowOf(last, len(last.rows) - 1)

    def run(self, *, transaction: bool) -> None:
        self._pipeline.run(
            [
                (*values.sent(), answer)
                if isinstance(values, _Run)
                else (statement, values, answer)
                for statement, values, answer in self._queued
            ],
            transaction=transaction,
        )


class _Run:
    """Rows of one `RowsStatement` sent by consecutive operations, and their one answer."""

    def __init__(self, statement: RowsStatement, scalars: Mapping[str, Any], answer: Answer):
        self.statement = statement
        self.scalars = scalars
        self.answer = answer
        self.rows: list[tuple[Any, ...]] = []
        self._answered: list[tuple[Any, ...]] | None = None

    def sent(self) -> tuple[Prepared, Mapping[str, Any]]:
        """The statement and values for the run's rows: the one-row statement for a run of
        one."""
        statement, rows = self.statement, self.rows
        if len(rows) == 1:
            return statement.one, statement.alone(self.scalars, rows[0])
        return statement.statement, statement.values(self.scalars, rows)

    def answered(self) -> list[tuple[Any, ...]]:
        if self._answered is None:
            self._answered = self.answer.rows()
            if len(self._answered) != len(self.rows):
                raise psycopg.InterfaceError("a statement of rows did not answer one per row")
        return self._answered


class _RowOf(Sent):
    """One row's answer in its run's."""

    def __init__(self, run: _Run, index: int) -> None:
        self._run = run
        self._index = index

    def rows(self) -> list[tuple[Any, ...]]:
        return [self._run.answered()[self._index]]

    def rowcount(self) -> int:
        return 1
