"""The audit log: append-only, hash-chained, with signed checkpoints.

Each entry carries the hash of the entry before it::

    hash(n) = SHA-256(hash(n-1) ‖ canonical JSON of entry n's fields)     hash(0) = "0" * 64

so changing a field, deleting an entry or swapping two breaks the chain from that entry on.
Every ``checkpoint_every`` entries the chain head is signed (HMAC-SHA256 under a key
derived from the root secret, which is never in the database) into ``audit_checkpoints``,
and the newest signed checkpoint is also kept in a head file beside the database. Someone
who can write the database could rewrite the chain after an edit, but not the signatures:
an edit before the last checkpoint, or a truncation of the tail of both tables, is caught
by :meth:`AuditLog.verify`. (Entries after the newest checkpoint are protected by the chain
only.)

An event has no field for prompts, completions or secrets: only who did what to which
resource, the decision and the outcome. This module knows nothing about HTTP; it reads and
writes only the ``audit_entries`` and ``audit_checkpoints`` tables and the head file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time as _time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from atelier.durable import write_atomically
from atelier.errors import Unavailable
from atelier.security.crypto import RootKey
from atelier.store.db import Database
from atelier.store.tables import AuditCheckpoint as CheckpointRow
from atelier.store.tables import AuditEntry as EntryRow
from atelier.store.tables import utcnow

log = logging.getLogger(__name__)

Decision = Literal["allow", "deny", "none"]
DECISIONS: tuple[Decision, ...] = ("allow", "deny", "none")
ZERO_HASH = "0" * 64
"""The ``prev_hash`` of the first entry."""
SIGNING_PURPOSE = "audit-checkpoint"
"""``RootKey.derive`` purpose of the checkpoint signing key."""
HEAD_FILE = "audit.head"
"""Name of the head file in the data directory."""
CHECKPOINT_EVERY = 100
"""Entries between two signed checkpoints."""
APPEND_ATTEMPTS = 20
"""How often an append is retried when another process took the same sequence number."""
VERIFY_BATCH = 1000
"""Entries read per query while verifying (the log is streamed, never loaded whole)."""

HASHED_FIELDS = (
    "seq", "time", "request_id", "tenancy_id", "principal_id", "key_id", "action", "resource_type",
    "resource_id", "decision", "statement", "outcome", "status", "source",
)  # fmt: skip
"""The fields the hash covers, everything but ``prev_hash`` (chained separately) and ``hash``."""


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """What happened, as the caller reports it (the log adds seq, time and hashes)."""

    request_id: str
    """The request's id (``req_…``), shared by its decision and outcome entries."""
    tenancy_id: str | None = None
    """The caller's tenancy; None before authentication."""
    principal_id: str | None = None
    """The user (else the key) that acted; None before authentication."""
    key_id: str | None = None
    """The API key used; None before authentication."""
    action: str
    """``"POST /v1/policies"`` for a request, or a dotted event name such as ``"alert.raised"``."""
    resource_type: str | None = None
    """The policy resource type the action is on (``keys``, ``files``...), if any."""
    resource_id: str | None = None
    """The id (or name) of the target object, if the action names one."""
    decision: Decision = "none"
    """``allow`` or ``deny`` for an authorization decision; ``none`` for other entries."""
    statement: str | None = None
    """The policy statement that allowed the request."""
    outcome: str = ""
    """A short text: why it was allowed or denied, or ``ok``/``error`` for an outcome."""
    status: int | None = None
    """The HTTP status of the response, once known."""
    source: str | None = None
    """The client's address."""

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, not {self.decision!r}")
        if not self.request_id or not self.action:
            raise ValueError("an audit event names its request id and its action")


@dataclass(frozen=True, kw_only=True)
class AuditEntry(AuditEvent):
    """An event as stored: its place in the chain, its time and its hashes."""

    seq: int
    """Position in the log, from 1, without gaps."""
    time: datetime
    """When it was appended (UTC)."""
    prev_hash: str
    """``hash`` of entry ``seq - 1`` (64 zeros for the first)."""
    hash: str
    """SHA-256 over ``prev_hash`` and this entry's canonical fields (hex)."""

    def __post_init__(self) -> None:
        """Stored entries are shown as they are, even altered ones (``verify`` judges them)."""

    @property
    def event(self) -> AuditEvent:
        """The event this entry records."""
        return AuditEvent(**{f.name: getattr(self, f.name) for f in fields(AuditEvent)})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``time`` as ISO 8601 UTC)."""
        out = asdict(self)
        out["time"] = iso_time(self.time)
        return out


@dataclass(frozen=True)
class AuditReport:
    """The result of :meth:`AuditLog.verify`."""

    ok: bool
    """No problem found."""
    entries: int
    """Entries read."""
    checkpoints: int
    """Checkpoint rows read."""
    problems: list[str] = field(default_factory=list)
    """One line per problem, each naming the sequence number(s) concerned."""


@dataclass(frozen=True)
class Checkpoint:
    """A signed chain head: ``signature = HMAC-SHA256(key, f"{seq}:{hash}")`` (hex)."""

    seq: int
    hash: str
    signature: str


# --- the math ------------------------------------------------------------------------


def iso_time(value: datetime) -> str:
    """``value`` as ISO 8601 in UTC with microseconds (how times enter the hash)."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_json(values: dict[str, Any]) -> str:
    """The hashed fields of an entry as JSON with sorted keys and no spaces."""
    payload = {name: values[name] for name in HASHED_FIELDS}
    if isinstance(payload["time"], datetime):
        payload["time"] = iso_time(payload["time"])
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(prev_hash: str, values: dict[str, Any]) -> str:
    """``SHA-256(prev_hash ‖ canonical_json(values))`` as hex."""
    return hashlib.sha256((prev_hash + canonical_json(values)).encode("utf-8")).hexdigest()


def sign(key: bytes, seq: int, hash_: str) -> str:
    """The checkpoint signature ``HMAC-SHA256(key, f"{seq}:{hash}")`` as hex."""
    return hmac.new(key, f"{seq}:{hash_}".encode(), hashlib.sha256).hexdigest()


def _column_widths() -> dict[str, int]:
    widths = {}
    for column in EntryRow.__table__.columns:
        length = getattr(column.type, "length", None)
        if length and column.name in HASHED_FIELDS:
            widths[column.name] = length
    return widths


_WIDTHS = _column_widths()


def _fit(event: AuditEvent) -> AuditEvent:
    """The event with every text cut to its column's width (what is stored is what is hashed)."""
    changes = {}
    for name, width in _WIDTHS.items():
        value = getattr(event, name, None)
        if isinstance(value, str) and len(value) > width:
            changes[name] = value[: width - 1] + "…"
    return replace(event, **changes) if changes else event


def _entry_of(row: Any) -> AuditEntry:
    return AuditEntry(
        **{name: getattr(row, name) for name in HASHED_FIELDS}, prev_hash=row.prev_hash, hash=row.hash
    )


# --- the log -------------------------------------------------------------------------


class AuditLog:
    """The hash-chained audit log of one database.

    Args:
        db: The metadata database (tables ``audit_entries`` and ``audit_checkpoints``).
        signing_key: Key of the checkpoint signatures: ``root_key.derive(SIGNING_PURPOSE)``.
        checkpoint_every: Entries between two signed checkpoints.
        head_file: Where the newest signed checkpoint is also written (mode 0600), so that
            deleting the tail of both tables is detected; None keeps checkpoints in the
            database only.
    """

    def __init__(
        self,
        db: Database,
        signing_key: bytes,
        *,
        checkpoint_every: int = CHECKPOINT_EVERY,
        head_file: Path | None = None,
    ):
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if len(signing_key) < 16:
            raise ValueError("the signing key must be at least 16 bytes")
        self._db = db
        self._key = bytes(signing_key)
        self.checkpoint_every = checkpoint_every
        self.head_file = head_file
        self._lock = threading.Lock()
        self._observers: list[Callable[[AuditEntry], None]] = []

    @classmethod
    def for_service(cls, db: Database, root_key: RootKey, data_dir: Path) -> AuditLog:
        """The service's log: signed with ``root_key.derive(SIGNING_PURPOSE)``, its head
        file ``<data_dir>/audit.head`` (what ``atelier serve`` and ``atelier audit verify`` open)."""
        return cls(db, root_key.derive(SIGNING_PURPOSE), head_file=Path(data_dir).expanduser() / HEAD_FILE)

    # --- writing -----------------------------------------------------------------------

    def append(self, event: AuditEvent) -> AuditEntry:
        """Append one event in its own transaction, committed before this returns.

        As a loop: ``last = newest entry; insert (seq=last.seq+1, prev_hash=last.hash,
        hash=entry_hash(...)); if seq % checkpoint_every == 0: insert a signed checkpoint
        and write the head file``; a sequence number taken meanwhile by another process
        makes it start over. Observers are called afterwards.

        Returns:
            The stored entry.

        Raises:
            Unavailable: The entry (or its checkpoint) could not be written.
        """
        event = _fit(event)
        with self._lock:
            entry, checkpoint = self._insert(event)
            if checkpoint is not None and self.head_file is not None:
                try:
                    self._write_head(checkpoint)
                except OSError as exc:
                    log.error("audit head file %s cannot be written: %s", self.head_file, exc)
                    raise Unavailable(f"the audit head file cannot be written ({exc.strerror})") from exc
        self._notify(entry)
        return entry

    def _insert(self, event: AuditEvent) -> tuple[AuditEntry, Checkpoint | None]:
        for attempt in range(APPEND_ATTEMPTS):
            try:
                return self._insert_once(event)
            except IntegrityError:  # another process appended the same seq first: go again
                _time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
            except SQLAlchemyError as exc:
                log.error("audit entry cannot be written: %s", exc)
                raise Unavailable("the audit log cannot be written") from exc
        raise Unavailable("the audit log cannot be written: too much contention for the next sequence number")

    def _insert_once(self, event: AuditEvent) -> tuple[AuditEntry, Checkpoint | None]:
        with self._db.session() as session:
            if session.get_bind().dialect.name == "sqlite":
                # Take the write lock before reading the head, so that writers of other
                # processes queue (busy timeout) instead of racing for the same seq.
                session.execute(text("BEGIN IMMEDIATE"))
            last = session.execute(select(EntryRow.seq, EntryRow.hash).order_by(EntryRow.seq.desc()).limit(1)).first()
            seq, prev_hash = (1, ZERO_HASH) if last is None else (last.seq + 1, last.hash)
            values = {**asdict(event), "seq": seq, "time": utcnow()}
            digest = entry_hash(prev_hash, values)
            session.add(EntryRow(**values, prev_hash=prev_hash, hash=digest))
            checkpoint = None
            if seq % self.checkpoint_every == 0:
                checkpoint = Checkpoint(seq, digest, sign(self._key, seq, digest))
                session.add(CheckpointRow(**asdict(checkpoint), created_at=values["time"]))
            session.flush()
        return AuditEntry(**values, prev_hash=prev_hash, hash=digest), checkpoint

    def _write_head(self, checkpoint: Checkpoint) -> None:
        """Replace the head file with ``checkpoint`` unless it holds a newer one (atomic, 0600)."""
        assert self.head_file is not None
        current = self._read_head()
        if isinstance(current, Checkpoint) and current.seq >= checkpoint.seq:
            return
        path = self.head_file
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, json.dumps(asdict(checkpoint)).encode("utf-8"), mode=0o600)

    def _read_head(self) -> Checkpoint | str | None:
        """The head file's checkpoint; None if there is none; a problem text if unreadable."""
        if self.head_file is None:
            return None
        try:
            data = json.loads(self.head_file.read_text(encoding="utf-8"))
            return Checkpoint(int(data["seq"]), str(data["hash"]), str(data["signature"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"the head file {self.head_file} is unreadable ({type(exc).__name__})"

    # --- observers ---------------------------------------------------------------------

    def subscribe(self, callback: Callable[[AuditEntry], None]) -> None:
        """Call ``callback(entry)`` after every append (in the appending thread).

        An observer's exception is logged and never fails the append.
        """
        with self._lock:
            self._observers = [*self._observers, callback]

    def _notify(self, entry: AuditEntry) -> None:
        for callback in self._observers:
            try:
                callback(entry)
            except Exception:  # noqa: BLE001 - an observer never breaks the log
                log.exception("audit observer %r failed on entry %d", callback, entry.seq)

    # --- reading -----------------------------------------------------------------------

    def query(
        self,
        tenancy_id: str | None,
        *,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        principal_id: str | None = None,
        key_id: str | None = None,
        action: str | None = None,
        decision: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        status: int | None = None,
        after_seq: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries matching every given filter, oldest first.

        Args:
            tenancy_id: Only this tenancy's entries; None for every entry (the operator's view,
                entries without a tenancy included).
            request_id: Only this request's entries.
            since: Appended at or after this time.
            until: Appended before this time.
            principal_id: Acting user or key.
            key_id: API key used.
            action: Exact action (``"POST /v1/key-ring/rotate"``).
            decision: ``allow``, ``deny`` or ``none``.
            resource_type: Resource type.
            resource_id: Target id.
            status: HTTP status.
            after_seq: Only entries after this sequence number (to page on).
            limit: At most this many entries.

        Returns:
            The entries, in sequence order.
        """
        query = select(EntryRow)
        filters = {
            EntryRow.tenancy_id: tenancy_id,
            EntryRow.request_id: request_id,
            EntryRow.principal_id: principal_id,
            EntryRow.key_id: key_id,
            EntryRow.action: action,
            EntryRow.decision: decision,
            EntryRow.resource_type: resource_type,
            EntryRow.resource_id: resource_id,
            EntryRow.status: status,
        }
        for column, value in filters.items():
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(EntryRow.time >= since)
        if until is not None:
            query = query.where(EntryRow.time < until)
        if after_seq is not None:
            query = query.where(EntryRow.seq > after_seq)
        with self._db.session() as session:
            rows = session.scalars(query.order_by(EntryRow.seq).limit(max(0, limit)))
            return [_entry_of(row) for row in rows]

    def _stream(self) -> Iterator[EntryRow]:
        """Every entry in sequence order, read ``VERIFY_BATCH`` at a time."""
        after = None
        while True:
            query = select(EntryRow).order_by(EntryRow.seq).limit(VERIFY_BATCH)
            if after is not None:
                query = query.where(EntryRow.seq > after)
            with self._db.session() as session:
                rows = list(session.scalars(query))
                session.expunge_all()
            yield from rows
            if len(rows) < VERIFY_BATCH:
                return
            after = rows[-1].seq

    # --- verifying ---------------------------------------------------------------------

    def verify(self) -> AuditReport:
        """Check the whole log: the chain, every checkpoint and the head file.

        Detects an altered entry (its hash no longer matches its fields), a deleted,
        inserted or moved entry (a gap in the sequence, or a ``prev_hash`` that is not the
        previous entry's hash), and truncation (a checkpoint or the head file pointing past
        the last entry or at another hash, a checkpoint missing, a bad signature).

        Returns:
            The report; ``ok`` is True when no problem was found.
        """
        # Read in this order, so that entries appended meanwhile raise no false alarm: a
        # checkpoint commits with its entry, and the head file is written after both (under
        # the lock, which this process's appends hold from their commit to the head file).
        problems: list[str] = []
        with self._lock:
            with self._db.session() as session:
                settled = session.scalar(select(func.max(EntryRow.seq))) or 0
            head = self._read_head()
            with self._db.session() as session:
                checkpoints = {row.seq: Checkpoint(row.seq, row.hash, row.signature) for row in session.scalars(
                    select(CheckpointRow).order_by(CheckpointRow.seq)
                )}  # fmt: skip
        for cp in checkpoints.values():
            if not hmac.compare_digest(cp.signature, sign(self._key, cp.seq, cp.hash)):
                problems.append(f"seq {cp.seq}: checkpoint signature is not valid (checkpoint forged or altered)")
        if isinstance(head, str):
            problems.append(head)
            head = None
        if head is not None and not hmac.compare_digest(head.signature, sign(self._key, head.seq, head.hash)):
            problems.append(f"seq {head.seq}: the head file's signature is not valid")
            head = None

        count, last_seq, prev_hash = 0, 0, ZERO_HASH
        for row in self._stream():
            count += 1
            if row.seq != last_seq + 1:
                missing = f"{last_seq + 1}" if row.seq == last_seq + 2 else f"{last_seq + 1}..{row.seq - 1}"
                problems.append(f"seq {missing}: missing (entries deleted)")
            if row.prev_hash != prev_hash:
                problems.append(
                    f"seq {row.seq}: prev_hash is not the hash of the entry before it "
                    "(entries deleted, inserted or reordered)"
                )
            if entry_hash(row.prev_hash, {name: getattr(row, name) for name in HASHED_FIELDS}) != row.hash:
                problems.append(f"seq {row.seq}: hash does not match the entry's fields (entry altered)")
            for name, cp in (("checkpoint", checkpoints.get(row.seq)), ("head file", head)):
                if cp is not None and cp.seq == row.seq and cp.hash != row.hash:
                    problems.append(f"seq {row.seq}: the signed {name} holds another hash (entries altered)")
            last_seq, prev_hash = row.seq, row.hash

        for seq in checkpoints:
            if seq > last_seq:
                problems.append(f"seq {seq}: a checkpoint points past the last entry (seq {last_seq}): log truncated")
        for seq in range(self.checkpoint_every, min(last_seq, settled) + 1, self.checkpoint_every):
            if seq not in checkpoints:
                problems.append(f"seq {seq}: its checkpoint is missing")
        if head is not None:
            if head.seq > last_seq:
                problems.append(
                    f"seq {head.seq}: the head file points past the last entry (seq {last_seq}): log truncated"
                )
            elif head.seq not in checkpoints:
                problems.append(f"seq {head.seq}: the head file's checkpoint is missing from the database")
        elif self.head_file is not None and checkpoints:
            problems.append(f"seq {max(checkpoints)}: the head file {self.head_file} is missing")
        return AuditReport(not problems, count, len(checkpoints), problems)
