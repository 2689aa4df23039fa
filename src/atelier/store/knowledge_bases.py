"""Rows of knowledge bases and their documents, and the consistency of the vector store with them.

Reads take the caller's ``Principal`` (or, in a worker, the job's tenancy id) and see one
tenancy only: another tenancy's knowledge base or document is ``NotFound`` with exactly the
message a missing one gets. A knowledge base being deleted is already gone for readers.

The invariant kept with the vector store (``rag.indexing.VectorStore``): chunks and vectors
found there belong to documents whose row is ``ready``, except while a worker holds the
lease of the document's ingestion job. Every writer orders its steps so that a crash
breaks it only towards *more* rows than chunks, never the reverse:

- ingestion writes chunks first and marks the row ``ready`` last;
- deletions remove rows first (or mark the knowledge base ``deleting``), then chunks;
- :func:`repair`, run when the service or a worker starts, removes whatever chunks a crash
  left behind (documents not ready, or gone) and finishes interrupted deletions.

This module knows nothing about HTTP, policies, models or how documents are parsed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from atelier.errors import InvalidInput, NotFound
from atelier.principal import Principal
from atelier.rag.indexing import Scope, VectorStore
from atelier.store.db import Database
from atelier.store.objects import ObjectStore
from atelier.store.tables import Job, KbDocument, KnowledgeBase, utcnow

log = logging.getLogger(__name__)

MAX_TAGS = 32
TAG_PATTERN = re.compile(r"^[\w.:/+-]{1,64}$")
"""A tag: 1 to 64 letters, digits or ``_ . : / + -`` (any script)."""
UNFINISHED = ("pending", "ingesting")
ERROR_LENGTH = 2000
UPLOAD_GRACE = timedelta(seconds=60)
"""An upload's row gets its ingestion job within milliseconds; one without a job after this was cut off."""
INTERRUPTED = "the upload was interrupted before its ingestion was queued; upload the file again"


def scope_of(row: KnowledgeBase | KbDocument) -> Scope:
    """The vector-store scope of a knowledge base (or of a document's knowledge base)."""
    kb_id = row.id if isinstance(row, KnowledgeBase) else row.knowledge_base_id
    return Scope(tenancy_id=row.tenancy_id, knowledge_base_id=kb_id)


def clean_tags(raw: Sequence[str] | None) -> list[str]:
    """Tags as stored: stripped, deduplicated in order, checked.

    Raises:
        InvalidInput: More than :data:`MAX_TAGS` tags, or a tag outside :data:`TAG_PATTERN` (``param="tags"``).
    """
    tags: list[str] = []
    for tag in raw or ():
        tag = str(tag).strip()
        if not tag or tag in tags:
            continue
        if not TAG_PATTERN.fullmatch(tag):
            raise InvalidInput(f"tag {tag[:80]!r} must be 1 to 64 letters, digits or _ . : / + -", param="tags")
        tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"a document may have at most {MAX_TAGS} tags", param="tags")
    return tags


def _tenancy(owner: Principal | str) -> str:
    return owner.tenancy_id if isinstance(owner, Principal) else owner


# --- knowledge bases -----------------------------------------------------------------------


def get_knowledge_base(session: Session, owner: Principal | str, kb_id: str) -> KnowledgeBase:
    """The active knowledge base ``kb_id`` of the owner's tenancy.

    Raises:
        NotFound: Missing, another tenancy's, or being deleted (one message for all).
    """
    row = session.get(KnowledgeBase, kb_id) if isinstance(kb_id, str) and kb_id else None
    if row is None or row.tenancy_id != _tenancy(owner) or row.state != "active":
        raise NotFound(f"knowledge base {kb_id!r} not found")
    return row


def find_knowledge_base(session: Session, principal: Principal, name: str) -> KnowledgeBase | None:
    """The knowledge base of the caller's tenancy named ``name`` (any state), if any."""
    query = select(KnowledgeBase).where(KnowledgeBase.tenancy_id == principal.tenancy_id,
                                        KnowledgeBase.name == name)
    return session.scalar(query)


def list_knowledge_bases(session: Session, principal: Principal) -> list[KnowledgeBase]:
    """The caller's tenancy's active knowledge bases, oldest first."""
    query = select(KnowledgeBase).where(KnowledgeBase.tenancy_id == principal.tenancy_id,
                                        KnowledgeBase.state == "active")
    return list(session.scalars(query.order_by(KnowledgeBase.created_at, KnowledgeBase.id)))


def recount(session: Session, kb_id: str) -> None:
    """Set the knowledge base's document count (all documents) and chunk count (ready ones)."""
    kb = session.get(KnowledgeBase, kb_id)
    if kb is None:
        return
    session.flush()
    docs = select(func.count()).select_from(KbDocument).where(KbDocument.knowledge_base_id == kb_id)
    chunks = select(func.coalesce(func.sum(KbDocument.chunk_count), 0)).where(
        KbDocument.knowledge_base_id == kb_id, KbDocument.state == "ready"
    )
    kb.document_count = int(session.scalar(docs) or 0)
    kb.chunk_count = int(session.scalar(chunks) or 0)
    kb.updated_at = utcnow()


# --- documents -------------------------------------------------------------------------------


def get_document(session: Session, owner: Principal | str, kb_id: str, doc_id: str) -> KbDocument:
    """The document ``doc_id`` of knowledge base ``kb_id`` (both of the owner's tenancy).

    Raises:
        NotFound: No such document in that knowledge base of the owner's tenancy.
    """
    row = session.get(KbDocument, doc_id) if isinstance(doc_id, str) and doc_id else None
    if row is None or row.tenancy_id != _tenancy(owner) or row.knowledge_base_id != kb_id:
        raise NotFound(f"document {doc_id!r} not found")
    sync_with_job(session, row)
    return row


def list_documents(session: Session, owner: Principal | str, kb_id: str) -> list[KbDocument]:
    """The knowledge base's documents, oldest first (their states brought up to date with their jobs)."""
    query = select(KbDocument).where(KbDocument.tenancy_id == _tenancy(owner), KbDocument.knowledge_base_id == kb_id)
    rows = list(session.scalars(query.order_by(KbDocument.created_at, KbDocument.id)))
    for row in rows:
        sync_with_job(session, row)
    return rows


def find_by_content(session: Session, kb: KnowledgeBase, sha256: str) -> KbDocument | None:
    """The knowledge base's document with these bytes (by SHA-256), if any."""
    query = select(KbDocument).where(KbDocument.knowledge_base_id == kb.id, KbDocument.sha256 == sha256)
    return session.scalar(query)


def latest_version(session: Session, kb: KnowledgeBase, filename: str) -> KbDocument | None:
    """The knowledge base's newest document uploaded under ``filename``, if any."""
    query = select(KbDocument).where(KbDocument.knowledge_base_id == kb.id, KbDocument.filename == filename)
    return session.scalar(query.order_by(KbDocument.version.desc()).limit(1))


def sync_with_job(session: Session, doc: KbDocument) -> None:
    """Mark an unfinished document ``failed`` when its ingestion job failed or was cancelled.

    A worker that was killed too often, or a job cancelled before it started, leaves the
    row ``pending`` or ``ingesting``; the job's state is the truth then. The row is changed
    only if it is still unfinished under that job when written (a conditional UPDATE), so a
    stale read can never overwrite a document the worker has just made ready.
    """
    if doc.state not in UNFINISHED or doc.job_id is None:
        return
    job = session.get(Job, doc.job_id)
    if job is None or job.state not in ("failed", "cancelled"):
        return
    reason = (job.error or "ingestion was cancelled")[:ERROR_LENGTH]
    changed = session.execute(
        update(KbDocument)
        .where(KbDocument.id == doc.id, KbDocument.job_id == doc.job_id, KbDocument.state.in_(UNFINISHED))
        .values(state="failed", error=reason, updated_at=utcnow()),
        execution_options={"synchronize_session": False},
    ).rowcount
    session.refresh(doc)
    if changed:
        recount(session, doc.knowledge_base_id)


@contextmanager
def writing(db: Database) -> Iterator[Session]:
    """A short write transaction whose reads cannot change before it writes: on SQLite it takes
    the write lock first (``BEGIN IMMEDIATE``); elsewhere the rows it changes are read ``FOR UPDATE``."""
    with db.session() as session:
        if db.engine.dialect.name == "sqlite":
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        yield session


def attach_job(db: Database, doc_id: str, job_id: str) -> str | None:
    """Record the ingestion job of a new document (unless its worker did already); returns the job id."""
    with db.session() as session:
        session.execute(
            update(KbDocument).where(KbDocument.id == doc_id, KbDocument.job_id.is_(None)).values(job_id=job_id),
            execution_options={"synchronize_session": False},
        )
    return job_id


def start_ingestion(db: Database, tenancy_id: str, doc_id: str, job_id: str) -> KbDocument | None:
    """Mark the document ``ingesting`` under ``job_id``; None when it (or its knowledge base) is gone."""
    with writing(db) as session:
        doc = session.get(KbDocument, doc_id, with_for_update=True)
        if doc is None or doc.tenancy_id != tenancy_id:
            return None
        kb = session.get(KnowledgeBase, doc.knowledge_base_id)
        if kb is None or kb.state != "active":
            return None
        doc.state, doc.error, doc.job_id, doc.updated_at = "ingesting", None, job_id, utcnow()
        session.flush()
        session.expunge(doc)
        return doc


def fail_ingestion(db: Database, tenancy_id: str, doc_id: str, error: str) -> None:
    """Mark the document ``failed`` with ``error`` (nothing if it is gone)."""
    with writing(db) as session:
        doc = session.get(KbDocument, doc_id, with_for_update=True)
        if doc is None or doc.tenancy_id != tenancy_id:
            return
        doc.state, doc.error, doc.chunk_count, doc.updated_at = "failed", error[:ERROR_LENGTH], 0, utcnow()
        recount(session, doc.knowledge_base_id)


@dataclass
class Finished:
    """What :func:`finish_ingestion` decided."""

    ready: bool
    """Whether the document is now ready (False: it was deleted or superseded meanwhile)."""
    removed: list[KbDocument] = field(default_factory=list)
    """Rows deleted by it (older versions, or the document itself): their chunks and objects must go."""


def finish_ingestion(db: Database, tenancy_id: str, doc_id: str, chunk_count: int) -> Finished:
    """Mark an ingested document ``ready`` and remove the versions it replaces, in one transaction.

    Older versions (same file name, lower version) are deleted; if a newer version is ready
    already, this one is superseded and deleted instead. The caller then removes the chunks
    and sealed objects of ``removed`` (a crash before that leaves orphans for :func:`repair`).
    """
    with writing(db) as session:
        doc = session.get(KbDocument, doc_id, with_for_update=True)
        kb = session.get(KnowledgeBase, doc.knowledge_base_id) if doc is not None else None
        if doc is None or doc.tenancy_id != tenancy_id or kb is None or kb.state != "active":
            return Finished(ready=False)
        others = list(session.scalars(select(KbDocument).where(
            KbDocument.knowledge_base_id == doc.knowledge_base_id, KbDocument.filename == doc.filename,
            KbDocument.id != doc.id,
        )))  # fmt: skip
        if any(o.version > doc.version and o.state == "ready" for o in others):
            removed = [doc]
        else:
            removed = [o for o in others if o.version < doc.version]
            doc.state, doc.error, doc.chunk_count = "ready", None, chunk_count
            doc.ingested_at = doc.updated_at = utcnow()
        for row in removed:
            session.delete(row)
        recount(session, kb.id)
        session.flush()
        for row in removed:
            session.expunge(row)
        return Finished(ready=doc not in removed, removed=removed)


def discard_documents(vectors: VectorStore, objects: ObjectStore, docs: Sequence[KbDocument]) -> None:
    """Remove the chunks, vectors and sealed objects of documents whose rows are already deleted.

    Best effort per document: a failure is logged and left to :func:`repair` (chunks) or
    ignored (an object already gone).
    """
    for doc in docs:
        try:
            vectors.delete_documents(scope_of(doc), [doc.id])
        except Exception:  # noqa: BLE001 - repair removes them at the next start
            log.exception("could not remove the chunks of document %s", doc.id)
        with suppress(NotFound):
            objects.delete(doc.tenancy_id, doc.object_id)


# --- repair ------------------------------------------------------------------------------------


@dataclass
class Repaired:
    """What :func:`repair` did."""

    orphan_documents: int = 0
    """Documents (not ready, or without a row) whose chunks and vectors were removed."""
    chunks_removed: int = 0
    deletions_finished: int = 0
    """Knowledge bases whose interrupted deletion was completed."""
    documents_failed: int = 0
    """Unfinished documents marked failed: their job had ended, or their upload was cut off before it had one."""


def repair(db: Database, vectors: VectorStore, objects: ObjectStore, *, now: datetime | None = None) -> Repaired:
    """Bring the vector store back in line with the rows after a crash (see the module docstring).

    For every knowledge base: finish a deletion that was cut off; mark failed the unfinished
    documents whose job ended, or that never got one (an upload cut off, older than
    :data:`UPLOAD_GRACE`); remove the chunks and vectors of every document that is not
    ``ready`` (or has no row), except a document whose ingestion job is held right now by a
    live worker (its lease has not expired; that worker deletes its own partial chunks when
    it fails, and a later attempt starts by deleting them).

    Returns:
        Counts of what was fixed (all zero on a consistent store).
    """
    now = now or utcnow()
    done = Repaired()
    with db.session() as session:
        kbs = list(session.scalars(select(KnowledgeBase)))
        for doc in list(session.scalars(select(KbDocument).where(KbDocument.state.in_(UNFINISHED)))):
            before = doc.state
            if doc.job_id is None and doc.created_at < now - UPLOAD_GRACE:  # cut off before its job was queued
                doc.state, doc.error, doc.updated_at = "failed", INTERRUPTED, now
                recount(session, doc.knowledge_base_id)
            sync_with_job(session, doc)
            done.documents_failed += doc.state != before
        session.flush()
        for kb in kbs:
            session.expunge(kb)
    for kb in kbs:
        if kb.state == "deleting":
            finish_deletion(db, vectors, objects, kb)
            done.deletions_finished += 1
            continue
        scope = scope_of(kb)
        stored = vectors.document_ids(scope)
        if not stored:
            continue
        with db.session() as session:
            rows = session.execute(
                select(KbDocument.id, KbDocument.state, Job.lease_expires_at, Job.state)
                .outerjoin(Job, Job.id == KbDocument.job_id)
                .where(KbDocument.knowledge_base_id == kb.id, KbDocument.id.in_(stored))
            ).all()
        keep = {doc_id for doc_id, state, lease, job_state in rows
                if state == "ready" or (job_state == "running" and lease is not None and lease > now)}
        orphans = sorted(stored - keep)
        if orphans:
            removed = vectors.delete_documents(scope, orphans)
            done.orphan_documents += len(orphans)
            done.chunks_removed += removed
            log.info("repair: removed %d chunks of %d unfinished or deleted documents in %s",
                     removed, len(orphans), kb.id)
    return done


def finish_deletion(db: Database, vectors: VectorStore, objects: ObjectStore, kb: KnowledgeBase) -> None:
    """Delete a knowledge base marked ``deleting``: its vectors and chunks, its documents' sealed
    objects, then its rows. Safe to run again after a crash at any point."""
    vectors.drop(scope_of(kb))
    with db.session() as session:
        docs = list(session.scalars(select(KbDocument).where(KbDocument.knowledge_base_id == kb.id)))
        for doc in docs:
            session.expunge(doc)
    for doc in docs:
        with suppress(NotFound):
            objects.delete(doc.tenancy_id, doc.object_id)
    with db.session() as session:
        for doc in session.scalars(select(KbDocument).where(KbDocument.knowledge_base_id == kb.id)):
            session.delete(doc)
        session.flush()
        row = session.get(KnowledgeBase, kb.id)
        if row is not None:
            session.delete(row)
