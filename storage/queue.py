"""The delivery queue: claim due pushes with a lease, then settle what the providers said.

A claimed row is leased (`lease_until`) so no other dispatcher (in this process or another
sharing the database) takes it; a process that dies mid-send leaves leases that simply run
out, and the pushes go again: delivery is at-least-once. PostgreSQL claims with
`FOR UPDATE SKIP LOCKED`, so concurrent dispatchers never block on each other's rows.

Every claim writes a fresh random `lease_token`. Renewing and settling are compare-and-set on
it: an answer that arrives after its lease was taken over (the push was claimed again, or the
row is gone and its id belongs to nobody) changes nothing and is counted as stale.

A delivery belongs to one registration, `(device_id, device_generation)`. A claim that finds
that registration gone or changed (unregistered, moved to another Session ID, re-registered
with the other provider) deletes the delivery unsent: it was written for someone else.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, bindparam, delete, exists, func, select, update

from storage.records import Provider
from storage.schema import deliveries, devices, notifications
from storage.sql import Prepared, Tx

NEVER = 2**62  # "registered before this" for dead tokens without a provider timestamp


@dataclass(frozen=True)
class ClaimedDelivery:
    delivery_id: int
    notification_id: int
    device_id: int
    device_generation: int
    apns_id: str
    attempts: int
    created_at: int
    data: str
    token_sealed: bytes
    registered_at: int
    lease_token: int


@dataclass(frozen=True)
class Claim:
    """What one claim took: the pushes to send, and how many it dropped unsent."""

    deliveries: list[ClaimedDelivery]
    dropped_unregistered: int = 0


@dataclass(frozen=True)
class SettleResult:
    pruned: int = 0  # registrations deleted for a dead token
    stale: int = 0  # results for leases no longer held: nothing changed


@dataclass
class Settlement:
    """What to write back for a round of results (built by the dispatcher)."""

    done: list[ClaimedDelivery] = field(default_factory=list)  # delete the row
    dead_tokens: list[tuple[ClaimedDelivery, int]] = field(default_factory=list)  # + invalid since
    retry: list[tuple[ClaimedDelivery, int]] = field(default_factory=list)  # + not_before

    def __bool__(self) -> bool:
        return bool(self.done or self.dead_tokens or self.retry)


def finished_notification_delete() -> Any:
    """Delete notification `:notification_id` if no delivery is left for it.

    Never one whose fan-out is still being written (not `ready`): an unregister may delete
    every delivery written so far, and the chunks still to come need their notification.
    """
    return delete(notifications).where(
        and_(
            notifications.c.id == bindparam("notification_id"),
            notifications.c.ready,
            ~exists().where(deliveries.c.notification_id == bindparam("notification_id")),
        )
    )


class QueueStatements:
    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect

        def prepare(statement: Any) -> Prepared:
            return Prepared.compile(statement, dialect)

        due = and_(
            deliveries.c.provider == bindparam("provider"),
            deliveries.c.not_before <= bindparam("now"),
            deliveries.c.lease_until <= bindparam("now"),
        )
        # The registration the delivery was written for, if it still exists unchanged.
        same_registration = and_(
            devices.c.id == deliveries.c.device_id,
            devices.c.generation == deliveries.c.device_generation,
            devices.c.provider == deliveries.c.provider,
        )
        # A notification whose fan-out is still being written (storage/store.py) is not ready:
        # none of its deliveries is claimed until its last chunk has committed.
        of_ready_notification = and_(
            notifications.c.id == deliveries.c.notification_id, notifications.c.ready
        )
        self.claim = prepare(
            select(
                deliveries.c.id,
                deliveries.c.notification_id,
                deliveries.c.device_id,
                deliveries.c.device_generation,
                deliveries.c.apns_id,
                deliveries.c.attempts,
                deliveries.c.created_at,
                notifications.c.data,
                devices.c.token_sealed,
                devices.c.registered_at,
            )
            .select_from(
                deliveries.join(notifications, of_ready_notification).outerjoin(
                    devices, same_registration
                )
            )
            .where(due)
            .order_by(deliveries.c.not_before, deliveries.c.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True, of=deliveries)
        )
        self.lease = prepare(
            update(deliveries)
            .where(deliveries.c.id == bindparam("delivery_id"))
            .values(lease_until=bindparam("lease_until"), lease_token=bindparam("lease_token"))
        )
        held = and_(
            deliveries.c.id == bindparam("delivery_id"),
            deliveries.c.lease_token == bindparam("lease_token"),
        )
        self.renew = prepare(
            update(deliveries).where(held).values(lease_until=bindparam("lease_until"))
        )
        self.delete_unsent = prepare(
            delete(deliveries).where(deliveries.c.id == bindparam("delivery_id"))
        )
        self.delete_delivery = prepare(delete(deliveries).where(held))
        self.reschedule = prepare(
            update(deliveries)
            .where(held)
            .values(
                attempts=deliveries.c.attempts + 1,
                not_before=bindparam("not_before"),
                lease_until=0,
            )
        )
        # Compare-and-set on the very registration the push was sent to; and one registered
        # again after the provider declared the token dead (APNs 410 timestamp) is kept.
        self.delete_dead_device = prepare(
            delete(devices).where(
                and_(
                    devices.c.id == bindparam("device_id"),
                    devices.c.generation == bindparam("device_generation"),
                    devices.c.registered_at <= bindparam("invalid_since"),
                )
            )
        )
        self.drop_device_deliveries = prepare(
            delete(deliveries).where(deliveries.c.device_id == bindparam("device_id"))
        )
        self.delete_finished_notification = prepare(finished_notification_delete())
        self.next_due = prepare(
            select(func.min(deliveries.c.not_before))
            .select_from(deliveries.join(notifications, of_ready_notification))
            .where(
                and_(
                    deliveries.c.provider == bindparam("provider"),
                    deliveries.c.lease_until <= bindparam("now"),
                )
            )
        )
        self.depth = prepare(select(func.count(), func.min(deliveries.c.created_at)))


class DeliveryQueue:
    """Builds the queue's operations for the BatchWriter (see storage/writer.py)."""

    def __init__(self, engine: Engine) -> None:
        self._sql = QueueStatements(engine)

    def claim_op(
        self, provider: Provider, limit: int, now: int, lease_ms: int
    ) -> Callable[[Tx], Claim]:
        sql = self._sql

        def operation(tx: Tx) -> Claim:
            rows = tx.all(sql.claim, {"provider": int(provider), "now": now, "limit": limit})
            if not rows:
                return Claim([])
            token = secrets.randbits(62) + 1  # 0 means "never claimed"
            lease_until = now + lease_ms
            live = [row for row in rows if row[8] is not None]
            gone = [row for row in rows if row[8] is None]
            if live:
                tx.execute_many(
                    sql.lease,
                    [
                        {"delivery_id": row[0], "lease_until": lease_until, "lease_token": token}
                        for row in live
                    ],
                )
            if gone:
                tx.execute_many(sql.delete_unsent, [{"delivery_id": row[0]} for row in gone])
                self._forget_finished(tx, {row[1] for row in gone})
            return Claim(
                [ClaimedDelivery(*(*row, token)) for row in live],
                dropped_unregistered=len(gone),
            )

        return operation

    def renew_op(
        self, held: list[tuple[int, int]], lease_until: int
    ) -> Callable[[Tx], int]:
        """Extend the leases still held, as (delivery_id, lease_token); returns how many."""
        sql = self._sql

        def operation(tx: Tx) -> int:
            renewed = 0
            for delivery_id, token in held:
                renewed += tx.execute(
                    sql.renew,
                    {"delivery_id": delivery_id, "lease_token": token, "lease_until": lease_until},
                )
            return renewed

        return operation

    def _forget_finished(self, tx: Tx, notification_ids: set[int]) -> None:
        if notification_ids:
            tx.execute_many(
                self._sql.delete_finished_notification,
                [{"notification_id": n} for n in sorted(notification_ids)],
            )

    def settle_op(self, settlement: Settlement) -> Callable[[Tx], SettleResult]:
        """Write back a round of results, each only if its lease is still held."""
        sql = self._sql

        def held(claimed: ClaimedDelivery) -> dict[str, int]:
            return {"delivery_id": claimed.delivery_id, "lease_token": claimed.lease_token}

        def operation(tx: Tx) -> SettleResult:
            pruned = stale = 0
            finished = {claimed.notification_id for claimed in settlement.done}
            if settlement.done:
                deleted = tx.execute_many(sql.delete_delivery, map(held, settlement.done))
                stale += len(settlement.done) - deleted
            for claimed, invalid_since in settlement.dead_tokens:
                if not tx.execute(sql.delete_delivery, held(claimed)):
                    stale += 1
                    continue
                finished.add(claimed.notification_id)
                if tx.execute(
                    sql.delete_dead_device,
                    {
                        "device_id": claimed.device_id,
                        "device_generation": claimed.device_generation,
                        "invalid_since": invalid_since,
                    },
                ):
                    pruned += 1
                    tx.execute(sql.drop_device_deliveries, {"device_id": claimed.device_id})
            for claimed, not_before in settlement.retry:
                if not tx.execute(sql.reschedule, {**held(claimed), "not_before": not_before}):
                    stale += 1
            self._forget_finished(tx, finished)
            return SettleResult(pruned=pruned, stale=stale)

        return operation

    def next_due_op(self, provider: Provider, now: int) -> Callable[[Tx], int | None]:
        params = {"provider": int(provider), "now": now}
        return lambda tx: tx.scalar(self._sql.next_due, params)

    def depth(self, engine: Engine) -> tuple[int, int | None]:
        """(deliveries waiting, created_at of the oldest), read beside the writer, not through it.

        A plain read on its own connection: on SQLite (WAL) it neither takes nor waits for the
        write lock, so a scrape never delays a register; `ix_deliveries_created_at` makes the
        oldest a one-row lookup, and the count an index scan.
        """
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self._sql.depth.sql)
                count, oldest = cursor.fetchone() or (0, None)
            finally:
                cursor.close()
            connection.rollback()
        finally:
            connection.close()
        return int(count), None if oldest is None else int(oldest)
