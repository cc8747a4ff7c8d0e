"""The relay's tables (SQLAlchemy 2 declarative models).

Identifiers never appear in clear: Session IDs and group keys are keyed hashes (`*_hash`),
device tokens are sealed with an AEAD (`token_sealed`) beside a keyed hash for uniqueness.
Times are integer milliseconds since the Unix epoch, UTC.

`schema_meta` records the layout version; storage/migrations.py brings a database written by
an earlier release up to `SCHEMA_VERSION` at start, one numbered step at a time.

Row ids are never handed out twice (SQLite `AUTOINCREMENT`, PostgreSQL sequences): a queued
delivery names its registration by `(device_id, device_generation)`, and a reused id would
let a push meant for one person's device reach another's.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 3

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT identity.
Id64 = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class SchemaMeta(Base):
    __tablename__ = "schema_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Device(Base):
    """One device token, owned by exactly one Session ID.

    `generation` grows whenever the token changes owner or provider: a registration is the
    pair (id, generation), and deliveries written for an earlier one are never pushed.
    """

    __tablename__ = "devices"
    id: Mapped[int] = mapped_column(Id64, primary_key=True, autoincrement=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    token_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    session_hash: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    provider: Mapped[int] = mapped_column(SmallInteger)
    registered_at: Mapped[int] = mapped_column(BigInteger)
    generation: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")
    __table_args__ = ({"sqlite_autoincrement": True},)


class GroupMember(Base):
    """A Session ID's membership of a closed group."""

    __tablename__ = "group_members"
    group_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    session_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    __table_args__ = (Index("ix_group_members_session", "session_hash"),)


class Notification(Base):
    """An accepted notify's opaque, end-to-end encrypted data, kept until delivered.

    `ready` is False while a large fan-out is still being written in chunks (storage/store.py):
    its deliveries are neither claimed nor counted as finished until the last chunk commits.
    """

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(Id64, primary_key=True, autoincrement=True)
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    ready: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    __table_args__ = ({"sqlite_autoincrement": True},)


class Delivery(Base):
    """One push still owed to one registration: the delivery queue (outbox).

    `(device_id, device_generation)` is the registration it was written for. A claim sets
    `lease_until` and a fresh `lease_token`; a settlement changes the row only while it still
    carries that token (compare-and-set), so a late answer to an expired lease changes nothing.
    """

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Id64, primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(BigInteger, index=True)
    device_id: Mapped[int] = mapped_column(BigInteger, index=True)
    device_generation: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")
    provider: Mapped[int] = mapped_column(SmallInteger)
    apns_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[int] = mapped_column(BigInteger)
    lease_until: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_token: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    __table_args__ = (
        Index("ix_deliveries_due", "provider", "not_before"),
        {"sqlite_autoincrement": True},
    )


class NotifyDedup(Base):
    """Keyed hashes of recent (send_to, data) pairs, so client retries push once."""

    __tablename__ = "notify_dedup"
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


devices = cast(Table, Device.__table__)
group_members = cast(Table, GroupMember.__table__)
notifications = cast(Table, Notification.__table__)
deliveries = cast(Table, Delivery.__table__)
notify_dedup = cast(Table, NotifyDedup.__table__)
schema_meta = cast(Table, SchemaMeta.__table__)
