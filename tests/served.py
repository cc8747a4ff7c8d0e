"""A Tornado HTTPServer for one application on 127.0.0.1:<ephemeral>, on its own loop thread:
for tests of a web part without a whole relay. A Flask app is served as the relay serves its
WSGI routes: through Tornado's WSGIContainer on a small thread pool; a Tornado Application or
any other HTTPServerConnectionDelegate (web/onion_routes.py's OnionFront) as it is."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from flask import Flask
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPServerConnectionDelegate
from tornado.netutil import bind_sockets
from tornado.wsgi import WSGIContainer

from tests import loops
from tests.http_calls import Received, http_request


class Served:
    def __init__(self, app: HTTPServerConnectionDelegate | Flask) -> None:
        self.executor: ThreadPoolExecutor | None = None
        handler: HTTPServerConnectionDelegate | WSGIContainer
        if isinstance(app, Flask):
            self.executor = ThreadPoolExecutor(4, thread_name_prefix="served-wsgi")
            handler = WSGIContainer(app.wsgi_app, executor=self.executor)
        else:
            handler = app
        self.loop = loops.new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def listen() -> HTTPServer:
            server = HTTPServer(handler)
            server.add_sockets(bind_sockets(0, "127.0.0.1"))
            return server

        self.server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(10)
        self.port = next(iter(self.server._sockets.values())).getsockname()[1]

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Received:
        """The answer, its header names in lower case."""
        answer = http_request(self.port, method, path, body=body, headers=headers)
        lowered = {name.lower(): value for name, value in answer.headers.items()}
        return Received(answer.status, lowered, answer.body)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        answer = http_request(self.port, "POST", path, body=body)
        return answer.status, answer.body

    def close(self) -> None:
        async def stop() -> None:
            self.server.stop()
            await self.server.close_all_connections()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        if self.executor is not None:
            self.executor.shutdown()
