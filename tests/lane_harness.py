"""One ProviderLane on virtual time: a real writer and database, a scripted provider.

Nothing sleeps: the test moves `time` and calls the lane's steps (`claim`, `answer`) itself,
the way synapse's push tests drive backoff with a fake clock.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from push.dispatcher import DispatchSettings, ProviderLane
from push.outcome import PushOutcome
from stats.counters import Counters
from storage.clock import RelayClock
from storage.engine import create_schema, make_engine
from storage.protect import IdentifierProtector
from storage.queue import DeliveryQueue
from storage.records import Provider
from storage.schema import deliveries
from storage.store import RelayStore
from storage.writer import BatchWriter
from tests import loops
from tests.scripted_sender import ScriptedSender

# The numbers the lane tests count on, spelled out (they are DispatchSettings' defaults today).
LANE_SETTINGS = DispatchSettings(
    lease_ms=60_000,
    max_age_ms=3_600_000,
    claim_batch=500,
    backoff_base_s=1.0,
    backoff_cap_s=300.0,
    config_pause_s=30.0,
    config_pause_cap_s=600.0,
    storm_window_s=60.0,
    storm_min_answers=20,
    storm_max_accepted_share=0.1,
)


async def settle(lane: ProviderLane) -> None:
    """Let the lane's answered sends run on, then wait until it has settled all of them."""
    for _ in range(5):
        await asyncio.sleep(0)
    await lane.quiesce()


@dataclass
class VirtualTime:
    wall: int = 1_800_000_000_000
    mono: int = 1_000

    def advance(self, ms: float) -> None:
        self.wall += int(ms)
        self.mono += int(ms)


@dataclass
class LaneHarness:
    directory: Path
    settings: DispatchSettings
    provider: Provider = Provider.APNS
    time: VirtualTime = field(default_factory=VirtualTime)

    def __post_init__(self) -> None:
        self.engine = make_engine(f"sqlite:///{self.directory / 'lane.sqlite3'}", pool_size=2)
        create_schema(self.engine)
        self.loop = loops.new_loop()
        self.clock = RelayClock(wall=lambda: self.time.wall, monotonic=lambda: self.time.mono)
        self.writer = BatchWriter(self.engine)
        self.protector = IdentifierProtector(b"i" * 32, b"t" * 32)
        self.store = RelayStore(self.engine, self.writer, self.protector, self.clock.now_ms)
        self.counters = Counters()
        self.sender = ScriptedSender(self.provider)
        self.lane = ProviderLane(
            self.provider,
            self.sender,
            writer=self.writer,
            queue=DeliveryQueue(self.engine),
            protector=self.protector,
            counters=self.counters,
            settings=self.settings,
            clock=self.clock,
            rng=random.Random(7),
        )

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def queue_notify(self, session_id: str, token: str, data: str = "ZGF0YQ==") -> None:
        self.writer.submit(self.store.register_op(token, session_id, self.provider))
        self.writer.submit(self.store.enqueue_notification_op(session_id, data, dedup_window_ms=0))

    def claim(self) -> int:
        claimed: int = self.run(self.lane.claim_once())
        self._pump()
        return claimed

    def answer(self, outcome: PushOutcome) -> None:
        assert self.sender.answer_next(outcome) is not None, "no push was waiting"
        self._pump()

    def _pump(self) -> None:
        self.run(settle(self.lane))

    def queued(self) -> list[tuple[int, int]]:
        """(attempts, not_before) of every delivery still queued."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(deliveries.c.attempts, deliveries.c.not_before)).all()
        return [(int(a), int(n)) for a, n in rows]

    def close(self) -> None:
        self.sender.abandon()
        self.run(self.lane.drain(0))
        self.writer.close()
        self.engine.dispose()
        self.loop.close()
