"""The relay's queries. Every write runs through the BatchWriter (group commit).

Statements are SQLAlchemy Core, compiled once for the engine's dialect (storage/sql.py).
The `*_op` methods do the per-request work that needs no database (hashing, sealing) and
return the operation for the BatchWriter, which runs it (see handlers/runner.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    LargeBinary,
    and_,
    bindparam,
    case,
    delete,
    insert,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite

from storage.protect import IdentifierProtector
from storage.records import NotifyOutcome, Provider
from storage.schema import deliveries, devices, group_members, notifications, notify_dedup
from storage.sql import Prepared, Tx
from storage.writer import BatchWriter

Clock = Callable[[], int]
T = TypeVar("T")

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
            delete(deliveries).where(
                and_(
                    deliveries.c.device_id == bindparam("device_id"),
                    deliveries.c.device_generation != bindparam("generation"),
                )
            )
        )
        self.delete_device = prepare(
            delete(devices)
            .where(devices.c.token_hash == bindparam("token_hash"))
            .returning(devices.c.id)
        )
        self.drop_device_deliveries = prepare(
            delete(deliveries).where(deliveries.c.device_id == bindparam("device_id"))
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

        dedup = dialect_insert(notify_dedup)
        self.claim_dedup = prepare(
            dedup.on_conflict_do_update(
                index_elements=[notify_dedup.c.key_hash],
                set_={"expires_at": dedup.excluded.expires_at},
                where=notify_dedup.c.expires_at <= bindparam("now"),
            ),
            ("key_hash", "expires_at"),
        )
        self.purge_dedup = prepare(
            delete(notify_dedup).where(notify_dedup.c.expires_at <= bindparam("now"))
        )
        self.insert_notification = prepare(
            insert(notifications).returning(notifications.c.id), ("data", "created_at")
        )
        self.insert_delivery = prepare(insert(deliveries), DELIVERY_COLUMNS)


class RelayStore:
    def __init__(
        self,
        engine: Engine,
        writer: BatchWriter,
        protector: IdentifierProtector,
        clock_ms: Clock,
    ) -> None:
        self.engine = engine
        self._writer = writer
        self._protect = protector
        self._now = clock_ms
        self._sql = Statements(engine)

    # -- registrations -------------------------------------------------------------------

    def _device_row(self, token: str, session_id: str, provider: Provider) -> dict[str, Any]:
        return {
            "token_hash": self._protect.token_hash(token),
            "token_sealed": self._protect.seal_token(token),
            "session_hash": self._protect.identity(session_id),
            "provider": int(provider),
            "generation": 1,
        }

    def _upsert_device(self, tx: Tx, row: dict[str, Any]) -> None:
        ((device_id, generation),) = tx.all(
            self._sql.upsert_device, {**row, "registered_at": self._now()}
        )
        tx.execute(
            self._sql.drop_stale_deliveries, {"device_id": device_id, "generation": generation}
        )

    def register_op(self, token: str, session_id: str, provider: Provider) -> Callable[[Tx], None]:
        """The token now belongs to `session_id` (moved there if another owned it)."""
        row = self._device_row(token, session_id, provider)
        return lambda tx: self._upsert_device(tx, row)

    def register_with_groups_op(
        self, token: str, session_id: str, provider: Provider, group_keys: Iterable[str]
    ) -> Callable[[Tx], None]:
        """Register, and make `group_keys` exactly this Session ID's memberships."""
        row = self._device_row(token, session_id, provider)
        session_hash = row["session_hash"]
        members = [
            {"group_hash": group_hash, "session_hash": session_hash}
            for group_hash in sorted({self._protect.identity(key) for key in group_keys})
        ]

        def operation(tx: Tx) -> None:
            self._upsert_device(tx, row)
            tx.execute(self._sql.clear_groups, {"session_hash": session_hash})
            if members:
                # "do nothing" on a conflict: a concurrent writer (another process, on
                # PostgreSQL) may have inserted the same membership since our delete.
                tx.execute_many(self._sql.subscribe, members)

        return operation

    def unregister_op(self, token: str) -> Callable[[Tx], bool]:
        """Forget the token and what was queued for it; True if it was registered."""
        params = {"token_hash": self._protect.token_hash(token)}
        sql = self._sql

        def operation(tx: Tx) -> bool:
            removed = tx.all(sql.delete_device, params)
            for (device_id,) in removed:
                tx.execute(sql.drop_device_deliveries, {"device_id": device_id})
            return bool(removed)

        return operation

    def _membership(self, group_key: str, session_id: str) -> dict[str, bytes]:
        return {
            "group_hash": self._protect.identity(group_key),
            "session_hash": self._protect.identity(session_id),
        }

    def subscribe_op(self, group_key: str, session_id: str) -> Callable[[Tx], int]:
        params = self._membership(group_key, session_id)
        return lambda tx: tx.execute(self._sql.subscribe, params)

    def unsubscribe_op(self, group_key: str, session_id: str) -> Callable[[Tx], bool]:
        """Leave the group; True if the Session ID was a member."""
        params = self._membership(group_key, session_id)
        return lambda tx: tx.execute(self._sql.unsubscribe, params) > 0

    # -- notify --------------------------------------------------------------------------

    def enqueue_notification_op(
        self, send_to: str, data: str, *, dedup_window_ms: int
    ) -> Callable[[Tx], NotifyOutcome]:
        """Write one delivery row per recipient device, durably, before returning.

        An identical (send_to, data) pair inside the dedup window writes nothing.
        """
        target = {"target": self._protect.identity(send_to)}
        dedup_key = self._protect.dedup_key(send_to, data) if dedup_window_ms > 0 else None
        sql = self._sql

        def operation(tx: Tx) -> NotifyOutcome:
            rows = tx.all(sql.recipients, target)
            if not rows:
                return NotifyOutcome(deliveries=0, via_group=False, duplicate=False)
            via_group = any(via for *_, via in rows)
            now = self._now()
            if dedup_key is not None:
                claim = {"key_hash": dedup_key, "expires_at": now + dedup_window_ms, "now": now}
                if not tx.execute(sql.claim_dedup, claim):
                    return NotifyOutcome(deliveries=0, via_group=via_group, duplicate=True)
            notification_id = tx.scalar(sql.insert_notification, {"data": data, "created_at": now})
            registrations = {
                device_id: (generation, provider) for device_id, generation, provider, _ in rows
            }
            tx.execute_many(
                sql.insert_delivery,
                [
                    {
                        "notification_id": notification_id,
                        "device_id": device_id,
                        "device_generation": generation,
                        "provider": provider,
                        "apns_id": str(uuid.uuid4()),
                        "created_at": now,
                        "attempts": 0,
                        "not_before": now,
                        "lease_until": 0,
                        "lease_token": 0,
                    }
                    for device_id, (generation, provider) in registrations.items()
                ],
            )
            return NotifyOutcome(
                deliveries=len(registrations), via_group=via_group, duplicate=False
            )

        return operation

    def purge_expired_dedup_op(self) -> Callable[[Tx], int]:
        """Forget dedup fingerprints whose window has passed (run periodically)."""
        return lambda tx: tx.execute(self._sql.purge_dedup, {"now": self._now()})
