"""Test harness: a real relay on a real socket, run on its own IOLoop thread."""

from __future__ import annotations

import asyncio
import http.client
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsrpc.client import OnionClient, PreparedRequest
from server import Relay
from settings import Settings, load_settings

POSTGRES_URL_VARIABLE = "RELAY_TEST_POSTGRES_URL"


def random_session_id() -> str:
    return "05" + secrets.token_hex(32)


def random_apns_token() -> str:
    return secrets.token_hex(32)


def random_fcm_token() -> str:
    return secrets.token_urlsafe(100)[:140] + ":APA91b" + secrets.token_urlsafe(20)


@dataclass
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass
class RunningRelay:
    """A Relay listening on 127.0.0.1:<ephemeral port>, driven from test threads."""

    settings: Settings
    relay: Relay = field(init=False)
    loop: asyncio.AbstractEventLoop = field(init=False)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="relay-loop", daemon=True
        )
        self._thread.start()
        self.relay = self.call(self._build())
        self.client = OnionClient(self.relay.keypair.public_bytes)

    async def _build(self) -> Relay:
        relay = Relay(self.settings)
        await relay.start()
        return relay

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def port(self) -> int:
        assert self.relay.port is not None
        return self.relay.port

    def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> HttpAnswer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("POST", path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return HttpAnswer(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def send_v2(self, request: PreparedRequest) -> tuple[int, dict[str, Any]]:
        """POST a prepared v2 request; return the decrypted (status, body)."""
        answer = self.post(
            "/loki/v2/lsrpc", request.body, {"Content-Type": "application/octet-stream"}
        )
        assert answer.status == 200, (answer.status, answer.body)
        assert answer.headers.get("Content-Type", "").startswith("application/json")
        return request.open_v2_reply(answer.body)

    def call_v2(
        self, endpoint: str, params: dict[str, Any], **style: Any
    ) -> tuple[int, dict[str, Any]]:
        return self.send_v2(self.client.v2(endpoint, params, **style))

    def stop(self) -> None:
        try:
            self.call(self.relay.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def relay_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "DATA_DIR": data_dir,
        "DATABASE_URL": database_url,
        "PORT": 0,
        "WEB_THREADS": 8,
    }
    values.update(overrides)
    return load_settings(environ={}, overrides=values, cwd=data_dir)


def postgres_base_url() -> str | None:
    return os.environ.get(POSTGRES_URL_VARIABLE) or None
