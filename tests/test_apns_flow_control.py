"""The APNs sender against a strict server: flow control, failures part-way, duplicate ids.

The fake APNs here grants only the RFC default window (65,535 bytes for the connection and each
stream) and gives it back only as it reads requests: ~3.9 KB bodies fill it after 16 pushes.
Nothing here measures time. A stall is seen by what it leaves behind: a flow-control violation
the fake recorded, a push sent twice, a connection more than needed, a half-open stream on
the server, or an exchange, stream slot or body left on the client.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from h2.errors import ErrorCodes

from push.apns import APNsSender
from push.h2conn import H2ClientConnection
from push.outcome import Push, PushOutcome, Verdict
from push.payloads import APNS_MAX_PAYLOAD_BYTES, apns_payload
from sandbox import script
from sandbox.apns import FakeApns, provider_token
from sandbox.certs import ApnsKey, TlsFiles, generate_apns_key, generate_tls
from sandbox.h2client import ConnectionClosedError, H2Response, RawH2Client
from storage.records import Provider
from tests import loops
from tests.providers import apns_sender
from tests.support import random_apns_token

WINDOW = 65535
BODY_BYTES = 3898  # the APNs body of every push here: ~3.9 KB, under the 4,096-byte limit
FIT = WINDOW // BODY_BYTES  # 16 whole bodies fit the window; the 17th only in part


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, ApnsKey]:
    directory = tmp_path_factory.mktemp("apns")
    return generate_tls(directory / "tls"), generate_apns_key(directory / "key")


@pytest.fixture
def fake(credentials: tuple[TlsFiles, ApnsKey]) -> Iterator[FakeApns]:
    tls, key = credentials
    server = FakeApns(tls, key, strict_flow_control=True).start()
    yield server
    server.stop()


def sender_for(fake: FakeApns, *, timeout: float = 30.0, connections: int = 1) -> APNsSender:
    return apns_sender(fake, max_connections=connections, request_timeout_s=timeout)


def large_data() -> str:
    data = base64.b64encode(os.urandom(2796)).decode()  # 3,728 characters
    body, trimmed = apns_payload(data)
    assert (len(body), trimmed) == (BODY_BYTES, False)
    assert BODY_BYTES < APNS_MAX_PAYLOAD_BYTES
    return data


def new_push(token: str | None = None, apns_id: str | None = None) -> Push:
    return Push(
        delivery_id=1,
        provider=Provider.APNS,
        token=token or random_apns_token(),
        data=large_data(),
        apns_id=apns_id or str(uuid.uuid4()),
        expiration_s=int(time.time()) + 3600,
    )


async def send_one(sender: APNsSender, push: Push) -> PushOutcome:
    (outcome,) = await sender.send([push])
    return outcome


def connections(sender: APNsSender) -> list[H2ClientConnection]:
    assert sender.pool is not None
    found = [c for c in sender.pool.connections if isinstance(c, H2ClientConnection)]
    assert len(found) == len(sender.pool.connections)
    return found


def assert_nothing_left(connection: H2ClientConnection) -> None:
    """No exchange or body of any request remains on the connection; if it is still open,
    every stream slot is free and no stream is left open (a lost one is dropped whole)."""
    assert connection.exchanges == {}
    assert connection.unsent == {}
    if not connection.closed:
        assert connection.free_slots() == connection.capacity
        assert [sid for sid, s in connection.h2.streams.items() if not s.closed] == []


async def until(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    """Wait for a state (not for a time): the deadline only bounds a broken run."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def test_500_large_pushes_through_the_rfc_default_window(fake: FakeApns) -> None:
    sender = sender_for(fake)
    pushes = [new_push() for _ in range(500)]

    async def run() -> list[PushOutcome]:
        try:
            outcomes = await asyncio.gather(*(send_one(sender, push) for push in pushes))
            (connection,) = connections(sender)
            assert_nothing_left(connection)
            assert connection.h2.remote_settings.initial_window_size == WINDOW
            return outcomes
        finally:
            await sender.close()

    outcomes = loops.run(run())
    assert [o.verdict for o in outcomes] == [Verdict.ACCEPTED] * 500
    recorded = fake.pushes.snapshot()
    assert sorted(p.apns_id for p in recorded) == sorted(p.apns_id for p in pushes)
    assert {p.status for p in recorded} == {200}
    sent = {push.apns_id: apns_payload(push.data)[0] for push in pushes}
    assert all(p.body == sent[p.apns_id] for p in recorded)  # every byte, in order
    # 1.9 MB through one connection granting 64 KiB: it went on WINDOW_UPDATEs, by the rules.
    assert fake.connections_total == 1
    assert fake.violations == []
    assert fake.client_resets == []
    assert fake.open_requests() == 0


async def _stuck_part_way(
    fake: FakeApns, sender: APNsSender, tasks: list[asyncio.Task[PushOutcome]]
) -> H2ClientConnection:
    """Wait until 16 pushes are answered and the rest wait for window, one of them half-sent."""
    await until(lambda: sum(t.done() for t in tasks) >= FIT, f"{FIT} pushes answered")
    (connection,) = connections(sender)
    blocked = len(tasks) - FIT
    await until(lambda: len(connection.unsent) == blocked, f"{blocked} bodies waiting for window")
    first = next(iter(connection.unsent.values()))
    assert 0 < len(first) < BODY_BYTES  # sent in part: the rest of the window
    await until(lambda: fake.open_requests() == blocked, "the server sees them open too")
    return connection


def test_a_send_cancelled_part_way_resets_its_stream_and_frees_it(fake: FakeApns) -> None:
    sender = sender_for(fake)
    fake.hold_window_updates(True)  # the server reads nothing more than the first window

    async def run() -> list[PushOutcome]:
        try:
            tasks = [asyncio.ensure_future(send_one(sender, new_push())) for _ in range(FIT + 4)]
            connection = await _stuck_part_way(fake, sender, tasks)
            for task in tasks[FIT:]:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results[FIT:])
            assert_nothing_left(connection)
            await until(lambda: len(fake.client_resets) == 4, "4 streams reset")
            assert fake.open_requests() == 0
            # The window those streams held comes back: the same connection carries on.
            fake.hold_window_updates(False)
            more = await asyncio.gather(*(send_one(sender, new_push()) for _ in range(40)))
            assert connections(sender) == [connection]
            assert_nothing_left(connection)
            return [r for r in results[:FIT] if isinstance(r, PushOutcome)] + list(more)
        finally:
            await sender.close()

    outcomes = loops.run(run())
    assert [o.verdict for o in outcomes] == [Verdict.ACCEPTED] * (FIT + 40)
    resets = fake.client_resets
    assert {(r.error_code, r.request_complete) for r in resets} == {(ErrorCodes.CANCEL, False)}
    assert fake.connections_total == 1
    assert fake.violations == []


def test_a_send_that_times_out_part_way_resets_its_stream_and_frees_it(fake: FakeApns) -> None:
    sender = sender_for(fake)

    async def run() -> list[PushOutcome]:
        try:
            assert (await send_one(sender, new_push())).verdict is Verdict.ACCEPTED  # connected
            fake.hold_window_updates(True)
            sender.config = dataclasses.replace(sender.config, request_timeout_s=0.5)
            outcomes = await asyncio.gather(*(send_one(sender, new_push()) for _ in range(FIT + 4)))
            (connection,) = connections(sender)
            assert_nothing_left(connection)
            await until(lambda: fake.open_requests() == 0, "no request left open on the server")
            fake.hold_window_updates(False)
            assert (await send_one(sender, new_push())).verdict is Verdict.ACCEPTED
            assert connections(sender) == [connection]
            assert_nothing_left(connection)
            return outcomes
        finally:
            await sender.close()

    outcomes = loops.run(run())
    timed_out = [o for o in outcomes if o.verdict is Verdict.TRANSIENT]
    assert {o.reason for o in timed_out} == {"timeout"}
    assert len(timed_out) >= 4  # at least those whose body the window could not take
    assert all(o.verdict in (Verdict.ACCEPTED, Verdict.TRANSIENT) for o in outcomes)
    assert {r.error_code for r in fake.client_resets} == {ErrorCodes.CANCEL}
    assert any(not r.request_complete for r in fake.client_resets)
    assert fake.violations == []
    assert fake.connections_total == 1


def test_a_connection_lost_part_way_releases_everything_and_sends_again(fake: FakeApns) -> None:
    sender = sender_for(fake)
    fake.hold_window_updates(True)

    async def run() -> list[PushOutcome]:
        try:
            tasks = [asyncio.ensure_future(send_one(sender, new_push())) for _ in range(FIT + 4)]
            connection = await _stuck_part_way(fake, sender, tasks)
            # RST: the four whose body was cut off were not processed: they go again at once,
            # on a new connection.
            fake.disconnect_all(graceful=False)
            outcomes = await asyncio.gather(*tasks)
            assert_nothing_left(connection)
            (fresh,) = connections(sender)
            assert fresh is not connection
            assert_nothing_left(fresh)
            return outcomes
        finally:
            await sender.close()

    outcomes = loops.run(run())
    assert [o.verdict for o in outcomes] == [Verdict.ACCEPTED] * (FIT + 4)
    assert fake.connections_total == 2
    assert fake.violations == []
    recorded = fake.pushes.snapshot()
    assert len({p.apns_id for p in recorded}) == len(recorded) == FIT + 4  # none twice


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (script.ok(), [Verdict.ACCEPTED, Verdict.ACCEPTED]),
        # The first answer comes last, and differs: each send gets its own.
        (
            script.slow(0.2, script.unregistered(1_700_000_000_000)),
            [Verdict.DEAD_TOKEN, Verdict.ACCEPTED],
        ),
    ],
)
def test_two_sends_with_one_apns_id_both_get_their_own_answer(
    fake: FakeApns, first: script.Behaviour, expected: list[Verdict]
) -> None:
    token = random_apns_token()
    fake.scripts.sequence(token, [first], then=script.ok())
    push = new_push(token)
    sender = sender_for(fake, timeout=20.0)  # answers matched by apns-id: the first would wait

    async def run() -> list[PushOutcome]:
        try:
            await send_one(sender, new_push())  # connected: both go on one connection
            fake.pushes.clear()
            outcomes = await asyncio.gather(send_one(sender, push), send_one(sender, push))
            (connection,) = connections(sender)
            assert_nothing_left(connection)
            return list(outcomes)
        finally:
            await sender.close()

    outcomes = loops.run(run())
    assert [o.verdict for o in outcomes] == expected
    recorded = fake.pushes.snapshot()
    assert [p.apns_id for p in recorded] == [push.apns_id] * 2


# -- the strict fake's own checks ------------------------------------------------------------


async def _raw_client(fake: FakeApns) -> RawH2Client:
    return await RawH2Client.connect("127.0.0.1", fake.port, fake.client_ssl_context())


def _headers(fake: FakeApns) -> list[tuple[str, str]]:
    return [
        ("authorization", f"bearer {provider_token(fake.apns_key)}"),
        ("apns-topic", fake.topic),
        ("apns-push-type", "alert"),
    ]


def test_the_fake_grants_only_the_default_window_and_records_a_client_beyond_it(
    fake: FakeApns,
) -> None:
    body = apns_payload(large_data())[0]
    fake.hold_window_updates(True)  # granted: 65,535 bytes, and not one more

    async def run() -> list[BaseException | H2Response]:
        client = await _raw_client(fake)
        assert client.conn.outbound_flow_control_window == WINDOW
        assert client.conn.remote_settings.initial_window_size == WINDOW
        client.conn.outbound_flow_control_window = 1 << 30  # a client that ignores the window
        futures = [
            client.start_request("POST", f"/3/device/{random_apns_token()}", _headers(fake), body)
            for _ in range(FIT + 4)
        ]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await client.wait_closed()
        return results

    results = loops.run(run())
    assert sum(isinstance(r, ConnectionClosedError) for r in results) >= 1
    (violation,) = fake.violations
    assert violation.error == "FlowControlError"


def test_the_fake_records_frames_over_its_max_frame_size(fake: FakeApns) -> None:
    async def run() -> None:
        client = await _raw_client(fake)
        client.conn.max_outbound_frame_size = 1 << 20  # a client that ignores SETTINGS
        future = client.start_request(
            "POST", f"/3/device/{random_apns_token()}", _headers(fake), b"x" * 20_000
        )
        with pytest.raises(ConnectionClosedError):
            await future
        await client.wait_closed()

    loops.run(run())
    assert [v.error for v in fake.violations] == ["FrameTooLargeError"]


def test_the_fake_counts_requests_left_half_open(fake: FakeApns) -> None:
    async def run() -> None:
        client = await _raw_client(fake)
        path = f"/3/device/{random_apns_token()}"
        headers = [(":method", "POST"), (":scheme", "https"), (":authority", "x"), (":path", path)]
        client.conn.send_headers(1, headers + _headers(fake))  # no body, no END_STREAM
        client._flush()
        await until(lambda: fake.open_requests() == 1, "the request open on the server")
        await client.aclose()
        await until(lambda: fake.connections_open == 0, "the connection closed")

    loops.run(run())
    assert fake.half_open_at_close == 1
    assert fake.pushes.snapshot() == []
