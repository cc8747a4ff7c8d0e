"""Storage, queue and dispatcher under churn and time: a hypothesis state machine.

Real parts: the BatchWriter over a real SQLite file or PostgreSQL schema, RelayStore,
DeliveryQueue, and the production ProviderLane. Replaced: the providers (a ScriptedSender the
rules answer), and time (a virtual wall clock and a virtual monotonic clock the rules move).
Two relay "processes" share the database; either can be restarted (its pushes in flight are
abandoned, as by `kill -9`), the wall clock can step an hour either way, leases can run out
while a provider is slow.

Invariants, after every step and at the moment of every send:
- a push is only ever sent to a token registered, when the notify was accepted *and* when it
  is sent, to the recipient (or a member of the group) with the lane's provider, as the very
  same registration (no change of owner or provider in between);
- no registration is deleted except by an unregister, a move, or a dead-token answer for that
  very registration (an APNs 410 only if its timestamp is not older than the registration);
- every claim is settled at most once (a settlement applies only with the lease it answers);
- at the end, with the providers answering, every accepted notify has reached every device
  that stayed registered throughout, short of PUSH_MAX_AGE.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import Engine, bindparam, select

from push.dispatcher import DispatchSettings, ProviderLane
from push.outcome import Push, PushOutcome, Verdict
from stats.counters import Counters
from storage.clock import HeartbeatWriter, RelayClock, resume_clock
from storage.engine import create_schema, make_engine
from storage.protect import IdentifierProtector
from storage.queue import ClaimedDelivery, DeliveryQueue, Settlement, SettleResult
from storage.records import Continuation, Provider
from storage.schema import deliveries, devices
from storage.sql import Prepared, Tx
from storage.store import RelayStore
from storage.writer import BatchWriter
from tests import loops
from tests.scripted_sender import ScriptedSender
from tests.support import postgres_base_url, postgres_schema_url

HOUR_MS = 3_600_000
LEASE_MS = 1_000
MAX_AGE_MS = 2 * HOUR_MS
BACKOFF_CAP_S = 60.0
BOOT = "virtual-boot"
FANOUT_CHUNK = 2  # so that notifies to 3 or 4 devices are written in chunks
SESSIONS = ["05" + f"{i:02x}" * 32 for i in range(1, 4)]
GROUPS = ["05" + f"{i:02x}" * 32 for i in range(0xA1, 0xA3)]
TOKENS = [f"{i:02x}" * 32 for i in range(0x10, 0x14)]
PROVIDERS = [Provider.APNS, Provider.FCM]
DISPATCH = DispatchSettings(
    lease_ms=LEASE_MS,
    max_age_ms=MAX_AGE_MS,
    claim_batch=50,
    backoff_base_s=1.0,
    backoff_cap_s=BACKOFF_CAP_S,
    config_pause_s=5.0,
    config_pause_cap_s=20.0,
)


class VirtualTime:
    """A wall clock that steps when told and a monotonic clock that only moves forward."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000_000
        self.mono = 5_000_000

    def advance(self, ms: int) -> None:
        self.wall += ms
        self.mono += ms


@dataclass(frozen=True)
class Registration:
    session: str
    provider: Provider
    version: int  # the model's generation: new on every change of owner or provider
    registered_at: int  # the relay clock's value when last (re-)registered


@dataclass
class Accepted:
    recipients: set[tuple[str, int]]  # (token, registration version)
    accepted_mono: int


class CheckingQueue(DeliveryQueue):
    """The production queue, plus a record of which leases each settlement applied to."""

    def __init__(
        self, engine: Engine, applied: set[tuple[int, int]], violations: list[str]
    ) -> None:
        super().__init__(engine)
        self._applied = applied
        self._violations = violations  # recorded: an exception here would only fail a task
        self._current_lease = Prepared.compile(
            select(deliveries.c.lease_token).where(deliveries.c.id == bindparam("delivery_id")),
            engine.dialect,
        )

    def settle_op(self, settlement: Settlement) -> Callable[[Tx], SettleResult]:
        inner = super().settle_op(settlement)
        claims: list[ClaimedDelivery] = [
            *settlement.done,
            *(c for c, _ in settlement.dead_tokens),
            *(c for c, _ in settlement.retry),
        ]

        def operation(tx: Tx) -> SettleResult:
            holding = [
                c
                for c in claims
                if tx.scalar(self._current_lease, {"delivery_id": c.delivery_id}) == c.lease_token
            ]
            result = inner(tx)
            if result.stale != len(claims) - len(holding):
                self._violations.append("a settlement changed a row whose lease it did not hold")
            for claim in holding:
                key = (claim.delivery_id, claim.lease_token)
                if key in self._applied:
                    self._violations.append("a claim was settled twice")
                self._applied.add(key)
            return result

        return operation


@dataclass
class Process:
    clock: RelayClock
    writer: BatchWriter
    store: RelayStore
    lanes: dict[Provider, ProviderLane]
    senders: dict[Provider, ScriptedSender]
    heartbeat: HeartbeatWriter
    counters: Counters = field(default_factory=Counters)


class QueueMachine(RuleBasedStateMachine):
    database_url: Callable[[], Iterator[str]]

    def __init__(self) -> None:
        super().__init__()
        self._url_context = type(self).database_url()
        url = next(self._url_context)
        self.engine = make_engine(url, pool_size=4)
        create_schema(self.engine)
        self.loop = loops.new_loop()
        self.time = VirtualTime()
        self.protector = IdentifierProtector(b"i" * 32, b"t" * 32)
        self.applied: set[tuple[int, int]] = set()
        self.violations: list[str] = []
        self.queue = CheckingQueue(self.engine, self.applied, self.violations)
        self.rng = random.Random(0)
        # the model
        self.registrations: dict[str, Registration] = {}
        self.members: dict[str, set[str]] = {group: set() for group in GROUPS}
        self.accepted: dict[str, Accepted] = {}
        self.version_at_send: dict[int, int] = {}  # id(push) -> registration version
        self.refused: set[tuple[str, str, int]] = set()  # (data, token, version): dead answers
        self.all_senders: list[ScriptedSender] = []
        self.prunable: dict[tuple[str, int], int | None] = {}  # dead answers: ts or None
        self.versions = itertools.count(1)
        self.data_ids = itertools.count(1)
        self.sends = 0
        self.processes = [self._start_process(), self._start_process()]

    # -- wiring --------------------------------------------------------------------------

    def _start_process(self) -> Process:
        with self.engine.connect() as conn:
            clock = resume_clock(
                conn, boot=BOOT, wall=lambda: self.time.wall, monotonic=lambda: self.time.mono
            )
        writer = BatchWriter(self.engine, max_batch=64)
        store = RelayStore(
            self.engine, writer, self.protector, clock.now_ms, fanout_chunk=FANOUT_CHUNK
        )
        counters = Counters()
        senders = {
            provider: ScriptedSender(provider, on_send=self._check_send(provider))
            for provider in PROVIDERS
        }
        self.all_senders.extend(senders.values())
        lanes = {
            provider: ProviderLane(
                provider,
                senders[provider],
                writer=writer,
                queue=self.queue,
                protector=self.protector,
                counters=counters,
                settings=DISPATCH,
                clock=clock,
                rng=self.rng,
            )
            for provider in PROVIDERS
        }
        heartbeat = HeartbeatWriter(self.engine, clock, BOOT)
        writer.submit(heartbeat.op())
        return Process(clock, writer, store, lanes, senders, heartbeat, counters)

    def _run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def _pump(self) -> None:
        """Let started sends reach the sender, and finished ones be judged and written."""

        async def pump() -> None:
            for _ in range(5):
                await asyncio.sleep(0)
            for process in self.processes:
                for lane in process.lanes.values():
                    await lane.quiesce()

        self._run(pump())

    # -- the invariant at the moment of sending -------------------------------------------

    def _check_send(self, provider: Provider) -> Callable[[Push], None]:
        # Recorded, not raised: the dispatcher (rightly) turns a sender's exception into a
        # transient failure, which would hide the violation; an invariant reports it.
        def check(push: Push) -> None:
            self.sends += 1
            accepted = self.accepted.get(push.data)
            registration = self.registrations.get(push.token)
            if accepted is None:
                self.violations.append("a push for a notify that was never accepted")
            elif registration is None:
                self.violations.append("a push to a token not registered now")
            elif registration.provider is not provider:
                self.violations.append("a push to a token of the other provider")
            elif (push.token, registration.version) not in accepted.recipients:
                self.violations.append(
                    "a push to a registration that was not a recipient when the notify was"
                    " accepted (unregistered, moved or switched provider since)"
                )
            else:
                self.version_at_send[id(push)] = registration.version

        return check

    @invariant()
    def sends_and_settlements_were_legitimate(self) -> None:
        assert not self.violations, self.violations[0]
        assert not any(s.sent_while_pending for s in self.all_senders), (
            "a process sent a push again while still waiting for its answer"
        )

    # -- rules: registrations and groups ----------------------------------------------------

    def _now(self, process: Process) -> int:
        return process.clock.now_ms()

    @rule(
        p=st.integers(0, 1),
        token=st.sampled_from(TOKENS),
        session=st.sampled_from(SESSIONS),
        provider=st.sampled_from(PROVIDERS),
    )
    def register(self, p: int, token: str, session: str, provider: Provider) -> None:
        process = self.processes[p]
        process.writer.submit(process.store.register_op(token, session, provider))
        previous = self.registrations.get(token)
        same = previous is not None and (previous.session, previous.provider) == (
            session,
            provider,
        )
        version = previous.version if same and previous else next(self.versions)
        self.registrations[token] = Registration(session, provider, version, self._now(process))

    @rule(
        p=st.integers(0, 1),
        token=st.sampled_from(TOKENS),
        other=st.sampled_from(TOKENS),
        change=st.sampled_from(["move", "other_provider", "unregister_then_new_device"]),
        session=st.sampled_from(SESSIONS),
    )
    def churn_while_queued(self, p: int, token: str, other: str, change: str, session: str) -> None:
        """The issue's churn: a push is queued for a registration, which then moves to another
        Session ID, switches provider, or is unregistered while another device registers
        (which the first release handed the same id); then both processes claim."""
        registration = self.registrations.get(token)
        if registration is None:
            self.register(p, token, session, Provider.APNS)
            registration = self.registrations[token]
        self.notify(p, registration.session)
        if change == "move":
            others = [s for s in SESSIONS if s != registration.session]
            self.register(p, token, others[0], registration.provider)
        elif change == "other_provider":
            flipped = Provider.FCM if registration.provider is Provider.APNS else Provider.APNS
            self.register(p, token, registration.session, flipped)
        else:
            self.unregister(p, token)
            self.register(1 - p, other, session, registration.provider)
        for process in (0, 1):
            for provider in PROVIDERS:
                self.claim(process, provider)

    @rule(p=st.integers(0, 1), token=st.sampled_from(TOKENS))
    def unregister(self, p: int, token: str) -> None:
        process = self.processes[p]
        process.writer.submit(process.store.unregister_op(token))
        self.registrations.pop(token, None)

    @rule(p=st.integers(0, 1), group=st.sampled_from(GROUPS), session=st.sampled_from(SESSIONS))
    def join(self, p: int, group: str, session: str) -> None:
        process = self.processes[p]
        process.writer.submit(process.store.subscribe_op(group, session))
        self.members[group].add(session)

    @rule(p=st.integers(0, 1), group=st.sampled_from(GROUPS), session=st.sampled_from(SESSIONS))
    def leave(self, p: int, group: str, session: str) -> None:
        process = self.processes[p]
        process.writer.submit(process.store.unsubscribe_op(group, session))
        self.members[group].discard(session)

    @rule(
        p=st.integers(0, 1),
        send_to=st.sampled_from(SESSIONS + GROUPS),
        claim_between_chunks=st.booleans(),
    )
    def notify(self, p: int, send_to: str, claim_between_chunks: bool = False) -> None:
        """A fan-out to more than FANOUT_CHUNK devices is written in several operations; both
        processes may claim between them (nothing of it may be sent before it is accepted)."""
        process = self.processes[p]
        data = f"notify{next(self.data_ids)}"
        result = process.writer.submit(
            process.store.enqueue_notification_op(send_to, data, dedup_window_ms=0)
        )
        while isinstance(result, Continuation):
            if claim_between_chunks:
                for other in (0, 1):
                    for provider in PROVIDERS:
                        self.claim(other, provider)
            result = process.writer.submit(result.operation)
        outcome = result
        sessions = self.members.get(send_to, set()) | {send_to}
        recipients = {
            (token, reg.version)
            for token, reg in self.registrations.items()
            if reg.session in sessions
        }
        assert outcome.deliveries == len(recipients)
        self.accepted[data] = Accepted(recipients, self.time.mono)

    # -- rules: the dispatcher and the providers ------------------------------------------

    @rule(p=st.integers(0, 1), provider=st.sampled_from(PROVIDERS))
    def claim(self, p: int, provider: Provider) -> None:
        self._run(self.processes[p].lanes[provider].claim_once())
        self._pump()

    @rule(p=st.integers(0, 1))
    def renew(self, p: int) -> None:
        for lane in self.processes[p].lanes.values():
            self._run(lane.renew_leases())

    @rule(
        p=st.integers(0, 1),
        provider=st.sampled_from(PROVIDERS),
        kind=st.sampled_from(
            [
                "accepted",
                "accepted",
                "gone_410_before",
                "gone_410_after",
                "bad_device_token",
                "unregistered",
                "server_error",
                "retry_after",
                "timeout",
            ]
        ),
    )
    def answer(self, p: int, provider: Provider, kind: str) -> None:
        sender = self.processes[p].senders[provider]
        waiting = next((pending for pending in sender.pending if not pending.answer.done()), None)
        if waiting is None:
            return
        push = waiting.push
        outcome = self._outcome(kind, self.registrations.get(push.token))
        sender.answer_next(outcome)
        if outcome.verdict is Verdict.DEAD_TOKEN:
            # About the registration the push was sent to (checked at send time). The provider
            # refused this push for good: it is answered, not lost, whether or not the
            # registration is then deleted (the 410 timestamp rule may keep it).
            key = (push.token, self.version_at_send[id(push)])
            self.prunable[key] = outcome.invalid_since_ms
            self.refused.add((push.data, *key))
        self._pump()

    @staticmethod
    def _outcome(kind: str, registration: Registration | None) -> PushOutcome:
        registered_at = registration.registered_at if registration else 0
        if kind == "accepted":
            return PushOutcome(Verdict.ACCEPTED)
        if kind == "gone_410_before":  # Apple's timestamp predates the registration: keep it
            return PushOutcome(
                Verdict.DEAD_TOKEN, reason="Unregistered", invalid_since_ms=registered_at - 1000
            )
        if kind == "gone_410_after":
            return PushOutcome(
                Verdict.DEAD_TOKEN, reason="Unregistered", invalid_since_ms=registered_at + 1000
            )
        if kind == "bad_device_token":
            return PushOutcome(Verdict.DEAD_TOKEN, reason="BadDeviceToken")
        if kind == "unregistered":
            return PushOutcome(Verdict.DEAD_TOKEN, reason="UNREGISTERED")
        if kind == "retry_after":
            return PushOutcome.transient("429", retry_after=30.0)
        if kind == "timeout":
            return PushOutcome.transient("timeout")
        return PushOutcome.transient("503")

    # -- rules: time and processes --------------------------------------------------------

    @rule(
        p=st.integers(0, 1),
        provider=st.sampled_from(PROVIDERS),
        kind=st.sampled_from(["accepted", "server_error", "bad_device_token"]),
    )
    def answer_slower_than_the_lease(self, p: int, provider: Provider, kind: str) -> None:
        """A provider answers after the lease ran out unrenewed (this process stalled), and
        the other process has claimed and sent the same push meanwhile."""
        self.claim(p, provider)
        self.time_passes(LEASE_MS + 100)
        self.claim(1 - p, provider)
        self.answer(p, provider, kind)
        self.answer(1 - p, provider, "accepted")

    @rule(ms=st.sampled_from([300, 1_100, 1_100, 5_000, 31_000, 400_000]))
    def time_passes(self, ms: int) -> None:
        self.time.advance(ms)
        if ms >= 30_000:  # the relay writes its clock's heartbeat every 30 s
            for process in self.processes:
                process.writer.submit(process.heartbeat.op())

    @rule(direction=st.sampled_from([-1, 1]))
    def wall_clock_steps(self, direction: int) -> None:
        self.time.wall += direction * HOUR_MS

    @rule(p=st.integers(0, 1))
    def restart(self, p: int) -> None:
        old = self.processes[p]
        for sender in old.senders.values():
            sender.abandon()
        self._pump()
        for lane in old.lanes.values():
            self._run(lane.drain(0))
        old.writer.close()
        self.processes[p] = self._start_process()

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def registrations_match(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(devices.c.token_sealed, devices.c.session_hash, devices.c.provider)
            ).all()
        stored = {
            self.protector.open_token(sealed): (session_hash, Provider(provider))
            for sealed, session_hash, provider in rows
        }
        for token, (session_hash, provider) in stored.items():
            registration = self.registrations.get(token)
            assert registration is not None, "a registration the model does not know"
            assert session_hash == self.protector.identity(registration.session)
            assert provider is registration.provider
        for token, registration in list(self.registrations.items()):
            if token in stored:
                continue
            key = (token, registration.version)
            assert key in self.prunable, "a registration deleted without a dead-token answer"
            invalid_since = self.prunable[key]
            assert invalid_since is None or registration.registered_at <= invalid_since, (
                "a registration deleted although registered after the 410 timestamp"
            )
            del self.registrations[token]

    def teardown(self) -> None:
        try:
            self._drain_and_check()
        finally:
            for process in self.processes:
                for sender in process.senders.values():
                    sender.abandon()
                for lane in process.lanes.values():
                    self._run(lane.drain(0))
                process.writer.close()
            self.loop.close()
            self.engine.dispose()
            next(self._url_context, None)

    def _drain_and_check(self) -> None:
        process = self.processes[0]
        for sender in (s for p in self.processes for s in p.senders.values()):
            sender.answer_all(PushOutcome(Verdict.ACCEPTED))
        self._pump()
        for sender in process.senders.values():
            sender.auto = PushOutcome(Verdict.ACCEPTED)
        for _ in range(40):
            with self.engine.connect() as conn:
                waiting = conn.execute(select(deliveries.c.id)).first()
            if waiting is None:
                break
            self.time.advance(int(BACKOFF_CAP_S * 1000) + LEASE_MS)
            for lane in process.lanes.values():
                self._run(lane.claim_once())
            self._pump()
        self.registrations_match()
        self.sends_and_settlements_were_legitimate()
        delivered = {
            (push.data, push.token, self.version_at_send[id(push)])
            for sender in self.all_senders
            for push in sender.accepted
        } | self.refused
        for data, accepted in self.accepted.items():
            age_ms = self.time.mono - accepted.accepted_mono
            if age_ms > MAX_AGE_MS * 0.9 - BACKOFF_CAP_S * 1000:
                continue  # may have been dropped for its age
            for token, version in accepted.recipients:
                registration = self.registrations.get(token)
                if registration is None or registration.version != version:
                    continue  # unregistered, moved or pruned since: nothing owed
                assert (data, token, version) in delivered, (
                    "an accepted notify never reached a device that stayed registered"
                )


def _sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        yield f"sqlite:///{Path(directory) / 'relay.sqlite3'}"


def _postgres_url() -> Iterator[str]:
    base = postgres_base_url()
    assert base is not None
    yield from postgres_schema_url(base)


PROPERTY_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class SQLiteQueueMachine(QueueMachine):
    database_url = staticmethod(_sqlite_url)


class PostgresQueueMachine(QueueMachine):
    database_url = staticmethod(_postgres_url)


TestQueueOnSQLite = SQLiteQueueMachine.TestCase
TestQueueOnSQLite.settings = PROPERTY_SETTINGS


@pytest.mark.skipif(postgres_base_url() is None, reason="PostgreSQL tests need its URL")
class TestQueueOnPostgres(PostgresQueueMachine.TestCase):  # type: ignore[misc,valid-type]
    settings = settings(PROPERTY_SETTINGS, max_examples=20)
