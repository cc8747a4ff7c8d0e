"""RelayClock: persisted times that neither jump with the wall clock nor drift far from it."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from storage.clock import SLEW_RATE, HeartbeatWriter, RelayClock, resume_clock
from storage.engine import create_schema, make_engine
from storage.writer import BatchWriter

HOUR_MS = 3_600_000


class Time:
    def __init__(self) -> None:
        self.wall = 1_800_000_000_000
        self.mono = 1_000

    def clock(self, start_ms: int | None = None) -> RelayClock:
        return RelayClock(start_ms, wall=lambda: self.wall, monotonic=lambda: self.mono)


def test_a_wall_clock_step_does_not_move_the_relay_clock() -> None:
    time = Time()
    clock = time.clock()
    start = clock.now_ms()
    time.wall += HOUR_MS  # NTP steps the clock an hour forward
    assert clock.now_ms() == start  # no time has passed
    time.mono += 10_000
    time.wall += 10_000
    # Ten seconds later the relay clock moved ten seconds, plus at most 1% towards the wall.
    assert clock.now_ms() - start == 10_000 + int(10_000 * SLEW_RATE)


def test_the_relay_clock_slews_back_to_the_wall_clock() -> None:
    time = Time()
    clock = time.clock()
    time.wall -= HOUR_MS
    for _ in range(200):
        time.mono += 60_000
        time.wall += 60_000
        clock.now_ms()
    # 200 minutes at 1% slew take back two minutes of the hour, never more.
    assert clock.now_ms() - time.wall == HOUR_MS - 200 * 600


@given(
    st.lists(
        st.tuples(st.integers(0, 120_000), st.integers(-2 * HOUR_MS, 2 * HOUR_MS)),
        max_size=50,
    )
)
def test_the_relay_clock_never_goes_back_and_never_outruns_time(
    moves: list[tuple[int, int]],
) -> None:
    time = Time()
    clock = time.clock()
    last = clock.now_ms()
    for elapsed, step in moves:
        time.mono += elapsed
        time.wall += elapsed + step
        now = clock.now_ms()
        assert now >= last
        assert now - last <= elapsed * (1 + SLEW_RATE) + 1
        last = now


def test_a_restart_on_the_same_boot_continues_from_the_heartbeat(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.sqlite3'}", pool_size=2)
    create_schema(engine)
    writer = BatchWriter(engine)
    try:
        time = Time()
        with engine.connect() as conn:
            first = resume_clock(
                conn, boot="boot-1", wall=lambda: time.wall, monotonic=lambda: time.mono
            )
        before = first.now_ms()
        writer.submit(HeartbeatWriter(engine, first, "boot-1").op())
        time.mono += 5_000  # the process is killed; five seconds later it starts again...
        time.wall -= HOUR_MS  # ...after the wall clock stepped back an hour
        with engine.connect() as conn:
            second = resume_clock(
                conn, boot="boot-1", wall=lambda: time.wall, monotonic=lambda: time.mono
            )
        assert second.now_ms() == before + 5_000
        # After a reboot the monotonic clock starts again: the wall clock is all there is,
        # but the relay clock never starts below the last heartbeat.
        time.mono = 10
        with engine.connect() as conn:
            rebooted = resume_clock(
                conn, boot="boot-2", wall=lambda: time.wall, monotonic=lambda: time.mono
            )
        assert rebooted.now_ms() == before
    finally:
        writer.close()
        engine.dispose()
