"""A sender wrapper that reports every provider answer, for /metrics.

The dispatcher acts on each `PushOutcome` and counts sent/failed; what a provider actually
said (a 500 storm, 429s, GOAWAYs, timeouts, an expired provider token) is only in these
outcomes, so every one is handed to `observe` on its way to the dispatcher
(stats/metrics.py counts them by provider, verdict and reason). It changes nothing else:
same batch size, same in-flight bound, same answers.
"""

from __future__ import annotations

from collections.abc import Callable

from push.outcome import ProviderSender, Push, PushOutcome
from storage.records import Provider

OutcomeObserver = Callable[[Provider, PushOutcome], None]


class ObservedSender(ProviderSender):
    def __init__(self, inner: ProviderSender, observe: OutcomeObserver) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.name = inner.name
        self.batch_size = inner.batch_size
        self.max_in_flight = inner.max_in_flight
        self._observe = observe

    async def send(self, pushes: list[Push]) -> list[PushOutcome]:
        try:
            outcomes = await self.inner.send(pushes)
        except Exception as exc:  # the dispatcher makes it transient for each: count the same
            failed = PushOutcome.transient(type(exc).__name__)
            for _ in pushes:
                self._observe(self.provider, failed)
            raise
        for outcome in outcomes:
            self._observe(self.provider, outcome)
        return outcomes

    async def close(self) -> None:
        await self.inner.close()


def observed(
    senders: dict[Provider, ProviderSender | None], observe: OutcomeObserver | None
) -> dict[Provider, ProviderSender | None]:
    """`senders` with each (present) one wrapped; unchanged when there is no observer."""
    if observe is None:
        return senders
    return {
        provider: None if sender is None else ObservedSender(sender, observe)
        for provider, sender in senders.items()
    }
