"""PUSH_GATHER: a lane that had nothing more to send, woken by a notify, waits a moment
before it claims, so the notifies of that moment are claimed and sent together."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest

from push.dispatcher import ProviderLane
from push.outcome import Push, PushOutcome
from stats.counters import Counters
from storage.engine import create_schema, make_engine
from storage.protect import IdentifierProtector
from storage.queue import DeliveryQueue
from storage.records import Provider
from storage.store import RelayStore
from storage.writer import BatchWriter
from tests import loops
from tests.lane_harness import LANE_SETTINGS
from tests.scripted_sender import ScriptedSender
from tests.support import random_apns_token, random_session_id


class CountingSender(ScriptedSender):
    """Answers every push accepted, and remembers how many pushes each send carried."""

    def __init__(self) -> None:
        super().__init__(Provider.APNS, max_in_flight=100, batch_size=100)
        self.auto = PushOutcome.accepted()
        self.sends: list[int] = []

    async def send(self, pushes: list[Push]) -> list[PushOutcome]:
        self.sends.append(len(pushes))
        return await super().send(pushes)


@pytest.fixture
def parts(database_url: str) -> Iterator[tuple[RelayStore, BatchWriter, DeliveryQueue]]:
    engine = make_engine(database_url, pool_size=2)
    create_schema(engine)
    writer = BatchWriter(engine)
    store = RelayStore(engine, writer, IdentifierProtector(b"i" * 32, b"t" * 32), lambda: 0)
    yield store, writer, DeliveryQueue(engine)
    writer.close()
    engine.dispose()


def sends_for_two_notifies_apart(
    parts: tuple[RelayStore, BatchWriter, DeliveryQueue], gather_s: float
) -> list[int]:
    """Two notifies 50 ms apart to a lane that is idle: the pushes each send carried."""
    store, writer, queue = parts
    sessions = [random_session_id(), random_session_id()]
    for session in sessions:
        writer.submit(store.register_op(random_apns_token(), session, Provider.APNS))
    sender = CountingSender()
    lane = ProviderLane(
        Provider.APNS,
        sender,
        writer=writer,
        queue=queue,
        protector=store.protector,
        counters=Counters(),
        settings=dataclasses.replace(LANE_SETTINGS, gather_s=gather_s, max_age_ms=10**15),
    )

    async def scenario() -> None:
        running = asyncio.ensure_future(lane.run())
        await asyncio.sleep(0.2)  # the lane's first claim found nothing: it is idle
        for session in sessions:
            op = store.enqueue_notification_op(session, "ZGF0YQ==", dedup_window_ms=0)
            await writer.submit_on_loop(op, asyncio.get_running_loop())
            lane.wake()
            await asyncio.sleep(0.05)
        while len(sender.sent) < 2:
            await asyncio.sleep(0.01)
        await lane.drain(5)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    loops.run(scenario())
    return sender.sends


def test_an_idle_lane_gathers_the_notifies_of_a_moment(parts) -> None:
    assert sends_for_two_notifies_apart(parts, gather_s=2.0) == [2]


def test_without_a_gather_each_notify_is_claimed_at_once(parts) -> None:
    assert sends_for_two_notifies_apart(parts, gather_s=0.0) == [1, 1]
