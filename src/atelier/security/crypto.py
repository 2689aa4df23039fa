"""Managed keys: the root secret, a versioned key ring per tenancy, envelope encryption.

Three layers, each wrapped by the one above with AES-256-GCM (``cryptography``'s AESGCM;
no cipher is written here)::

    root secret          ATELIER_ROOT_KEY or a 0600 key file; never in the database
     └─ wrapping key      HKDF-SHA256(root, info="atelier/key-ring-wrap")
         └─ KEK (tenancy, version)   key_versions row     AAD "kek:{tenancy}:{version}"
             └─ DEK (one per object) beside the object    AAD "dek:{tenancy}:{object}:{version}"
                 └─ payload                               AAD "obj:{tenancy}:{object}"

Every encryption draws a fresh random 96-bit nonce; every object a fresh 256-bit data key.
Binding the tenancy and object ids as associated data means a ciphertext (or a wrapped
data key) copied to another object or tenancy fails its tag. Ids never contain ``:``.

Rotation adds a KEK version that new writes use; old versions keep opening until
``retire_below`` raises the ring's ``min_decrypt_version``. ``rewrap`` moves a data key to
the newest version without touching (or producing) the payload. ``shred`` deletes the
ring and its versions: every object of the tenancy becomes unreadable for good.

Knows nothing about HTTP or where ciphertexts are kept (``atelier.store.objects``); reads
and writes only the ``key_rings`` and ``key_versions`` tables.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from atelier.durable import fsync_dir, write_temporary
from atelier.errors import InvalidInput, NotFound, TooLarge, Unavailable, Undecryptable
from atelier.store.db import Database
from atelier.store.objects import SealedBlob, is_valid_id
from atelier.store.tables import KeyRing, KeyVersion, Tenancy, new_id, utcnow

if TYPE_CHECKING:
    from atelier.settings import Settings

__all__ = ["KEY_BYTES", "MAX_PLAINTEXT_BYTES", "KeyManager", "RingState", "RootKey", "SealedBlob", "VersionState"]

KEY_BYTES = 32
"""Every key here is AES-256: 32 bytes."""
NONCE_BYTES = 12
"""AES-GCM's 96-bit nonce, drawn at random for every encryption."""
MAX_PLAINTEXT_BYTES = 2**31 - 1
"""The largest payload one AES-GCM call takes (``cryptography``'s limit)."""


# --- the root secret -----------------------------------------------------------------


class RootKey:
    """The root secret: wraps every tenancy's key versions; never stored in the database.

    Args:
        secret: 32 random bytes.
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes):
        if len(secret) != KEY_BYTES:
            raise ValueError(f"a root key is {KEY_BYTES} bytes, not {len(secret)}")
        self._secret = bytes(secret)

    @classmethod
    def generate(cls) -> RootKey:
        """A fresh random root key (tests, or a new key file)."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_settings(cls, settings: Settings) -> RootKey:
        """The root key named by the settings: ``root_key`` if set, else the key file.

        The key file (``settings.root_key_path``, default ``<data_dir>/root.key``) holds the
        key in base64. If it does not exist it is created with fresh random bytes, mode 0600
        from its first byte on; two processes starting together agree on one key.

        Raises:
            Unavailable: ``root_key`` is not base64 of 32 bytes, or the key file is not a
                regular file, is readable or writable by group or others, or is malformed.
        """
        if settings.root_key is not None:
            return cls(_decode(settings.root_key.get_secret_value(), "ATELIER_ROOT_KEY"))
        path = settings.root_key_path
        try:
            return cls(_read_key_file(path))
        except FileNotFoundError:
            pass
        _create_key_file(path)
        return cls(_read_key_file(path))  # the file that won, if another process was faster

    def derive(self, purpose: str, length: int = KEY_BYTES) -> bytes:
        """A key for one purpose (HKDF-SHA256, info ``atelier/<purpose>``): distinct purposes,
        independent keys. The root secret itself is never used as a key."""
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=f"atelier/{purpose}".encode()).derive(
            self._secret
        )

    def __repr__(self) -> str:
        return "RootKey(<hidden>)"

    def __reduce__(self) -> tuple:  # never pickled into a job payload or a log
        raise TypeError("a RootKey cannot be pickled")


def _decode(value: str | bytes, source: str) -> bytes:
    try:
        secret = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Unavailable(f"{source} is not valid base64 (expected base64 of {KEY_BYTES} random bytes)") from None
    if len(secret) != KEY_BYTES:
        raise Unavailable(f"{source} decodes to {len(secret)} bytes; a root key is {KEY_BYTES} bytes") from None
    return secret


def _read_key_file(path: Path) -> bytes:
    """The key in ``path``, after checking (on the open file) that only its owner can read it.

    Raises:
        FileNotFoundError: No such file (the caller creates one).
        Unavailable: Anything else that makes the file unusable.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise Unavailable(f"root key file {path} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unavailable(f"root key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise Unavailable(
                f"root key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others may access it; "
                f"refusing to use it (run: chmod 600 {path})"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            content = f.read(4096)
    finally:
        os.close(fd)
    return _decode(content, f"root key file {path}")


def _create_key_file(path: Path) -> None:
    """Write a fresh key to ``path`` unless a file is already there (then leave it alone).

    The key goes to a temporary file created exclusively with mode 0600, is fsynced, and is
    hard-linked to ``path``: the link either publishes a complete file or fails because one
    exists. The key never exists anywhere in a wider mode.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = write_temporary(path, base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n", mode=0o600)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


# --- associated data -----------------------------------------------------------------


def _kek_aad(tenancy_id: str, version: int) -> bytes:
    return f"kek:{tenancy_id}:{version}".encode()


def _dek_aad(tenancy_id: str, object_id: str, version: int) -> bytes:
    return f"dek:{tenancy_id}:{object_id}:{version}".encode()


def _payload_aad(tenancy_id: str, object_id: str) -> bytes:
    return f"obj:{tenancy_id}:{object_id}".encode()


def _check_ids(tenancy_id: str, object_id: str | None = None) -> None:
    if not is_valid_id(tenancy_id):
        raise InvalidInput("malformed tenancy id", param="tenancy_id")
    if object_id is not None and not is_valid_id(object_id):
        raise InvalidInput("malformed object id", param="object_id")


# --- key rings -----------------------------------------------------------------------


@dataclass(frozen=True)
class VersionState:
    """One key version as it may be shown: never its key material."""

    version: int
    state: str
    """``enabled``, or ``retired`` (below the ring's minimum decryption version)."""
    created_at: datetime


@dataclass(frozen=True)
class RingState:
    """A tenancy's key ring as it may be shown (``KeyManager.describe``)."""

    tenancy_id: str
    current_version: int
    """The version new writes use."""
    min_decrypt_version: int
    """Objects under older versions do not open until rewrapped."""
    created_at: datetime
    versions: tuple[VersionState, ...]



class KeyManager:
    """Key rings per tenancy and envelope encryption of objects (implements ``Sealer``).

    Args:
        db: A ``Database`` (each call runs in its own transaction) or an open ``Session``
            (calls flush into it; the caller commits).
        root_key: The root secret that wraps every key version.
    """

    def __init__(self, db: Database | Session, root_key: RootKey):
        self._db = db
        self._wrap = AESGCM(root_key.derive("key-ring-wrap"))

    def within(self, session: Session) -> KeyManager:
        """This key manager bound to an open session: its calls flush into that session and
        commit with the caller's unit of work (e.g. a ring created with its tenancy)."""
        bound = object.__new__(KeyManager)
        bound._db, bound._wrap = session, self._wrap
        return bound

    @contextmanager
    def _session(self) -> Iterator[Session]:
        if isinstance(self._db, Session):
            yield self._db
            self._db.flush()
        else:
            with self._db.session() as session:
                yield session

    # --- the ring ----------------------------------------------------------------------

    def ensure_ring(self, tenancy_id: str) -> int:
        """Create the tenancy's key ring with version 1 if it has none.

        Returns:
            The ring's current version.

        Raises:
            NotFound: No such tenancy.
        """
        _check_ids(tenancy_id)
        for attempt in range(2):
            try:
                with self._session() as session:
                    return self._ring(session, tenancy_id, create=True).current_version
            except IntegrityError:  # another process created the ring at the same moment
                if attempt or isinstance(self._db, Session):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def current_version(self, tenancy_id: str) -> int | None:
        """The key version new writes use, or None if the tenancy has no ring (never
        created, or shredded)."""
        with self._session() as session:
            ring = session.get(KeyRing, tenancy_id)
            return None if ring is None else ring.current_version

    def describe(self, tenancy_id: str) -> RingState | None:
        """The tenancy's ring as its versions and their states, without key material; None
        if the tenancy has no ring (never created, or shredded)."""
        with self._session() as session:
            ring = session.get(KeyRing, tenancy_id)
            if ring is None:
                return None
            rows = session.execute(
                select(KeyVersion.version, KeyVersion.state, KeyVersion.created_at)
                .where(KeyVersion.tenancy_id == tenancy_id)
                .order_by(KeyVersion.version)
            )
            versions = tuple(VersionState(row.version, row.state, row.created_at) for row in rows)
            return RingState(tenancy_id, ring.current_version, ring.min_decrypt_version, ring.created_at, versions)

    def rotate(self, tenancy_id: str) -> int:
        """Add a key version; new writes use it, objects under older ones still open.

        Returns:
            The new version.

        Raises:
            NotFound: No such tenancy.
        """
        self.ensure_ring(tenancy_id)
        with self._session() as session:
            query = select(KeyRing).where(KeyRing.tenancy_id == tenancy_id).with_for_update()
            ring = session.scalars(query).one()
            version = ring.current_version + 1
            session.add(self._new_version(tenancy_id, version))
            ring.current_version = version
            return version

    def retire_below(self, tenancy_id: str, version: int) -> None:
        """Refuse to open objects whose data key is wrapped by a version below ``version``.

        Such objects open again once re-wrapped (``rewrap``); retiring cannot be undone.

        Raises:
            NotFound: The tenancy has no key ring.
            InvalidInput: ``version`` is below the current minimum or above the newest version.
        """
        with self._session() as session:
            ring = session.get(KeyRing, tenancy_id)
            if ring is None:
                raise NotFound(f"tenancy {tenancy_id!r} has no key ring", param="tenancy_id")
            if not ring.min_decrypt_version <= version <= ring.current_version:
                raise InvalidInput(
                    f"version must be between {ring.min_decrypt_version} and {ring.current_version}", param="version"
                )
            ring.min_decrypt_version = version
            session.execute(
                update(KeyVersion)
                .where(KeyVersion.tenancy_id == tenancy_id, KeyVersion.version < version)
                .values(state="retired")
            )

    def shred(self, tenancy_id: str) -> int:
        """Crypto-shred: delete the tenancy's key versions and ring; its objects are lost.

        On SQLite the rows are overwritten with zeros (``secure_delete``) and, when this
        manager owns its transactions, the write-ahead log is checkpointed and truncated,
        so the wrapped keys do not linger in free pages.

        Returns:
            How many key versions were destroyed (0 if the ring was already gone).
        """
        with self._session() as session:
            sqlite = session.get_bind().dialect.name == "sqlite"
            if sqlite:
                session.execute(text("PRAGMA secure_delete = ON"))
            destroyed = session.execute(delete(KeyVersion).where(KeyVersion.tenancy_id == tenancy_id)).rowcount
            session.execute(delete(KeyRing).where(KeyRing.tenancy_id == tenancy_id))
        if sqlite and isinstance(self._db, Database):
            with self._db.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return destroyed

    # --- envelope encryption ----------------------------------------------------------

    def seal(self, tenancy_id: str, object_id: str, plaintext: bytes) -> SealedBlob:
        """Encrypt one object under a fresh data key wrapped by the tenancy's current version.

        Creates the tenancy's ring on its first object.

        Raises:
            InvalidInput: Malformed ids.
            NotFound: No such tenancy.
            TooLarge: ``plaintext`` is over ``MAX_PLAINTEXT_BYTES``.
        """
        _check_ids(tenancy_id, object_id)
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise TooLarge(f"an object holds at most {MAX_PLAINTEXT_BYTES} bytes", param="data")
        version = self.ensure_ring(tenancy_id)
        with self._session() as session:
            kek = self._kek(session, tenancy_id, version)
        dek = AESGCM.generate_key(bit_length=256)
        nonce, dek_nonce = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(dek).encrypt(nonce, plaintext, _payload_aad(tenancy_id, object_id))
        wrapped_dek = AESGCM(kek).encrypt(dek_nonce, dek, _dek_aad(tenancy_id, object_id, version))
        return SealedBlob(ciphertext, nonce, wrapped_dek, dek_nonce, version)

    def open(self, tenancy_id: str, object_id: str, blob: SealedBlob) -> bytes:
        """Decrypt an object sealed for exactly this tenancy and object id.

        Raises:
            Undecryptable: Shredded ring, retired key version, or a failed tag (altered
                bytes, another object's or tenancy's ciphertext or data key, another root key).
        """
        _check_ids(tenancy_id, object_id)
        with self._session() as session:
            ring = self._existing_ring(session, tenancy_id)
            if blob.key_version < ring.min_decrypt_version:
                raise Undecryptable(
                    f"the object's key version {blob.key_version} is retired (minimum "
                    f"{ring.min_decrypt_version}); rewrap it to open it"
                )
            kek = self._kek(session, tenancy_id, blob.key_version)
        dek = self._unwrap_dek(kek, tenancy_id, object_id, blob)
        try:
            return AESGCM(dek).decrypt(blob.nonce, blob.ciphertext, _payload_aad(tenancy_id, object_id))
        except InvalidTag:
            raise Undecryptable("the object does not authenticate: altered, or not sealed for this object") from None

    def rewrap(self, tenancy_id: str, object_id: str, blob: SealedBlob) -> SealedBlob:
        """The blob with its data key re-wrapped by the tenancy's newest version.

        Only the data key is unwrapped (in memory) and wrapped again: the payload is neither
        decrypted nor changed, and ``blob.ciphertext`` is passed through as given (callers
        that keep it elsewhere may pass ``b""``). Works on retired versions: that is how
        their objects come back. A blob already at the newest version is returned as is.

        Raises:
            Undecryptable: Shredded ring, or the data key fails its tag.
        """
        _check_ids(tenancy_id, object_id)
        with self._session() as session:
            current = self._existing_ring(session, tenancy_id).current_version
            if blob.key_version == current:
                return blob
            old_kek = self._kek(session, tenancy_id, blob.key_version)
            new_kek = self._kek(session, tenancy_id, current)
        dek = self._unwrap_dek(old_kek, tenancy_id, object_id, blob)
        dek_nonce = os.urandom(NONCE_BYTES)
        wrapped_dek = AESGCM(new_kek).encrypt(dek_nonce, dek, _dek_aad(tenancy_id, object_id, current))
        return replace(blob, wrapped_dek=wrapped_dek, dek_nonce=dek_nonce, key_version=current)

    # --- helpers ---------------------------------------------------------------------

    def _ring(self, session: Session, tenancy_id: str, *, create: bool) -> KeyRing:
        ring = session.get(KeyRing, tenancy_id)
        if ring is not None or not create:
            return ring
        if session.get(Tenancy, tenancy_id) is None:
            raise NotFound(f"tenancy {tenancy_id!r} not found", param="tenancy_id")
        ring = KeyRing(tenancy_id=tenancy_id, current_version=1, min_decrypt_version=1, created_at=utcnow())
        session.add_all([ring, self._new_version(tenancy_id, 1)])
        session.flush()
        return ring

    @staticmethod
    def _existing_ring(session: Session, tenancy_id: str) -> KeyRing:
        ring = session.get(KeyRing, tenancy_id)
        if ring is None:
            raise Undecryptable("the tenancy has no key ring (crypto-shredded): its objects cannot be opened")
        return ring

    def _new_version(self, tenancy_id: str, version: int) -> KeyVersion:
        nonce = os.urandom(NONCE_BYTES)
        wrapped = self._wrap.encrypt(nonce, AESGCM.generate_key(bit_length=256), _kek_aad(tenancy_id, version))
        return KeyVersion(
            id=new_id("kv"),
            tenancy_id=tenancy_id,
            version=version,
            wrapped_key=wrapped,
            nonce=nonce,
            created_at=utcnow(),
            state="enabled",
        )

    def _kek(self, session: Session, tenancy_id: str, version: int) -> bytes:
        row = session.scalar(
            select(KeyVersion).where(KeyVersion.tenancy_id == tenancy_id, KeyVersion.version == version)
        )
        if row is None:
            raise Undecryptable(f"key version {version} does not exist in the tenancy's key ring")
        try:
            return self._wrap.decrypt(row.nonce, row.wrapped_key, _kek_aad(tenancy_id, version))
        except InvalidTag:
            raise Undecryptable(
                f"key version {version} does not unwrap with this root key (another ATELIER_ROOT_KEY or "
                "root.key than the one that created it, or an altered key_versions row)"
            ) from None

    @staticmethod
    def _unwrap_dek(kek: bytes, tenancy_id: str, object_id: str, blob: SealedBlob) -> bytes:
        aad = _dek_aad(tenancy_id, object_id, blob.key_version)
        try:
            return AESGCM(kek).decrypt(blob.dek_nonce, blob.wrapped_dek, aad)
        except InvalidTag:
            raise Undecryptable("the object's data key does not authenticate: altered, or not sealed for it") from None

    def __repr__(self) -> str:
        return f"KeyManager({self._db!r})"
