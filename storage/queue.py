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

from sqlalchemy import Engine, and_, bindparam, delete, exists, func, select, text, update

from storage.records import Provider
from storage.schema import deliveries, devices, notifications
from storage.sql import FollowUp, PipelinedOperation, Prepared, Sent, Tx

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
    # When the next row falls due (asked for with `with_next_due`), read after the claim.
    next_due: int | None = None


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

    def size(self) -> int:
        """How many results it writes back."""
        return len(self.done) + len(self.dead_tokens) + len(self.retry)


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


# PostgreSQL: the claim in one statement (pick the due rows, lease them, read what a push
# needs) instead of a SELECT ... FOR UPDATE and one UPDATE per row, in two round trips. The
# columns are ClaimedDelivery's, its lease token aside; token_sealed is NULL for a delivery
# whose registration is gone or changed (it was leased too, and is deleted unsent after).
CLAIM_AT_ONCE = """
WITH picked AS (
    SELECT d.id
    FROM deliveries AS d JOIN notifications AS n ON n.id = d.notification_id AND n.ready
    WHERE d.provider = CAST(:provider AS smallint)
        AND d.not_before <= CAST(:now AS bigint) AND d.lease_until <= CAST(:now AS bigint)
    ORDER BY d.not_before, d.id
    LIMIT CAST(:limit AS integer)
    FOR UPDATE OF d SKIP LOCKED
),
leased AS (
    UPDATE deliveries AS d
    SET lease_until = CAST(:lease_until AS bigint), lease_token = CAST(:lease_token AS bigint)
    FROM picked WHERE d.id = picked.id
    RETURNING d.id, d.notification_id, d.device_id, d.device_generation, d.provider,
        d.apns_id, d.attempts, d.created_at, d.not_before
)
SELECT l.id, l.notification_id, l.device_id, l.device_generation, l.apns_id, l.attempts,
    l.created_at, n.data, v.token_sealed, v.registered_at
FROM leased AS l
    JOIN notifications AS n ON n.id = l.notification_id
    LEFT JOIN devices AS v
        ON v.id = l.device_id AND v.generation = l.device_generation AND v.provider = l.provider
ORDER BY l.not_before, l.id
"""
# PostgreSQL: a round of results a statement per kind, not a statement per row; each row only
# if its lease is still held (the id and lease token arrays are read in step).
DONE_AT_ONCE = """
DELETE FROM deliveries AS d
USING unnest(CAST(:ids AS bigint[]), CAST(:tokens AS bigint[])) AS held(id, token)
WHERE d.id = held.id AND d.lease_token = held.token
"""
RETRY_AT_ONCE = """
UPDATE deliveries AS d
SET attempts = d.attempts + 1, not_before = held.not_before, lease_until = 0
FROM unnest(
    CAST(:ids AS bigint[]), CAST(:tokens AS bigint[]), CAST(:not_before AS bigint[])
) AS held(id, token, not_before)
WHERE d.id = held.id AND d.lease_token = held.token
"""
FORGET_FINISHED_AT_ONCE = """
DELETE FROM notifications AS n
WHERE n.id = ANY(CAST(:ids AS bigint[])) AND n.ready
    AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.notification_id = n.id)
"""


class QueueStatements:
    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        self.at_once = dialect.name == "postgresql"

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
        self.claim_at_once = prepare(text(CLAIM_AT_ONCE))
        self.done_at_once = prepare(text(DONE_AT_ONCE))
        self.retry_at_once = prepare(text(RETRY_AT_ONCE))
        self.forget_finished_at_once = prepare(text(FORGET_FINISHED_AT_ONCE))


def _held(claimed: ClaimedDelivery) -> dict[str, int]:
    return {"delivery_id": claimed.delivery_id, "lease_token": claimed.lease_token}


class DeliveryQueue:
    """Builds the queue's operations for the BatchWriter (see storage/writer.py)."""

    def __init__(self, engine: Engine) -> None:
        self._sql = QueueStatements(engine)

    @property
    def statements(self) -> QueueStatements:
        return self._sql

    def claim_op(
        self,
        provider: Provider,
        limit: int,
        now: int,
        lease_ms: int,
        *,
        with_next_due: bool = False,
    ) -> Callable[[Tx], Claim]:
        """Lease up to `limit` due pushes; with `with_next_due`, also read (after the claim,
        in the same transaction) when the next row falls due, if fewer were due than `limit`
        (on PostgreSQL it is read, in the same round trip, either way)."""
        sql = self._sql
        token = secrets.randbits(62) + 1  # 0 means "never claimed"
        if sql.at_once:
            due = {"provider": int(provider), "now": now}
            claim = {**due, "limit": limit, "lease_until": now + lease_ms, "lease_token": token}
            return _ClaimAtOnce(self, claim, due if with_next_due else None)

        def operation(tx: Tx) -> Claim:
            rows = tx.all(sql.claim, {"provider": int(provider), "now": now, "limit": limit})
            live = [row for row in rows if row[8] is not None]
            gone = [row for row in rows if row[8] is None]
            if live:
                lease_until = now + lease_ms
                tx.execute_many(
                    sql.lease,
                    [
                        {"delivery_id": row[0], "lease_until": lease_until, "lease_token": token}
                        for row in live
                    ],
                )
            self.drop_unsent(tx, gone)
            asked = with_next_due and len(rows) < limit
            next_due = self.next_due_op(provider, now)(tx) if asked else None
            return Claim(
                [ClaimedDelivery(*(*row, token)) for row in live],
                dropped_unregistered=len(gone),
                next_due=next_due,
            )

        return operation

    def drop_unsent(self, tx: Tx, gone: list[tuple[Any, ...]]) -> None:
        """Delete claimed rows whose registration is gone or changed, unsent."""
        if gone:
            tx.execute_many(self._sql.delete_unsent, [{"delivery_id": row[0]} for row in gone])
            self._forget_finished(tx, {row[1] for row in gone})

    def renew_op(self, held: list[tuple[int, int]], lease_until: int) -> Callable[[Tx], int]:
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
        if sql.at_once:
            return _SettleAtOnce(self, settlement)

        def operation(tx: Tx) -> SettleResult:
            stale = 0
            finished = {claimed.notification_id for claimed in settlement.done}
            if settlement.done:
                deleted = tx.execute_many(sql.delete_delivery, map(_held, settlement.done))
                stale += len(settlement.done) - deleted
            pruned, lost = self.settle_dead_tokens(tx, settlement.dead_tokens, finished)
            stale += lost
            for claimed, not_before in settlement.retry:
                if not tx.execute(sql.reschedule, {**_held(claimed), "not_before": not_before}):
                    stale += 1
            self._forget_finished(tx, finished)
            return SettleResult(pruned=pruned, stale=stale)

        return operation

    def settle_dead_tokens(
        self, tx: Tx, dead_tokens: list[tuple[ClaimedDelivery, int]], finished: set[int]
    ) -> tuple[int, int]:
        """Delete each delivery to a dead token and, if it is still the registration the push
        went to, the device and what else was queued for it; adds the notifications that may
        be finished to `finished`. Returns (registrations pruned, stale results)."""
        sql = self._sql
        pruned = stale = 0
        for claimed, invalid_since in dead_tokens:
            if not tx.execute(sql.delete_delivery, _held(claimed)):
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
        return pruned, stale

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


class _ClaimAtOnce(PipelinedOperation[Claim]):
    """PostgreSQL's claim: CLAIM_AT_ONCE and, if asked, the next due time, sent together (in
    the writer's pipeline, with the batch's other statements)."""

    def __init__(
        self, queue: DeliveryQueue, claim: dict[str, int], next_due: dict[str, int] | None
    ) -> None:
        self._queue = queue
        self._claim = claim
        self._next_due = next_due
        self._token = claim["lease_token"]
        self.__name__ = "claim"

    def send(self, tx: Tx) -> tuple[Sent, Sent | None]:
        sql = self._queue.statements
        claimed = tx.send(sql.claim_at_once, self._claim)
        next_due = None if self._next_due is None else tx.send(sql.next_due, self._next_due)
        return claimed, next_due

    def receive(self, sent: tuple[Sent, Sent | None]) -> Claim | FollowUp[Claim]:
        claimed, next_due_sent = sent
        rows = claimed.rows()
        next_due = None
        if next_due_sent is not None:
            ((next_due,),) = next_due_sent.rows()
        live = [row for row in rows if row[8] is not None]
        gone = [row for row in rows if row[8] is None]
        claim = Claim(
            [ClaimedDelivery(*(*row, self._token)) for row in live],
            dropped_unregistered=len(gone),
            next_due=next_due,
        )
        if not gone:
            return claim

        def drop_unsent(tx: Tx) -> Claim:  # leased by this claim: nobody else takes them
            self._queue.drop_unsent(tx, gone)
            return claim

        return FollowUp(drop_unsent)


class _SettleAtOnce(PipelinedOperation[SettleResult]):
    """PostgreSQL's settlement: one statement for every push done, one for every retry and
    one for the notifications maybe finished, sent together. Results that prune a dead token
    (rare) go a row at a time, in the order SQLite's settlement takes."""

    def __init__(self, queue: DeliveryQueue, settlement: Settlement) -> None:
        self._queue = queue
        self._settlement = settlement
        self.__name__ = "settle"

    @staticmethod
    def _arrays(claims: list[ClaimedDelivery]) -> dict[str, list[int]]:
        ordered = sorted(claims, key=lambda c: c.delivery_id)  # one lock order for all
        return {
            "ids": [c.delivery_id for c in ordered],
            "tokens": [c.lease_token for c in ordered],
        }

    def _retry(self) -> dict[str, list[int]]:
        retry = sorted(self._settlement.retry, key=lambda r: r[0].delivery_id)
        return {**self._arrays([c for c, _ in retry]), "not_before": [nb for _, nb in retry]}

    def _finished(self) -> dict[str, list[int]]:
        return {"ids": sorted({c.notification_id for c in self._settlement.done})}

    def send(self, tx: Tx) -> tuple[Sent | None, Sent | None, Sent | None]:
        sql = self._queue.statements
        settlement = self._settlement
        done = retried = forgotten = None
        if settlement.done:
            done = tx.send(sql.done_at_once, self._arrays(settlement.done))
        if not settlement.dead_tokens:
            if settlement.retry:
                retried = tx.send(sql.retry_at_once, self._retry())
            if settlement.done:
                forgotten = tx.send(sql.forget_finished_at_once, self._finished())
        return done, retried, forgotten

    def receive(
        self, sent: tuple[Sent | None, Sent | None, Sent | None]
    ) -> SettleResult | FollowUp[SettleResult]:
        settlement = self._settlement
        done, retried, forgotten = sent
        stale = 0
        if done is not None:
            stale += len(settlement.done) - done.rowcount()
        if forgotten is not None:
            forgotten.rowcount()
        if retried is not None:
            stale += len(settlement.retry) - retried.rowcount()
        if not settlement.dead_tokens:
            return SettleResult(stale=stale)
        return FollowUp(lambda tx: self._dead_tokens_then_the_rest(tx, stale))

    def _dead_tokens_then_the_rest(self, tx: Tx, stale: int) -> SettleResult:
        sql = self._queue.statements
        settlement = self._settlement
        finished = {c.notification_id for c in settlement.done}
        pruned, lost = self._queue.settle_dead_tokens(tx, settlement.dead_tokens, finished)
        stale += lost
        if settlement.retry:
            stale += len(settlement.retry) - tx.execute(sql.retry_at_once, self._retry())
        tx.execute(sql.forget_finished_at_once, {"ids": sorted(finished)})
        return SettleResult(pruned=pruned, stale=stale)
