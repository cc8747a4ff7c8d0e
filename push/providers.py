"""The push providers, described once: one `ProviderInfo` per provider, in `PROVIDERS`.

Everything that differs between providers outside their sender modules is read from here:
the senders built from settings (push/senders.py), the dispatcher's log names, counters and
suspect answers (push/dispatcher.py), the statistics counters and /metrics labels
(stats/counters.py, stats/metrics.py), and which tokens a register accepts for which
`device` (handlers/validation.py). Those read the table where they are imported, or take it
as an argument (tests/test_provider_table.py adds a provider that way).

Adding a provider: a sender module (its `ProviderSender`, its config and
`config_from_settings`, its token shape), one entry here, a `storage.records.Provider`
member (the stored integer) and its settings in settings.py. Its counters become statistics
columns by themselves (stats/schema.py adds missing ones).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from push import apns, fcm
from push.outcome import ProviderSender
from settings import Settings
from storage.records import Provider

ConfigT = TypeVar("ConfigT")


class LaneEvent(enum.Enum):
    """What a provider lane counts for /metrics alone (push/dispatcher.py)."""

    CONFIG_STORM = "config_storms"  # a storm of suspect answers paused the lane
    SUSPECT_HELD = "suspect_answers_held"  # a suspect answer held back unjudged


@dataclass(frozen=True)
class ProviderInfo(Generic[ConfigT]):
    provider: Provider  # how its registrations are stored
    name: str  # in logs: "APNs"; in lower case, its /metrics label
    platform: str  # the devices it serves, in logs: "iOS"
    device: str  # the `device` word a register names it by, and its counters' prefix: "ios"
    # settings -> the sender's config; None when its credentials are absent (provider off)
    config: Callable[[Settings], ConfigT | None]
    sender: Callable[[ConfigT, Settings], ProviderSender]
    describe: Callable[[ConfigT], str]  # one log line: endpoint, auth
    enable_hint: str  # the settings that switch it on
    token_valid: Callable[[str], bool]  # a device token it could accept
    shape_error: str  # what a client is told for a token it could not accept
    token_claims: Callable[[str], bool]  # a register naming no `device` means this provider
    tokens_ignore_case: bool  # its tokens are compared (and stored) in lower case
    # answers that mean "not our token" or "our configuration is wrong", and the settings
    # to check (push/dispatcher.py tells them apart)
    suspect_reasons: Mapping[str, str]

    @property
    def label(self) -> str:
        """The /metrics label value and the prefix of its event counters: "apns"."""
        return self.name.lower()

    @property
    def sent_counter(self) -> str:
        """The statistics counter of pushes it accepted (the 2021 server's names)."""
        return f"{self.device}_pn_number"

    @property
    def failed_counter(self) -> str:
        """The statistics counter of pushes that failed or were dropped."""
        return f"{self.device}_pn_failed"

    def lane_counter(self, event: LaneEvent) -> str:
        """The /metrics event counter of `event` in this provider's lane."""
        return f"{self.label}_{event.value}"


def _apns_sender(config: apns.APNsConfig, settings: Settings) -> ProviderSender:
    return apns.APNsSender(config, max_in_flight=settings.APNS_MAX_IN_FLIGHT)


def _fcm_sender(config: fcm.FCMConfig, settings: Settings) -> ProviderSender:
    return fcm.FCMSender(config, max_in_flight=settings.FCM_MAX_IN_FLIGHT)


def _any_token(_: str) -> bool:
    return True


PROVIDERS: tuple[ProviderInfo[Any], ...] = (
    ProviderInfo(
        provider=Provider.APNS,
        name="APNs",
        platform="iOS",
        device="ios",
        config=apns.config_from_settings,
        sender=_apns_sender,
        describe=apns.describe,
        enable_hint="APNS_KEY_FILE, APNS_KEY_ID and APNS_TEAM_ID (or APNS_CERT_FILE)",
        token_valid=apns.is_device_token,
        shape_error="Parameter token: an iOS token must be 64 hex characters",
        token_claims=apns.has_token_shape,
        tokens_ignore_case=True,
        suspect_reasons=apns.SUSPECT_REASONS,
    ),
    ProviderInfo(
        provider=Provider.FCM,
        name="FCM",
        platform="Android",
        device="android",
        config=fcm.config_from_settings,
        sender=_fcm_sender,
        describe=fcm.describe,
        enable_hint="FCM_SERVICE_ACCOUNT_FILE",
        token_valid=fcm.is_device_token,
        shape_error="Parameter token must be 1 to 4096 printable ASCII characters",
        token_claims=_any_token,  # the last to ask: any token that is not an APNs token's shape
        tokens_ignore_case=False,
        suspect_reasons=fcm.SUSPECT_REASONS,
    ),
)


def provider_info(provider: Provider) -> ProviderInfo[Any]:
    """The entry of `provider` (KeyError for one the table does not list)."""
    for info in PROVIDERS:
        if info.provider == provider:
            return info
    raise KeyError(provider)
