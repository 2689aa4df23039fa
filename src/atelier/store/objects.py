"""The object store: every blob a tenancy stores (files, datasets, adapters, documents).

One interface, ``ObjectStore``, sealed by a key manager: a blob is encrypted before it
reaches a backend and opened after it comes back, so no backend ever holds plaintext. The
local-directory backend is the default; ``atelier.store.s3_objects`` keeps payloads in an
S3-compatible bucket instead (``store/object_stores.py`` picks one from the settings). Both share
``SealedObjectStore``: each object has a row in the ``objects`` table (tenancy, kind,
ciphertext size, key version, wrapped data key, nonces) and a payload named by its opaque
ids, ``<tenancy id>/<object id>`` under the backend's root: never a name chosen by a user.
Another tenancy's object is ``NotFound``, exactly like a missing one.

This module declares what it needs from a key manager (``Sealer``, ``SealedBlob``) and knows
nothing about how keys are kept (``atelier.security.crypto`` implements it), nor about HTTP.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from atelier.durable import fsync_dir, write_atomically
from atelier.errors import Conflict, InvalidInput, NotFound, Unavailable
from atelier.store.db import Database
from atelier.store.tables import ID_LENGTH, OBJECT_KINDS, StoredObject, Tenancy, new_id, utcnow

GCM_TAG_BYTES = 16
"""Bytes AES-GCM adds to a payload: ``len(ciphertext) == len(plaintext) + 16``."""

_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{ID_LENGTH - 1}}}")
"""Object and tenancy ids: safe as file names and in associated data (no ``/``, ``.``, ``:``)."""


def is_valid_id(value: str) -> bool:
    """Whether ``value`` is an acceptable object or tenancy id (1 to 40 of ``[A-Za-z0-9_-]``)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


# --- what the store needs from a key manager -----------------------------------------


@dataclass(frozen=True, repr=False)
class SealedBlob:
    """An encrypted payload and what opening it needs, bound to one (tenancy, object)."""

    ciphertext: bytes
    """AES-256-GCM of the payload under the object's data key (tag included)."""
    nonce: bytes
    """The payload's 12-byte nonce."""
    wrapped_dek: bytes
    """The object's data key, AES-256-GCM under the tenancy's key version ``key_version``."""
    dek_nonce: bytes
    """The 12-byte nonce of ``wrapped_dek``."""
    key_version: int
    """The tenancy's key version that wraps the data key."""

    def __repr__(self) -> str:
        return f"SealedBlob(ciphertext=<{len(self.ciphertext)} bytes>, key_version={self.key_version})"


class Sealer(Protocol):
    """Envelope encryption per tenancy (implemented by ``atelier.security.crypto.KeyManager``)."""

    def seal(self, tenancy_id: str, object_id: str, plaintext: bytes) -> SealedBlob:
        """Encrypt under a fresh data key wrapped by the tenancy's current key version."""
        ...

    def open(self, tenancy_id: str, object_id: str, blob: SealedBlob) -> bytes:
        """Decrypt, or raise ``Undecryptable``."""
        ...

    def rewrap(self, tenancy_id: str, object_id: str, blob: SealedBlob) -> SealedBlob:
        """The same blob with its data key wrapped by the newest version; ciphertext untouched."""
        ...

    def current_version(self, tenancy_id: str) -> int | None:
        """The version new writes use, or None when the tenancy has no key ring."""
        ...


# --- the interface every backend implements ------------------------------------------


class HasTenancy(Protocol):
    """Anything that names its tenancy, such as ``atelier.security.Principal``."""

    @property
    def tenancy_id(self) -> str: ...


Owner = HasTenancy | str
"""Whose object: a principal, or a tenancy id (internal callers such as workers)."""


def tenancy_of(owner: Owner) -> str:
    """The tenancy id of a principal, or the id itself."""
    return owner if isinstance(owner, str) else owner.tenancy_id


@dataclass(frozen=True)
class ObjectRef:
    """What callers keep of a stored object: its opaque id and public metadata."""

    id: str
    tenancy_id: str
    kind: str
    size: int
    """Bytes stored: the ciphertext, i.e. the data plus the 16-byte tag."""
    key_version: int
    created_at: datetime

    @property
    def data_size(self) -> int:
        """Bytes of the data itself (what ``get`` returns)."""
        return self.size - GCM_TAG_BYTES

    @classmethod
    def of(cls, row: StoredObject) -> ObjectRef:
        return cls(row.id, row.tenancy_id, row.kind, row.size, row.key_version, row.created_at)


class ObjectStore(Protocol):
    """Sealed blobs, scoped by tenancy. Another tenancy's id behaves exactly like a missing one."""

    def put(self, owner: Owner, kind: str, data: bytes, *, object_id: str | None = None) -> ObjectRef:
        """Seal and store ``data``; a fresh ``obj_…`` id unless ``object_id`` is given."""
        ...

    def get(self, owner: Owner, object_id: str) -> bytes:
        """The data, opened. Raises NotFound, or Undecryptable."""
        ...

    def delete(self, owner: Owner, object_id: str) -> None:
        """Remove the object (row, then payload). Raises NotFound."""
        ...

    def head(self, owner: Owner, object_id: str) -> ObjectRef:
        """The object's reference, without its payload. Raises NotFound."""
        ...

    def exists(self, owner: Owner, object_id: str) -> bool:
        """Whether the owner's tenancy has this object."""
        ...

    def rewrap_all(self, owner: Owner) -> int:
        """Re-wrap every data key of the tenancy under its newest key version; returns how many changed."""
        ...


# --- what every backend shares: rows, sealing, scoping ---------------------------------


class SealedObjectStore(ABC):
    """Everything of an ``ObjectStore`` but where payloads are kept.

    Each object is a row in the ``objects`` table (its wrapped data key and nonces) and a
    ciphertext payload kept by the backend under ``(tenancy id, object id)``. The row is
    inserted first (which reserves the id) and committed only once the payload is stored,
    so a committed row always has its payload; a failed or interrupted put leaves at worst
    a payload without a row, which is never served (and cannot be opened: its data key was
    in the row). Delete removes the row, then the payload: once the row is gone the object
    is shredded whatever becomes of its payload. Objects are sealed whole in memory (at most
    2 GiB - 1 bytes each).

    A backend implements the four payload methods; ids reaching them are always valid.

    Args:
        key_manager: Seals and opens payloads; must use the same database as ``db``.
        db: The metadata database (table ``objects``).
    """

    def __init__(self, key_manager: Sealer, db: Database):
        self._keys = key_manager
        self._db = db

    # --- payload I/O: what a backend implements ---------------------------------------

    @abstractmethod
    def _write_payload(self, tenancy_id: str, object_id: str, ciphertext: bytes) -> None:
        """Store the payload durably (called with the object's row reserved, not committed)."""

    @abstractmethod
    def _discard_payload(self, tenancy_id: str, object_id: str) -> None:
        """Best effort: remove what a failed put may have stored; never raises."""

    @abstractmethod
    def _read_payload(self, tenancy_id: str, object_id: str) -> bytes | None:
        """The payload, or None if the backend has none under these ids."""

    @abstractmethod
    def _delete_payload(self, tenancy_id: str, object_id: str) -> None:
        """Remove the payload of an object whose row is already deleted (missing is fine)."""

    # --- the ObjectStore protocol -----------------------------------------------------

    def put(self, owner: Owner, kind: str, data: bytes, *, object_id: str | None = None) -> ObjectRef:
        """Seal ``data`` and store it.

        Args:
            owner: Principal or tenancy id.
            kind: One of ``OBJECT_KINDS``.
            data: The plaintext; it never reaches the backend.
            object_id: A fixed id (e.g. chosen by the service for a row of its own);
                default a fresh ``obj_…`` id.

        Returns:
            The new object's reference.

        Raises:
            InvalidInput: Unknown kind or malformed object id.
            NotFound: No such tenancy.
            Conflict: ``object_id`` is already taken.
            TooLarge: ``data`` is over the sealer's size limit.
            Unavailable: The backend cannot store the payload (remote backends).
        """
        tenancy_id = self._check_tenancy(owner)
        if kind not in OBJECT_KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(OBJECT_KINDS)}", param="kind")
        object_id = object_id or new_id("obj")
        if not is_valid_id(object_id):
            raise InvalidInput(f"object id must be 1 to {ID_LENGTH} of A-Z a-z 0-9 _ -", param="object_id")
        with self._db.session() as session:
            if session.get(Tenancy, tenancy_id) is None:
                raise NotFound(f"tenancy {tenancy_id!r} not found", param="tenancy_id")
            if session.get(StoredObject, object_id) is not None:
                raise Conflict(f"object {object_id!r} already exists", param="object_id")
        # Sealed before the row's transaction opens: the key manager may write (a new ring).
        blob = self._keys.seal(tenancy_id, object_id, data)
        owned = False  # whether the id is ours, hence the payload's place too
        try:
            with self._db.session() as session:
                row = StoredObject(
                    id=object_id,
                    tenancy_id=tenancy_id,
                    kind=kind,
                    size=len(blob.ciphertext),
                    key_version=blob.key_version,
                    nonce=blob.nonce,
                    wrapped_dek=blob.wrapped_dek,
                    dek_nonce=blob.dek_nonce,
                    created_at=utcnow(),
                )
                session.add(row)
                try:
                    session.flush()  # the id is ours from here: a racing put with it fails
                except IntegrityError:
                    raise Conflict(f"object {object_id!r} already exists", param="object_id") from None
                owned = True
                self._write_payload(tenancy_id, object_id, blob.ciphertext)
        except BaseException:
            if owned:  # the row did not commit: its payload must not stay behind
                self._discard_payload(tenancy_id, object_id)
            raise
        return ObjectRef.of(row)

    def get(self, owner: Owner, object_id: str) -> bytes:
        """The object's data.

        Raises:
            NotFound: No such object in the owner's tenancy.
            Undecryptable: Altered or moved payload, retired key version, or shredded ring.
            Unavailable: The row exists but its payload is missing, or the backend cannot
                be reached.
        """
        tenancy_id = tenancy_of(owner)
        with self._db.session() as session:
            row = self._row(session, tenancy_id, object_id)
        ciphertext = self._read_payload(tenancy_id, object_id)
        if ciphertext is None:
            if not self.exists(owner, object_id):  # deleted meanwhile
                raise NotFound(f"object {object_id!r} not found", param="object_id")
            raise Unavailable(f"the payload of object {object_id!r} is missing from the store")
        blob = SealedBlob(ciphertext, row.nonce, row.wrapped_dek, row.dek_nonce, row.key_version)
        return self._keys.open(tenancy_id, object_id, blob)

    def head(self, owner: Owner, object_id: str) -> ObjectRef:
        """The object's reference, without reading its payload.

        Raises:
            NotFound: No such object in the owner's tenancy.
        """
        with self._db.session() as session:
            return ObjectRef.of(self._row(session, tenancy_of(owner), object_id))

    def exists(self, owner: Owner, object_id: str) -> bool:
        """Whether the owner's tenancy has this object."""
        try:
            self.head(owner, object_id)
        except NotFound:
            return False
        return True

    def delete(self, owner: Owner, object_id: str) -> None:
        """Delete the row (with it the wrapped data key), then the payload.

        Raises:
            NotFound: No such object in the owner's tenancy.
        """
        tenancy_id = tenancy_of(owner)
        with self._db.session() as session:
            session.delete(self._row(session, tenancy_id, object_id))
        self._delete_payload(tenancy_id, object_id)

    def rewrap_all(self, owner: Owner) -> int:
        """Re-wrap the data key of every object of the tenancy below its newest key version.

        Only rows change (wrapped key, its nonce, key version); payloads are neither read
        nor written, and no plaintext is produced. A row changed meanwhile (deleted, or
        re-wrapped by another call) is left as it is.

        Returns:
            How many objects were re-wrapped.

        Raises:
            Undecryptable: A data key cannot be unwrapped (shredded ring, altered row).
        """
        tenancy_id = tenancy_of(owner)
        current = self._keys.current_version(tenancy_id)
        query = select(StoredObject).where(StoredObject.tenancy_id == tenancy_id)
        if current is not None:  # without a ring every row is due, and rewrap says why it cannot
            query = query.where(StoredObject.key_version < current)
        with self._db.session() as session:
            rows = list(session.scalars(query.order_by(StoredObject.id)))
        # The ciphertext is not needed to re-wrap a data key: it is not even read.
        new = []
        for row in rows:
            stub = SealedBlob(b"", row.nonce, row.wrapped_dek, row.dek_nonce, row.key_version)
            new.append((row, self._keys.rewrap(tenancy_id, row.id, stub)))
        changed = 0
        with self._db.session() as session:
            for row, blob in new:
                if blob.key_version == row.key_version:
                    continue
                result = session.execute(
                    update(StoredObject)
                    .where(StoredObject.id == row.id, StoredObject.key_version == row.key_version)
                    .values(wrapped_dek=blob.wrapped_dek, dek_nonce=blob.dek_nonce, key_version=blob.key_version)
                )
                changed += result.rowcount
        return changed

    # --- helpers ---------------------------------------------------------------------

    @staticmethod
    def _check_tenancy(owner: Owner) -> str:
        tenancy_id = tenancy_of(owner)
        if not is_valid_id(tenancy_id):
            raise NotFound(f"tenancy {tenancy_id!r} not found", param="tenancy_id")
        return tenancy_id

    @staticmethod
    def _row(session: Session, tenancy_id: str, object_id: str) -> StoredObject:
        row = session.get(StoredObject, object_id) if is_valid_id(object_id) else None
        if row is None or row.tenancy_id != tenancy_id:
            raise NotFound(f"object {object_id!r} not found", param="object_id")
        return row


# --- local directory backend ---------------------------------------------------------


class LocalObjectStore(SealedObjectStore):
    """``ObjectStore`` over a local directory (the embedded default).

    Payload writes are atomic: a temporary file in the object's directory (mode 0600) is
    written, flushed and fsynced, renamed to the object id, and the directory is fsynced.
    A crash leaves at worst a ``.*.tmp`` file or a ciphertext without a row, both
    unreadable and never served.

    Args:
        root_dir: Directory for payloads (created with mode 0700).
        key_manager: Seals and opens payloads; must use the same database as ``db``.
        db: The metadata database (table ``objects``).
    """

    def __init__(self, root_dir: Path | str, key_manager: Sealer, db: Database):
        super().__init__(key_manager, db)
        self.root = Path(root_dir).expanduser()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _write_payload(self, tenancy_id: str, object_id: str, ciphertext: bytes) -> None:
        path = self._path(tenancy_id, object_id)
        directory = path.parent
        if not directory.is_dir():
            directory.mkdir(mode=0o700, exist_ok=True)
            fsync_dir(self.root)
        write_atomically(path, ciphertext, mode=0o600)

    def _discard_payload(self, tenancy_id: str, object_id: str) -> None:
        with suppress(OSError):
            self._path(tenancy_id, object_id).unlink(missing_ok=True)

    def _read_payload(self, tenancy_id: str, object_id: str) -> bytes | None:
        try:
            return self._path(tenancy_id, object_id).read_bytes()
        except FileNotFoundError:
            return None

    def _delete_payload(self, tenancy_id: str, object_id: str) -> None:
        path = self._path(tenancy_id, object_id)
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def _path(self, tenancy_id: str, object_id: str) -> Path:
        if not (is_valid_id(tenancy_id) and is_valid_id(object_id)):  # never a path from outside
            raise NotFound(f"object {object_id!r} not found", param="object_id")
        return self.root / tenancy_id / object_id

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"

