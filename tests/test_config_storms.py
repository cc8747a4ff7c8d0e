"""Configuration mistakes that look like dead tokens (issue 12, point 4).

A wrong APNS_SANDBOX makes Apple answer `BadDeviceToken` for every token; a wrong APNS_TOPIC,
`DeviceTokenNotForTopic`; a service account of another Firebase project, `SENDER_ID_MISMATCH`.
The lane must then pause and prune nothing, yet a lone such answer among working pushes is one
token of another app, and must neither prune everyone nor pause everyone (push/dispatcher.py).

The lane tests drive the production ProviderLane with a real BatchWriter over SQLite or
PostgreSQL, a ScriptedSender for the provider, and virtual time: nothing sleeps for real. The
last test runs a real relay against the sandbox APNs answering BadDeviceToken to everything.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from push.dispatcher import ProviderLane
from push.outcome import PushOutcome, Verdict
from sandbox import script
from stats.counters import Counters
from storage.clock import RelayClock
from storage.engine import create_schema, make_engine
from storage.protect import IdentifierProtector
from storage.queue import DeliveryQueue
from storage.records import Continuation, Provider
from storage.schema import deliveries, devices
from storage.store import RelayStore
from storage.writer import BatchWriter
from tests import loops
from tests.checks import count, wait_until
from tests.lane_harness import LANE_SETTINGS, settle
from tests.providers import Providers
from tests.scripted_sender import ScriptedSender
from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id

SETTINGS = LANE_SETTINGS
ACCEPTED = PushOutcome(Verdict.ACCEPTED)
BAD_DEVICE_TOKEN = PushOutcome(Verdict.DEAD_TOKEN, reason="BadDeviceToken")
NOT_FOR_TOPIC = PushOutcome(
    Verdict.CONFIG_ERROR, reason="DeviceTokenNotForTopic", hint="APNS_TOPIC (the app's bundle id)"
)
SENDER_ID_MISMATCH = PushOutcome(
    Verdict.CONFIG_ERROR,
    reason="SENDER_ID_MISMATCH",
    hint="FCM_SERVICE_ACCOUNT_FILE and FCM_PROJECT_ID",
)
UNREGISTERED = PushOutcome(Verdict.DEAD_TOKEN, reason="UNREGISTERED")
CREDENTIALS = PushOutcome(
    Verdict.CONFIG_ERROR, reason="InvalidProviderToken", hint="APNS_KEY_FILE, APNS_KEY_ID"
)


class VirtualTime:
    def __init__(self) -> None:
        self.wall = 1_800_000_000_000
        self.mono = 7_000_000

    def advance(self, seconds: float) -> None:
        self.wall += int(seconds * 1000)
        self.mono += int(seconds * 1000)


@dataclass
class Lane:
    """One provider lane with everything it needs, on virtual time."""

    provider: Provider
    time: VirtualTime
    engine: Any
    writer: BatchWriter
    store: RelayStore
    lane: ProviderLane
    sender: ScriptedSender
    counters: Counters
    loop: asyncio.AbstractEventLoop
    tokens: dict[str, str]  # token -> its Session ID

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def register(self, count: int, session: str | None = None) -> list[str]:
        new = [
            random_apns_token() if self.provider is Provider.APNS else random_fcm_token()
            for _ in range(count)
        ]
        for token in new:
            owner = session or random_session_id()
            self.writer.submit(self.store.register_op(token, owner, self.provider))
            self.tokens[token] = owner
        return new

    def notify(self, tokens: list[str]) -> None:
        for session in sorted({self.tokens[token] for token in tokens}):
            data = base64.b64encode(os.urandom(30)).decode()
            result = self.writer.submit(
                self.store.enqueue_notification_op(session, data, dedup_window_ms=0)
            )
            while isinstance(result, Continuation):
                result = self.writer.submit(result.operation)

    def claim(self) -> int:
        claimed: int = self.run(self.lane.claim_once())
        self.pump()
        return claimed

    def pump(self) -> None:
        self.run(settle(self.lane))

    def push_new(self, count: int, outcome: PushOutcome) -> list[str]:
        """`count` new devices, one notify each, all claimed at once, all answered `outcome`."""
        tokens = self.register(count)
        self.notify(tokens)
        assert self.claim() == count
        self.answer(lambda _: outcome)
        return tokens

    def answer(self, outcome_for: Callable[[str], PushOutcome]) -> None:
        """Answer every push waiting, in the order sent, as `outcome_for(token)` says."""
        while self.sender.pending:
            pending = self.sender.pending[0]
            self.sender.answer_next(outcome_for(pending.push.token))
        self.pump()

    def count(self, table: Any) -> int:
        return count(self.engine, table)

    def due_now(self) -> int:
        now = self.time.wall
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(deliveries)
                    .where(deliveries.c.not_before <= now)
                ).scalar_one()
            )

    def lifetime(self, name: str) -> int:
        return self.counters.lifetime((name,))[name]


@pytest.fixture
def make_lane(database_url: str) -> Iterator[Callable[[Provider], Lane]]:
    built: list[Lane] = []

    def make(provider: Provider) -> Lane:
        engine = make_engine(database_url, pool_size=2)
        create_schema(engine)
        virtual = VirtualTime()
        clock = RelayClock(wall=lambda: virtual.wall, monotonic=lambda: virtual.mono)
        writer = BatchWriter(engine, max_batch=64)
        protector = IdentifierProtector(b"i" * 32, b"t" * 32)
        store = RelayStore(engine, writer, protector, clock.now_ms)
        counters = Counters()
        sender = ScriptedSender(provider, max_in_flight=1000)
        loop = loops.new_loop()
        lane = ProviderLane(
            provider,
            sender,
            writer=writer,
            queue=DeliveryQueue(engine),
            protector=protector,
            counters=counters,
            settings=SETTINGS,
            clock=clock,
            rng=random.Random(0),
        )
        world = Lane(provider, virtual, engine, writer, store, lane, sender, counters, loop, {})
        built.append(world)
        return world

    yield make
    for world in built:
        world.sender.abandon()
        world.pump()
        world.run(world.lane.drain(0))
        world.writer.close()
        world.loop.close()
        world.engine.dispose()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- storms: the configuration is wrong -----------------------------------------------------


def test_a_bad_device_token_storm_pauses_the_lane_and_prunes_nothing(
    make_lane: Callable[[Provider], Lane], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="push.dispatcher")
    world = make_lane(Provider.APNS)
    world.push_new(30, BAD_DEVICE_TOKEN)

    assert world.count(devices) == 30  # no registration deleted
    assert world.count(deliveries) == 30  # every push kept, to be sent again
    assert world.lifetime("tokens_pruned") == 0
    assert world.lane.paused
    assert world.lifetime("apns_config_storms") == 1
    # 19 answers came before there were enough to call it a storm: held back, not pruned.
    assert world.lifetime("apns_suspect_answers_held") == 19
    (line,) = errors(caplog)
    assert "BadDeviceToken" in line
    assert "APNS_SANDBOX" in line
    assert "APNS_TOPIC" in line

    # The pause ends; the pushes go again and get the same answer: paused again, still
    # nothing deleted, and the storm is not logged a second time.
    world.time.advance(SETTINGS.config_pause_s + 1)
    assert not world.lane.paused
    sent_again = world.claim()
    assert sent_again > 0
    world.answer(lambda _: BAD_DEVICE_TOKEN)
    assert world.lane.paused
    assert world.count(devices) == 30
    assert world.count(deliveries) == 30
    assert world.lifetime("tokens_pruned") == 0
    assert len(errors(caplog)) == 1


def test_a_sender_id_mismatch_storm_pauses_the_fcm_lane_and_prunes_nothing(
    make_lane: Callable[[Provider], Lane], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="push.dispatcher")
    world = make_lane(Provider.FCM)
    world.push_new(25, SENDER_ID_MISMATCH)

    assert world.lane.paused
    assert world.count(devices) == 25
    assert world.count(deliveries) == 25
    assert world.lifetime("tokens_pruned") == 0
    assert world.lifetime("fcm_config_storms") == 1
    (line,) = errors(caplog)
    assert "SENDER_ID_MISMATCH" in line
    assert "FCM_SERVICE_ACCOUNT_FILE" in line


def test_a_device_token_not_for_topic_storm_names_apns_topic(
    make_lane: Callable[[Provider], Lane], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="push.dispatcher")
    world = make_lane(Provider.APNS)
    world.push_new(20, NOT_FOR_TOPIC)
    assert world.lane.paused
    assert world.count(devices) == 20
    (line,) = errors(caplog)
    assert "APNS_TOPIC" in line


# -- a lone suspect answer among working pushes: that token is not ours ---------------------


@pytest.mark.parametrize(
    ("provider", "suspect"),
    [
        (Provider.APNS, BAD_DEVICE_TOKEN),
        (Provider.APNS, NOT_FOR_TOPIC),
        (Provider.FCM, SENDER_ID_MISMATCH),
    ],
    ids=["BadDeviceToken", "DeviceTokenNotForTopic", "SENDER_ID_MISMATCH"],
)
def test_a_lone_suspect_answer_drops_that_push_and_keeps_the_lane_running(
    make_lane: Callable[[Provider], Lane],
    caplog: pytest.LogCaptureFixture,
    provider: Provider,
    suspect: PushOutcome,
) -> None:
    """Before: one SENDER_ID_MISMATCH (or DeviceTokenNotForTopic) from one token of another
    app paused everyone's pushes of that provider. Now it is that token's problem: the push is
    dropped and the registration pruned (it can never be delivered from here), and the lane
    goes on."""
    caplog.set_level(logging.WARNING, logger="push.dispatcher")
    world = make_lane(provider)
    working = world.register(24)
    (foreign,) = world.register(1)
    world.notify(working)  # answered first (pushes go in id order), then the foreign token's
    world.notify([foreign])
    assert world.claim() == 25
    world.answer(lambda token: suspect if token == foreign else ACCEPTED)

    assert not world.lane.paused
    assert world.count(deliveries) == 0  # the foreign token's push dropped, the rest sent
    assert world.count(devices) == 24
    assert world.lifetime("tokens_pruned") == 1
    assert errors(caplog) == []
    # The lane still sends at once: a new notify goes out without waiting for any pause.
    world.notify(working[:3])
    assert world.claim() == 3


def test_an_unregistered_answer_still_prunes_at_once(
    make_lane: Callable[[Provider], Lane],
) -> None:
    """Only the ambiguous reasons wait for company: a plain dead token is pruned alone."""
    world = make_lane(Provider.FCM)
    world.push_new(1, UNREGISTERED)
    assert world.count(devices) == 0
    assert world.lifetime("tokens_pruned") == 1


def test_a_credentials_error_still_pauses_on_one_answer(
    make_lane: Callable[[Provider], Lane],
) -> None:
    world = make_lane(Provider.APNS)
    world.push_new(1, CREDENTIALS)
    assert world.lane.paused
    assert world.count(deliveries) == 1


# -- too few answers to tell: hold back, prune nothing, pause nothing -----------------------


def test_too_few_answers_to_judge_are_held_back_and_retried(
    make_lane: Callable[[Provider], Lane], caplog: pytest.LogCaptureFixture
) -> None:
    """A small relay just started with a wrong APNS_SANDBOX: a few answers, all
    BadDeviceToken. Not enough to call a storm, and no evidence the tokens are at fault."""
    caplog.set_level(logging.WARNING, logger="push.dispatcher")
    world = make_lane(Provider.APNS)
    world.push_new(5, BAD_DEVICE_TOKEN)

    assert world.count(devices) == 5
    assert world.count(deliveries) == 5
    assert world.due_now() == 0  # held back: retried later, from config_pause_s on
    assert not world.lane.paused
    assert world.lifetime("apns_suspect_answers_held") == 5
    assert errors(caplog) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one line for all five, naming the setting
    assert "APNS_SANDBOX" in warnings[0]
    # They go again later (within 1.5 times config_pause_s), still without deleting anything.
    world.time.advance(SETTINGS.config_pause_s * 1.5 + 1)
    assert world.claim() == 5


def test_made_up_tokens_cannot_pause_everyone(
    make_lane: Callable[[Provider], Lane],
) -> None:
    """Anyone may register made-up tokens and notify them. However many of them answer
    BadDeviceToken, real pushes still being accepted means the configuration is fine: the
    lane keeps running (pausing it would let any anonymous client stop everyone's pushes)."""
    world = make_lane(Provider.APNS)
    real = world.register(10)
    made_up = world.register(60)
    world.notify(real)  # real pushes answered first, then the flood (pushes go in id order)
    world.notify(made_up)
    assert world.claim() == 70
    fake = set(made_up)
    world.answer(lambda token: BAD_DEVICE_TOKEN if token in fake else ACCEPTED)

    assert not world.lane.paused
    assert world.lifetime("apns_config_storms") == 0
    assert world.count(devices) >= 10  # every real registration kept
    with world.engine.connect() as conn:
        kept = {
            world.store.protector.open_token(sealed)
            for (sealed,) in conn.execute(select(devices.c.token_sealed))
        }
    assert set(real) <= kept


# -- end to end: the sandbox APNs refuses every token ------------------------------------


def _count(relay: RunningRelay, table: Any) -> int:
    with relay.relay.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_relay_facing_the_wrong_apns_environment_deletes_no_registration(
    start_relay: Callable[..., RunningRelay],
    sqlite_url: str,
    providers: Providers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sandbox APNs answers BadDeviceToken to every push, as Apple does when APNS_SANDBOX
    names the other environment: no registration is deleted, the pushes wait, the log says
    which settings to check, and /metrics counts the storm."""
    caplog.set_level(logging.WARNING, logger="push.dispatcher")
    providers.apns.scripts.default = script.bad_device_token()
    relay = start_relay(sqlite_url, dispatch=True, **providers.settings)
    group = random_session_id()
    for _ in range(25):
        member = random_session_id()
        token = random_apns_token()
        assert relay.call_v2("register", {"token": token, "pubKey": member})[0] == 200
        assert (
            relay.call_v2(
                "subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": member}
            )[0]
            == 200
        )
    data = base64.b64encode(os.urandom(50)).decode()
    assert relay.call_v2("notify", {"data": data, "send_to": group})[0] == 200
    providers.apns.pushes.wait_for(25, timeout=30)
    (lane,) = [lane for lane in relay.relay.dispatcher.lanes if lane.provider is Provider.APNS]
    wait_until(lambda: lane.paused, "the APNs lane pauses")
    counters = relay.relay.counters
    wait_until(
        lambda: counters.lifetime(("ios_pn_failed",))["ios_pn_failed"] == 25,
        "every answer judged",
    )
    relay.call(lane.quiesce())
    assert _count(relay, devices) == 25
    assert _count(relay, deliveries) == 25
    assert counters.lifetime(("tokens_pruned",))["tokens_pruned"] == 0
    assert counters.lifetime(("apns_config_storms",))["apns_config_storms"] == 1
    (line,) = errors(caplog)
    assert "APNS_SANDBOX" in line
    assert relay.relay.metrics is not None
    scrape = relay.relay.metrics.render().decode()
    assert 'pn_relay_events_total{event="apns_config_storms"} 1.0' in scrape
