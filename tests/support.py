"""Test harness: a real relay on a real socket, run on its own IOLoop thread."""

from __future__ import annotations

import asyncio
import calendar
import datetime
import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from eventloop import loop_factory
from lsrpc.client import OnionClient, PreparedRequest
from relay import Relay
from settings import Settings, SettingsError, load_settings
from storage.engine import create_schema, make_engine
from storage.scratch_schema import scratch_schema
from tests import loops
from tests.http_calls import Received, http_request

POSTGRES_URL_VARIABLE = "RELAY_TEST_POSTGRES_URL"


def random_session_id() -> str:
    return "05" + secrets.token_hex(32)


def random_apns_token() -> str:
    return secrets.token_hex(32)


def random_fcm_token() -> str:
    return secrets.token_urlsafe(100)[:140] + ":APA91b" + secrets.token_urlsafe(20)


class DrivenClock:
    """Milliseconds since the epoch, moved by the test."""

    def __init__(self, iso: str) -> None:
        self.now = ms(iso)

    def __call__(self) -> int:
        return self.now

    def set(self, iso: str) -> None:
        self.now = ms(iso)


def ms(iso: str) -> int:
    """An ISO date and time, read as UTC, in milliseconds since the epoch."""
    parsed = datetime.datetime.fromisoformat(iso)
    return calendar.timegm(parsed.timetuple()) * 1000 + parsed.microsecond // 1000


@dataclass
class RunningRelay:
    """A Relay listening on 127.0.0.1:<ephemeral port>, driven from test threads."""

    settings: Settings
    dispatch: bool = False
    relay: Relay = field(init=False)
    loop: asyncio.AbstractEventLoop = field(init=False)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.loop = loop_factory(self.settings.EVENT_LOOP)()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="relay-loop", daemon=True
        )
        self._thread.start()
        self.relay = self.call(self._build())
        self.client = OnionClient(self.relay.keypair.public_bytes)
        self._stopped = False

    async def _build(self) -> Relay:
        relay = Relay(self.settings)
        await relay.start(dispatch=self.dispatch)
        return relay

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def port(self) -> int:
        assert self.relay.port is not None
        return self.relay.port

    def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Received:
        return http_request(self.port, "POST", path, body=body, headers=headers)

    def send_v2(self, request: PreparedRequest) -> tuple[int, dict[str, Any]]:
        """POST a prepared v2 request; return the decrypted (status, body)."""
        answer = self.post(
            "/loki/v2/lsrpc", request.body, {"Content-Type": "application/octet-stream"}
        )
        assert answer.status == 200, (answer.status, answer.body)
        assert answer.headers.get("Content-Type", "").startswith("application/json")
        return request.open_v2_reply(answer.body)

    def send_v4(self, request: PreparedRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """POST a prepared v4 request; check the raw framing; return (meta, body)."""
        answer = self.post("/oxen/v4/lsrpc", request.body)
        assert answer.status == 200, (answer.status, answer.body)
        plaintext = request.open_raw_reply(answer.body)
        # As Session Desktop and iOS read it: a bencoded list, meta first.
        assert plaintext.startswith(b"l") and plaintext.endswith(b"e")
        meta, body = request.open_v4_reply(answer.body)
        assert isinstance(meta["code"], int)
        assert isinstance(meta["headers"], dict)
        assert all(isinstance(v, str) for v in meta["headers"].values())
        assert meta["headers"]["content-type"] == "application/json"
        return meta, body

    def call_v4(
        self, endpoint: str, params: dict[str, Any] | None, **style: Any
    ) -> tuple[int, dict[str, Any]]:
        meta, body = self.send_v4(self.client.v4(endpoint, params, **style))
        return int(meta["code"]), body

    def call_v2(
        self, endpoint: str, params: dict[str, Any], **style: Any
    ) -> tuple[int, dict[str, Any]]:
        return self.send_v2(self.client.v2(endpoint, params, **style))

    def stop_relay_only(self) -> None:
        """Stop the relay (writes flushed, database closed) but keep the loop thread."""
        if not self._stopped:
            self._stopped = True
            self.call(self.relay.stop())

    def stop(self) -> None:
        try:
            self.stop_relay_only()
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
        "EVENT_LOOP": loops.chosen(),
    }
    values.update(overrides)
    return load_settings(environ={}, overrides=values, cwd=data_dir)


def schema_engine(url: str, pool_size: int = 4) -> Iterator[Engine]:
    """An engine on `url` with the relay's tables made, disposed of when the test ends."""
    engine = make_engine(url, pool_size=pool_size)
    try:
        create_schema(engine)
        yield engine
    finally:
        engine.dispose()


def settings_error(directory: Path, config: str | None = None, **environ: str) -> str:
    """The one-line SettingsError of loading `config` (a config file's text) and `environ`."""
    config_file = None
    if config is not None:
        config_file = directory / "given_config.py"
        config_file.write_text(config)
    with pytest.raises(SettingsError) as caught:
        load_settings(config_file, environ=environ, cwd=directory)
    message = str(caught.value)
    assert "\n" not in message
    return message


def postgres_base_url() -> str | None:
    return os.environ.get(POSTGRES_URL_VARIABLE) or None


def postgres_schema_url(base: str) -> Iterator[str]:
    """A fresh schema per test, so tests never see each other's rows."""
    with scratch_schema(base, prefix="t_") as url:
        yield url
