"""Uploaded files of a tenancy: a ``files`` row and the sealed object holding its bytes.

Every method takes the caller's ``Principal`` first and sees the rows of
``principal.tenancy_id`` only: another tenancy's file raises ``NotFound`` with exactly the
message a missing one gets. A file's bytes are an object of kind ``file`` in the object
store (sealed under the tenancy's key, so plaintext never reaches the disk); its row names
the object. ``create_file`` keeps both or neither: the object is stored first, and removed
again if the row cannot be committed. ``delete_file`` removes the row first, then the
object, so a crash in between leaves at worst a sealed object that no row names (never a
listed file without its bytes).

This module knows nothing about HTTP, multipart bodies, policies or what the bytes mean
(training data is validated in ``atelier.tuning``).
"""

from __future__ import annotations

import logging
import os
import unicodedata
from contextlib import suppress

from sqlalchemy import select
from sqlalchemy.orm import Session

from atelier.errors import InvalidInput, NotFound, Unavailable
from atelier.principal import Principal
from atelier.store import identity
from atelier.store.db import Database
from atelier.store.scoping import scoped_get
from atelier.store.objects import ObjectStore
from atelier.store.tables import File, new_id, utcnow

log = logging.getLogger(__name__)

PURPOSES: tuple[str, ...] = ("fine-tune", "knowledge-base")
"""What a file may be uploaded for: training data, or documents of a knowledge base."""
FILENAME_LENGTH = 255
"""Longest stored file name, in characters (the column's width)."""
OBJECT_KIND = "file"
"""The kind of the sealed objects that hold files' bytes."""


def clean_filename(raw: str | None) -> str:
    """The name to store for an uploaded file: its last path component, printable, at most 255 characters.

    ``C:\\data\\train.jsonl`` and ``../../train.jsonl`` both become ``train.jsonl``; control
    characters are dropped; a name too long keeps its extension.

    Raises:
        InvalidInput: Nothing is left of the name (``param="file"``).
    """
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if name in ("", ".", ".."):
        raise InvalidInput("the uploaded file needs a file name (the multipart part's filename)", param="file")
    if len(name) > FILENAME_LENGTH:
        stem, ext = os.path.splitext(name)
        ext = ext if len(ext) <= 16 else ""
        name = stem[: FILENAME_LENGTH - len(ext)] + ext
    return name


def check_purpose(purpose: str | None) -> str:
    """``purpose`` if it is one of :data:`PURPOSES`.

    Raises:
        InvalidInput: Missing or unknown purpose (``param="purpose"``).
    """
    if purpose not in PURPOSES:
        given = "is missing" if not purpose else f"{purpose!r} is not supported"
        raise InvalidInput(f"purpose {given}; expected one of: {', '.join(PURPOSES)}", param="purpose")
    return purpose


class FileStore:
    """The files of every tenancy, each method scoped to the caller's.

    Args:
        db: The metadata database (table ``files``).
        objects: The sealed object store holding the bytes; same database as ``db``.
    """

    def __init__(self, db: Database, objects: ObjectStore):
        self._db = db
        self._objects = objects

    def create_file(
        self,
        principal: Principal,
        *,
        filename: str,
        purpose: str,
        data: bytes,
        compartment_id: str | None = None,
    ) -> File:
        """Seal ``data`` into the tenancy's object store and record it as a file.

        Args:
            principal: The caller; the file belongs to its tenancy.
            filename: The name to show (see :func:`clean_filename`).
            purpose: One of :data:`PURPOSES`.
            data: The file's bytes (plaintext; never written to disk as such).
            compartment_id: The compartment the file lives in; None for the tenancy root.

        Returns:
            The new row (detached; its ``object_id`` names the sealed object).

        Raises:
            InvalidInput: Unknown purpose, or a file name out of bounds.
            NotFound: No such compartment in the caller's tenancy.
            TooLarge: ``data`` is over the object store's size limit.
        """
        check_purpose(purpose)
        if not filename or len(filename) > FILENAME_LENGTH:
            raise InvalidInput(f"file name must be 1 to {FILENAME_LENGTH} characters", param="file")
        if compartment_id is not None:  # before sealing: a wrong compartment costs nothing
            with self._db.session() as session:
                identity.get_compartment(session, principal, compartment_id)
        ref = self._objects.put(principal, OBJECT_KIND, data)
        try:
            with self._db.session() as session:
                row = File(
                    id=new_id("file"),
                    tenancy_id=principal.tenancy_id,
                    compartment_id=compartment_id,
                    filename=filename,
                    purpose=purpose,
                    bytes=len(data),
                    object_id=ref.id,
                    created_at=utcnow(),
                )
                session.add(row)
        except BaseException:
            try:
                self._objects.delete(principal, ref.id)
            except Exception:  # noqa: BLE001 - the row's failure is the error to report
                log.exception("could not remove object %s of a file that was not recorded", ref.id)
            raise
        return row

    def get_file(self, principal: Principal | str, file_id: str) -> File:
        """The file with this id.

        Raises:
            NotFound: No such file in the caller's tenancy.
        """
        with self._db.session() as session:
            return _scoped(session, principal, file_id)

    def list_files(self, principal: Principal, *, purpose: str | None = None) -> list[File]:
        """The tenancy's files, oldest first; only those of ``purpose`` when given."""
        query = select(File).where(File.tenancy_id == principal.tenancy_id)
        if purpose is not None:
            query = query.where(File.purpose == purpose)
        with self._db.session() as session:
            return list(session.scalars(query.order_by(File.created_at, File.id)))

    def file_content(self, principal: Principal | str, file_id: str) -> bytes:
        """The file's bytes, opened from the sealed object.

        Raises:
            NotFound: No such file in the caller's tenancy.
            Undecryptable: The object cannot be opened (altered, retired key version, shredded ring).
            Unavailable: The row exists but its object or the object's payload is missing.
        """
        row = self.get_file(principal, file_id)
        try:
            return self._objects.get(principal, row.object_id)
        except NotFound:
            if not self._exists(principal, file_id):  # deleted meanwhile
                raise NotFound(f"file {file_id!r} not found") from None
            raise Unavailable(f"the bytes of file {file_id!r} are missing from the object store") from None

    def delete_file(self, principal: Principal, file_id: str) -> File:
        """Delete the file's row, then its sealed object.

        Returns:
            The deleted row.

        Raises:
            NotFound: No such file in the caller's tenancy.
        """
        with self._db.session() as session:
            row = _scoped(session, principal, file_id)
            session.delete(row)
        with suppress(NotFound):  # an object already gone is what we wanted
            self._objects.delete(principal, row.object_id)
        return row

    def _exists(self, principal: Principal | str, file_id: str) -> bool:
        try:
            self.get_file(principal, file_id)
        except NotFound:
            return False
        return True


def _scoped(session: Session, owner: Principal | str, file_id: str) -> File:
    """The file ``file_id`` of the owner's tenancy (the caller's, or a worker's job's); NotFound for a
    missing or foreign one."""
    return scoped_get(session, owner, File, file_id, "file")
