"""The relay's queries. Every write runs through the BatchWriter (group commit).

Statements are SQLAlchemy Core, compiled once for the engine's dialect (storage/sql.py).
The `*_op` methods do the per-request work that needs no database (hashing, sealing) and
return the operation for the BatchWriter, which runs it (see handlers/runner.py).

Abuse limits that need no IP address (docs/security.md) live here where they need the
database: at most `max_devices` registrations per Session ID (a new one replaces the least
recently registered), at most `max_members` members per group (a new member beyond it is
refused), and a notify's fan-out written `fanout_chunk` deliveries per transaction.

Chunked fan-out, and what a crash between chunks leaves. A notify with more recipients than
one chunk writes its notification row *not ready* together with the first chunk, one further
chunk per writer operation, and marks the notification ready (and claims the dedup window) in
the last one; only then is it answered. The writer runs other requests between the chunks, so
no request waits behind more than one chunk. Until it is ready, none of its deliveries can be
claimed (storage/queue.py), so a crash between chunks pushes nothing at all: the client, never
answered, sends the notify again, and it is written afresh (the dedup window was not claimed).
The unready leftovers are deleted, a chunk at a time, by `purge_abandoned_fanouts_op`
(run at start and periodically by jobs.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import (
    Engine,
    LargeBinary,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from storage.pgpipe import bigint_array, bool_array, bytea_array, text_array
from storage.protect import IdentifierProtector
from storage.queue import finished_notification_delete
from storage.records import Continuation, Enqueued, Membership, Provider, Registered
from storage.schema import deliveries, devices, group_members, notifications, notify_dedup
from storage.sql import FollowUp, PipelinedOperation, Prepared, RowsStatement, Sent, Tx
from storage.writer import BatchWriter, StorageError

Clock = Callable[[], int]
T = TypeVar("T")


class Admission(Protocol):
    """The per-recipient notify rate limit (handlers/notify_limit.py), by keyed hash."""

    def admit(self, recipient: bytes) -> bool:
        """Take one notify from the recipient's allowance; False: refuse it."""

    def refund(self, recipient: bytes) -> None:
        """Give back what `admit` took: the notify queued nothing after all."""


NO_LIMIT = 2**31 - 1
# A fan-out still not ready this long after its notification was written was abandoned (its
# process died between chunks): a live one takes a fraction of a second per thousand devices.
FANOUT_ABANDONED_AFTER_MS = 15 * 60 * 1000

DEVICE_COLUMNS = (
    "token_hash",
    "token_sealed",
    "session_hash",
    "provider",
    "registered_at",
    "generation",
)
DELIVERY_COLUMNS = (
    "notification_id",
    "device_id",
    "device_generation",
    "provider",
    "apns_id",
    "created_at",
    "attempts",
    "not_before",
    "lease_until",
    "lease_token",
)


# Notifies in one PostgreSQL statement, one round trip instead of five each: a run of them
# (the consecutive notifies of a writer's batch, or one), as arrays read in step, a row each.
# For each: the recipients (own devices and group members' devices), the dedup check, and, for
# a notify that fits one chunk, is admitted and is not live in the dedup window: the dedup
# claim, the notification and one delivery per device, stamped with the generation read in
# the same snapshot. It answers, a row per notify in order, what it found and did; more than
# `chunk` recipients writes nothing (the caller takes the chunked path). Two notifies of the
# run with the same dedup key: only the first that would be written claims the key, and the
# second answers as a duplicate (as it would a statement later, refused or not). SQLite has
# no data-modifying CTEs: it runs the same steps one statement each (in-process, ~15 µs
# apiece), see `RelayStore.enqueue_in_steps`.
NOTIFY_AT_ONCE = """
WITH input AS (
    SELECT * FROM unnest(
        CAST(:targets AS bytea[]), CAST(:key_hashes AS bytea[]),
        CAST(:expires_at AS bigint[]), CAST(:admitted AS boolean[]), CAST(:data AS text[])
    ) WITH ORDINALITY AS i(target, key_hash, expires_at, admitted, data, ord)
),
recipients AS (
    SELECT i.ord, d.id, d.generation, d.provider, 0 AS via_group
    FROM input AS i JOIN devices AS d ON d.session_hash = i.target
    UNION ALL
    SELECT i.ord, d.id, d.generation, d.provider, 1
    FROM input AS i
        JOIN group_members AS m ON m.group_hash = i.target
        JOIN devices AS d ON d.session_hash = m.session_hash
),
found AS (
    SELECT
        i.ord, i.key_hash, i.expires_at, i.admitted, i.data,
        c.recipients, c.via_group, l.live IS NOT NULL AS live
    FROM input AS i
        CROSS JOIN LATERAL (
            SELECT count(DISTINCT r.id) AS recipients, coalesce(max(r.via_group), 0) AS via_group
            FROM recipients AS r WHERE r.ord = i.ord
        ) AS c
        LEFT JOIN LATERAL (
            SELECT true AS live FROM notify_dedup AS k
            WHERE k.key_hash = i.key_hash AND k.expires_at > CAST(:now AS bigint)
            LIMIT 1
        ) AS l ON true
),
go AS (
    SELECT ord, key_hash, expires_at, data FROM found
    WHERE recipients BETWEEN 1 AND CAST(:chunk AS integer) AND NOT live AND admitted
),
claimed AS (
    INSERT INTO notify_dedup (key_hash, expires_at)
    SELECT DISTINCT ON (key_hash) key_hash, expires_at FROM go
    WHERE key_hash IS NOT NULL
    ORDER BY key_hash, ord
    ON CONFLICT (key_hash) DO UPDATE SET expires_at = excluded.expires_at
    WHERE notify_dedup.expires_at <= CAST(:now AS bigint)
    RETURNING key_hash
),
written AS MATERIALIZED (
    SELECT
        go.ord, go.key_hash, go.data,
        nextval(pg_get_serial_sequence('notifications', 'id')) AS id
    FROM go
    WHERE go.key_hash IS NULL OR (
        go.key_hash IN (SELECT key_hash FROM claimed)
        AND go.ord = (SELECT min(g.ord) FROM go AS g WHERE g.key_hash = go.key_hash)
    )
),
notified AS (
    INSERT INTO notifications (id, data, created_at, ready)
    SELECT id, data, CAST(:now AS bigint), true FROM written
),
queued AS (
    INSERT INTO deliveries (
        notification_id, device_id, device_generation, provider, apns_id,
        created_at, attempts, not_before, lease_until, lease_token
    )
    SELECT
        w.id, r.id, r.generation, r.provider, CAST(gen_random_uuid() AS varchar),
        CAST(:now AS bigint), 0, CAST(:now AS bigint), 0, 0
    FROM written AS w
        JOIN (SELECT DISTINCT ON (ord, id) ord, id, generation, provider FROM recipients) AS r
        ON r.ord = w.ord
    RETURNING notification_id
)
SELECT
    f.recipients, f.via_group,
    -- live in the window, or claimed by an earlier notify of the run
    f.live OR EXISTS (
        SELECT 1 FROM written AS e WHERE e.key_hash = f.key_hash AND e.ord < f.ord
    ),
    coalesce(q.n, 0)
FROM found AS f
    LEFT JOIN written AS w ON w.ord = f.ord
    LEFT JOIN (SELECT notification_id, count(*) AS n FROM queued GROUP BY notification_id) AS q
        ON q.notification_id = w.id
ORDER BY f.ord
"""


# One notify alone (a run of one): the same steps with scalars. The statement over arrays costs
# PostgreSQL ~270 µs for a single row against ~100 µs for this one (bench/pg_notify_runs.py).
NOTIFY_ONE = """
WITH recipients AS (
    SELECT d.id, d.generation, d.provider, 0 AS via_group
    FROM devices AS d
    WHERE d.session_hash = :target
    UNION ALL
    SELECT d.id, d.generation, d.provider, 1
    FROM group_members AS m JOIN devices AS d ON d.session_hash = m.session_hash
    WHERE m.group_hash = :target
),
found AS (
    SELECT
        count(DISTINCT id) AS recipients,
        coalesce(max(via_group), 0) AS via_group,
        EXISTS (
            SELECT 1 FROM notify_dedup
            WHERE key_hash = CAST(:key_hash AS bytea) AND expires_at > CAST(:now AS bigint)
        ) AS live
    FROM recipients
),
go AS (
    SELECT 1 FROM found
    WHERE recipients BETWEEN 1 AND CAST(:chunk AS integer)
        AND NOT live AND CAST(:admitted AS boolean)
),
claimed AS (
    INSERT INTO notify_dedup (key_hash, expires_at)
    SELECT CAST(:key_hash AS bytea), CAST(:expires_at AS bigint) FROM go
    WHERE CAST(:key_hash AS bytea) IS NOT NULL
    ON CONFLICT (key_hash) DO UPDATE SET expires_at = excluded.expires_at
    WHERE notify_dedup.expires_at <= CAST(:now AS bigint)
    RETURNING 1
),
written AS (
    INSERT INTO notifications (data, created_at, ready)
    SELECT CAST(:data AS text), CAST(:now AS bigint), true FROM go
    WHERE CAST(:key_hash AS bytea) IS NULL OR EXISTS (SELECT 1 FROM claimed)
    RETURNING id
),
queued AS (
    INSERT INTO deliveries (
        notification_id, device_id, device_generation, provider, apns_id,
        created_at, attempts, not_before, lease_until, lease_token
    )
    SELECT
        written.id, r.id, r.generation, r.provider, CAST(gen_random_uuid() AS varchar),
        CAST(:now AS bigint), 0, CAST(:now AS bigint), 0, 0
    FROM written, (SELECT DISTINCT ON (id) id, generation, provider FROM recipients) AS r
    RETURNING 1
)
SELECT recipients, via_group, live, (SELECT count(*) FROM queued) FROM found
"""


def _notify_values(scalars: Mapping[str, Any], rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """NOTIFY_AT_ONCE's values for a run of rows (target, key_hash, expires_at, admitted,
    data): each column as a PostgreSQL array literal, built here in one pass (psycopg's list
    dumpers cost ~25 µs a notify more, measured in bench/README.md)."""
    targets, keys, expires_at, admitted, data = zip(*rows, strict=True)
    return {
        **scalars,
        "targets": bytea_array(targets),
        "key_hashes": bytea_array(keys),
        "expires_at": bigint_array(expires_at),
        "admitted": bool_array(admitted),
        "data": text_array(data),
    }


class Statements:
    """Every statement of the write path, compiled once for one dialect."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        dialect_insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert

        def prepare(statement: Any, columns: Iterable[str] | None = None) -> Prepared:
            return Prepared.compile(statement, dialect, list(columns) if columns else None)

        upsert = dialect_insert(devices)
        # A token that changes owner or provider is a new registration: its generation grows,
        # and what was queued for the old one is deleted (below) or, if a concurrent notify
        # slips one in, refused at claim time (storage/queue.py).
        changed_hands = or_(
            devices.c.session_hash != upsert.excluded.session_hash,
            devices.c.provider != upsert.excluded.provider,
        )
        self.upsert_device = prepare(
            upsert.on_conflict_do_update(
                index_elements=[devices.c.token_hash],
                set_={
                    "token_sealed": upsert.excluded.token_sealed,
                    "session_hash": upsert.excluded.session_hash,
                    "provider": upsert.excluded.provider,
                    "registered_at": upsert.excluded.registered_at,
                    "generation": case(
                        (changed_hands, devices.c.generation + 1), else_=devices.c.generation
                    ),
                },
            ).returning(devices.c.id, devices.c.generation),
            DEVICE_COLUMNS,
        )
        self.drop_stale_deliveries = prepare(
            delete(deliveries)
            .where(
                and_(
                    deliveries.c.device_id == bindparam("device_id"),
                    deliveries.c.device_generation != bindparam("generation"),
                )
            )
            .returning(deliveries.c.notification_id)
        )
        self.delete_device = prepare(
            delete(devices)
            .where(devices.c.token_hash == bindparam("token_hash"))
            .returning(devices.c.id)
        )
        self.delete_device_by_id = prepare(
            delete(devices).where(devices.c.id == bindparam("device_id"))
        )
        self.drop_device_deliveries = prepare(
            delete(deliveries)
            .where(deliveries.c.device_id == bindparam("device_id"))
            .returning(deliveries.c.notification_id)
        )
        self.delete_finished_notification = prepare(finished_notification_delete())
        # The Session ID's devices other than `device_id`, newest registration first, past the
        # first `keep`: those a new registration replaces (MAX_DEVICES_PER_SESSION).
        self.excess_devices = prepare(
            select(devices.c.id)
            .where(
                and_(
                    devices.c.session_hash == bindparam("session_hash"),
                    devices.c.id != bindparam("device_id"),
                )
            )
            .order_by(devices.c.registered_at.desc(), devices.c.id.desc())
            .limit(bindparam("limit"))
            .offset(bindparam("keep"))
        )
        self.subscribe = prepare(
            dialect_insert(group_members).on_conflict_do_nothing(),
            ("group_hash", "session_hash"),
        )
        self.unsubscribe = prepare(
            delete(group_members).where(
                and_(
                    group_members.c.group_hash == bindparam("group_hash"),
                    group_members.c.session_hash == bindparam("session_hash"),
                )
            )
        )
        self.clear_groups = prepare(
            delete(group_members).where(group_members.c.session_hash == bindparam("session_hash"))
        )
        self.groups_of = prepare(
            select(group_members.c.group_hash).where(
                group_members.c.session_hash == bindparam("session_hash")
            )
        )
        self.is_member = prepare(
            select(literal_column("1")).where(
                and_(
                    group_members.c.group_hash == bindparam("group_hash"),
                    group_members.c.session_hash == bindparam("session_hash"),
                )
            )
        )
        # Members of a group, counted no further than `cap` (a bounded index range scan).
        self.member_count = prepare(
            select(func.count()).select_from(
                select(literal_column("1").label("one"))
                .select_from(group_members)
                .where(group_members.c.group_hash == bindparam("group_hash"))
                .limit(bindparam("cap"))
                .subquery()
            )
        )

        target = bindparam("target", type_=LargeBinary)
        own_devices = select(
            devices.c.id,
            devices.c.generation,
            devices.c.provider,
            literal_column("0").label("via_group"),
        ).where(devices.c.session_hash == target)
        member_devices = (
            select(devices.c.id, devices.c.generation, devices.c.provider, literal_column("1"))
            .select_from(
                group_members.join(devices, devices.c.session_hash == group_members.c.session_hash)
            )
            .where(group_members.c.group_hash == target)
        )
        self.recipients = prepare(union_all(own_devices, member_devices))
        self.notify_at_once = (
            RowsStatement(
                prepare(text(NOTIFY_AT_ONCE)),
                _notify_values,
                one=prepare(text(NOTIFY_ONE)),
                columns=("target", "key_hash", "expires_at", "admitted", "data"),
            )
            if dialect.name == "postgresql"
            else None
        )

        dedup = dialect_insert(notify_dedup)
        self.claim_dedup = prepare(
            dedup.on_conflict_do_update(
                index_elements=[notify_dedup.c.key_hash],
                set_={"expires_at": dedup.excluded.expires_at},
                where=notify_dedup.c.expires_at <= bindparam("now"),
            ),
            ("key_hash", "expires_at"),
        )
        self.dedup_live = prepare(
            select(literal_column("1")).where(
                and_(
                    notify_dedup.c.key_hash == bindparam("key_hash"),
                    notify_dedup.c.expires_at > bindparam("now"),
                )
            )
        )
        self.purge_dedup = prepare(
            delete(notify_dedup).where(notify_dedup.c.expires_at <= bindparam("now"))
        )
        # Its id: RETURNING on PostgreSQL, the cursor's lastrowid on SQLite (`Tx.insert`).
        new_notification = insert(notifications)
        if dialect.name == "postgresql":
            new_notification = new_notification.returning(notifications.c.id)
        self.insert_notification = prepare(new_notification, ("data", "created_at", "ready"))
        self.insert_delivery = prepare(insert(deliveries), DELIVERY_COLUMNS)
        self.fanout_alive = prepare(
            select(notifications.c.id).where(
                and_(notifications.c.id == bindparam("notification_id"), ~notifications.c.ready)
            )
        )
        self.mark_ready = prepare(
            update(notifications)
            .where(notifications.c.id == bindparam("notification_id"))
            .values(ready=True)
        )
        self.abandoned_fanout = prepare(
            select(notifications.c.id)
            .where(and_(~notifications.c.ready, notifications.c.created_at < bindparam("before")))
            .order_by(notifications.c.id)
            .limit(1)
        )
        self.discard_deliveries = prepare(
            delete(deliveries).where(
                deliveries.c.id.in_(
                    select(deliveries.c.id)
                    .where(deliveries.c.notification_id == bindparam("notification_id"))
                    .limit(bindparam("limit"))
                    .scalar_subquery()
                )
            )
        )
        self.delete_notification = prepare(
            delete(notifications).where(notifications.c.id == bindparam("notification_id"))
        )


class FanOutLost(StorageError):
    """A chunked fan-out's notification was swept as abandoned before its last chunk."""


@dataclass(eq=False)
class RelayStore:
    """The relay's write operations, for `writer`; limits as in the module's docstring."""

    engine: Engine
    writer: BatchWriter
    protector: IdentifierProtector
    clock_ms: Clock
    _: KW_ONLY
    max_devices: int = NO_LIMIT
    max_members: int = NO_LIMIT
    fanout_chunk: int = 500
    _sql: Statements = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.fanout_chunk = max(1, self.fanout_chunk)
        self._sql = Statements(self.engine)

    # -- registrations -------------------------------------------------------------------

    def _device_row(self, token: str, session_id: str, provider: Provider) -> dict[str, Any]:
        return {
            "token_hash": self.protector.token_hash(token),
            "token_sealed": self.protector.seal_token(token),
            "session_hash": self.protector.identity(session_id),
            "provider": int(provider),
            "generation": 1,
        }

    def _forget_finished(self, tx: Tx, notification_ids: Iterable[Any]) -> None:
        """Delete the notifications whose last delivery just went (their data with them)."""
        for notification_id in sorted(set(notification_ids)):
            tx.execute(self._sql.delete_finished_notification, {"notification_id": notification_id})

    def _upsert_device(self, tx: Tx, row: dict[str, Any]) -> int:
        """Register; returns how many older devices of the Session ID it replaced."""
        sql = self._sql
        ((device_id, generation),) = tx.all(
            sql.upsert_device, {**row, "registered_at": self.clock_ms()}
        )
        stale = tx.all(
            sql.drop_stale_deliveries, {"device_id": device_id, "generation": generation}
        )
        self._forget_finished(tx, (n for (n,) in stale))
        if self.max_devices >= NO_LIMIT:
            return 0
        # At the cap, the least recently registered devices go, with what was queued for them,
        # so that a user's new phone always works. (A client registers again at every start,
        # so "least recently registered" is the device least recently used.) At most a chunk
        # per registration: a Session ID far above the cap shrinks by a chunk per register.
        excess = tx.all(
            sql.excess_devices,
            {
                "session_hash": row["session_hash"],
                "device_id": device_id,
                "keep": self.max_devices - 1,
                "limit": self.fanout_chunk,
            },
        )
        for (old_id,) in excess:
            self._forget_device(tx, old_id)
        return len(excess)

    def _forget_device(self, tx: Tx, device_id: int) -> None:
        tx.execute(self._sql.delete_device_by_id, {"device_id": device_id})
        queued = tx.all(self._sql.drop_device_deliveries, {"device_id": device_id})
        self._forget_finished(tx, (n for (n,) in queued))

    def register_op(
        self, token: str, session_id: str, provider: Provider
    ) -> Callable[[Tx], Registered]:
        """The token now belongs to `session_id` (moved there if another owned it)."""
        row = self._device_row(token, session_id, provider)

        def register(tx: Tx) -> Registered:
            return Registered(replaced=self._upsert_device(tx, row))

        return register

    def register_with_groups_op(
        self, token: str, session_id: str, provider: Provider, group_keys: Iterable[str]
    ) -> Callable[[Tx], Registered]:
        """Register, and make `group_keys` exactly this Session ID's memberships.

        All or nothing: if a group this Session ID is not yet in has `max_members` members,
        nothing is written and the result says so.
        """
        row = self._device_row(token, session_id, provider)
        session_hash = row["session_hash"]
        wanted = sorted({self.protector.identity(key) for key in group_keys})
        members = [
            {"group_hash": group_hash, "session_hash": session_hash} for group_hash in wanted
        ]
        sql = self._sql

        def register_with_groups(tx: Tx) -> Registered:
            if self.max_members < NO_LIMIT and wanted:
                current = {
                    bytes(g) for (g,) in tx.all(sql.groups_of, {"session_hash": session_hash})
                }
                for group_hash in wanted:
                    if group_hash not in current and self._group_full(tx, group_hash):
                        return Registered(full_group=True)
            replaced = self._upsert_device(tx, row)
            tx.execute(sql.clear_groups, {"session_hash": session_hash})
            if members:
                # "do nothing" on a conflict: a concurrent writer (another process, on
                # PostgreSQL) may have inserted the same membership since our delete.
                tx.execute_many(sql.subscribe, members)
            return Registered(replaced=replaced)

        return register_with_groups

    def unregister_op(self, token: str) -> Callable[[Tx], bool]:
        """Forget the token and what was queued for it; True if it was registered."""
        params = {"token_hash": self.protector.token_hash(token)}
        sql = self._sql

        def unregister(tx: Tx) -> bool:
            removed = tx.all(sql.delete_device, params)
            for (device_id,) in removed:
                queued = tx.all(sql.drop_device_deliveries, {"device_id": device_id})
                self._forget_finished(tx, (n for (n,) in queued))
            return bool(removed)

        return unregister

    def _membership(self, group_key: str, session_id: str) -> dict[str, bytes]:
        return {
            "group_hash": self.protector.identity(group_key),
            "session_hash": self.protector.identity(session_id),
        }

    def _group_full(self, tx: Tx, group_hash: bytes) -> bool:
        """The group has `max_members` members already. (Several processes on PostgreSQL
        check concurrently, so the cap can be passed by at most one member per process.)"""
        count = tx.scalar(
            self._sql.member_count, {"group_hash": group_hash, "cap": self.max_members}
        )
        return int(count or 0) >= self.max_members

    def subscribe_op(self, group_key: str, session_id: str) -> Callable[[Tx], Membership]:
        """Join the group, unless it is full (a member already in it always succeeds)."""
        params = self._membership(group_key, session_id)
        sql = self._sql

        def subscribe(tx: Tx) -> Membership:
            if tx.scalar(sql.is_member, params) is not None:
                return Membership.ALREADY_MEMBER
            if self.max_members < NO_LIMIT and self._group_full(tx, params["group_hash"]):
                return Membership.GROUP_FULL
            joined = tx.execute(sql.subscribe, params)
            return Membership.JOINED if joined else Membership.ALREADY_MEMBER

        return subscribe

    def unsubscribe_op(self, group_key: str, session_id: str) -> Callable[[Tx], bool]:
        """Leave the group; True if the Session ID was a member."""
        params = self._membership(group_key, session_id)
        return lambda tx: tx.execute(self._sql.unsubscribe, params) > 0

    # -- notify --------------------------------------------------------------------------

    def enqueue_notification_op(
        self,
        send_to: str,
        data: str,
        *,
        dedup_window_ms: int,
        admission: Admission | None = None,
    ) -> Callable[[Tx], Enqueued | Continuation]:
        """Write one delivery row per recipient device, durably, before answering.

        An identical (send_to, data) pair inside the dedup window writes nothing. `admission`
        (the per-recipient rate limit) is charged at most once, and only for a notify that
        queues something: one to nobody, or a client's retry, costs the recipient nothing.

        Up to `fanout_chunk` recipients: one operation (one statement on PostgreSQL). More:
        the operation returns a `Continuation`, and each next one writes another chunk (see
        the module's docstring).
        """
        target_hash = self.protector.identity(send_to)
        notify = _Notify(
            target_hash=target_hash,
            data=data,
            dedup_key=self.protector.dedup_key(send_to, data) if dedup_window_ms > 0 else None,
            dedup_window_ms=dedup_window_ms,
            ticket=_Ticket(admission, target_hash),
        )
        if self._sql.notify_at_once is not None:
            return _NotifyAtOnce(self, self._sql.notify_at_once, notify)

        def enqueue(tx: Tx) -> Enqueued | Continuation:
            return self.enqueue_in_steps(tx, notify)

        return enqueue

    def at_once_row(
        self, notify: _Notify, admitted: bool
    ) -> tuple[dict[str, int], tuple[Any, ...]]:
        """NOTIFY_AT_ONCE's scalars and row for `notify`."""
        now = self.clock_ms()
        scalars = {"now": now, "chunk": self.fanout_chunk}
        row = (
            notify.target_hash,
            notify.dedup_key,
            now + notify.dedup_window_ms,
            admitted,
            notify.data,
        )
        return scalars, row

    def at_once_outcome(
        self, notify: _Notify, admitted: bool, found: tuple[Any, ...]
    ) -> Enqueued | None:
        """What NOTIFY_AT_ONCE's answer means; None if it had more recipients than a chunk
        (it wrote nothing: the chunked path does it)."""
        recipients, via, live, queued = found
        ticket = notify.ticket
        via_group = bool(via)
        if queued:
            return Enqueued(int(recipients), via_group=via_group, duplicate=False)
        if not recipients:
            ticket.give_back()
            return Enqueued(deliveries=0, via_group=False, duplicate=False)
        if live:
            ticket.give_back()
            return Enqueued(deliveries=0, via_group=via_group, duplicate=True)
        if not admitted:
            return Enqueued(0, via_group, duplicate=False, refused="notify_rate")
        if recipients > self.fanout_chunk:
            return None
        ticket.give_back()  # another process took the same notify since our snapshot
        return Enqueued(deliveries=0, via_group=via_group, duplicate=True)

    def enqueue_in_steps(self, tx: Tx, notify: _Notify) -> Enqueued | Continuation:
        """The notify a statement at a time: SQLite's path, and any fan-out of more than one
        chunk. One that fits a chunk and is admitted is four statements: the recipients, the
        dedup claim (which finds a duplicate by claiming nothing), the notification and its
        deliveries."""
        sql = self._sql
        chunk = self.fanout_chunk
        dedup_key = notify.dedup_key
        ticket = notify.ticket
        rows = tx.all(sql.recipients, {"target": notify.target_hash})
        if not rows:
            ticket.give_back()
            return Enqueued(deliveries=0, via_group=False, duplicate=False)
        via_group = any(via for *_, via in rows)
        now = self.clock_ms()
        duplicate = Enqueued(deliveries=0, via_group=via_group, duplicate=True)
        unique = {device_id: (gen, provider) for device_id, gen, provider, _ in rows}
        registrations = [
            (device_id, gen, provider) for device_id, (gen, provider) in unique.items()
        ]
        whole = len(registrations) <= chunk
        # Taken before the dedup claim, and given back below if the notify is a duplicate:
        # a duplicate costs the recipient nothing, refused or not.
        admitted = ticket.take()
        if dedup_key is not None:
            if admitted and whole:
                if not self._claim_dedup(tx, dedup_key, now, notify.dedup_window_ms):
                    ticket.give_back()
                    return duplicate
            elif tx.scalar(sql.dedup_live, {"key_hash": dedup_key, "now": now}):
                # Refused, or a fan-out of several chunks (which claims in its last one):
                # only look.
                ticket.give_back()
                return duplicate
        if not admitted:
            return Enqueued(0, via_group, duplicate=False, refused="notify_rate")
        notification_id = tx.insert(
            sql.insert_notification, {"data": notify.data, "created_at": now, "ready": whole}
        )
        self._insert_deliveries(tx, notification_id, registrations[:chunk], now)
        outcome = Enqueued(len(registrations), via_group=via_group, duplicate=False)
        if whole:
            return outcome
        finish = _FanOutEnd(dedup_key, notify.dedup_window_ms, outcome)
        return Continuation(self._fanout_op(notification_id, registrations, chunk, now, finish))

    def _claim_dedup(self, tx: Tx, key: bytes, now: int, window_ms: int) -> bool:
        claim = {"key_hash": key, "expires_at": now + window_ms, "now": now}
        return bool(tx.execute(self._sql.claim_dedup, claim))

    def _insert_deliveries(
        self,
        tx: Tx,
        notification_id: int,
        registrations: list[tuple[int, int, int]],
        now: int,
    ) -> None:
        tx.execute_many(
            self._sql.insert_delivery,
            [
                {
                    "notification_id": notification_id,
                    "device_id": device_id,
                    "device_generation": generation,
                    "provider": provider,
                    "apns_id": new_apns_id(),
                    "created_at": now,
                    "attempts": 0,
                    "not_before": now,
                    "lease_until": 0,
                    "lease_token": 0,
                }
                for device_id, generation, provider in registrations
            ],
        )

    def _fanout_op(
        self,
        notification_id: int,
        registrations: list[tuple[int, int, int]],
        start: int,
        now: int,
        end: _FanOutEnd,
    ) -> Callable[[Tx], Enqueued | Continuation]:
        """The operation writing the chunk of `registrations` from `start`; the last one also
        makes the notification ready (claimable) and claims the dedup window."""
        sql = self._sql
        stop = start + self.fanout_chunk
        key = {"notification_id": notification_id}

        def fanout_chunk(tx: Tx) -> Enqueued | Continuation:
            if tx.scalar(sql.fanout_alive, key) is None:
                raise FanOutLost("fan-out abandoned")
            self._insert_deliveries(tx, notification_id, registrations[start:stop], now)
            if stop < len(registrations):
                return Continuation(self._fanout_op(notification_id, registrations, stop, now, end))
            if end.dedup_key is not None:
                # An identical notify may have been written meanwhile (a client's retry while
                # this one was still being written): both are pushed, at least once each.
                self._claim_dedup(tx, end.dedup_key, self.clock_ms(), end.dedup_window_ms)
            tx.execute(sql.mark_ready, key)
            return end.outcome

        return fanout_chunk

    def purge_abandoned_fanouts_op(self) -> Callable[[Tx], bool]:
        """Delete a chunk of what a fan-out abandoned mid-way left (never ready, so never
        pushed); True if there may be more: run it again until it says False."""
        sql = self._sql

        def purge_abandoned(tx: Tx) -> bool:
            found = tx.scalar(
                sql.abandoned_fanout, {"before": self.clock_ms() - FANOUT_ABANDONED_AFTER_MS}
            )
            if found is None:
                return False
            key = {"notification_id": found}
            deleted = tx.execute(sql.discard_deliveries, {**key, "limit": self.fanout_chunk})
            if deleted < self.fanout_chunk:
                tx.execute(sql.delete_notification, key)
            return True

        return purge_abandoned

    def purge_expired_dedup_op(self) -> Callable[[Tx], int]:
        """Forget dedup fingerprints whose window has passed (run periodically)."""
        return lambda tx: tx.execute(self._sql.purge_dedup, {"now": self.clock_ms()})


def new_apns_id() -> str:
    """A random (version 4) UUID in its canonical text, as str(uuid.uuid4()) gives but in
    half the time (~1.1 against 2.6 µs): a delivery's `apns_id`."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class _FanOutEnd:
    """What the last chunk of a fan-out does, and answers."""

    dedup_key: bytes | None
    dedup_window_ms: int
    outcome: Enqueued


@dataclass(frozen=True)
class _Notify:
    """One notify's values, computed once (hashing), whatever path and however often the
    writer runs it."""

    target_hash: bytes
    data: str
    dedup_key: bytes | None
    dedup_window_ms: int
    ticket: _Ticket


class _Ticket:
    """A notify's charge to the recipient's rate limit: asked at most once however often the
    writer runs the operation (a batch that failed runs again), and given back if the notify
    queued nothing, so that at most one notify is ever charged for it, and only one that
    queued something."""

    def __init__(self, admission: Admission | None, recipient: bytes) -> None:
        self._admission = admission
        self._recipient = recipient
        self._answer: bool | None = None

    def take(self) -> bool:
        if self._admission is None:
            return True
        if self._answer is None:
            self._answer = self._admission.admit(self._recipient)
        return self._answer

    def give_back(self) -> None:
        if self._admission is not None and self._answer:
            self._admission.refund(self._recipient)
            self._answer = None


class _NotifyAtOnce(PipelinedOperation[Enqueued | Continuation]):
    """PostgreSQL's notify operation: NOTIFY_AT_ONCE, sent in the writer's pipeline."""

    def __init__(self, store: RelayStore, statement: RowsStatement, notify: _Notify) -> None:
        self._store = store
        self._statement = statement
        self._notify = notify
        self.__name__ = "enqueue"  # as SQLite's operation is called (logs, traces)

    def send(self, tx: Tx) -> tuple[bool, Sent]:
        admitted = self._notify.ticket.take()
        scalars, row = self._store.at_once_row(self._notify, admitted)
        return admitted, tx.send_row(self._statement, scalars, row)

    def receive(
        self, sent: tuple[bool, Sent]
    ) -> Enqueued | Continuation | FollowUp[Enqueued | Continuation]:
        admitted, answer = sent
        (found,) = answer.rows()
        outcome = self._store.at_once_outcome(self._notify, admitted, found)
        if outcome is None:  # more recipients than a chunk: it wrote nothing
            store, notify = self._store, self._notify
            return FollowUp(lambda tx: store.enqueue_in_steps(tx, notify))
        return outcome
