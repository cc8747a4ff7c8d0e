"""The delivery queue: claim due pushes with a lease, then settle what the providers said.

A claimed row is leased (`lease_until`) so no other dispatcher (in this process or another
sharing the database) takes it; a process that dies mid-send leaves leases that simply run
out, and the pushes go again: delivery is at-least-once. PostgreSQL claims with
`FOR UPDATE SKIP LOCKED`, so concurrent dispatchers never block on each other's rows.
"""

from __future__ import annotations

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
    apns_id: str
    attempts: int
    created_at: int
    data: str
    token_sealed: bytes | None  # None: the device was unregistered since the notify
    registered_at: int | None


@dataclass
class Settlement:
    """What to write back for a round of results (built by the dispatcher)."""

    done: list[ClaimedDelivery] = field(default_factory=list)  # delete the row
    dead_tokens: list[tuple[ClaimedDelivery, int]] = field(default_factory=list)  # + invalid since
    retry: list[tuple[ClaimedDelivery, int]] = field(default_factory=list)  # + not_before

    def __bool__(self) -> bool:
        return bool(self.done or self.dead_tokens or self.retry)


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
        self.claim = prepare(
            select(
                deliveries.c.id,
                deliveries.c.notification_id,
                deliveries.c.device_id,
                deliveries.c.apns_id,
                deliveries.c.attempts,
                deliveries.c.created_at,
                notifications.c.data,
                devices.c.token_sealed,
                devices.c.registered_at,
            )
            .select_from(
                deliveries.join(
                    notifications, notifications.c.id == deliveries.c.notification_id
                ).outerjoin(devices, devices.c.id == deliveries.c.device_id)
            )
            .where(due)
            .order_by(deliveries.c.not_before, deliveries.c.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True, of=deliveries)
        )
        self.lease = prepare(
            update(deliveries)
            .where(deliveries.c.id == bindparam("delivery_id"))
            .values(lease_until=bindparam("lease_until"))
        )
        self.delete_delivery = prepare(
            delete(deliveries).where(deliveries.c.id == bindparam("delivery_id"))
        )
        self.reschedule = prepare(
            update(deliveries)
            .where(deliveries.c.id == bindparam("delivery_id"))
            .values(
                attempts=deliveries.c.attempts + 1,
                not_before=bindparam("not_before"),
                lease_until=0,
            )
        )
        # Compare-and-set: a token registered again after the provider declared it dead
        # (APNs 410 timestamp) is kept.
        self.delete_dead_device = prepare(
            delete(devices).where(
                and_(
                    devices.c.id == bindparam("device_id"),
                    devices.c.registered_at <= bindparam("invalid_since"),
                )
            )
        )
        self.delete_finished_notification = prepare(
            delete(notifications).where(
                and_(
                    notifications.c.id == bindparam("notification_id"),
                    ~exists().where(deliveries.c.notification_id == bindparam("notification_id")),
                )
            )
        )
        self.next_due = prepare(
            select(func.min(deliveries.c.not_before)).where(
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
    ) -> Callable[[Tx], list[ClaimedDelivery]]:
        sql = self._sql

        def operation(tx: Tx) -> list[ClaimedDelivery]:
            rows = tx.all(sql.claim, {"provider": int(provider), "now": now, "limit": limit})
            if rows:
                lease_until = now + lease_ms
                tx.execute_many(
                    sql.lease,
                    [{"delivery_id": row[0], "lease_until": lease_until} for row in rows],
                )
            return [ClaimedDelivery(*row) for row in rows]

        return operation

    def settle_op(self, settlement: Settlement) -> Callable[[Tx], int]:
        """Write back a round of results; returns the number of registrations pruned."""
        sql = self._sql

        def operation(tx: Tx) -> int:
            pruned = 0
            for claimed, invalid_since in settlement.dead_tokens:
                pruned += tx.execute(
                    sql.delete_dead_device,
                    {"device_id": claimed.device_id, "invalid_since": invalid_since},
                )
            finished = settlement.done + [claimed for claimed, _ in settlement.dead_tokens]
            if finished:
                tx.execute_many(
                    sql.delete_delivery, [{"delivery_id": c.delivery_id} for c in finished]
                )
                notification_ids = sorted({c.notification_id for c in finished})
                tx.execute_many(
                    sql.delete_finished_notification,
                    [{"notification_id": n} for n in notification_ids],
                )
            if settlement.retry:
                tx.execute_many(
                    sql.reschedule,
                    [
                        {"delivery_id": c.delivery_id, "not_before": not_before}
                        for c, not_before in settlement.retry
                    ],
                )
            return pruned

        return operation

    def next_due_op(self, provider: Provider, now: int) -> Callable[[Tx], int | None]:
        params = {"provider": int(provider), "now": now}
        return lambda tx: tx.scalar(self._sql.next_due, params)

    def depth_op(self) -> Callable[[Tx], tuple[int, int | None]]:
        def operation(tx: Tx) -> tuple[int, int | None]:
            rows = tx.all(self._sql.depth, {})
            count, oldest = rows[0] if rows else (0, None)
            return int(count), oldest

        return operation
