"""Plain values that cross the storage boundary."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Provider(enum.IntEnum):
    """Where a device token's pushes go. Stored as its integer value."""

    APNS = 1
    FCM = 2


@dataclass(frozen=True)
class Enqueued:
    """What an accepted notify wrote to the delivery queue.

    `refused` names the abuse limit that refused it (nothing was written), else "".
    """

    deliveries: int
    via_group: bool
    duplicate: bool
    refused: str = ""


class Membership(enum.Enum):
    """What a subscribe did."""

    JOINED = "joined"
    ALREADY_MEMBER = "already_member"
    GROUP_FULL = "group_full"  # the group has MAX_GROUP_MEMBERS members: nothing written


@dataclass(frozen=True)
class Registered:
    """What a register did: `replaced` older devices of the Session ID were forgotten to make
    room (MAX_DEVICES_PER_SESSION); `full_group` is True when a group of the list had no room
    for this Session ID, and then nothing at all was written."""

    replaced: int = 0
    full_group: bool = False


@dataclass(frozen=True)
class Continuation:
    """A write too large for one transaction, part done: the caller submits `operation` next
    (its own transaction) and answers only once an operation returns something else."""

    operation: Callable[[Any], Any]
