"""The dispatcher's retry policy on virtual time: PUSH_MAX_AGE, the backoff cap, Retry-After,
and the configuration pause escalating and resetting. Nothing here sleeps for real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from push.outcome import PushOutcome, Verdict
from tests.lane_harness import LANE_SETTINGS, LaneHarness
from tests.support import random_apns_token, random_session_id

SETTINGS = LANE_SETTINGS
SERVER_ERROR = PushOutcome.transient("503")
ACCEPTED = PushOutcome(Verdict.ACCEPTED)
CREDENTIAL_ERROR = PushOutcome(Verdict.CONFIG_ERROR, reason="InvalidProviderToken", hint="x")


@pytest.fixture
def lane(tmp_path: Path) -> Iterator[LaneHarness]:
    harness = LaneHarness(tmp_path, SETTINGS)
    yield harness
    harness.close()


def fail_until_due(lane: LaneHarness, outcome: PushOutcome) -> int:
    """Answer the pending push with `outcome`; return the delay (ms) until it is due again."""
    lane.answer(outcome)
    (attempts_and_due,) = lane.queued()
    return attempts_and_due[1] - lane.clock.now_ms()


def test_backoff_doubles_with_jitter_and_stops_at_the_cap(lane: LaneHarness) -> None:
    lane.queue_notify(random_session_id(), random_apns_token())
    delays = []
    for _ in range(14):
        assert lane.claim() == 1
        delay = fail_until_due(lane, SERVER_ERROR)
        delays.append(delay)
        lane.time.advance(delay)
    for attempt, delay in enumerate(delays[:8], start=1):
        nominal = min(300_000, 1000 * 2 ** (attempt - 1))
        assert 0.5 * nominal <= delay <= 1.5 * nominal
    assert all(delay <= 1.5 * 300_000 for delay in delays)
    assert max(delays[-4:]) > 300_000 * 0.5  # the cap is reached, not a smaller plateau
    assert lane.queued()[0][0] == 14  # attempts counted


def test_retry_after_is_honoured_even_above_the_backoff(lane: LaneHarness) -> None:
    lane.queue_notify(random_session_id(), random_apns_token())
    lane.claim()
    delay = fail_until_due(lane, PushOutcome.transient("429", retry_after=120.0))
    assert delay >= 120_000
    lane.time.advance(delay - 1)
    assert lane.claim() == 0  # not due a millisecond early
    lane.time.advance(1)
    assert lane.claim() == 1


def test_a_push_older_than_push_max_age_is_dropped_and_counted(lane: LaneHarness) -> None:
    lane.queue_notify(random_session_id(), random_apns_token())
    lane.claim()
    lane.time.advance(3_500_000)
    # The next retry would fall after PUSH_MAX_AGE: the push is given up, not rescheduled.
    delay_ms = 1000 * 2  # attempt 2, nominal; any jitter keeps it inside the last 100 s
    assert delay_ms < 100_000
    lane.answer(PushOutcome.transient("503", retry_after=200.0))
    assert lane.queued() == []
    assert lane.counters.lifetime()["ios_pn_failed"] == 1


def test_a_push_claimed_after_push_max_age_is_not_sent(lane: LaneHarness) -> None:
    lane.queue_notify(random_session_id(), random_apns_token())
    lane.time.advance(3_600_001)
    assert lane.claim() == 1
    assert lane.sender.sent == []
    assert lane.queued() == []
    assert lane.counters.lifetime()["ios_pn_failed"] == 1


def test_a_wall_clock_step_forward_does_not_age_queued_pushes(lane: LaneHarness) -> None:
    lane.queue_notify(random_session_id(), random_apns_token())
    lane.time.wall += 2 * 3_600_000  # the system clock jumps two hours ahead
    assert lane.claim() == 1
    assert len(lane.sender.sent) == 1  # sent, not dropped as two hours old


def test_a_wall_clock_step_back_does_not_stall_retries(lane: LaneHarness) -> None:
    lane.queue_notify(random_session_id(), random_apns_token())
    lane.claim()
    delay = fail_until_due(lane, SERVER_ERROR)
    lane.time.wall -= 3_600_000  # the system clock jumps an hour back
    # Due after its backoff (plus the relay clock's slew towards the wall, at most 1 %),
    # not an hour later.
    lane.time.advance(delay * 1.02 + 1)
    assert lane.claim() == 1


def test_the_configuration_pause_escalates_then_resets(lane: LaneHarness) -> None:
    for _ in range(3):
        lane.queue_notify(random_session_id(), random_apns_token())
    pauses = []
    for _ in range(3):
        assert lane.claim() >= 1
        lane.answer(CREDENTIAL_ERROR)
        lane.sender.answer_all(CREDENTIAL_ERROR)  # the rest of the round: same pause, said once
        lane.run(lane.lane.quiesce())
        assert lane.lane.paused
        pause_ms = max(due for _, due in lane.queued()) - lane.clock.now_ms()
        pauses.append(pause_ms)
        lane.time.advance(pause_ms)
        assert not lane.lane.paused
    assert pauses == [30_000, 60_000, 120_000]
    # The provider works again: the next configuration error starts from the base pause.
    assert lane.claim() == 3
    lane.sender.answer_all(ACCEPTED)
    lane.run(lane.lane.quiesce())
    lane.queue_notify(random_session_id(), random_apns_token())
    lane.claim()
    lane.answer(CREDENTIAL_ERROR)
    assert max(due for _, due in lane.queued()) - lane.clock.now_ms() == 30_000


def test_the_configuration_pause_stops_at_its_cap(lane: LaneHarness) -> None:
    lane.queue_notify(random_session_id(), random_apns_token())
    pauses = []
    for _ in range(7):
        lane.claim()
        lane.answer(CREDENTIAL_ERROR)
        pause_ms = lane.queued()[0][1] - lane.clock.now_ms()
        pauses.append(pause_ms)
        lane.time.advance(pause_ms)
    assert pauses == [30_000, 60_000, 120_000, 240_000, 480_000, 600_000, 600_000]
    assert lane.queued()[0][0] == 7  # kept, never deleted, for a configuration error
