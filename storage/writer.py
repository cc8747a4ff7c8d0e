"""Group commit: one thread runs the relay's writes, many to a transaction.

Request threads hand an operation (a function of a Connection) to `submit` and block until
the transaction holding it has committed, so "accepted" still means "durable"; but one
commit (one fsync on SQLite, one round trip on PostgreSQL) now serves every request that
arrived meanwhile. If a batch fails, its operations are run again one per transaction, so
one bad operation cannot fail its neighbours.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[Connection], Any]


class WriterClosedError(Exception):
    """The writer has shut down; no further operations are accepted."""


_STOP = object()


class BatchWriter:
    def __init__(self, engine: Engine, *, max_batch: int = 256, name: str = "db-writer") -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit_async(self, operation: Callable[[Connection], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise WriterClosedError("the database writer is shut down")
            self._queue.put((operation, future))
        return future

    def submit(self, operation: Callable[[Connection], T]) -> T:
        """Run `operation` in a transaction; return its result once committed."""
        return self.submit_async(operation).result()

    def close(self) -> None:
        """Finish every queued operation, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[tuple[Operation, Future[Any]]] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                    break
                operation, future = item
                if future.set_running_or_notify_cancel():
                    batch.append((operation, future))
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[Operation, Future[Any]]]) -> None:
        if len(batch) > 1:
            try:
                with self._engine.begin() as conn:
                    results = [operation(conn) for operation, _ in batch]
            except Exception:  # noqa: BLE001 - isolate the failing operation below
                log.debug("a batch of %d writes failed; retrying them one by one", len(batch))
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    future.set_result(result)
                return
        for operation, future in batch:
            try:
                with self._engine.begin() as conn:
                    result = operation(conn)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)
            else:
                future.set_result(result)
