"""The per-recipient notify rate limit: a token bucket per recipient, in this process's memory.

Each recipient (a Session ID or a group, by its keyed hash: never the Session ID itself) may
receive `per_minute` notifies a minute on average, and up to `burst` at once after a quiet
spell. A notify beyond that is refused, not queued (handlers/endpoints.py answers 429).

Memory is bounded: a bucket left alone long enough to refill completely is the same as no
bucket, so it is forgotten (the least recently used are checked first, on every call); and
at most `max_buckets` are kept, the least recently used going first, which at worst hands an
idle recipient a full bucket early.

Several processes (REUSE_PORT, or several machines on one PostgreSQL) each keep their own
buckets: a recipient may then receive up to that many times `per_minute`, depending on how
the requests are spread. The limit is there to bound the work one recipient can cause, not to
count exactly; a shared counter would put a database write on every notify.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_BUCKETS = 100_000


class NotifyRateLimit:
    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute < 1 or burst < 1 or max_buckets < 1:
            raise ValueError("per_minute, burst and max_buckets must be at least 1")
        self.per_minute = per_minute
        self.burst = burst
        self._rate = per_minute / 60.0  # tokens a second
        self._refill_s = burst / self._rate  # from empty to full
        self._max_buckets = max_buckets
        self._clock = clock
        self._lock = threading.Lock()
        # recipient -> [tokens, monotonic time of the last update], least recently used first
        self._buckets: OrderedDict[bytes, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def admit(self, recipient: bytes) -> bool:
        """Take one notify from `recipient`'s bucket; False if it is empty (refuse)."""
        with self._lock:
            now = self._clock()
            self._forget_idle(now)
            bucket = self._buckets.get(recipient)
            if bucket is None:
                bucket = [float(self.burst), now]
                self._buckets[recipient] = bucket
                if len(self._buckets) > self._max_buckets:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(recipient)
                tokens, updated = bucket
                bucket[0] = min(float(self.burst), tokens + (now - updated) * self._rate)
                bucket[1] = now
            if bucket[0] < 1.0:
                return False
            bucket[0] -= 1.0
            return True

    def refund(self, recipient: bytes) -> None:
        """Give back the notify `admit` just took for `recipient`: it turned out to queue
        nothing (a duplicate, or nobody to push to), which costs the recipient nothing."""
        with self._lock:
            bucket = self._buckets.get(recipient)
            if bucket is not None:
                bucket[0] = min(float(self.burst), bucket[0] + 1.0)

    def _forget_idle(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            oldest = next(iter(buckets))
            if now - buckets[oldest][1] < self._refill_s:
                return
            del buckets[oldest]
