"""Every push reaches the registration it was written for, end to end (issue 8).

Over the real onion endpoint, a real relay (SQLite or PostgreSQL) and the sandbox APNs and
FCM, each scenario of the issue: a retry after an unregister, a token moved to someone else
or to the other provider, an answer slower than the lease (one relay, and two relays sharing
a database with one of them stalled), a dead-token answer after a move, concurrent legacy
group registrations on two relays, the queue depth off the write path, and SQLite's
durability mode. Each one failed on the previous release (40e7df5).

Nothing here races real time. A provider's answer is held back with a `Gate` (the fake
waits in its push recorder, the answer already chosen, until the test releases it), a
scheduled retry is made due by writing its `not_before` (the backoff "ran out"), and every
wait is on a condition, with a generous timeout only as an upper bound.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import text

from sandbox import script
from sandbox.apns import ApnsPush
from sandbox.fcm import FcmPush
from sandbox.script import Behaviour, Recorder
from storage.sql import Prepared, Tx
from tests.checks import SUCCESS, count, wait_until
from tests.http_calls import http_request
from tests.providers import Providers
from tests.support import RunningRelay, random_apns_token, random_fcm_token, random_session_id

RETRY_LATER_S = 600.0  # a Retry-After that keeps a failed push waiting for the whole test
Push = ApnsPush | FcmPush
Fake = Any  # FakeApns | FakeFcm: both have .pushes and .scripts


# -- helpers ------------------------------------------------------------------------------


def data() -> str:
    return base64.b64encode(os.urandom(48)).decode()


def register(relay: RunningRelay, token: str, session_id: str, **extra: Any) -> None:
    params = {"token": token, "pubKey": session_id, **extra}
    assert relay.call_v2("register", params) == SUCCESS


def unregister(relay: RunningRelay, token: str) -> None:
    assert relay.call_v2("unregister", {"token": token}) == SUCCESS


def notify(relay: RunningRelay, send_to: str, payload: str) -> None:
    assert relay.call_v2("notify", {"data": payload, "send_to": send_to}) == SUCCESS


def rows(relay: RunningRelay, statement: str, **params: Any) -> list[tuple[Any, ...]]:
    with relay.relay.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(statement), params)]


def attempts(relay: RunningRelay) -> list[int]:
    return [int(n) for (n,) in rows(relay, "SELECT attempts FROM deliveries ORDER BY id")]


def delivery_of(relay: RunningRelay, payload: str) -> tuple[int, int, int, int] | None:
    """(id, attempts, not_before, lease_until) of the delivery queued for `payload`'s notify."""
    found = rows(
        relay,
        "SELECT d.id, d.attempts, d.not_before, d.lease_until FROM deliveries d"
        " JOIN notifications n ON n.id = d.notification_id WHERE n.data = :data",
        data=payload,
    )
    assert len(found) <= 1
    return tuple(int(v) for v in found[0]) if found else None  # type: ignore[return-value]


def due_now(*relays: RunningRelay) -> None:
    """The backoff of every waiting push ran out: make them due, and wake the dispatchers."""
    with relays[0].relay.engine.begin() as conn:
        conn.execute(text("UPDATE deliveries SET not_before = 0"))
    for relay in relays:
        relay.relay.dispatcher.wake()


def carried(push: Push) -> str | None:
    """The notify data a push carried."""
    if isinstance(push, ApnsPush):
        return push.json().get("ENCRYPTED_DATA")  # type: ignore[no-any-return]
    return push.data.get("ENCRYPTED_DATA")


def pushes_of(fake: Fake, *, token: str | None = None, payload: str | None = None) -> list[Push]:
    return [
        p
        for p in fake.pushes.snapshot()
        if (token is None or p.token == token) and (payload is None or carried(p) == payload)
    ]


def wait_delivered(fake: Fake, token: str, payload: str, timeout: float = 20.0) -> None:
    wait_until(
        lambda: any(p.status == 200 for p in pushes_of(fake, token=token, payload=payload)),
        "the push was delivered",
        timeout=timeout,
    )


def lifetime(relay: RunningRelay, name: str) -> int:
    return int(relay.relay.counters.lifetime().get(name, 0))


def lanes_idle(relay: RunningRelay) -> bool:
    return all(lane.in_flight == 0 for lane in relay.relay.dispatcher.lanes)


def quiesce(relay: RunningRelay) -> None:
    """Every answer received so far is written back."""
    for lane in relay.relay.dispatcher.lanes:
        relay.call(lane.quiesce())


def shared_keys(relay: RunningRelay) -> dict[str, Any]:
    """Settings that make another relay read the same key files, as several nodes must."""
    return {
        "KEY_FILE": relay.relay.settings.key_file,
        "IDENTITY_KEY_FILE": relay.relay.settings.identity_key_file,
        "TOKEN_KEY_FILE": relay.relay.settings.token_key_file,
    }


class Gate:
    """Holds back a fake provider's answer to the first push to one token until released.

    The fake's recorder calls its listeners on the fake's loop after it has chosen the
    answer and before it sends it; waiting there holds the whole fake (every connection),
    so while a gate is closed the provider answers nobody.
    """

    def __init__(self, recorder: Recorder[Any], token: str) -> None:
        self._token = token
        self._used = False
        self.arrived = threading.Event()
        self._released = threading.Event()
        recorder.listeners.append(self._on_push)

    def _on_push(self, push: Push) -> None:
        if self._used or push.token != self._token:
            return
        self._used = True
        self.arrived.set()
        self._released.wait(60)

    def wait_arrived(self, timeout: float = 20.0) -> None:
        assert self.arrived.wait(timeout), "the push never reached the provider"

    def release(self) -> None:
        self._released.set()


@pytest.fixture
def gate() -> Iterator[Callable[[Recorder[Any], str], Gate]]:
    made: list[Gate] = []

    def make(recorder: Recorder[Any], token: str) -> Gate:
        made.append(Gate(recorder, token))
        return made[-1]

    yield make
    for each in made:  # before the relays and the fakes stop
        each.release()


@pytest.fixture
def dispatching(
    database_url: str, providers: Providers, start_relay: Callable[..., RunningRelay]
) -> Callable[..., RunningRelay]:
    """Start a relay on `database_url` that pushes to the sandbox providers.

    (Asked for after the database and the providers, so the relays stop before those go.)
    """

    def start(**overrides: Any) -> RunningRelay:
        return start_relay(database_url, dispatch=True, **{**providers.settings, **overrides})

    return start


def fake_for(providers: Providers, provider: str) -> Fake:
    return providers.apns if provider == "apns" else providers.fcm


def token_for(provider: str) -> str:
    return random_apns_token() if provider == "apns" else random_fcm_token()


# -- 1. a queued push never goes to another person's device --------------------------------


@pytest.mark.parametrize("bob_provider", ["apns", "fcm"])
def test_a_retry_after_unregister_never_reaches_the_next_device(
    pushing_relay: RunningRelay, providers: Providers, bob_provider: str
) -> None:
    """A's notify waits for a retry (APNs said 503); A unregisters; B registers (on SQLite
    the previous release gave B's device A's old id, and the retry pushed A's data to B, or,
    B's token being an FCM token, sent it to Apple and pruned B on BadDeviceToken)."""
    relay = pushing_relay
    alice, bob = random_session_id(), random_session_id()
    alice_token, bob_token = random_apns_token(), token_for(bob_provider)
    bob_fake = fake_for(providers, bob_provider)
    providers.apns.scripts.set(alice_token, script.service_unavailable(RETRY_LATER_S))
    register(relay, alice_token, alice)
    alice_data = data()
    notify(relay, alice, alice_data)
    providers.apns.pushes.wait_for(1)
    wait_until(lambda: attempts(relay) == [1], what="the 503 was written back as a retry")

    unregister(relay, alice_token)
    register(relay, bob_token, bob)
    due_now(relay)
    # Nothing is left that could push A's data (on the previous release: until it was pushed).
    wait_until(lambda: count(relay, "deliveries") == 0, what="A's delivery is gone")
    wait_until(lambda: lanes_idle(relay))

    sent = pushes_of(providers.apns, payload=alice_data) + pushes_of(
        providers.fcm, payload=alice_data
    )
    assert [(p.token, p.status) for p in sent] == [(alice_token, 503)]  # only the first try
    assert pushes_of(providers.apns, token=bob_token) == []
    assert lifetime(relay, "tokens_pruned") == 0
    assert count(relay, "devices") == 1  # B's registration

    bob_data = data()
    notify(relay, bob, bob_data)
    wait_delivered(bob_fake, bob_token, bob_data)
    assert [carried(p) for p in pushes_of(bob_fake, token=bob_token)] == [bob_data]


# -- 2. a token moved to someone else, or to the other provider ----------------------------


@pytest.mark.parametrize("move", ["other_session", "other_provider"])
def test_a_push_queued_for_the_old_owner_never_follows_the_token(
    dispatching: Callable[..., RunningRelay], providers: Providers, move: str
) -> None:
    """A's notify waits for a retry; the token is registered again by B (the same provider,
    or, through `device`, the other one). The previous release kept the delivery on the
    device row and pushed A's data to the token's new owner (or to the old provider)."""
    relay = dispatching()
    alice, bob = random_session_id(), random_session_id()
    token = random_apns_token()  # 64 hex characters: either provider accepts it
    providers.apns.scripts.sequence(token, [script.service_unavailable(RETRY_LATER_S)])
    register(relay, token, alice, device="ios")
    alice_data = data()
    notify(relay, alice, alice_data)
    providers.apns.pushes.wait_for(1)
    wait_until(lambda: attempts(relay) == [1], what="the 503 was written back as a retry")

    bob_provider = "apns" if move == "other_session" else "fcm"
    register(relay, token, bob, device="ios" if bob_provider == "apns" else "android")
    due_now(relay)
    wait_until(lambda: count(relay, "deliveries") == 0, what="A's delivery is gone")
    wait_until(lambda: lanes_idle(relay))

    sent = pushes_of(providers.apns, payload=alice_data) + pushes_of(
        providers.fcm, payload=alice_data
    )
    assert [(p.token, p.status) for p in sent] == [(token, 503)]  # only A's own first try

    bob_data = data()
    notify(relay, bob, bob_data)
    bob_fake = fake_for(providers, bob_provider)
    wait_delivered(bob_fake, token, bob_data)
    wait_until(lambda: count(relay, "deliveries") == 0, what="B's push was settled")
    notify(relay, alice, data())  # A has no device any more: nothing is queued
    assert count(relay, "deliveries") == 0
    assert count(relay, "devices") == 1


# -- 3. an answer slower than the lease ----------------------------------------------------


@pytest.mark.parametrize("provider", ["apns", "fcm"])
def test_a_push_slower_than_its_lease_is_sent_once_and_settled_once(
    dispatching: Callable[..., RunningRelay],
    providers: Providers,
    gate: Callable[[Recorder[Any], str], Gate],
    provider: str,
) -> None:
    """DELIVERY_LEASE=1 and the provider answers A only after the lease ran out and the lane
    claimed again (for B's notify). The previous release claimed A's push again and sent it
    a second time (on APNs with the same apns-id, so one of the two hung until its timeout)."""
    relay = dispatching(DELIVERY_LEASE=1.0)
    fake = fake_for(providers, provider)
    alice, bob = random_session_id(), random_session_id()
    alice_token, bob_token = token_for(provider), token_for(provider)
    register(relay, alice_token, alice)
    register(relay, bob_token, bob)
    held = gate(fake.pushes, alice_token)
    alice_data, bob_data = data(), data()
    notify(relay, alice, alice_data)
    held.wait_arrived()
    claimed = delivery_of(relay, alice_data)
    assert claimed is not None
    first_lease_until = claimed[3]
    # A's first lease runs out (the relay's clock follows the wall clock: it never jumps).
    wait_until(lambda: time.time() * 1000 > first_lease_until + 100, what="lease ran out")

    notify(relay, bob, bob_data)  # wakes the lane: it claims everything due
    wait_until(
        lambda: (delivery_of(relay, bob_data) or (0, 0, 0, 1))[3] > 0,
        what="B's push was claimed",
    )
    held.release()
    wait_until(lambda: count(relay, "deliveries") == 0, timeout=40, what="all settled")
    wait_until(lambda: lanes_idle(relay), timeout=40)
    wait_delivered(fake, bob_token, bob_data)

    assert [carried(p) for p in pushes_of(fake, token=alice_token)] == [alice_data]  # once
    quiesce(relay)
    ok_counter = "ios_pn_number" if provider == "apns" else "android_pn_number"
    assert lifetime(relay, ok_counter) == 2  # A once, B once
    assert lifetime(relay, "stale_results") == 0  # A's answer settled A's own lease
    assert count(relay, "notifications") == 0


def test_a_stalled_relay_whose_push_was_taken_over_changes_nothing_when_it_wakes(
    dispatching: Callable[..., RunningRelay],
    providers: Providers,
    gate: Callable[[Recorder[Any], str], Gate],
) -> None:
    """Two relays on one database, DELIVERY_LEASE=1. Relay 1 sends A's push and stalls (its
    IOLoop blocked) before it reads the answer; relay 2 takes the push over when the lease
    runs out and delivers it; B's notify is accepted (the previous release gave it A's
    delivery id on SQLite) and waits for a retry. When relay 1 wakes, its answer for A is
    stale: it is counted and changes nothing (the previous release deleted B's delivery)."""
    first = dispatching(DELIVERY_LEASE=1.0)
    alice, bob = random_session_id(), random_session_id()
    alice_token, bob_token = random_apns_token(), random_apns_token()
    register(first, alice_token, alice)
    held = gate(providers.apns.pushes, alice_token)
    alice_data, bob_data = data(), data()
    notify(first, alice, alice_data)
    held.wait_arrived()

    stalled, resume = threading.Event(), threading.Event()

    def stall() -> None:
        stalled.set()
        resume.wait(60)

    first.loop.call_soon_threadsafe(stall)
    try:
        assert stalled.wait(20)
        held.release()  # the answer waits in relay 1's socket
        second = dispatching(DELIVERY_LEASE=1.0, **shared_keys(first))
        wait_until(
            lambda: len(pushes_of(providers.apns, token=alice_token)) == 2,
            what="relay 2 took A's push over once the lease ran out",
        )
        wait_until(lambda: delivery_of(second, alice_data) is None, what="relay 2 settled A")

        providers.apns.scripts.sequence(bob_token, [script.service_unavailable(RETRY_LATER_S)])
        register(second, bob_token, bob)
        notify(second, bob, bob_data)
        wait_until(
            lambda: (delivery_of(second, bob_data) or (0, 0))[1] == 1,
            what="B's first try was written back as a retry",
        )
        waiting = delivery_of(second, bob_data)
    finally:
        resume.set()

    # Relay 1 reads its answer for A: wait until it was written back, one way or another.
    wait_until(
        lambda: lifetime(first, "stale_results") > 0 or delivery_of(second, bob_data) != waiting,
        what="relay 1 settled its late answer",
    )
    assert delivery_of(second, bob_data) == waiting  # B's delivery untouched
    assert lifetime(first, "stale_results") == 1

    due_now(second, first)
    wait_delivered(providers.apns, bob_token, bob_data)
    wait_until(lambda: count(second, "deliveries") == 0)
    assert len(pushes_of(providers.apns, token=alice_token)) == 2  # once per relay
    assert pushes_of(providers.apns, token=bob_token, payload=alice_data) == []


# -- 4. a dead-token answer prunes only the registration it was sent to --------------------


# A 410 whose timestamp is older than the move keeps the new registration by the 410 rule on
# every release (tests/test_delivery.py checks that rule); here Apple's timestamp is the
# answer's own, after the move, as with a token that died since.
DEAD_ANSWERS: dict[str, tuple[str, Callable[[], Behaviour]]] = {
    "apns_410": ("apns", script.unregistered),
    "apns_bad_device_token": ("apns", script.bad_device_token),
    "fcm_unregistered": ("fcm", script.unregistered),
    "fcm_invalid_token": ("fcm", script.invalid_argument),
}


@pytest.mark.parametrize("answer", sorted(DEAD_ANSWERS))
def test_a_dead_token_answer_keeps_the_registration_the_token_moved_to(
    dispatching: Callable[..., RunningRelay],
    providers: Providers,
    gate: Callable[[Recorder[Any], str], Gate],
    answer: str,
) -> None:
    """A's push is on its way when B registers the same token; the provider then says the
    token is dead. The previous release deleted the device row by id: B's registration."""
    provider, behaviour = DEAD_ANSWERS[answer]
    relay = dispatching()
    fake = fake_for(providers, provider)
    alice, bob = random_session_id(), random_session_id()
    token = token_for(provider)
    fake.scripts.sequence(token, [behaviour()])  # then: accepted
    register(relay, token, alice)
    held = gate(fake.pushes, token)
    notify(relay, alice, data())
    held.wait_arrived()
    register(relay, token, bob)  # moved while the push was out
    held.release()

    wait_until(
        lambda: lifetime(relay, "stale_results") + lifetime(relay, "tokens_pruned") > 0,
        what="the dead-token answer was written back",
    )
    assert lifetime(relay, "tokens_pruned") == 0
    assert count(relay, "devices") == 1
    bob_data = data()
    notify(relay, bob, bob_data)
    wait_delivered(fake, token, bob_data)


# -- 5. PostgreSQL: concurrent legacy group registrations on two relays --------------------


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_concurrent_legacy_group_registrations_on_two_relays_all_succeed(
    database_url: str, start_relay: Callable[..., RunningRelay]
) -> None:
    """Two devices of one Session ID re-register their groups at once, through two relays
    on one PostgreSQL database. The previous release deleted the memberships, then inserted
    them plainly: a concurrent writer's rows made it fail (UniqueViolation, answered 503)."""
    first = start_relay(database_url)
    second = start_relay(database_url, **shared_keys(first))
    session = random_session_id()
    devices = [random_apns_token(), random_fcm_token()]
    pool = [random_session_id() for _ in range(12)]
    lists = [pool[:8], pool[4:], pool]

    def fire(relay: RunningRelay, token: str, offset: int) -> list[tuple[int, Any]]:
        answers = []
        for i in range(15):
            params = {
                "token": token,
                "pubKey": session,
                "legacyGroupPublicKeys": lists[(i + offset) % len(lists)],
            }
            answers.append(relay.call_v2("register_legacy_groups_only", params))
        return answers

    jobs = [
        (relay, token, offset)
        for relay in (first, second)
        for token in devices
        for offset in range(2)
    ]
    with ThreadPoolExecutor(len(jobs)) as pool_of_threads:
        results = list(pool_of_threads.map(lambda job: fire(*job), jobs))
    answers = [answer for result in results for answer in result]
    assert len(answers) == 15 * len(jobs)
    assert [a for a in answers if a != SUCCESS] == []
    assert count(first, "devices") == 2
    members = count(first, "group_members")
    assert 8 <= members <= len(pool)


# -- 6. /metrics reads the queue depth beside the writer -----------------------------------


QUEUED = 200_000


def fill_queue(relay: RunningRelay, rows_wanted: int, oldest_ms: int) -> None:
    """Queue `rows_wanted` deliveries with one statement (columns of every release)."""
    columns = (
        "notification_id, device_id, provider, apns_id, created_at, attempts, not_before,"
        " lease_until"
    )
    values = "i, i, 1, '00000000-0000-4000-8000-000000000000', :t + i, 0, :t + i, 0"
    if relay.relay.engine.dialect.name == "postgresql":
        statement = (
            f"INSERT INTO deliveries ({columns}) SELECT {values}"
            " FROM generate_series(0, :n - 1) AS i"
        )
    else:
        statement = (
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < :n - 1)"
            f" INSERT INTO deliveries ({columns}) SELECT {values} FROM s"
        )
    with relay.relay.engine.begin() as conn:
        conn.execute(text(statement), {"n": rows_wanted, "t": oldest_ms})


def scrape(relay: RunningRelay) -> str:
    answer = http_request(relay.port, "GET", "/metrics")
    body = answer.body.decode()
    assert answer.status == 200, (answer.status, body[:200])
    return body


def gauge(body: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", body, re.MULTILINE)
    assert found is not None, f"{name} missing from /metrics"
    return float(found.group(1))


def test_metrics_reads_the_queue_depth_while_the_writer_is_busy(
    database_url: str, start_relay: Callable[..., RunningRelay]
) -> None:
    """The previous release counted the queue inside a write transaction, on the writer
    thread: while the writer was busy a scrape waited, and every write waited for the count.
    Here the writer is held by an operation of ours, and /metrics still answers, right."""
    relay = start_relay(database_url, METRICS_PUBLIC=True)
    oldest = int(time.time() * 1000) - 60_000
    fill_queue(relay, QUEUED, oldest)

    entered, release = threading.Event(), threading.Event()

    def hold_the_writer(tx: Tx) -> None:
        entered.set()
        release.wait(60)

    held = relay.relay.writer.submit_async(hold_the_writer)
    try:
        assert entered.wait(20)
        body = scrape(relay)
    finally:
        release.set()
    held.result(20)
    assert gauge(body, "pn_relay_queue_depth") == QUEUED
    assert 59 <= gauge(body, "pn_relay_queue_oldest_age_seconds") < 3600

    # And with the writer free, scrapes and registers side by side all answer.
    session = random_session_id()
    with ThreadPoolExecutor(6) as threads:
        scrapes = [threads.submit(scrape, relay) for _ in range(3)]
        registers = [
            threads.submit(
                relay.call_v2, "register", {"token": random_apns_token(), "pubKey": session}
            )
            for _ in range(12)
        ]
        assert [f.result(60) for f in registers] == [SUCCESS] * 12
        assert all(gauge(f.result(60), "pn_relay_queue_depth") == QUEUED for f in scrapes)


# -- 7. SQLite commits survive a power loss by default --------------------------------------


def synchronous_modes(relay: RunningRelay) -> tuple[int, int]:
    """PRAGMA synchronous on the writer's connection and on a pooled one."""
    engine = relay.relay.engine
    pragma = Prepared.compile(text("PRAGMA synchronous"), engine.dialect)
    on_writer = relay.relay.writer.submit(lambda tx: tx.scalar(pragma, {}))
    with engine.connect() as conn:
        pooled = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    return int(on_writer), int(pooled or 0)


def test_sqlite_commits_are_full_sync_by_default(
    start_relay: Callable[..., RunningRelay], sqlite_url: str
) -> None:
    relay = start_relay(sqlite_url)
    assert synchronous_modes(relay) == (2, 2)  # FULL: an fsync of the WAL per commit


def test_sqlite_normal_sync_only_when_asked(
    start_relay: Callable[..., RunningRelay], sqlite_url: str
) -> None:
    relay = start_relay(sqlite_url, SQLITE_SYNCHRONOUS="NORMAL")
    assert synchronous_modes(relay) == (1, 1)


def test_a_delivery_apns_id_is_a_canonical_random_uuid() -> None:
    import uuid

    from storage.store import new_apns_id

    ids = [new_apns_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for each in ids:
        parsed = uuid.UUID(each)
        assert (str(parsed), parsed.version, parsed.variant) == (each, 4, uuid.RFC_4122)
    # every bit but the version's four and the variant's two varies
    values = [int(each.replace("-", ""), 16) for each in ids]
    varying = 0
    for value in values:
        varying |= value ^ values[0]
    fixed = 0xF << 76 | 0x3 << 62
    assert varying == ((1 << 128) - 1) ^ fixed
