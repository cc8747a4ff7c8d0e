"""A notify's write, on both backends: on PostgreSQL one statement (storage/store.py,
NOTIFY_AT_ONCE) sent in the writer's pipeline, on SQLite a statement a step. The same edges
either way: a duplicate, nobody to push to, a group larger than one chunk, a device that
moves while the notify is written, and several notifies in one group commit.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select, update

from handlers.notify_limit import NotifyRateLimit
from storage.records import Continuation, Enqueued, Provider
from storage.schema import deliveries, devices, notifications
from tests import test_fanout_chunks
from tests.checks import count
from tests.support import random_apns_token, random_session_id
from tests.test_fanout_chunks import World, data

world = test_fanout_chunks.world  # the fixture: a store, its writer and queue, on each backend
WINDOW = 600_000
QUEUED_ONE = Enqueued(deliveries=1, via_group=False, duplicate=False)
DUPLICATE = Enqueued(deliveries=0, via_group=False, duplicate=True)
REFUSED = Enqueued(deliveries=0, via_group=False, duplicate=False, refused="notify_rate")


def frozen_limit(burst: int) -> NotifyRateLimit:
    """A rate limit whose clock stands still: nothing refills during the test."""
    return NotifyRateLimit(per_minute=60, burst=burst, clock=lambda: 0.0)


def registered(world: World, members: int = 1, tokens: list[str] | None = None) -> list[str]:
    """Session IDs with a device each (`tokens`, or new ones)."""
    tokens = tokens or [random_apns_token() for _ in range(members)]
    sessions = [random_session_id() for _ in tokens]
    for token, session in zip(tokens, sessions, strict=True):
        world.run(world.store.register_op(token, session, Provider.APNS))
    return sessions


def group_of(world: World, sessions: list[str]) -> str:
    group = random_session_id()
    for session in sessions:
        world.run(world.store.subscribe_op(group, session))
    return group


def claim_all(world: World) -> tuple[set[int], int]:
    """(device ids claimed, deliveries dropped unsent) of everything due."""
    claim = world.run(world.queue.claim_op(Provider.APNS, 10_000, world.clock[0], 60_000))
    return {each.device_id for each in claim.deliveries}, claim.dropped_unregistered


def test_a_notify_to_nobody_writes_nothing_and_costs_no_allowance(world: World) -> None:
    limit = frozen_limit(burst=1)
    nobody, alice = random_session_id(), registered(world)[0]
    nothing = Enqueued(deliveries=0, via_group=False, duplicate=False)
    for _ in range(3):
        op = world.store.enqueue_notification_op(
            nobody, data(), dedup_window_ms=WINDOW, admission=limit
        )
        assert world.run(op) == nothing
    assert count(world.engine, notifications) == 0
    op = world.store.enqueue_notification_op(alice, data(), dedup_window_ms=WINDOW, admission=limit)
    assert world.run(op) == QUEUED_ONE  # the one notify of the burst was still there


def test_a_duplicate_writes_nothing_costs_no_allowance_and_expires(world: World) -> None:
    limit = frozen_limit(burst=2)
    alice = registered(world)[0]
    payload = data()

    def notify(body: str, **kwargs: Any) -> Any:
        op = world.store.enqueue_notification_op(alice, body, dedup_window_ms=WINDOW, **kwargs)
        return world.run(op)

    assert notify(payload, admission=limit) == QUEUED_ONE
    assert notify(payload, admission=limit) == DUPLICATE
    assert notify(payload, admission=limit) == DUPLICATE
    assert notify(data(), admission=limit) == QUEUED_ONE  # the burst's second
    assert notify(data(), admission=limit) == REFUSED
    assert notify(payload, admission=limit) == DUPLICATE  # a duplicate is never refused
    assert count(world.engine, deliveries) == 2
    world.clock[0] += WINDOW  # the window has passed: the same pair is a new notify
    assert notify(payload) == QUEUED_ONE
    assert count(world.engine, deliveries) == 3


def test_a_device_both_own_and_a_members_is_written_once(world: World) -> None:
    alice = registered(world)[0]
    world.run(world.store.subscribe_op(alice, alice))  # alice's key is also a "group" of hers
    outcome = world.run(world.store.enqueue_notification_op(alice, data(), dedup_window_ms=0))
    assert outcome == Enqueued(deliveries=1, via_group=True, duplicate=False)
    assert count(world.engine, deliveries) == 1


def test_a_group_of_one_chunk_is_one_operation_and_a_larger_one_goes_in_chunks(
    world: World,
) -> None:
    world.store.fanout_chunk = 10
    exact = group_of(world, registered(world, 10))
    outcome = world.run(world.store.enqueue_notification_op(exact, data(), dedup_window_ms=WINDOW))
    assert outcome == Enqueued(deliveries=10, via_group=True, duplicate=False)

    larger = group_of(world, registered(world, 25))
    payload = data()
    limit = frozen_limit(burst=1)
    op = world.store.enqueue_notification_op(
        larger, payload, dedup_window_ms=WINDOW, admission=limit
    )
    first = world.run(op)
    assert isinstance(first, Continuation)
    assert count(world.engine, deliveries) == 20  # 10 + the first chunk of 10
    assert count(world.engine, notifications, ~notifications.c.ready) == 1
    outcome = world.run_to_end(first.operation)
    assert outcome == Enqueued(deliveries=25, via_group=True, duplicate=False)
    assert count(world.engine, deliveries) == 35
    assert count(world.engine, notifications, notifications.c.ready) == 2
    again = world.store.enqueue_notification_op(
        larger, payload, dedup_window_ms=WINDOW, admission=limit
    )
    assert world.run(again) == Enqueued(0, via_group=True, duplicate=True)
    other = world.store.enqueue_notification_op(
        larger, data(), dedup_window_ms=WINDOW, admission=limit
    )
    assert world.run(other) == Enqueued(0, True, duplicate=False, refused="notify_rate")


def test_a_device_moved_between_chunks_is_not_pushed(world: World) -> None:
    """The chunks after the first write the registrations read by the first: a device that
    changed hands meanwhile gets a delivery for its old generation, dropped at claim time."""
    world.store.fanout_chunk = 10
    tokens = [random_apns_token() for _ in range(20)]
    group = group_of(world, registered(world, tokens=tokens))
    first = world.run(world.store.enqueue_notification_op(group, data(), dedup_window_ms=0))
    assert isinstance(first, Continuation)
    with world.engine.connect() as conn:
        written = set(conn.execute(select(deliveries.c.device_id)).scalars())
        ids = {bytes(h): i for h, i in conn.execute(select(devices.c.token_hash, devices.c.id))}
    by_token = {token: ids[world.store.protector.token_hash(token)] for token in tokens}
    moved = next(token for token in tokens if by_token[token] not in written)
    world.run(world.store.register_op(moved, random_session_id(), Provider.APNS))
    assert world.run_to_end(first.operation) == Enqueued(20, via_group=True, duplicate=False)
    claimed, dropped = claim_all(world)
    assert dropped == 1
    assert claimed == set(by_token.values()) - {by_token[moved]}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_device_moved_by_a_concurrent_transaction_is_not_pushed(
    world: World, database_url: str
) -> None:
    """Another process moves the device while the notify's statement runs (its transaction
    commits after our read): the delivery names the old generation and is dropped unsent."""
    token, alice = random_apns_token(), random_session_id()
    world.run(world.store.register_op(token, alice, Provider.APNS))
    token_hash = world.store.protector.token_hash(token)
    with world.engine.connect() as other:
        other.execute(
            update(devices)
            .where(devices.c.token_hash == token_hash)
            .values(generation=devices.c.generation + 1, session_hash=b"b" * 32)
        )
        outcome = world.run(world.store.enqueue_notification_op(alice, data(), dedup_window_ms=0))
        other.commit()
    assert outcome == QUEUED_ONE
    assert claim_all(world) == (set(), 1)
    assert count(world.engine, notifications) == 0


def test_notifies_in_one_group_commit_see_each_other_and_the_writes_between(
    world: World,
) -> None:
    """Held behind another operation, five requests queue up and commit together (on
    PostgreSQL the notifies among them go in the pipeline): the second identical notify is a
    duplicate of the first, and a notify after a register finds the new device."""
    alice = registered(world)[0]
    bob = random_session_id()
    payload = data()
    running, release = threading.Event(), threading.Event()

    def hold(_tx: Any) -> bool:
        running.set()
        return release.wait(60)

    gate = world.writer.submit_async(hold)
    assert running.wait(60)
    store = world.store
    operations = [
        store.enqueue_notification_op(alice, payload, dedup_window_ms=WINDOW),
        store.enqueue_notification_op(alice, payload, dedup_window_ms=WINDOW),
        store.register_op(random_apns_token(), bob, Provider.APNS),
        store.enqueue_notification_op(bob, payload, dedup_window_ms=WINDOW),
        store.enqueue_notification_op(alice, data(), dedup_window_ms=WINDOW),
    ]
    futures = [world.writer.submit_async(operation) for operation in operations]
    commits = world.writer.commits
    release.set()
    assert gate.result(60) is True
    results = [future.result(60) for future in futures]
    assert world.writer.commits == commits + 2  # the gate's, then all five in one
    assert [results[i] for i in (0, 1, 3, 4)] == [QUEUED_ONE, DUPLICATE, QUEUED_ONE, QUEUED_ONE]
    assert count(world.engine, deliveries) == 3
