"""Build the provider senders from settings; a provider without credentials is off.

Each provider's sender module translates its settings (`ProviderInfo.config`, push/providers.py).
Inconsistent credentials (a key without its id, a file that does not exist) stop the start
with one line (`DeliveryConfigError`); absent credentials only switch that provider off, with
a log line saying how to switch it on. Pushes for a provider that is off are counted as failed
and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from push.config_checks import DeliveryConfigError
from push.outcome import ProviderSender
from push.providers import PROVIDERS, ProviderInfo
from settings import Settings
from storage.records import Provider

__all__ = ["DeliveryConfigError", "build_senders"]

log = logging.getLogger(__name__)


def build_senders(
    settings: Settings, providers: Iterable[ProviderInfo[Any]] = PROVIDERS
) -> dict[Provider, ProviderSender | None]:
    """A sender per provider of the table, None for one that is off."""
    senders: dict[Provider, ProviderSender | None] = {}
    for info in providers:
        config = info.config(settings)
        if config is None:
            log.warning(
                "%s is off: no credentials. %s pushes are counted as failed and dropped."
                " To enable, set %s.",
                info.name,
                info.platform,
                info.enable_hint,
            )
            senders[info.provider] = None
        else:
            log.info("%s: %s", info.name, info.describe(config))
            senders[info.provider] = info.sender(config, settings)
    return senders
