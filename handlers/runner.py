"""Runs a handler's result: a finished Reply as it is, a Pending write through the writer.

The write is awaited on the running loop, never waited for on a thread. A write too large
for one transaction (a notify's fan-out to many devices) returns a `Continuation` from each
operation but the last: its next operation is submitted only once the previous one
committed, so other requests' writes run between them; the request is answered after the
last.
"""

from __future__ import annotations

import asyncio

from handlers.endpoints import HandlerResult, storage_failed
from handlers.reply import Reply
from storage.records import Continuation
from storage.writer import BatchWriter, StorageError
from web.errorlog import RateLimitedLog


class WriteRunner:
    def __init__(self, writer: BatchWriter, errors: RateLimitedLog | None = None) -> None:
        self._writer = writer
        self._errors = errors  # rate-limits the log of failed writes

    async def run(self, result: HandlerResult) -> Reply:
        """Await the write on the running loop, without holding a thread."""
        if isinstance(result, Reply):
            return result
        loop = asyncio.get_running_loop()
        try:
            done = await self._writer.submit_on_loop(result.operation, loop)
            while isinstance(done, Continuation):
                # a fan-out's next chunk (many rows): on the writer thread
                done = await self._writer.submit_on_loop(done.operation, loop, on_thread=True)
        except StorageError as exc:
            return storage_failed(result, exc, self._errors)
        return result.finish(done)
