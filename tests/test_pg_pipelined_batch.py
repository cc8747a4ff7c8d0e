"""PostgreSQL: a batch made only of pipelined operations (notifies, claims, settlements) goes
as BEGIN, its statements and COMMIT in one round trip (storage/writer.py), its answers read
after the commit and any follow-up (a fan-out larger than a chunk, a claim that found rows of
a gone registration, a dead token) run in a transaction of its own.

Each test holds the writer on a first operation so that what is submitted meanwhile forms
one batch, and checks that it went as one pipelined transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text, update

from storage.queue import Settlement, SettleResult
from storage.records import Continuation, Enqueued, Provider
from storage.schema import deliveries, devices, notifications
from storage.sql import PipelinedOperation, Prepared, Sent, Tx
from storage.writer import StorageError
from tests.checks import count
from tests.support import random_apns_token, random_session_id
from tests.test_fanout_chunks import World, data, open_world

ONE = Enqueued(deliveries=1, via_group=False, duplicate=False)


@pytest.fixture
def pg(postgres_url: str) -> Iterator[World]:
    """The store, its writer and queue on PostgreSQL, fan-outs in chunks of 3."""
    yield from open_world(postgres_url, fanout_chunk=3)


def one_batch(world: World, operations: list[Callable[[Tx], Any]]) -> list[Future[Any]]:
    """Submit `operations` while the writer is held, so that they form one batch; returns
    their futures once that batch went, as one pipelined transaction, and all answered."""
    writer = world.writer
    pipelined: list[int] = []
    original = writer._pipelined_transaction

    def spy(tx: Tx, ops: list[Any]) -> list[Any]:
        pipelined.append(len(ops))
        return original(tx, ops)

    writer._pipelined_transaction = spy  # type: ignore[method-assign, assignment]
    running, release = threading.Event(), threading.Event()

    def hold(tx: Tx) -> None:
        running.set()
        release.wait(30)

    held = writer.submit_async(hold)
    assert running.wait(30)
    futures = [writer.submit_async(operation) for operation in operations]
    release.set()
    held.result(timeout=30)
    for future in futures:
        future.exception(timeout=30)
    writer._pipelined_transaction = original  # type: ignore[method-assign]
    assert pipelined[0] == len(operations)
    return futures


def sessions_with_a_device(world: World, n: int) -> list[str]:
    sessions = [random_session_id() for _ in range(n)]
    for session in sessions:
        world.run(world.store.register_op(random_apns_token(), session, Provider.APNS))
    return sessions


def test_notifies_claims_and_settlements_commit_together_in_one_pipelined_transaction(
    pg: World,
) -> None:
    alice, bob = sessions_with_a_device(pg, 2)
    pg.run(pg.store.enqueue_notification_op(alice, data(), dedup_window_ms=0))
    first = pg.run(pg.queue.claim_op(Provider.APNS, 10, pg.clock[0], 60_000))
    commits = pg.writer.commits
    futures = one_batch(
        pg,
        [
            pg.queue.settle_op(Settlement(done=list(first.deliveries))),
            pg.store.enqueue_notification_op(bob, data(), dedup_window_ms=0),
            pg.queue.claim_op(Provider.APNS, 10, pg.clock[0], 60_000, with_next_due=True),
        ],
    )
    settled, queued, claimed = (future.result() for future in futures)
    assert pg.writer.commits == commits + 2  # the held operation's, then the batch's
    assert settled == SettleResult()
    assert queued == ONE
    # The claim came after bob's notify in the same transaction, and saw it.
    assert len(claimed.deliveries) == 1
    assert claimed.next_due is None  # nothing else due
    assert count(pg.engine, deliveries) == 1
    assert count(pg.engine, notifications) == 1  # alice's, finished, is gone


def test_a_failing_operation_rolls_the_pipelined_batch_back_and_the_rest_is_written_once(
    pg: World,
) -> None:
    alice, bob = sessions_with_a_device(pg, 2)
    failing = Failing(pg.engine)
    futures = one_batch(
        pg,
        [
            pg.store.enqueue_notification_op(alice, data(), dedup_window_ms=0),
            failing,
            pg.store.enqueue_notification_op(bob, data(), dedup_window_ms=0),
        ],
    )
    assert futures[0].result() == ONE
    assert futures[2].result() == ONE
    with pytest.raises(StorageError):
        futures[1].result()
    assert count(pg.engine, deliveries) == 2  # each notify once: the failed batch left none
    assert count(pg.engine, notifications) == 2
    # The connection is usable again: the next batch goes through.
    assert pg.run(pg.store.enqueue_notification_op(alice, data(), dedup_window_ms=0)) == ONE


class Failing(PipelinedOperation[None]):
    """A pipelined operation whose statement PostgreSQL refuses (a division by zero)."""

    def __init__(self, engine: Engine) -> None:
        self._statement = Prepared.compile(text("SELECT 1 / 0"), engine.dialect)

    def send(self, tx: Tx) -> Sent:
        return tx.send(self._statement, {})

    def receive(self, sent: Sent) -> None:
        sent.rows()


def test_a_fanout_larger_than_a_chunk_in_a_pipelined_batch_writes_its_first_chunk_after(
    pg: World,
) -> None:
    """The one-statement notify finds more recipients than FANOUT_CHUNK (3) and writes
    nothing; its follow-up, after the batch's commit, writes the first chunk."""
    members = sessions_with_a_device(pg, 5)
    group = random_session_id()
    for member in members:
        pg.run(pg.store.subscribe_op(group, member))
    (alice,) = sessions_with_a_device(pg, 1)
    futures = one_batch(
        pg,
        [
            pg.store.enqueue_notification_op(group, data(), dedup_window_ms=600_000),
            pg.store.enqueue_notification_op(alice, data(), dedup_window_ms=0),
        ],
    )
    first, small = (future.result() for future in futures)
    assert small == ONE
    assert isinstance(first, Continuation)
    assert count(pg.engine, deliveries) == 1 + 3
    outcome = pg.run_to_end(first.operation)
    assert outcome == Enqueued(deliveries=5, via_group=True, duplicate=False)
    assert count(pg.engine, deliveries) == 1 + 5


def test_a_pipelined_claim_drops_what_a_gone_registration_left_after_the_commit(
    pg: World,
) -> None:
    alice, bob = sessions_with_a_device(pg, 2)
    for session in (alice, bob):
        pg.run(pg.store.enqueue_notification_op(session, data(), dedup_window_ms=0))
    # Alice's device registered again since (as when a register races the notify): the push
    # written for the registration before is not for this one.
    with pg.engine.begin() as conn:
        newest = select(func.max(devices.c.id)).where(devices.c.id > 0).scalar_subquery()
        conn.execute(
            update(devices)
            .where(devices.c.id == newest)
            .values(generation=devices.c.generation + 1)
        )
    futures = one_batch(
        pg,
        [
            pg.queue.claim_op(Provider.APNS, 10, pg.clock[0], 60_000),
            pg.store.enqueue_notification_op(random_session_id(), data(), dedup_window_ms=0),
        ],
    )
    claim = futures[0].result()
    assert len(claim.deliveries) == 1
    assert claim.dropped_unregistered == 1
    assert count(pg.engine, deliveries) == 1  # the dropped one deleted, unsent
    assert count(pg.engine, notifications) == 1


def test_a_pipelined_settlement_with_a_dead_token_prunes_it_after_the_commit(pg: World) -> None:
    alice, bob = sessions_with_a_device(pg, 2)
    for session in (alice, bob):
        pg.run(pg.store.enqueue_notification_op(session, data(), dedup_window_ms=0))
    claim = pg.run(pg.queue.claim_op(Provider.APNS, 10, pg.clock[0], 60_000))
    dead, done = claim.deliveries
    futures = one_batch(
        pg,
        [
            pg.queue.settle_op(Settlement(done=[done], dead_tokens=[(dead, pg.clock[0])])),
            pg.store.enqueue_notification_op(random_session_id(), data(), dedup_window_ms=0),
        ],
    )
    assert futures[0].result() == SettleResult(pruned=1, stale=0)
    assert count(pg.engine, devices) == 1
    assert count(pg.engine, deliveries) == 0
    assert count(pg.engine, notifications) == 0
