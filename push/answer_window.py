"""A lane's recent provider answers, counted by kind over a sliding window of monotonic time.

The dispatcher asks it one question: of the answers in the last `span_s` seconds, how many
were accepted, and how many were "suspect" (an answer that means either "this token is not
ours" or "our configuration is wrong", depending on how many others say the same). Memory is
bounded: one bucket per second of the window, whatever the traffic.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class Answer(enum.Enum):
    ACCEPTED = "accepted"
    SUSPECT = "suspect"
    OTHER = "other"  # any other judgement of a token (dead, refused, ...)


@dataclass(frozen=True)
class WindowCounts:
    total: int
    accepted: int
    suspect: int


class AnswerWindow:
    def __init__(self, span_s: float, monotonic_s: Callable[[], float]) -> None:
        self.span_s = span_s
        self._clock = monotonic_s
        # [second, total, accepted, suspect], oldest first
        self._buckets: deque[list[int]] = deque()
        self._totals = [0, 0, 0]

    def add(self, answer: Answer) -> WindowCounts:
        """Count one answer now; return the window's counts including it."""
        second = int(self._clock())
        self._expire(second)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0, 0])
        bucket = self._buckets[-1]
        increments = (1, answer is Answer.ACCEPTED, answer is Answer.SUSPECT)
        for index, increment in enumerate(increments):
            bucket[index + 1] += int(increment)
            self._totals[index] += int(increment)
        return self.counts(expire=False)

    def counts(self, *, expire: bool = True) -> WindowCounts:
        if expire:
            self._expire(int(self._clock()))
        total, accepted, suspect = self._totals
        return WindowCounts(total=total, accepted=accepted, suspect=suspect)

    def _expire(self, second: int) -> None:
        oldest_kept = second - int(self.span_s) + 1
        while self._buckets and self._buckets[0][0] < oldest_kept:
            _, total, accepted, suspect = self._buckets.popleft()
            self._totals[0] -= total
            self._totals[1] -= accepted
            self._totals[2] -= suspect
