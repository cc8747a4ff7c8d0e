"""Shared fixtures: databases (SQLite file, PostgreSQL schema), engines, a running relay,
the sandbox providers and a served web app.

Where the other test helpers live, one concern a module:
- support.py: a relay on its own loop thread (RunningRelay), its settings, random identities,
  PostgreSQL schemas, a driven clock, settings_error();
- checks.py: SUCCESS, count() of rows, wait_until();
- http_calls.py: one HTTP request on a connection of its own (http_request, request);
- server_process.py: `python server.py` as a real process (run_server, ServerProcess);
- served.py: a Tornado server for one Application (or other connection delegate) or Flask app;
- providers.py: the sandbox APNs and FCM, the relay's APNs sender pointed at one;
- strategies.py: the hypothesis strategies of the fuzz tests, mutate();
- scripted_sender.py and lane_harness.py: one dispatcher lane on virtual time.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine
from tornado.httputil import HTTPServerConnectionDelegate

from sandbox.apns import FakeApns
from tests.providers import Providers, reset_apns, start_providers
from tests.served import Served
from tests.support import (
    POSTGRES_URL_VARIABLE,
    RunningRelay,
    postgres_base_url,
    postgres_schema_url,
    relay_settings,
    schema_engine,
)

BACKENDS = ["sqlite", "postgresql"]


def _postgres_schema_or_skip() -> Iterator[str]:
    base = postgres_base_url()
    if base is None:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_URL_VARIABLE} (set by .ci/run)")
    yield from postgres_schema_url(base)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'relay.sqlite3'}"
        return
    yield from _postgres_schema_or_skip()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'relay.sqlite3'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A schema of its own on the test PostgreSQL (the test is skipped without one)."""
    yield from _postgres_schema_or_skip()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on each backend, the relay's tables made."""
    yield from schema_engine(database_url)


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    yield from schema_engine(sqlite_url)


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


@pytest.fixture(scope="module")
def module_fake_apns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeApns]:
    """One fake APNs for all the tests of a module (its TLS files and key made once)."""
    server = FakeApns.create(tmp_path_factory.mktemp("apns")).start()
    yield server
    server.stop()


@pytest.fixture
def fake_apns(module_fake_apns: FakeApns) -> Iterator[FakeApns]:
    """The module's fake APNs, reset after each test."""
    yield module_fake_apns
    reset_apns(module_fake_apns)


@pytest.fixture
def serve() -> Iterator[Callable[[HTTPServerConnectionDelegate | Flask], Served]]:
    """Serves a Tornado Application (or another HTTPServerConnectionDelegate) or a Flask app
    on a port of its own; closed at the end."""
    started: list[Served] = []

    def start(app: HTTPServerConnectionDelegate | Flask) -> Served:
        started.append(Served(app))
        return started[-1]

    yield start
    for served in started:
        served.close()


@pytest.fixture
def pushing_relay(
    start_relay: Callable[..., RunningRelay], sqlite_url: str, providers: Providers
) -> RunningRelay:
    """A relay on SQLite whose dispatcher pushes to the sandbox providers."""
    return start_relay(sqlite_url, dispatch=True, **providers.settings)


# -- interop tests may not be skipped (issue 8) ------------------------------------------------

INTEROP_MARK = "pytest.mark.interop"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop: checked against public vectors; a skip of one fails the run"
    )


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(report.longrepr[2])
    return str(report.longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A skipped (or xfailed) `interop` test is reported as a failure that says why."""
    report = yield
    if report.skipped and item.get_closest_marker("interop") is not None:
        reason = getattr(report, "wasxfail", "") or _skip_reason(report)
        if hasattr(report, "wasxfail"):
            del report.wasxfail
        report.outcome = "failed"
        report.longrepr = f"an interop test may not skip or xfail, and this one did: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """The same for a whole module of interop tests skipped at import (importorskip...)."""
    report = yield
    if (
        report.skipped
        and isinstance(collector, pytest.Module)
        and INTEROP_MARK in collector.path.read_text()
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"a module of interop tests may not skip, and this one did: {_skip_reason(report)}"
        )
    return report
