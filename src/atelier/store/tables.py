"""The metadata tables, as SQLAlchemy 2 declarative models.

Every table that holds a tenant's data has a ``tenancy_id`` column from its first
migration, so every query can be scoped to one tenancy. Ids are opaque prefixed strings
(``ten_…``, ``key_…``); times are timezone-aware UTC. Constraints follow one naming
convention so that later migrations (compartments, users, groups, policies, key rings,
audit) can refer to them by name, SQLite batch mode included. This module knows nothing
about HTTP or how keys are checked: it only describes rows.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from sqlalchemy import CheckConstraint, DateTime, Dialect, ForeignKey, MetaData, String, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Role = Literal["operator", "admin", "user"]
ROLES: tuple[Role, ...] = ("operator", "admin", "user")
"""``operator`` runs the service (all tenancies); ``admin`` manages one tenancy; ``user`` uses it."""

ID_LENGTH = 40
NAME_LENGTH = 100

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A fresh opaque id such as ``key_3f9c…`` (96 random bits, hex)."""
    return f"{prefix}_{secrets.token_hex(12)}"


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite has no time zones, so values are stored there as naive UTC; naive datetimes
    are refused on the way in rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware value (e.g. atelier.store.tables.utcnow())")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base: shared metadata with the naming convention, UTC timestamps."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime()}


class Tenancy(Base):
    """The root of isolation: every other tenant row points at one tenancy."""

    __tablename__ = "tenancies"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Tenancy(id={self.id!r}, name={self.name!r})"


class ApiKey(Base):
    """An API key: only hashes of its secrets are stored.

    Two secret slots let a key be rotated without downtime: a new secret goes into one
    slot while the old one keeps serving from the other, then the old one is dropped.
    """

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("role IN ('operator', 'admin', 'user')", name="role"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("key"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash_1: Mapped[str] = mapped_column(String(64))
    secret_hash_2: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    def __repr__(self) -> str:  # never shows the hashes
        return f"ApiKey(id={self.id!r}, tenancy_id={self.tenancy_id!r}, name={self.name!r}, role={self.role!r})"
