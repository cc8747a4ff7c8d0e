"""The relay's clock for persisted times: wall time that never jumps.

Leases, backoff (`not_before`), `PUSH_MAX_AGE` and the dedup window are written to the
database as milliseconds since the epoch. Read straight from the wall clock, a step of the
system time (an NTP correction, a virtual machine resumed) would drop every queued push
(forward) or stall retries for the size of the step (backward). So `RelayClock`:

- advances with the monotonic clock, which never steps;
- follows the wall clock only by slewing: at most `SLEW_RATE` of the elapsed time is added or
  taken back per reading, so a step of one hour is absorbed over about a hundred hours while
  the queue keeps its own pace (and the times stay close enough to Apple's clock for the 410
  timestamp rule);
- carries on across a restart on the same boot: a heartbeat row in `schema_meta` keeps
  (relay time, monotonic time) per boot, and a new process continues from it rather than from
  a wall clock that may have stepped meanwhile. After a reboot it starts from the wall clock
  (never below the last heartbeat).

In-process timing (timeouts, pauses, lease renewal) uses `monotonic()` directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from storage.schema import schema_meta
from storage.sql import Prepared, Tx

SLEW_RATE = 0.01
HEARTBEAT_PREFIX = "clock:"
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")

MillisecondSource = Callable[[], int]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def boot_id() -> str:
    """This boot's identity (Linux); '' where unknown, which disables continuation."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return ""


class RelayClock:
    def __init__(
        self,
        start_ms: int | None = None,
        *,
        wall: MillisecondSource = wall_ms,
        monotonic: MillisecondSource = monotonic_ms,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._last_mono = monotonic()
        self._last_ms = wall() if start_ms is None else start_ms

    def now_ms(self) -> int:
        """Milliseconds since the epoch for anything written to the database."""
        with self._lock:
            mono = self._monotonic()
            elapsed = max(0, mono - self._last_mono)
            ideal = self._last_ms + elapsed
            allowed = int(elapsed * SLEW_RATE)
            correction = max(-allowed, min(allowed, self._wall() - ideal))
            self._last_ms, self._last_mono = ideal + correction, mono
            return self._last_ms

    def monotonic_s(self) -> float:
        """Seconds on the monotonic clock, for in-process timing."""
        return self._monotonic() / 1000

    def heartbeat(self) -> tuple[int, int]:
        """(relay time, monotonic time) now, as the heartbeat row stores them."""
        now = self.now_ms()
        return now, self._monotonic()


def _heartbeat_key(boot: str) -> str:
    return HEARTBEAT_PREFIX + boot


def resume_clock(
    conn: Connection,
    *,
    boot: str,
    wall: MillisecondSource = wall_ms,
    monotonic: MillisecondSource = monotonic_ms,
) -> RelayClock:
    """A clock continuing this boot's last heartbeat, or starting from the wall clock."""
    rows = conn.execute(
        select(schema_meta.c.key, schema_meta.c.value).where(
            schema_meta.c.key.startswith(HEARTBEAT_PREFIX)
        )
    ).all()
    beats: dict[str, tuple[int, int]] = {}
    for key, value in rows:
        relay_ms, _, mono_ms = str(value).partition(":")
        if relay_ms.isdigit() and mono_ms.isdigit():
            beats[str(key)] = (int(relay_ms), int(mono_ms))
    mine = beats.get(_heartbeat_key(boot)) if boot else None
    mono_now = monotonic()
    if mine is not None and mono_now >= mine[1]:
        start = mine[0] + (mono_now - mine[1])
    else:
        latest = max((relay_ms for relay_ms, _ in beats.values()), default=0)
        start = max(wall(), latest)
    return RelayClock(start, wall=wall, monotonic=monotonic)


class HeartbeatWriter:
    """The statement that records the clock's heartbeat for this boot (through the writer)."""

    def __init__(self, engine: Engine, clock: RelayClock, boot: str) -> None:
        dialect_insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        upsert = dialect_insert(schema_meta)
        self._statement = Prepared.compile(
            upsert.on_conflict_do_update(
                index_elements=[schema_meta.c.key], set_={"value": upsert.excluded.value}
            ),
            engine.dialect,
            ["key", "value"],
        )
        self._clock = clock
        self._key = _heartbeat_key(boot) if boot else ""

    def op(self) -> Callable[[Tx], None]:
        def operation(tx: Tx) -> None:
            if self._key:
                relay_ms, mono_ms = self._clock.heartbeat()
                tx.execute(self._statement, {"key": self._key, "value": f"{relay_ms}:{mono_ms}"})

        return operation
