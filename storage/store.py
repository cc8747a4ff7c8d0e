"""The relay's queries. Every write runs through the BatchWriter (group commit).

Each public method blocks the calling (web worker) thread until its transaction committed;
never call these on the IOLoop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from sqlalchemy import (
    Connection,
    Engine,
    LargeBinary,
    and_,
    bindparam,
    delete,
    insert,
    literal,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite

from storage.protect import IdentifierProtector
from storage.records import NotifyOutcome, Provider
from storage.schema import deliveries, devices, group_members, notifications, notify_dedup
from storage.writer import BatchWriter

Clock = Callable[[], int]


def _dialect_insert(engine: Engine) -> Callable[..., sqlite.Insert | postgresql.Insert]:
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


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
        self._insert = _dialect_insert(engine)

        target = bindparam("target", type_=LargeBinary)
        member_devices = (
            select(devices.c.id, devices.c.provider, literal(True).label("via_group"))
            .select_from(
                group_members.join(devices, devices.c.session_hash == group_members.c.session_hash)
            )
            .where(group_members.c.group_hash == target)
        )
        own_devices = select(
            devices.c.id, devices.c.provider, literal(False).label("via_group")
        ).where(devices.c.session_hash == target)
        self._recipients_query = union_all(own_devices, member_devices)

    # -- registrations -------------------------------------------------------------------

    def _upsert_device(
        self, conn: Connection, token: str, session_id: str, provider: Provider
    ) -> None:
        statement = self._insert(devices).values(
            token_hash=self._protect.token_hash(token),
            token_sealed=self._protect.seal_token(token),
            session_hash=self._protect.identity(session_id),
            provider=int(provider),
            registered_at=self._now(),
        )
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[devices.c.token_hash],
                set_={
                    "token_sealed": statement.excluded.token_sealed,
                    "session_hash": statement.excluded.session_hash,
                    "provider": statement.excluded.provider,
                    "registered_at": statement.excluded.registered_at,
                },
            )
        )

    def register(self, token: str, session_id: str, provider: Provider) -> None:
        """The token now belongs to `session_id` (moved there if another owned it)."""
        self._writer.submit(lambda conn: self._upsert_device(conn, token, session_id, provider))

    def register_with_groups(
        self, token: str, session_id: str, provider: Provider, group_keys: Iterable[str]
    ) -> None:
        """Register, and make `group_keys` exactly this Session ID's memberships."""
        session_hash = self._protect.identity(session_id)
        group_hashes = sorted({self._protect.identity(key) for key in group_keys})

        def operation(conn: Connection) -> None:
            self._upsert_device(conn, token, session_id, provider)
            conn.execute(delete(group_members).where(group_members.c.session_hash == session_hash))
            if group_hashes:
                conn.execute(
                    insert(group_members),
                    [{"group_hash": g, "session_hash": session_hash} for g in group_hashes],
                )

        self._writer.submit(operation)

    def unregister(self, token: str) -> bool:
        """Forget the token; True if it was registered."""
        token_hash = self._protect.token_hash(token)

        def operation(conn: Connection) -> bool:
            result = conn.execute(delete(devices).where(devices.c.token_hash == token_hash))
            return bool(result.rowcount)

        return self._writer.submit(operation)

    def subscribe(self, group_key: str, session_id: str) -> None:
        statement = self._insert(group_members).values(
            group_hash=self._protect.identity(group_key),
            session_hash=self._protect.identity(session_id),
        )
        self._writer.submit(lambda conn: conn.execute(statement.on_conflict_do_nothing()))

    def unsubscribe(self, group_key: str, session_id: str) -> bool:
        """Leave the group; True if the Session ID was a member."""
        condition = and_(
            group_members.c.group_hash == self._protect.identity(group_key),
            group_members.c.session_hash == self._protect.identity(session_id),
        )

        def operation(conn: Connection) -> bool:
            return bool(conn.execute(delete(group_members).where(condition)).rowcount)

        return self._writer.submit(operation)

    # -- notify --------------------------------------------------------------------------

    def enqueue_notification(
        self, send_to: str, data: str, *, dedup_window_ms: int
    ) -> NotifyOutcome:
        """Write one delivery row per recipient device, durably, before returning.

        An identical (send_to, data) pair inside the dedup window writes nothing.
        """
        target = self._protect.identity(send_to)
        dedup_key = self._protect.dedup_key(send_to, data) if dedup_window_ms > 0 else None

        def operation(conn: Connection) -> NotifyOutcome:
            now = self._now()
            rows = conn.execute(self._recipients_query, {"target": target}).all()
            via_group = any(row.via_group for row in rows)
            if not rows:
                return NotifyOutcome(deliveries=0, via_group=False, duplicate=False)
            if dedup_key is not None and not self._claim_dedup(
                conn, dedup_key, now, dedup_window_ms
            ):
                return NotifyOutcome(deliveries=0, via_group=via_group, duplicate=True)
            notification_id = conn.execute(
                insert(notifications)
                .values(data=data, created_at=now)
                .returning(notifications.c.id)
            ).scalar_one()
            device_rows = {row.id: row.provider for row in rows}
            conn.execute(
                insert(deliveries),
                [
                    {
                        "notification_id": notification_id,
                        "device_id": device_id,
                        "provider": provider,
                        "apns_id": str(uuid.uuid4()),
                        "created_at": now,
                        "attempts": 0,
                        "not_before": now,
                        "lease_until": 0,
                    }
                    for device_id, provider in device_rows.items()
                ],
            )
            return NotifyOutcome(deliveries=len(device_rows), via_group=via_group, duplicate=False)

        return self._writer.submit(operation)

    def _claim_dedup(self, conn: Connection, key: bytes, now: int, window_ms: int) -> bool:
        """True if this (send_to, data) was not seen inside the window (and record it)."""
        statement = self._insert(notify_dedup).values(key_hash=key, expires_at=now + window_ms)
        result = conn.execute(
            statement.on_conflict_do_update(
                index_elements=[notify_dedup.c.key_hash],
                set_={"expires_at": statement.excluded.expires_at},
                where=notify_dedup.c.expires_at <= now,
            )
        )
        return bool(result.rowcount)

    def purge_expired_dedup(self) -> int:
        def operation(conn: Connection) -> int:
            result = conn.execute(
                delete(notify_dedup).where(notify_dedup.c.expires_at <= self._now())
            )
            return int(result.rowcount)

        return self._writer.submit(operation)
