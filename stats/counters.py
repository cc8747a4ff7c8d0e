"""Per-process event counters, safe to increment from any thread."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from push.providers import PROVIDERS, LaneEvent, ProviderInfo


def counter_names(providers: Sequence[ProviderInfo[Any]] = PROVIDERS) -> tuple[str, ...]:
    """The statistics counters, one column each (stats/schema.py), in their column order."""
    return (
        "total_message_number",
        *(info.sent_counter for info in providers),
        "closed_group_message_number",
        "untracked_message_number",
        *(info.failed_counter for info in providers),
        "tokens_pruned",
        "deduplicated_number",
        "payload_trimmed_number",
        # a queued push whose registration was gone or had changed hands when its turn came
        "pushes_dropped_unregistered",
        # a provider's answer that arrived after its lease had been taken over: nothing changed
        "stale_results",
    )


def metric_events(providers: Sequence[ProviderInfo[Any]] = PROVIDERS) -> tuple[str, ...]:
    """Events counted for /metrics only, never a statistics column (stats/metrics.py says how
    each is exported): registrations that replaced the least recently registered device of a
    Session ID at MAX_DEVICES_PER_SESSION; per provider lane, storms of "wrong configuration"
    answers that paused it, and such answers held back unjudged (push/dispatcher.py)."""
    lanes = (info.lane_counter(event) for event in LaneEvent for info in providers)
    return ("devices_replaced", *lanes)


COUNTER_NAMES = counter_names()
METRIC_EVENTS = metric_events()
# Refusals by an abuse limit, by reason (`pn_relay_refused_total{reason}`), for /metrics only.
REFUSAL_REASONS = ("notify_rate", "group_members", "data_too_large")


def refusal_counter(reason: str) -> str:
    return f"refused_{reason}"


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Counter[str] = Counter()
        self._lifetime: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._current[name] += amount
            self._lifetime[name] += amount

    def refused(self, reason: str) -> None:
        """An abuse limit refused a request (`reason`: one of REFUSAL_REASONS)."""
        self.incr(refusal_counter(reason))

    def swap(self) -> dict[str, int]:
        """Take the counts since the last swap, and start again from zero."""
        with self._lock:
            taken, self._current = self._current, Counter()
        return {name: taken.get(name, 0) for name in COUNTER_NAMES}

    def restore(self, counts: dict[str, int]) -> None:
        """Put back counts that could not be written, so none are lost."""
        with self._lock:
            self._current.update(counts)

    def lifetime(self, names: tuple[str, ...] = COUNTER_NAMES) -> dict[str, int]:
        with self._lock:
            return {name: self._lifetime.get(name, 0) for name in names}
