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

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    LargeBinary,
    MetaData,
    Boolean,
    Integer,
    JSON,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
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
    user_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("users.id"), index=True)
    """The user the key acts as (migration 0003); None for installed keys and the first operator key."""
    secret_2_expires_at: Mapped[datetime | None]
    """When the second (older, being rotated out) secret stops working, if one is set."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    def __repr__(self) -> str:  # never shows the hashes
        return f"ApiKey(id={self.id!r}, tenancy_id={self.tenancy_id!r}, name={self.name!r}, role={self.role!r})"


# --- key rings and sealed objects (migration 0002) -----------------------------------

KeyState = Literal["enabled", "retired"]
KEY_STATES: tuple[KeyState, ...] = ("enabled", "retired")
"""``retired``: below the ring's ``min_decrypt_version``; still usable by rewrap, never by open."""

OBJECT_KINDS: tuple[str, ...] = ("file", "dataset", "adapter", "document", "checkpoint")
"""What a stored object holds; checked in code (not by the database) so a kind can be added freely
(``checkpoint``: a running job's newest checkpoint, ``jobs.checkpoints``)."""


class KeyRing(Base):
    """A tenancy's key ring: which key version new writes use and the oldest one reads accept.

    Deleting the ring and its versions is crypto-shredding: the tenancy's objects can never
    be opened again. The root secret that wraps the versions is never in the database.
    """

    __tablename__ = "key_rings"
    __table_args__ = (
        CheckConstraint("min_decrypt_version >= 1 AND min_decrypt_version <= current_version", name="versions"),
    )

    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), primary_key=True)
    current_version: Mapped[int]
    min_decrypt_version: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return (
            f"KeyRing(tenancy_id={self.tenancy_id!r}, current_version={self.current_version}, "
            f"min_decrypt_version={self.min_decrypt_version})"
        )


class KeyVersion(Base):
    """One version of a tenancy's key-encryption key (KEK), wrapped by the root key.

    ``wrapped_key`` is AES-256-GCM of the 32-byte KEK under a key derived from the root
    secret, with associated data ``kek:{tenancy_id}:{version}``.
    """

    __tablename__ = "key_versions"
    __table_args__ = (
        UniqueConstraint("tenancy_id", "version"),
        CheckConstraint("version >= 1", name="version"),
        CheckConstraint("state IN ('enabled', 'retired')", name="state"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("kv"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    version: Mapped[int]
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default="enabled")

    def __repr__(self) -> str:  # never shows key material
        return f"KeyVersion(tenancy_id={self.tenancy_id!r}, version={self.version}, state={self.state!r})"


class StoredObject(Base):
    """Metadata of one sealed object; its ciphertext lives in the object store's backend.

    Holds what opening needs besides the ciphertext (payload nonce, wrapped data key, its
    nonce and key version) and nothing derived from the plaintext: no hash (it would
    reveal which objects are equal), no name. ``size`` is the ciphertext length.
    """

    __tablename__ = "objects"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("obj"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger)
    key_version: Mapped[int]
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    dek_nonce: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return (
            f"StoredObject(id={self.id!r}, tenancy_id={self.tenancy_id!r}, kind={self.kind!r}, "
            f"size={self.size}, key_version={self.key_version})"
        )


# --- identity, policies, audit, alerts, limits (migration 0003) -------------------------


class Compartment(Base):
    """A folder of resources inside a tenancy; ``parent_id`` None means the tenancy root."""

    __tablename__ = "compartments"
    __table_args__ = (UniqueConstraint("tenancy_id", "parent_id", "name"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("cmp"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("compartments.id"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str] = mapped_column(String(400), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Compartment(id={self.id!r}, tenancy_id={self.tenancy_id!r}, name={self.name!r})"


class User(Base):
    """A person or service account of a tenancy; API keys are bound to users."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenancy_id", "name"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("usr"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str] = mapped_column(String(400), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"User(id={self.id!r}, tenancy_id={self.tenancy_id!r}, name={self.name!r})"


class Group(Base):
    """A named set of users; policies grant access to groups."""

    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("tenancy_id", "name"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("grp"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str] = mapped_column(String(400), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Group(id={self.id!r}, tenancy_id={self.tenancy_id!r}, name={self.name!r})"


class GroupMember(Base):
    """Membership of one user in one group (both of the same tenancy)."""

    __tablename__ = "group_members"

    group_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("groups.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("users.id"), primary_key=True, index=True)
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Policy(Base):
    """A named list of ``allow`` statements (text, parsed by ``security.policy``).

    ``protected`` marks the tenancy's administrator policy, created with the tenancy,
    which cannot be edited or deleted (as OCI protects its tenant admin policy).
    """

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("tenancy_id", "name"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("pol"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str] = mapped_column(String(400), default="")
    statements: Mapped[str] = mapped_column(Text)
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Policy(id={self.id!r}, tenancy_id={self.tenancy_id!r}, name={self.name!r})"


class AuditEntry(Base):
    """One append-only, hash-chained audit record (see ``security.audit``).

    ``hash`` = SHA-256 over the previous entry's hash and this entry's canonical fields,
    so editing, deleting or reordering any entry breaks the chain. ``tenancy_id`` is None
    for requests that never reached a tenancy (no or a bad key). No foreign keys: the
    log outlives what it records. Never holds prompts, completions or secrets.
    """

    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    request_id: Mapped[str] = mapped_column(String(64))
    tenancy_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    principal_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    key_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    action: Mapped[str] = mapped_column(String(120))
    resource_type: Mapped[str | None] = mapped_column(String(40))
    resource_id: Mapped[str | None] = mapped_column(String(120))
    decision: Mapped[str] = mapped_column(String(16))
    statement: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(40))
    status: Mapped[int | None]
    source: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed checkpoint: HMAC of the chain head at ``seq``; detects truncation of the tail."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alert(Base):
    """An anomaly the monitor raised (burst of 401s, enumeration, new address, usage spike)."""

    __tablename__ = "alerts"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("alr"))
    tenancy_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    source: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class TenancyLimits(Base):
    """Per-tenancy request limits set by the operator; None means the service default."""

    __tablename__ = "tenancy_limits"

    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), primary_key=True)
    requests_per_minute: Mapped[int | None]
    concurrent_generations: Mapped[int | None]
    tokens_per_minute: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- files, jobs, custom models (migration 0004) -----------------------------------------

JOB_STATES: tuple[str, ...] = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
"""Lifecycle of a job (OpenAI's fine-tuning states); the last three are final."""


class File(Base):
    """An uploaded file (training data, documents); its bytes are a sealed object."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("file"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    compartment_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("compartments.id"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    object_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"File(id={self.id!r}, tenancy_id={self.tenancy_id!r}, filename={self.filename!r})"


class Job(Base):
    """A unit of background work in the database queue (leases and heartbeats; see ``jobs.queue``).

    A worker takes a ``queued`` job by setting ``lease_owner`` and ``lease_expires_at``; it
    renews the lease with each heartbeat. A job whose lease expired (its worker died) is taken
    again and resumes from its last checkpoint. ``payload`` holds the job's parameters (never
    secrets), ``result`` what it produced.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenancy_id", "idempotency_key"),
        CheckConstraint(
            "state IN ('validating_files', 'queued', 'running', 'succeeded', 'failed', 'cancelled')", name="state"
        ),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("job"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    compartment_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("compartments.id"))
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(24), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    cluster_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    """The fine-tuning cluster whose units the job holds (migration 0005; no foreign key, as SQLite
    cannot add one to a table others point at without copying it); None for other kinds."""

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, tenancy_id={self.tenancy_id!r}, kind={self.kind!r}, state={self.state!r})"


class WorkerPresence(Base):
    """A job worker process that is alive: it refreshes ``seen_at`` every few seconds (migration 0008)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    kinds: Mapped[list[str]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    """A job's progress event (metrics, state changes, messages), in order."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("jobs.id"), index=True)
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class CustomModel(Base):
    """A fine-tuned adapter over a base model; its PEFT files are a sealed object."""

    __tablename__ = "custom_models"
    __table_args__ = (UniqueConstraint("tenancy_id", "name"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("cm"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    compartment_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("compartments.id"))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    base_model: Mapped[str] = mapped_column(String(NAME_LENGTH))
    method: Mapped[str] = mapped_column(String(8))
    job_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("jobs.id"))
    adapter_object_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    trainable_params: Mapped[int] = mapped_column(BigInteger)
    total_params: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    curve: Mapped[list[Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"CustomModel(id={self.id!r}, tenancy_id={self.tenancy_id!r}, name={self.name!r})"


# --- dedicated AI clusters, endpoints, unit limits (migration 0005) ------------------------


class TenancyUnitLimit(Base):
    """How many units of one type a tenancy's clusters may hold at once; absent means 0 (as in OCI)."""

    __tablename__ = "tenancy_unit_limits"
    __table_args__ = (CheckConstraint("units >= 0", name="units"),)

    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), primary_key=True)
    unit_type: Mapped[str] = mapped_column(String(32), primary_key=True)
    units: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Cluster(Base):
    """A dedicated AI cluster: units of one type reserved for fine-tuning or hosting one base model.

    A deleted cluster keeps its row (state ``deleted``, ``deleted_at``) so that its cost so
    far can still be metered; names are unique among a tenancy's clusters that are not deleted.
    """

    __tablename__ = "clusters"
    __table_args__ = (
        CheckConstraint("type IN ('hosting', 'fine-tuning')", name="type"),
        CheckConstraint("unit_count >= 1", name="unit_count"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("dac"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    compartment_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("compartments.id"))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str] = mapped_column(String(400), default="")
    type: Mapped[str] = mapped_column(String(16))
    unit_type: Mapped[str] = mapped_column(String(32))
    unit_count: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(NAME_LENGTH))
    state: Mapped[str] = mapped_column(String(24), index=True)
    state_details: Mapped[str] = mapped_column(String(400), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    active_at: Mapped[datetime | None]
    """When it first became active (metering starts there); None if it never did."""
    deleted_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"Cluster(id={self.id!r}, tenancy_id={self.tenancy_id!r}, type={self.type!r}, state={self.state!r})"


class Endpoint(Base):
    """A served model on a hosting cluster: the base model, or one custom model of the same base.

    ``custom_model_id`` has no foreign key: a deleted endpoint keeps naming what it served
    after that custom model is gone.
    """

    __tablename__ = "endpoints"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("ep"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    compartment_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("compartments.id"))
    cluster_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("clusters.id"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str] = mapped_column(String(400), default="")
    base_model: Mapped[str] = mapped_column(String(NAME_LENGTH))
    custom_model_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    state: Mapped[str] = mapped_column(String(24), index=True)
    state_details: Mapped[str] = mapped_column(String(400), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"Endpoint(id={self.id!r}, tenancy_id={self.tenancy_id!r}, cluster_id={self.cluster_id!r})"


# --- knowledge bases and their documents (migration 0007) ---------------------------------

KNOWLEDGE_BASE_STATES: tuple[str, ...] = ("active", "deleting")
"""``deleting``: its vectors, chunks and documents are being removed (finished at the next start if cut off)."""
DOCUMENT_STATES: tuple[str, ...] = ("pending", "ingesting", "ready", "failed")
"""A document's ingestion: queued, running, searchable, or failed with ``error``."""


class KnowledgeBase(Base):
    """A searchable collection of documents, embedded with one embedding model.

    Its vectors and keyword index live in the vector store (``store.vectors``), under the
    scope (tenancy, knowledge base id). ``document_count`` and ``chunk_count`` are
    recounted from ``kb_documents`` whenever a document changes state.
    """

    __tablename__ = "knowledge_bases"
    __table_args__ = (
        UniqueConstraint("tenancy_id", "name"),
        CheckConstraint("chunk_size >= 1", name="chunk_size"),
        CheckConstraint("chunk_overlap >= 0 AND chunk_overlap < chunk_size", name="chunk_overlap"),
        CheckConstraint("search_breadth >= 1", name="search_breadth"),
        CheckConstraint("state IN ('active', 'deleting')", name="state"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("kb"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    compartment_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("compartments.id"))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    description: Mapped[str] = mapped_column(String(400), default="")
    embedding_model: Mapped[str] = mapped_column(String(NAME_LENGTH))
    dimensions: Mapped[int] = mapped_column(Integer)
    chunk_size: Mapped[int] = mapped_column(Integer)
    """Most tokens of the embedding model in one chunk."""
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    """Tokens a chunk repeats from the end of the previous one."""
    search_breadth: Mapped[int] = mapped_column(Integer)
    """How many candidates the vector index explores per query (HNSW ``ef``)."""
    state: Mapped[str] = mapped_column(String(16), default="active")
    document_count: Mapped[int] = mapped_column(Integer, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"KnowledgeBase(id={self.id!r}, tenancy_id={self.tenancy_id!r}, name={self.name!r})"


class KbDocument(Base):
    """One uploaded document of a knowledge base; its bytes are a sealed object (kind ``document``).

    Content is unique per knowledge base (``sha256``): uploading the same bytes again
    returns the existing document. A new upload under the same file name is a new
    ``version`` that ``replaces_id`` the previous one once it is ingested.
    """

    __tablename__ = "kb_documents"
    __table_args__ = (
        UniqueConstraint("knowledge_base_id", "sha256"),
        CheckConstraint("state IN ('pending', 'ingesting', 'ready', 'failed')", name="state"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True, default=lambda: new_id("doc"))
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"), index=True)
    knowledge_base_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("knowledge_bases.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    tags: Mapped[list[Any]] = mapped_column(JSON)
    object_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    version: Mapped[int] = mapped_column(Integer, default=1)
    replaces_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    """The previous version (same file name), removed once this one is ready; no foreign key."""
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    error: Mapped[str | None] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    ingested_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"KbDocument(id={self.id!r}, knowledge_base_id={self.knowledge_base_id!r}, state={self.state!r})"


# --- knowledge-base chunks, the keyword side of the embedded store (migration 0006) -----


class KbChunk(Base):
    """One chunk of a knowledge-base document: its text, span and tags, for BM25 and for citations.

    The vectors live in Chroma; the SQLite FTS5 index of each knowledge base
    (``store/keywords.py``) points at these rows by ``id``. A chunk id is unique within
    its tenancy and knowledge base.
    """

    __tablename__ = "kb_chunks"
    __table_args__ = (
        UniqueConstraint("tenancy_id", "knowledge_base_id", "chunk_id"),
        Index("ix_kb_chunks_document", "tenancy_id", "knowledge_base_id", "document_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenancy_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("tenancies.id"))
    knowledge_base_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    document_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    chunk_id: Mapped[str] = mapped_column(String(2 * ID_LENGTH))
    position: Mapped[int] = mapped_column(Integer)
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(Text, default="")
    filename: Mapped[str] = mapped_column(String(255))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    text: Mapped[str] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"KbChunk(chunk_id={self.chunk_id!r}, knowledge_base_id={self.knowledge_base_id!r})"
