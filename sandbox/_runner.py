"""Run an asyncio server either on the caller's loop or on its own background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def check_loopback(host: str) -> str:
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"sandbox servers listen on loopback only, not {host!r}")
    return host


class LoopServer:
    """Base for the fakes: ``serve()``/``aclose()`` on the running loop, or ``start()``/``stop()``
    on a private thread + loop. Also usable as a (sync or async) context manager."""

    host: str
    port: int

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._own_loop = False
        self._down = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- to implement --------------------------------------------------------------------------
    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    # -- async API -----------------------------------------------------------------------------
    async def serve(self) -> Self:
        """Start listening on the running loop; returns once ``port`` is known."""
        if self._loop is not None:
            raise RuntimeError("already serving")
        self._loop = asyncio.get_running_loop()
        try:
            await self._open()
        except BaseException:
            self._loop = None
            raise
        return self

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        if self._loop is None:
            return
        try:
            await self._close()
        finally:
            if not self._own_loop:
                self._loop = None

    async def __aenter__(self) -> Self:
        return await self.serve()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- thread API ----------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> Self:
        """Run on a new daemon thread with its own event loop; returns once listening."""
        if self._loop is not None:
            raise RuntimeError("already serving")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._loop = loop
            boot = loop.create_task(self._open())
            loop.run_until_complete(asyncio.wait([boot]))
            error = boot.exception() if not boot.cancelled() else asyncio.CancelledError()
            if error is not None:
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._own_loop = True
        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"{type(self).__name__} did not start within {timeout}s")
        if failure:
            self._thread.join()
            self._thread = None
            self._loop = None
            self._own_loop = False
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut a ``start()``-ed server down and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._close(), loop)
        try:
            future.result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._loop = None
            self._thread = None
            self._own_loop = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- down and up ---------------------------------------------------------------------------
    @property
    def down(self) -> bool:
        return self._down

    def set_down(self, down: bool, *, refuse: bool = False) -> None:
        """Take the whole server down (``True``) or bring it back.

        Down: open connections are aborted; new ones are accepted then aborted at once, or, with
        ``refuse=True``, the listening socket is closed so connects get ECONNREFUSED. Called on
        the server's own loop, coming back up finishes in a task (:meth:`aset_down` awaits it).
        """
        if self._loop is None:
            self._down = down
            return
        if down:
            self.call_in_loop(lambda: self._go_down(refuse))
        else:
            self._call_async(self._go_up())

    async def aset_down(self, down: bool, *, refuse: bool = False) -> None:
        """:meth:`set_down` for code running on the server's own loop."""
        if down:
            self._go_down(refuse)
        else:
            await self._go_up()

    def _go_down(self, refuse: bool) -> None:
        """Set ``_down``, abort every connection, stop listening if ``refuse``."""
        raise NotImplementedError

    async def _go_up(self) -> None:
        """Clear ``_down``, listen again if the socket was closed."""
        raise NotImplementedError

    def _call_async(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    # -- helpers -------------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def call_in_loop(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn`` on the server's loop (directly when already on it) and return its result."""
        loop = self._loop
        if loop is None:
            return fn()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return fn()

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)

    def run_in_loop(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the server's thread loop from another thread."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("not serving")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
