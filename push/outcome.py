"""What a provider said about one push, in the terms the dispatcher acts on.

The senders translate APNs and FCM answers into these; the dispatcher never looks at a
provider's status codes. (Sygnal's small exception taxonomy, as values.)
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from storage.records import Provider


class Verdict(enum.Enum):
    ACCEPTED = "accepted"  # delivered to the provider: done
    DEAD_TOKEN = "dead_token"  # noqa: S105 - a verdict, not a secret. The token will never work again: forget it
    CONFIG_ERROR = "config_error"  # our credentials/topic are wrong: keep everything, back off
    TRANSIENT = "transient"  # try again later (429, 5xx, timeout, connection lost)
    REJECTED = "rejected"  # this push can never be sent (e.g. too large): drop it, keep token


@dataclass(frozen=True)
class PushOutcome:
    verdict: Verdict
    reason: str = ""  # the provider's reason word, e.g. "Unregistered"; never a token
    retry_after: float | None = None  # seconds, from Retry-After
    invalid_since_ms: int | None = None  # APNs 410 timestamp: delete only if registered before
    hint: str = ""  # for CONFIG_ERROR: the settings to check, in words
    trimmed: bool = False  # the data was left out to fit the provider's size limit

    @classmethod
    def accepted(cls, *, trimmed: bool = False) -> PushOutcome:
        return cls(Verdict.ACCEPTED, trimmed=trimmed)

    def with_trimmed(self) -> PushOutcome:
        """The same outcome, for a push that went without its data to fit the size limit."""
        return dataclasses.replace(self, trimmed=True)

    @classmethod
    def transient(cls, reason: str, retry_after: float | None = None) -> PushOutcome:
        return cls(Verdict.TRANSIENT, reason=reason, retry_after=retry_after)


ACCEPTED = PushOutcome(Verdict.ACCEPTED)


@dataclass(frozen=True)
class Push:
    """One push to send: everything a sender needs, nothing it does not."""

    delivery_id: int
    provider: Provider
    token: str
    data: str
    apns_id: str
    expiration_s: int  # epoch seconds after which the provider may drop it


class ProviderSender:
    """The provider boundary: one async method (and a close). Implemented in apns.py, fcm.py.

    `batch_size` is how many pushes one `send` call takes (FCM sends a list at once; APNs one
    request per push); `max_in_flight` bounds the pushes awaiting an answer at any moment.
    """

    provider: Provider
    name: str
    batch_size: int = 1
    max_in_flight: int = 100

    async def send(self, pushes: list[Push]) -> list[PushOutcome]:
        """Send a batch; one outcome per push, in order. Never raises for a provider error."""
        raise NotImplementedError

    async def close(self) -> None:
        return None
