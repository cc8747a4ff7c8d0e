"""Notifies that commit together: on PostgreSQL the consecutive notifies of a writer's batch
go as one statement (NOTIFY_AT_ONCE over arrays, storage/store.py) in one round trip with
the rest of the batch (storage/pgpipe.py); on SQLite one after the other. Either way each
notify's answer is the one it would get alone, in the batch's order: the first of two
identical notifies is queued, the second a duplicate; a refused one claims nothing; a notify
to nobody, or a duplicate, costs no allowance. A statement that fails, or a connection that
dies, sends the batch's notifies again one by one: each is written exactly once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from storage.records import Enqueued, Provider
from storage.schema import deliveries, notifications
from storage.sql import Tx
from storage.writer import StorageError
from tests import test_fanout_chunks
from tests.checks import count
from tests.support import random_apns_token, random_session_id
from tests.test_fanout_chunks import World, open_world

world = test_fanout_chunks.world  # the fixture: a store, its writer and queue, on each backend
WINDOW = 600_000


@pytest.fixture
def pg(postgres_url: str) -> Iterator[World]:
    yield from open_world(postgres_url)


class Admits:
    """A rate limit that answers one notify's admission as told, and counts."""

    def __init__(self, admit: bool) -> None:
        self._admit = admit
        self.admitted = 0
        self.refunded = 0

    def admit(self, recipient: bytes) -> bool:
        self.admitted += self._admit
        return self._admit

    def refund(self, recipient: bytes) -> None:
        self.refunded += 1

    @property
    def charged(self) -> int:
        return self.admitted - self.refunded


def together(world: World, operations: list[Callable[[Tx], Any]]) -> list[Future[Any]]:
    """Submit `operations` while the writer is held, so that they commit in one batch (if
    none fails); returns their futures once all are answered."""
    running, release = threading.Event(), threading.Event()

    def hold(_tx: Tx) -> None:
        running.set()
        release.wait(30)

    held = world.writer.submit_async(hold)
    assert running.wait(30)
    futures = [world.writer.submit_async(operation) for operation in operations]
    release.set()
    held.result(timeout=30)
    for future in futures:
        future.exception(timeout=30)
    return futures


class Recipients:
    """Alice (one device), Bob (two), a group of both, and nobody: (Session ID, devices,
    via a group)."""

    def __init__(self, world: World) -> None:
        alice, bob, group = (random_session_id() for _ in range(3))
        for session, devices in ((alice, 1), (bob, 2)):
            for _ in range(devices):
                world.run(world.store.register_op(random_apns_token(), session, Provider.APNS))
            world.run(world.store.subscribe_op(group, session))
        self.targets = [(alice, 1, False), (bob, 2, False), (group, 3, True)]
        self.targets.append((random_session_id(), 0, False))


notifies = st.lists(
    st.tuples(
        st.integers(0, 3),  # whom (Recipients.targets)
        st.integers(0, 1),  # which of two payloads
        st.booleans(),  # a dedup window, or none
        st.booleans(),  # admitted by the rate limit
    ),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=notifies)
def test_notifies_in_one_batch_answer_as_they_would_one_after_the_other(
    world: World, batch: list[tuple[int, int, bool, bool]]
) -> None:
    recipients = Recipients(world)
    payloads = [os.urandom(30).hex(), os.urandom(30).hex()]
    live: set[tuple[int, int]] = set()
    expected: list[Enqueued] = []
    charges: list[int] = []
    operations = []
    answers = []
    for whom, payload, windowed, admit in batch:
        session, devices, via_group = recipients.targets[whom]
        answer = Admits(admit)
        answers.append(answer)
        operations.append(
            world.store.enqueue_notification_op(
                session,
                payloads[payload],
                dedup_window_ms=WINDOW if windowed else 0,
                admission=answer,
            )
        )
        key = (whom, payload) if windowed else None
        if devices == 0:
            expected.append(Enqueued(deliveries=0, via_group=False, duplicate=False))
        elif key in live:
            expected.append(Enqueued(0, via_group, duplicate=True))
        elif not admit:
            expected.append(Enqueued(0, via_group, duplicate=False, refused="notify_rate"))
        else:
            expected.append(Enqueued(devices, via_group, duplicate=False))
            if key is not None:
                live.add(key)
        charges.append(int(expected[-1].deliveries > 0))
    before = count(world.engine, deliveries), count(world.engine, notifications)
    futures = together(world, operations)
    assert [future.result() for future in futures] == expected
    assert [answer.charged for answer in answers] == charges
    written = [e for e in expected if e.deliveries]
    assert count(world.engine, deliveries) == before[0] + sum(e.deliveries for e in written)
    assert count(world.engine, notifications) == before[1] + len(written)


def test_a_run_of_notifies_is_one_statement(pg: World) -> None:
    """Seven notifies (two of them identical) committed together: one statement for all."""
    pipeline_runs: list[int] = []
    alice, bob = random_session_id(), random_session_id()
    for session in (alice, bob):
        pg.run(pg.store.register_op(random_apns_token(), session, Provider.APNS))
    writer = pg.writer
    original = writer._batch

    def spy(tx: Tx) -> Any:
        batch = original(tx)
        run = batch.run

        def counted(*, transaction: bool) -> None:
            pipeline_runs.append(len(batch._queued))
            run(transaction=transaction)

        batch.run = counted  # type: ignore[method-assign]
        return batch

    writer._batch = spy  # type: ignore[method-assign]
    same = os.urandom(20).hex()
    operations = [
        pg.store.enqueue_notification_op(session, payload, dedup_window_ms=WINDOW)
        for session, payload in [(alice, same), (bob, same), (alice, same)]
        + [(alice, os.urandom(20).hex()) for _ in range(4)]
    ]
    results = [future.result() for future in together(pg, operations)]
    writer._batch = original  # type: ignore[method-assign]
    assert pipeline_runs == [1]
    assert [r.duplicate for r in results] == [False, False, True, False, False, False, False]
    assert count(pg.engine, deliveries) == 6


def test_a_run_whose_statement_fails_is_written_one_by_one_and_only_the_bad_one_fails(
    pg: World,
) -> None:
    """A notify PostgreSQL refuses (its window's end overflows a bigint) in the middle of a
    run: the run's statement fails, so the batch goes again one notify at a time; the others
    are written once, the duplicate still a duplicate, and the bad one alone fails."""
    alice, bob = random_session_id(), random_session_id()
    for session in (alice, bob):
        pg.run(pg.store.register_op(random_apns_token(), session, Provider.APNS))
    payload = os.urandom(20).hex()
    notify = pg.store.enqueue_notification_op
    futures = together(
        pg,
        [
            notify(alice, payload, dedup_window_ms=WINDOW),
            notify(bob, payload, dedup_window_ms=2**63),
            notify(alice, payload, dedup_window_ms=WINDOW),
            notify(bob, os.urandom(20).hex(), dedup_window_ms=WINDOW),
        ],
    )
    with pytest.raises(StorageError):
        futures[1].result()
    assert [futures[i].result().duplicate for i in (0, 2, 3)] == [False, True, False]
    assert count(pg.engine, deliveries) == 2
    assert count(pg.engine, notifications) == 2


def test_a_connection_that_died_between_batches_is_replaced_and_nothing_is_lost(
    pg: World,
) -> None:
    """The writer's server process is terminated (a PostgreSQL restart, a failover) while it
    waits: the notify that meets the dead connection fails (it was not accepted: nothing of it
    was written, and the client's retry is queued, not a duplicate); the writer takes a new
    connection, its statements prepared again there."""
    alice = random_session_id()
    pg.run(pg.store.register_op(random_apns_token(), alice, Provider.APNS))
    notify = pg.store.enqueue_notification_op
    assert pg.run(notify(alice, os.urandom(20).hex(), dedup_window_ms=WINDOW)).deliveries == 1
    backend = pg.run(backend_pid)
    with pg.engine.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    payloads = [os.urandom(20).hex() for _ in range(3)]
    with pytest.raises(StorageError):
        pg.run(notify(alice, payloads[0], dedup_window_ms=WINDOW))
    futures = together(pg, [notify(alice, p, dedup_window_ms=WINDOW) for p in payloads])
    assert [future.result().deliveries for future in futures] == [1, 1, 1]
    again = together(pg, [notify(alice, p, dedup_window_ms=WINDOW) for p in payloads])
    assert [future.result().duplicate for future in again] == [True, True, True]
    assert count(pg.engine, deliveries) == 4
    assert pg.run(backend_pid) != backend


def backend_pid(tx: Tx) -> int:
    """The writer's server process."""
    return int(tx.connection.driver_connection.info.backend_pid)


def test_a_batch_larger_than_the_socket_buffers_goes_and_comes_back_whole(pg: World) -> None:
    """~3 MB of notifies in one batch, then a claim of all of them: libpq's output is flushed
    while the answers are read (neither side waits on the other's full buffer)."""
    sessions = [random_session_id() for _ in range(200)]
    for session in sessions:
        pg.run(pg.store.register_op(random_apns_token(), session, Provider.APNS))
    payloads = [os.urandom(8_000).hex() for _ in sessions]
    notify = pg.store.enqueue_notification_op
    futures = together(
        pg,
        [notify(s, p, dedup_window_ms=WINDOW) for s, p in zip(sessions, payloads, strict=True)]
        + [pg.queue.claim_op(Provider.APNS, 1_000, pg.clock[0], 60_000)],
    )
    assert [future.result().deliveries for future in futures[:-1]] == [1] * 200
    claimed = futures[-1].result().deliveries
    assert sorted(c.data for c in claimed) == sorted(payloads)
