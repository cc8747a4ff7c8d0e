"""Per-process event counters, safe to increment from any thread."""

from __future__ import annotations

import threading
from collections import Counter

COUNTER_NAMES = (
    "total_message_number",
    "ios_pn_number",
    "android_pn_number",
    "closed_group_message_number",
    "untracked_message_number",
    "ios_pn_failed",
    "android_pn_failed",
    "tokens_pruned",
    "deduplicated_number",
    "payload_trimmed_number",
    # a queued push whose registration was gone or had changed hands when its turn came
    "pushes_dropped_unregistered",
    # a provider's answer that arrived after its lease had been taken over: nothing changed
    "stale_results",
)


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Counter[str] = Counter()
        self._lifetime: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._current[name] += amount
            self._lifetime[name] += amount

    def swap(self) -> dict[str, int]:
        """Take the counts since the last swap, and start again from zero."""
        with self._lock:
            taken, self._current = self._current, Counter()
        return {name: taken.get(name, 0) for name in COUNTER_NAMES}

    def restore(self, counts: dict[str, int]) -> None:
        """Put back counts that could not be written, so none are lost."""
        with self._lock:
            self._current.update(counts)

    def lifetime(self) -> dict[str, int]:
        with self._lock:
            return {name: self._lifetime.get(name, 0) for name in COUNTER_NAMES}
