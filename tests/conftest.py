"""Shared fixtures: databases (SQLite file, PostgreSQL schema) and a running relay."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.providers import Providers, start_providers
from tests.support import (
    POSTGRES_URL_VARIABLE,
    RunningRelay,
    postgres_base_url,
    postgres_schema_url,
    relay_settings,
)

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.sqlite3'}"
        return
    base = postgres_base_url()
    if base is None:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_URL_VARIABLE} (set by .ci/run)")
    yield from postgres_schema_url(base)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'relay.sqlite3'}"


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[Callable[..., RunningRelay]]:
    started: list[RunningRelay] = []

    def start(database_url: str, *, dispatch: bool = False, **overrides: Any) -> RunningRelay:
        data_dir = tmp_path / f"data{len(started)}"
        running = RunningRelay(relay_settings(data_dir, database_url, **overrides), dispatch)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        running.stop()


@pytest.fixture
def relay(start_relay: Callable[..., RunningRelay], database_url: str) -> RunningRelay:
    return start_relay(database_url)


@pytest.fixture
def sqlite_relay(start_relay: Callable[..., RunningRelay], sqlite_url: str) -> RunningRelay:
    return start_relay(sqlite_url)


@pytest.fixture
def providers(tmp_path: Path) -> Iterator[Providers]:
    """A fake APNs and a fake FCM (sandbox/), real servers on 127.0.0.1."""
    yield from start_providers(tmp_path / "providers")


@pytest.fixture
def pushing_relay(
    start_relay: Callable[..., RunningRelay], sqlite_url: str, providers: Providers
) -> RunningRelay:
    """A relay on SQLite whose dispatcher pushes to the sandbox providers."""
    return start_relay(sqlite_url, dispatch=True, **providers.settings)
