"""A notify's fan-out is written in bounded chunks (issue 12, point 2).

One notify to a group with thousands of devices must not hold the single writer for everyone
else: its deliveries are written FANOUT_CHUNK at a time, one writer operation each, and other
requests' writes run between them; the notify is answered once the last chunk committed. A
crash between chunks pushes nothing (the notification is not ready, so nothing of it can be
claimed) and the client's retry is written afresh. Asserted structurally: the order in which
the writer ran the operations, never a duration.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine

from storage.engine import create_schema, make_engine
from storage.protect import IdentifierProtector
from storage.queue import Claim, DeliveryQueue
from storage.records import Continuation, Enqueued, Provider
from storage.schema import deliveries, devices, notifications
from storage.sql import Tx
from storage.store import FANOUT_ABANDONED_AFTER_MS, RelayStore
from storage.writer import BatchWriter
from tests.checks import SUCCESS, count, wait_until
from tests.support import RunningRelay, random_apns_token, random_session_id


def data() -> str:
    return base64.b64encode(os.urandom(60)).decode()


def seed_group(
    writer: BatchWriter, store: RelayStore, members: int, devices_each: int
) -> tuple[str, list[str]]:
    """A group of `members` Session IDs with `devices_each` devices each, in one operation."""
    group = random_session_id()
    sessions = [random_session_id() for _ in range(members)]
    operations: list[Callable[[Tx], object]] = [
        store.register_op(random_apns_token(), session, Provider.APNS)
        for session in sessions
        for _ in range(devices_each)
    ]
    operations += [store.subscribe_op(group, session) for session in sessions]

    def seed(tx: Tx) -> None:
        for operation in operations:
            operation(tx)

    writer.submit(seed)
    return group, sessions


# -- end to end: another client's register is answered between two chunks -----------------


@dataclass
class Trace:
    submitted: list[str]
    executed: list[str]

    def only(self, names: set[str]) -> list[str]:
        return [name for name in self.executed if name in names]


def trace_writer(relay: RunningRelay) -> Trace:
    """Record, by the operations' names, what the relay hands its writer and in what order the
    writer runs it. The operations themselves run unchanged, on the real writer."""
    writer = relay.relay.writer
    trace = Trace([], [])
    submit_on_loop = writer.submit_on_loop

    def traced(operation: Callable[[Tx], Any], loop: Any, *, on_thread: bool = False) -> Any:
        name = getattr(operation, "__name__", "?")
        trace.submitted.append(name)

        def run(tx: Tx) -> Any:
            trace.executed.append(name)
            return operation(tx)

        return submit_on_loop(run, loop, on_thread=on_thread)

    writer.submit_on_loop = traced  # type: ignore[method-assign]
    return trace


def test_a_register_is_answered_between_the_chunks_of_a_5000_device_notify(
    start_relay: Callable[..., RunningRelay], database_url: str
) -> None:
    relay = start_relay(database_url, MAX_DEVICES_PER_SESSION=100, FANOUT_CHUNK=500)
    group, _ = seed_group(relay.relay.writer, relay.relay.store, members=50, devices_each=100)
    trace = trace_writer(relay)

    # Hold the writer, so that the notify's first operation and then the register queue up
    # behind it in that order; then let go.
    release = threading.Event()
    gate = relay.relay.writer.submit_async(lambda _tx: release.wait(60))
    with ThreadPoolExecutor(2) as pool:
        notify = pool.submit(relay.call_v4, "notify", {"data": data(), "send_to": group})
        wait_until(lambda: "enqueue" in trace.submitted, "the notify reaches the writer")
        token, bob = random_apns_token(), random_session_id()
        register = pool.submit(relay.call_v2, "register", {"token": token, "pubKey": bob})
        wait_until(lambda: "register" in trace.submitted, "the register reaches the writer")
        release.set()
        assert register.result(60) == SUCCESS
        assert notify.result(60) == (200, {"code": 1, "message": "Success"})
    assert gate.result(60) is True

    # The notify's first chunk, then the register, then the nine other chunks: each chunk its
    # own writer operation (the next is submitted only once the previous committed), so the
    # register waited for one chunk of 500, not for 5,000 deliveries.
    order = trace.only({"enqueue", "fanout_chunk", "register"})
    assert order == ["enqueue", "register", *["fanout_chunk"] * 9]
    engine = relay.relay.engine
    assert count(engine, deliveries) == 5000
    assert count(engine, notifications, notifications.c.ready) == 1
    assert count(engine, devices) == 5001


# -- store level: what a crash between chunks leaves, and what cleans it up ---------------


@dataclass
class World:
    engine: Engine
    writer: BatchWriter
    store: RelayStore
    queue: DeliveryQueue
    clock: list[int]

    def run(self, operation: Callable[[Tx], Any]) -> Any:
        return self.writer.submit(operation)

    def run_to_end(self, operation: Callable[[Tx], Any]) -> Any:
        result = self.writer.submit(operation)
        while isinstance(result, Continuation):
            result = self.writer.submit(result.operation)
        return result

    def claimable(self) -> int:
        claim: Claim = self.run(self.queue.claim_op(Provider.APNS, 10_000, self.clock[0], 60_000))
        return len(claim.deliveries) + claim.dropped_unregistered


def open_world(database_url: str, fanout_chunk: int = 500) -> Iterator[World]:
    engine = make_engine(database_url, pool_size=2)
    create_schema(engine)
    writer = BatchWriter(engine)
    clock = [1_800_000_000_000]
    protector = IdentifierProtector(b"i" * 32, b"t" * 32)
    store = RelayStore(engine, writer, protector, lambda: clock[0], fanout_chunk=fanout_chunk)
    try:
        yield World(engine, writer, store, DeliveryQueue(engine), clock)
    finally:
        writer.close()
        engine.dispose()


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    yield from open_world(database_url)


def test_a_crash_between_chunks_pushes_nothing_and_the_retry_is_written_afresh(
    world: World,
) -> None:
    group, _ = seed_group(world.writer, world.store, members=12, devices_each=100)
    payload = data()
    notify = world.store.enqueue_notification_op(group, payload, dedup_window_ms=600_000)
    first = world.run(notify)  # the first chunk; then the process "dies"
    assert isinstance(first, Continuation)
    assert count(world.engine, deliveries) == 500
    assert world.claimable() == 0  # not ready: none of it can be pushed
    assert world.run(world.queue.next_due_op(Provider.APNS, world.clock[0])) is None

    # The client, never answered, sends it again: not a duplicate (the dedup window is only
    # claimed with the last chunk), so every device gets it, once.
    retry = world.store.enqueue_notification_op(group, payload, dedup_window_ms=600_000)
    outcome = world.run_to_end(retry)
    assert outcome == Enqueued(deliveries=1200, via_group=True, duplicate=False)
    assert world.claimable() == 1200
    again = world.store.enqueue_notification_op(group, payload, dedup_window_ms=600_000)
    assert world.run_to_end(again).duplicate

    # The abandoned rows go, a chunk per operation, once old enough to be surely abandoned.
    assert world.run(world.store.purge_abandoned_fanouts_op()) is False
    world.clock[0] += FANOUT_ABANDONED_AFTER_MS + 1
    steps = 0
    while world.run(world.store.purge_abandoned_fanouts_op()):
        steps += 1
    assert steps == 2  # 500 deliveries, then the last (empty) chunk and the notification
    assert count(world.engine, notifications) == 1
    assert count(world.engine, deliveries) == 1200


def test_an_unregister_between_chunks_cannot_orphan_the_rest_of_the_fanout(
    world: World,
) -> None:
    """Every device of the first chunk unregisters before the second chunk is written: the
    notification must survive (it is not ready), or the next chunks would name a notification
    that is gone."""
    world.store.fanout_chunk = 10
    group = random_session_id()
    tokens = [random_apns_token() for _ in range(20)]
    for token in tokens:
        session = random_session_id()
        world.run(world.store.register_op(token, session, Provider.APNS))
        world.run(world.store.subscribe_op(group, session))
    first = world.run(world.store.enqueue_notification_op(group, data(), dedup_window_ms=0))
    assert isinstance(first, Continuation)
    for token in tokens:
        world.run(world.store.unregister_op(token))
    assert count(world.engine, deliveries) == 0
    assert count(world.engine, notifications) == 1  # kept: its fan-out is not finished
    outcome = world.run_to_end(first.operation)
    assert isinstance(outcome, Enqueued)
    # The second chunk was written for registrations gone since: dropped unsent at claim time,
    # and the notification with them.
    claim = world.run(world.queue.claim_op(Provider.APNS, 100, world.clock[0], 60_000))
    assert (claim.deliveries, claim.dropped_unregistered) == ([], 10)
    assert count(world.engine, notifications) == 0
    assert count(world.engine, deliveries) == 0


def test_deleting_a_devices_last_delivery_deletes_its_notification(world: World) -> None:
    """Unregistering (or being replaced at the device cap) deletes what was queued for the
    device; a notification left without deliveries goes too (its data is not kept)."""
    alice, token = random_session_id(), random_apns_token()
    world.run(world.store.register_op(token, alice, Provider.APNS))
    world.run(world.store.enqueue_notification_op(alice, data(), dedup_window_ms=0))
    assert count(world.engine, notifications) == 1
    world.run(world.store.unregister_op(token))
    assert count(world.engine, notifications) == 0
