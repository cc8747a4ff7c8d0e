"""Runs a handler's Outcome: a finished Reply as it is, a Pending write through the writer.

A write too large for one transaction (a notify's fan-out to many devices) returns a
`Continuation` from each operation but the last: its next operation is submitted only once
the previous one committed, so other requests' writes run between them; the request is
answered after the last.
"""

from __future__ import annotations

import asyncio
from typing import Any

from handlers.endpoints import Outcome, Pending, storage_failed
from handlers.reply import Reply
from storage.records import Continuation
from storage.writer import BatchWriter, StorageError
from web.errorlog import RateLimitedLog


class OutcomeRunner:
    def __init__(self, writer: BatchWriter, errors: RateLimitedLog | None = None) -> None:
        self._writer = writer
        self._errors = errors  # rate-limits the log of failed writes

    def run(self, outcome: Outcome) -> Reply:
        """Block the calling (worker) thread until the write committed."""
        if isinstance(outcome, Reply):
            return outcome
        try:
            result = self._writer.submit(outcome.operation)
            while isinstance(result, Continuation):
                result = self._writer.submit(result.operation)
        except StorageError as exc:
            return storage_failed(outcome, exc, self._errors)
        return outcome.finish(result)

    async def run_async(self, outcome: Outcome) -> Reply:
        """Await the write on the running loop, without holding a thread."""
        if isinstance(outcome, Reply):
            return outcome
        pending: Pending[Any] = outcome
        loop = asyncio.get_running_loop()
        try:
            result = await self._writer.submit_on_loop(pending.operation, loop)
            while isinstance(result, Continuation):
                result = await self._writer.submit_on_loop(result.operation, loop)
        except StorageError as exc:
            return storage_failed(pending, exc, self._errors)
        return pending.finish(result)
