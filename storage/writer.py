"""Group commit: one thread runs the relay's writes, many to a transaction.

Request threads hand an operation (a function of a `Tx`) to `submit` and block until the
transaction holding it has committed, so "accepted" still means "durable"; but one commit
(one WAL append on SQLite, one round trip on PostgreSQL) now serves every request that
arrived meanwhile. If a batch fails, its operations run again one per transaction, so one
bad operation cannot fail its neighbours.

The writer owns one DBAPI connection and drives its transactions itself: `BEGIN IMMEDIATE`
on SQLite (take the write lock up front, so a concurrent writer waits instead of failing
with a lost update), an explicit `BEGIN` on PostgreSQL (its connection in autocommit mode),
so that a batch of pipelined operations (notifies, claims, settlements) goes to PostgreSQL
as BEGIN, its statements and COMMIT in one round trip (libpq's pipeline, storage/pgpipe.py;
a run of consecutive notifies is one statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

from errors import PnRelayError
from storage.pgpipe import Batch, PgPipeline
from storage.sql import FollowUp, PipelinedOperation, Tx, finish_in

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[Tx], Any]


class StorageError(PnRelayError):
    """The database refused or failed an operation; the message names only the error type."""


class WriterClosedError(StorageError):
    """The writer has shut down; no further operations are accepted."""


_STOP = object()
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
RETRIES_ON_CONFLICT = 4

# Where an operation's result goes: a thread's Future, or an asyncio future on some loop.
Target = Future[Any] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
Settled = tuple[Target, bool, Any]  # (target, succeeded, result or exception)


def _resolve_on_loop(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, succeeded, value in settled:
        if future.cancelled():
            continue
        if succeeded:
            future.set_result(value)
        else:
            future.set_exception(value)


# How many gathers back the last commit may be for the writer to count as busy and gather.
GATHER_WHILE_BUSY = 5
# A batch this large already shares its commit well: the writer stops waiting for company
# (what is queued is still taken). Waiting on would only hold answers back under heavy load.
GATHER_ENOUGH = 8


class BatchWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 256,
        gather_s: float = 0.0,
        name: str = "db-writer",
        on_loop: bool = False,
    ) -> None:
        self._engine = engine
        self._max_batch = max_batch
        # While busy (the last commit less than GATHER_WHILE_BUSY gathers ago), wait up to
        # `gather_s` for more operations to join a batch: at a moderate load this is one
        # commit, one fsync and one loop wake-up per few requests instead of per request.
        self._gather_s = gather_s
        self._last_commit_at = -1e9
        # psycopg's pipeline mode: a run of pipelined operations (notifies) in one round trip.
        self._pipelines = engine.dialect.name == "postgresql"
        self._begin_sql = "BEGIN" if self._pipelines else "BEGIN IMMEDIATE"
        dbapi = engine.dialect.loaded_dbapi
        self._dbapi_error: type[BaseException] = dbapi.Error
        self._connection_errors: tuple[type[BaseException], ...] = (
            dbapi.OperationalError,
            dbapi.InterfaceError,
        )
        self._connection: PoolProxiedConnection | None = None
        self._pipeline: PgPipeline | None = None  # on PostgreSQL, for `_connection`
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Operations the database refused or failed, and transactions committed, by this
        # writer's own connection (see `failures` and `commits`).
        self._failures = 0
        self._commits = 0
        self._closed = False
        self._lock = threading.Lock()
        # One transaction at a time in this process: the writer thread's or the loop's.
        self._turn = threading.Lock()
        # SQLite: small batches of the event loop's writes run on the loop itself, through a
        # second connection (see `submit_on_loop`).
        self._on_loop: _LoopConnection | None = None
        if on_loop and not self._pipelines:
            self._on_loop = _LoopConnection(engine)
        self._pending: list[tuple[Operation, asyncio.Future[Any]]] = []
        self._flush: asyncio.Handle | None = None
        self._flush_soon = False
        # The loop's operations handed to the thread and not yet answered: while there are
        # any, later ones follow them there, so the loop's writes commit in the order made.
        self._loop_ops_on_thread = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def commits(self) -> int:
        """Transactions committed so far: /healthz reads it to tell its own probe waiting
        behind a busy writer from a database nobody can write to (stats/healthz.py)."""
        on_loop = self._on_loop
        return self._commits + (on_loop.commits if on_loop is not None else 0)

    @property
    def failures(self) -> int:
        """Operations the database refused or failed (for /metrics)."""
        return self._failures

    def submit_async(self, operation: Callable[[Tx], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise WriterClosedError("the database writer is shut down")
            self._queue.put((operation, future))
        return future

    def submit(self, operation: Callable[[Tx], T]) -> T:
        """Run `operation` in a transaction; return its result once committed."""
        return self.submit_async(operation).result()

    def submit_on_loop(
        self,
        operation: Callable[[Tx], T],
        loop: asyncio.AbstractEventLoop,
        *,
        on_thread: bool = False,
    ) -> asyncio.Future[T]:
        """Like submit_async, for code on an event loop (and called on it): the loop is woken
        once per batch.

        With `on_loop` (SQLite), operations wait on the loop instead, gathered as the thread
        gathers them (`gather_s` while busy, GATHER_ENOUGH), then a batch smaller than
        GATHER_ENOUGH commits right there on the loop's thread if the writer thread is not in
        a transaction and SQLite's lock is free at once (`_LoopConnection`): no hand-over to
        the thread and back, no GIL passed to and fro around each SQLite call
        (bench/README.md). A larger batch, or one meeting the thread or the lock busy, goes
        to the thread, so a busy relay keeps the database's work beside its loop's; and so
        does an operation that may touch many rows (`on_thread`: a claim, a large
        settlement, a fan-out's next chunk, a purge), with the loop's writes made before it,
        so that it never holds the loop for long."""
        future: asyncio.Future[T] = loop.create_future()
        if self._on_loop is not None:
            if self._closed:
                raise WriterClosedError("the database writer is shut down")
            self._pending.append((operation, future))
            if on_thread:
                if self._flush is not None:
                    self._flush.cancel()
                    self._flush = None
                self._run_pending(loop, on_thread=True)
                return future
            if self._flush is None:
                last = max(self._last_commit_at, self._on_loop.last_commit_at)
                busy = time.monotonic() - last < self._gather_s * GATHER_WHILE_BUSY
                self._flush_soon = not busy
                self._flush = (
                    loop.call_later(self._gather_s, self._run_pending, loop)
                    if busy
                    else loop.call_soon(self._run_pending, loop)
                )
            elif len(self._pending) >= GATHER_ENOUGH and not self._flush_soon:
                self._flush.cancel()
                self._flush_soon = True
                self._flush = loop.call_soon(self._run_pending, loop)
            return future
        with self._lock:
            if self._closed:
                raise WriterClosedError("the database writer is shut down")
            self._queue.put((operation, (loop, future)))
        return future

    def _run_pending(self, loop: asyncio.AbstractEventLoop, *, on_thread: bool = False) -> None:
        """The loop's gathered operations: committed here, or handed to the thread."""
        self._flush = None
        batch, self._pending = self._pending, []
        on_loop = self._on_loop
        if not batch or on_loop is None:
            return
        if (
            not on_thread
            and len(batch) < GATHER_ENOUGH
            and not self._loop_ops_on_thread
            and self._turn.acquire(blocking=False)
        ):
            try:
                results = on_loop.commit([operation for operation, _ in batch])
            finally:
                self._turn.release()
            if results is not None:
                _resolve_on_loop(
                    [
                        (future, True, result)
                        for (_, future), result in zip(batch, results, strict=True)
                    ]
                )
                return
            # SQLite's lock was taken (the health probe, the statistics roll-up) or an
            # operation failed: nothing was committed, and the thread runs the batch (waiting
            # for the lock; isolating a failing operation).
        with self._lock:
            if self._closed:
                error = WriterClosedError("the database writer is shut down")
                _resolve_on_loop([(future, False, error) for _, future in batch])
                return
            self._loop_ops_on_thread += len(batch)
            for operation, future in batch:
                self._queue.put((operation, (loop, future)))
        _, last = batch[-1]
        count = len(batch)
        last.add_done_callback(lambda _: self._handed_back(count))

    def _handed_back(self, count: int) -> None:
        self._loop_ops_on_thread -= count

    def close(self) -> None:
        """Finish every queued operation, then stop the thread and release the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # The loop's operations still gathering: the thread writes them before it stops.
            # (A flush the loop has scheduled finds nothing left; it is not cancelled here,
            # as close() may run on another thread than the loop's.)
            pending, self._pending = self._pending, []
            for operation, future in pending:
                self._queue.put((operation, (future.get_loop(), future)))
            self._queue.put(_STOP)
        self._thread.join()
        if self._on_loop is not None:
            with self._turn:
                self._on_loop.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[tuple[Operation, Target]] = []
            item = self._queue.get()
            started = time.monotonic()
            busy = started - self._last_commit_at < self._gather_s * GATHER_WHILE_BUSY
            gather_until = started + self._gather_s if busy else started
            while True:
                if item is _STOP:
                    stopping = True
                    break
                operation, target = item
                if not isinstance(target, Future) or target.set_running_or_notify_cancel():
                    batch.append((operation, target))
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    left = gather_until - time.monotonic()
                    if left <= 0 or len(batch) >= GATHER_ENOUGH:
                        break
                    try:
                        item = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
            if batch:
                with self._turn:
                    settled = self._run_batch(batch)
                self._settle(settled)
                self._last_commit_at = time.monotonic()
        self._discard_connection()

    def _run_batch(self, batch: list[tuple[Operation, Target]]) -> list[Settled]:
        if len(batch) > 1:
            try:
                results = self._transaction([operation for operation, _ in batch])
            except Exception:  # noqa: BLE001 - isolate the failing operation below
                log.debug("a batch of %d writes failed; retrying them one by one", len(batch))
            else:
                return [
                    self._follow_up(target, result)
                    for (_, target), result in zip(batch, results, strict=True)
                ]
        return [self._run_alone(operation, target) for operation, target in batch]

    def _run_alone(self, operation: Operation, target: Target) -> Settled:
        """`operation` in a transaction of its own, its error handed to `target`."""
        try:
            (result,) = self._transaction_retrying([operation])
        except self._dbapi_error as exc:
            self._failures += 1
            return (target, False, StorageError(type(exc).__name__))
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
            return (target, False, exc)
        return self._follow_up(target, result)

    def _follow_up(self, target: Target, result: Any) -> Settled:
        """A committed operation's result; a `FollowUp` is run first, in a transaction of its
        own (what was committed stays, whatever the follow-up meets)."""
        if isinstance(result, FollowUp):
            return self._run_alone(result.operation, target)
        return (target, True, result)

    @staticmethod
    def _settle(settled: list[Settled]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
        by_loop = defaultdict(list)
        for target, succeeded, value in settled:
            if isinstance(target, Future):
                if succeeded:
                    target.set_result(value)
                else:
                    target.set_exception(value)
            else:
                loop, future = target
                by_loop[loop].append((future, succeeded, value))
        for loop, items in by_loop.items():
            # RuntimeError: the loop closed while we wrote, so nobody is waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve_on_loop, items)

    def _transaction_retrying(self, operations: list[Operation]) -> list[Any]:
        """A transaction, run again when PostgreSQL chose it as a deadlock's or a
        serialisation conflict's victim: another process's concurrent write, not our error."""
        for attempt in range(RETRIES_ON_CONFLICT):
            try:
                return self._transaction(operations)
            except self._dbapi_error as exc:
                sqlstate = getattr(exc, "sqlstate", None)
                if sqlstate not in RETRYABLE_SQLSTATES or attempt == RETRIES_ON_CONFLICT - 1:
                    raise
                log.debug("write conflict (%s); running the transaction again", sqlstate)
        raise AssertionError("unreachable")

    def _connect(self) -> PoolProxiedConnection:
        connection = self._engine.raw_connection()
        if self._pipelines:
            connection.rollback()  # whatever the pool's ping began
            connection.driver_connection.autocommit = True  # type: ignore[union-attr]
            self._pipeline = PgPipeline(connection.driver_connection)  # type: ignore[arg-type]
        return connection

    def _transaction(self, operations: list[Operation]) -> list[Any]:
        """Run `operations` in one transaction and commit it. On PostgreSQL, if they are all
        pipelined, the results may hold `FollowUp`s, not yet run (see `_follow_up`)."""
        if self._connection is None:
            self._connection = self._connect()
        connection = self._connection
        cursor = connection.cursor()
        try:
            tx = Tx(cursor, connection)
            if self._pipelines and all(isinstance(op, PipelinedOperation) for op in operations):
                results = self._pipelined_transaction(tx, operations)
            else:
                cursor.execute(self._begin_sql)
                results = self._run_operations(tx, connection, operations)
                connection.commit()
            self._commits += 1  # only the thread running this writer's transactions
            return results
        except BaseException as exc:
            try:
                connection.rollback()
            except self._dbapi_error:
                self._discard_connection()
            else:
                if isinstance(exc, self._connection_errors):
                    # It may be the connection that failed: start the next one afresh.
                    self._discard_connection()
            raise
        finally:
            with contextlib.suppress(self._dbapi_error):
                cursor.close()

    def _run_operations(
        self, tx: Tx, connection: PoolProxiedConnection, operations: list[Operation]
    ) -> list[Any]:
        """Run `operations` in order; on PostgreSQL, each run of consecutive pipelined ones
        sends all its first statements in one round trip, then receives them in order."""
        results: list[Any] = []
        start = 0
        while start < len(operations):
            stop = start
            if self._pipelines:
                while stop < len(operations) and isinstance(operations[stop], PipelinedOperation):
                    stop += 1
            if stop - start < 2:
                results.append(operations[start](tx))
                start += 1
                continue
            run: list[PipelinedOperation[Any]] = operations[start:stop]  # type: ignore[assignment]
            batch = self._batch(tx)
            sent = [operation.send(batch) for operation in run]
            batch.run(transaction=False)
            for operation, each in zip(run, sent, strict=True):
                results.append(finish_in(tx, operation.receive(each)))
            start = stop
        return results

    def _batch(self, tx: Tx) -> Batch:
        assert self._pipeline is not None  # made with the connection, on PostgreSQL
        return Batch(self._pipeline, tx.cursor, tx.connection)

    def _pipelined_transaction(self, tx: Tx, operations: list[Operation]) -> list[Any]:
        """BEGIN, every operation's statements and COMMIT in one round trip; then their
        answers. An error anywhere is raised once the round trip is over, before any answer
        is read, and the transaction (its COMMIT skipped by the server) is rolled back."""
        run: list[PipelinedOperation[Any]] = operations  # type: ignore[assignment]
        batch = self._batch(tx)
        sent = [operation.send(batch) for operation in run]
        batch.run(transaction=True)
        return [operation.receive(each) for operation, each in zip(run, sent, strict=True)]

    def _discard_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(self._dbapi_error):
                self._connection.invalidate()
            self._connection = None
            self._pipeline = None


class _LoopConnection:
    """The event loop's own SQLite connection (BatchWriter(on_loop=True)): a batch of
    operations in one transaction, committed, or nothing at all.

    It never waits: `BEGIN IMMEDIATE` under a zero busy timeout, so a lock held by another
    connection (the health write probe, the statistics roll-up) is an immediate "not now",
    never a stalled loop. A batch that meets that, or whose operation raises, is rolled back
    and the caller hands it to the writer thread, which waits for the lock and isolates a
    failing operation (operations may run again: each is written so, see `_Ticket`)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._dbapi_error: type[BaseException] = engine.dialect.loaded_dbapi.Error
        self._connection: PoolProxiedConnection | None = None
        self.commits = 0
        self.last_commit_at = -1e9

    def commit(self, operations: list[Operation]) -> list[Any] | None:
        """The operations' results, committed; None if nothing was (see the class)."""
        try:
            if self._connection is None:
                connection = self._engine.raw_connection()
                connection.cursor().execute("PRAGMA busy_timeout=0")
                self._connection = connection
            connection = self._connection
            cursor = connection.cursor()
        except self._dbapi_error:
            self.close()
            return None
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except self._dbapi_error:  # SQLite's lock is taken (SQLITE_BUSY)
            cursor.close()
            return None
        try:
            tx = Tx(cursor, connection)
            results = [operation(tx) for operation in operations]
            connection.commit()
        except Exception:  # noqa: BLE001 - rolled back; the writer thread runs the batch
            try:
                connection.rollback()
            except self._dbapi_error:
                self.close()
            return None
        finally:
            with contextlib.suppress(self._dbapi_error):
                cursor.close()
        self.commits += 1
        self.last_commit_at = time.monotonic()
        return results

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(self._dbapi_error):
                self._connection.invalidate()
            self._connection = None
