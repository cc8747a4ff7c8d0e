"""Plain values that cross the storage boundary."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Provider(enum.IntEnum):
    """Where a device token's pushes go. Stored as its integer value."""

    APNS = 1
    FCM = 2


@dataclass(frozen=True)
class NotifyOutcome:
    """What an accepted notify wrote to the delivery queue."""

    deliveries: int
    via_group: bool
    duplicate: bool
