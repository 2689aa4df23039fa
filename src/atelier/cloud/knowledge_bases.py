"""Knowledge bases: create, list, get, delete; their documents: upload, list, get, delete; search.

A knowledge base names an embedding model of the catalog and its chunking settings; its
vectors and keyword index live in the vector store under ``Scope(tenancy, knowledge base)``.
Uploading a document seals its bytes in the object store (kind ``document``) and queues a
``kb-ingest`` job (``atelier.jobs.kb_ingest``) that extracts, chunks, embeds and indexes it:

- the same bytes again (SHA-256) are a no-op that returns the existing document (a failed
  one is replaced by a fresh attempt);
- new bytes under a file name already present are a new version, which replaces the
  previous version's chunks once it is ingested (until then the previous one is searched).

Deletions remove rows first, then chunks, vectors and sealed objects; see
``atelier.store.knowledge_bases`` for why a crash at any point leaves nothing searchable
behind. Every method takes the caller's ``Principal`` first: another tenancy's knowledge
base or document is ``NotFound`` exactly like a missing one, and every store call carries
the caller's tenancy in its scope. Knows nothing about HTTP or policies (the routes check
those), nor about how the engine embeds (callables are handed in).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from atelier.catalog import Catalog
from atelier.errors import Conflict, InvalidInput, NotFound
from atelier.store.jobs import JobQueue
from atelier.principal import Principal
from atelier.rag.indexing import Filter, Hit, Scope, VectorStore
from atelier.rag.loaders import CONTENT_TYPES
from atelier.rag.retrieval import retrieve
from atelier.store import knowledge_bases as repo
from atelier.store.db import Database
from atelier.store.files import clean_filename
from atelier.store.identity import SIMPLE_NAME_PATTERN
from atelier.store.objects import ObjectStore
from atelier.store.tables import NAME_LENGTH, JobEvent, KbDocument, KnowledgeBase, new_id, utcnow

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "multilingual-e5-small"
"""Embeds French questions and English documents in one space."""
OBJECT_KIND = "document"
INGEST_KIND = "kb-ingest"
"""The job kind that ingests a document (the worker's handler: ``jobs/kb_ingest.py``)."""
MAX_QUERY_CHARS = 8000
MAX_TOP_K = 50

EmbedTexts = Callable[[list[str]], Sequence[Sequence[float]]]
"""Texts → their L2-normalised vectors, ``(n, d)``."""


class KnowledgeBaseCreate(BaseModel):
    """The body of ``POST /v1/knowledge-bases`` (and the options of ``atelier kb create``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_LENGTH, pattern=SIMPLE_NAME_PATTERN,
                      description="Unique in your tenancy: letters, digits, '_', '.', '-'.")
    description: str = Field("", max_length=400, description="Free text.")
    embedding_model: str = Field(DEFAULT_EMBEDDING_MODEL, min_length=1, max_length=NAME_LENGTH,
                                 description="An embedding model of the catalog (GET /v1/models).")
    chunk_size: int = Field(256, ge=16, le=8192, description="Most tokens (of the embedding model) per chunk.")
    chunk_overlap: int = Field(32, ge=0, le=4096, description="Tokens a chunk repeats from the previous one.")
    search_breadth: int = Field(100, ge=1, le=10_000,
                                description="Candidates the vector index explores per query (HNSW ef).")
    compartment: str | None = Field(None, min_length=1, max_length=1000,
                                    description="Compartment id (`cmp_…`) or path (`eng:ml`); default the root.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> KnowledgeBaseCreate:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        return self


class SearchFilter(BaseModel):
    """Metadata constraints on a search: any of the documents, any of the tags."""

    model_config = ConfigDict(extra="forbid")

    document_ids: list[str] = Field(default_factory=list, max_length=100,
                                    description="Only passages of these documents (`doc_…`).")
    tags: list[str] = Field(default_factory=list, max_length=32, description="Only passages of documents with one of these tags.")


class QueryRequest(BaseModel):
    """The body of ``POST /v1/knowledge-bases/{id}/query``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What to search for.")
    mode: Literal["dense", "keyword", "hybrid"] = Field(
        "hybrid", description="`dense` (embeddings), `keyword` (BM25) or `hybrid` (reciprocal rank fusion).")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="Passages returned.")
    filter: SearchFilter | None = Field(None, description="Document and tag constraints.")
    rerank: bool = Field(False, description="Rerank a wider pool by relevance and novelty (MMR).")


@dataclass(frozen=True)
class Upload:
    """What an upload did: the document, and whether it is new (False: the same bytes were there)."""

    document: KbDocument
    created: bool


class KnowledgeBaseService:
    """The knowledge bases of every tenancy, each method scoped to the caller's.

    Args:
        db: The metadata database (tables ``knowledge_bases``, ``kb_documents``, ``jobs``).
        objects: The sealed object store holding the documents' bytes.
        vectors: The vector store (vectors and keyword index).
        catalog: The models (the embedding model of a knowledge base must be one).
    """

    def __init__(self, db: Database, objects: ObjectStore, vectors: VectorStore, catalog: Catalog):
        self._db = db
        self._objects = objects
        self._vectors = vectors
        self._catalog = catalog
        self._queue = JobQueue(db)

    # --- knowledge bases -------------------------------------------------------------------

    def create(self, principal: Principal, body: KnowledgeBaseCreate, *, compartment_id: str | None = None
               ) -> KnowledgeBase:
        """Create a knowledge base and its (empty) collection in the vector store.

        Raises:
            InvalidInput: Not an embedding model of the catalog, or a chunk size over its input limit.
            Conflict: The tenancy has a knowledge base of that name.
        """
        try:
            spec = self._catalog.get(body.embedding_model, kind="embedding")
        except NotFound:
            raise InvalidInput(f"{body.embedding_model!r} is not an embedding model of the catalog",
                               param="embedding_model") from None
        if not spec.dimensions:
            raise InvalidInput(f"{spec.name!r} does not declare its dimensions", param="embedding_model")
        limit = spec.max_input_tokens or spec.context_length
        if body.chunk_size > limit:
            raise InvalidInput(f"chunk_size {body.chunk_size} is over {spec.name}'s input limit of {limit} tokens",
                               param="chunk_size")
        row = KnowledgeBase(
            id=new_id("kb"), tenancy_id=principal.tenancy_id, compartment_id=compartment_id, name=body.name,
            description=body.description, embedding_model=spec.name, dimensions=spec.dimensions,
            chunk_size=body.chunk_size, chunk_overlap=body.chunk_overlap, search_breadth=body.search_breadth,
            state="active", document_count=0, chunk_count=0, created_at=utcnow(), updated_at=utcnow(),
        )  # fmt: skip
        try:
            with self._db.session() as session:
                if repo.find_knowledge_base(session, principal, body.name) is not None:
                    raise Conflict(f"a knowledge base named {body.name!r} already exists", param="name")
                session.add(row)
        except IntegrityError:  # a racing create of the same name
            raise Conflict(f"a knowledge base named {body.name!r} already exists", param="name") from None
        self._vectors.create(repo.scope_of(row), dimensions=row.dimensions, search_breadth=row.search_breadth)
        return row

    def list(self, principal: Principal) -> list[KnowledgeBase]:
        """The tenancy's knowledge bases, oldest first."""
        with self._db.session() as session:
            return repo.list_knowledge_bases(session, principal)

    def get(self, principal: Principal, kb_id: str) -> KnowledgeBase:
        """The knowledge base ``kb_id``.

        Raises:
            NotFound: No such knowledge base in the caller's tenancy.
        """
        with self._db.session() as session:
            return repo.get_knowledge_base(session, principal, kb_id)

    def delete(self, principal: Principal, kb_id: str) -> KnowledgeBase:
        """Delete the knowledge base: its vectors and chunks, its documents (sealed bytes and rows).

        The row is marked ``deleting`` first (it disappears for readers at once); a crash
        before the end is finished by ``repair`` at the next start. Ingestion jobs under
        way are cancelled.

        Raises:
            NotFound: No such knowledge base in the caller's tenancy.
        """
        with repo.writing(self._db) as session:
            row = repo.get_knowledge_base(session, principal, kb_id)
            row.state, row.updated_at = "deleting", utcnow()
            jobs = [d.job_id for d in repo.list_documents(session, principal, kb_id)
                    if d.state in repo.UNFINISHED and d.job_id]
        self._cancel(principal, jobs)
        repo.finish_deletion(self._db, self._vectors, self._objects, row)
        return row

    # --- documents -------------------------------------------------------------------------------

    def add_document(self, principal: Principal, kb_id: str, *, filename: str | None, data: bytes,
                     tags: list[str] | None = None) -> Upload:
        """Store a document sealed and queue its ingestion (see the module docstring).

        Args:
            principal: The caller.
            kb_id: The knowledge base.
            filename: The name it was uploaded with (its suffix picks the parser).
            data: The file's bytes.
            tags: Labels that searches can filter on.

        Returns:
            The new document (``pending``), or the existing one with the same bytes.

        Raises:
            NotFound: No such knowledge base in the caller's tenancy.
            InvalidInput: No name, an unsupported file type, an empty file, or bad tags.
        """
        name = clean_filename(filename)
        suffix = PurePath(name).suffix.lower()
        if suffix not in CONTENT_TYPES:
            kinds = ", ".join(sorted(CONTENT_TYPES))
            raise InvalidInput(f"{name}: unsupported file type {suffix or '(none)'!r}; supported: {kinds}",
                               param="file")
        if not data:
            raise InvalidInput(f"{name}: the file is empty", param="file")
        tags = repo.clean_tags(tags)
        sha256 = hashlib.sha256(data).hexdigest()
        with self._db.session() as session:
            kb = repo.get_knowledge_base(session, principal, kb_id)
            same = repo.find_by_content(session, kb, sha256)
            if same is not None:
                repo.sync_with_job(session, same)
        if same is not None and same.state != "failed":
            return Upload(same, created=False)
        if same is not None:  # a failed attempt at these bytes: replaced by a fresh one
            self._remove_documents(principal, kb_id, [same.id])
        with self._db.session() as session:
            previous = repo.latest_version(session, kb, name)
        ref = self._objects.put(principal, OBJECT_KIND, data)
        row = KbDocument(
            id=new_id("doc"), tenancy_id=principal.tenancy_id, knowledge_base_id=kb.id, filename=name,
            content_type=CONTENT_TYPES[suffix], bytes=len(data), sha256=sha256, tags=tags, object_id=ref.id,
            version=previous.version + 1 if previous is not None else 1,
            replaces_id=previous.id if previous is not None else None, state="pending", chunk_count=0,
            job_id=None, created_at=utcnow(), updated_at=utcnow(),
        )  # fmt: skip
        try:  # the row first: a worker that takes the job at once must find it
            with repo.writing(self._db) as session:
                repo.get_knowledge_base(session, principal, kb_id)  # not deleted meanwhile
                session.add(row)
                session.flush()
                repo.recount(session, kb.id)
        except BaseException as exc:
            with suppress(Exception):
                self._objects.delete(principal, ref.id)
            if isinstance(exc, IntegrityError):  # the same bytes, uploaded at the same moment
                with self._db.session() as session:
                    same = repo.find_by_content(session, kb, sha256)
                if same is not None:
                    return Upload(same, created=False)
            raise
        try:
            job = self._queue.submit(principal, INGEST_KIND, {"document_id": row.id, "knowledge_base_id": kb.id},
                                     idempotency_key=f"{INGEST_KIND}:{row.id}", compartment_id=kb.compartment_id)
        except BaseException:
            with suppress(Exception):
                self._remove_documents(principal, kb_id, [row.id])
            raise
        row.job_id = repo.attach_job(self._db, row.id, job.id)
        return Upload(row, created=True)

    def list_documents(self, principal: Principal, kb_id: str) -> list[KbDocument]:
        """The knowledge base's documents, oldest first.

        Raises:
            NotFound: No such knowledge base in the caller's tenancy.
        """
        with self._db.session() as session:
            repo.get_knowledge_base(session, principal, kb_id)
            return repo.list_documents(session, principal, kb_id)

    def get_document(self, principal: Principal, kb_id: str, doc_id: str) -> KbDocument:
        """One document.

        Raises:
            NotFound: No such knowledge base, or no such document in it.
        """
        with self._db.session() as session:
            repo.get_knowledge_base(session, principal, kb_id)
            return repo.get_document(session, principal, kb_id, doc_id)

    def delete_document(self, principal: Principal, kb_id: str, doc_id: str) -> KbDocument:
        """Delete a document: its row, then its chunks, vectors and sealed bytes (its ingestion is cancelled).

        Raises:
            NotFound: No such knowledge base, or no such document in it.
        """
        with self._db.session() as session:
            repo.get_knowledge_base(session, principal, kb_id)
            repo.get_document(session, principal, kb_id, doc_id)
        return self._remove_documents(principal, kb_id, [doc_id])[0]

    def progress(self, principal: Principal, doc: KbDocument) -> tuple[int, int] | None:
        """``(chunks done, chunks total)`` of the document's ingestion, from its job's last progress event."""
        if doc.job_id is None or doc.tenancy_id != principal.tenancy_id:
            return None
        with self._db.session() as session:
            events = session.scalars(select(JobEvent.data).where(JobEvent.job_id == doc.job_id)
                                     .order_by(JobEvent.id.desc()).limit(20))
            for data in events:
                if isinstance(data, dict) and data.get("type") == "progress":
                    return int(data.get("chunks_done", 0)), int(data.get("chunks_total", 0))
        return None

    # --- search ------------------------------------------------------------------------------------

    def search(self, principal: Principal, kb_id: str, request: QueryRequest, embed_query: EmbedTexts,
               embed_passages: EmbedTexts | None = None) -> list[Hit]:
        """The passages of the knowledge base that best match ``request.query``.

        Args:
            principal: The caller; the search never leaves its tenancy.
            kb_id: The knowledge base.
            request: Query, mode, ``top_k``, filter, rerank.
            embed_query: Texts → query vectors (the knowledge base's embedding model, ``search_query``).
            embed_passages: Texts → passage vectors (``search_document``); needed by ``rerank``.

        Raises:
            NotFound: No such knowledge base in the caller's tenancy.
        """
        kb = self.get(principal, kb_id)
        scope = Scope(tenancy_id=principal.tenancy_id, knowledge_base_id=kb.id)
        wanted = request.filter or SearchFilter()
        search_filter = Filter(document_ids=tuple(wanted.document_ids), tags=tuple(wanted.tags))
        if search_filter == Filter():
            search_filter = None
        as_matrix = None
        if embed_passages is not None:
            def as_matrix(texts: list[str]) -> np.ndarray:
                return np.asarray(embed_passages(texts), dtype=np.float32)  # (n, d)

        return retrieve(
            self._vectors, scope, request.query, lambda text: np.asarray(embed_query([text])[0], dtype=np.float32),
            mode=request.mode, top_k=request.top_k, filter=search_filter, rerank=request.rerank,
            embed_passages=as_matrix,
        )  # fmt: skip

    # --- pieces ------------------------------------------------------------------------------------

    def _remove_documents(self, principal: Principal, kb_id: str, doc_ids: list[str]) -> list[KbDocument]:
        """Delete rows (recounting), cancel their jobs, then remove chunks, vectors and objects."""
        with repo.writing(self._db) as session:
            rows = [repo.get_document(session, principal, kb_id, d) for d in doc_ids]
            for row in rows:
                session.delete(row)
            session.flush()
            repo.recount(session, kb_id)
            for row in rows:
                session.expunge(row)
        self._cancel(principal, [r.job_id for r in rows if r.state in repo.UNFINISHED and r.job_id])
        repo.discard_documents(self._vectors, self._objects, rows)
        return rows

    def _cancel(self, principal: Principal, job_ids: list[str]) -> None:
        for job_id in job_ids:
            with suppress(NotFound, Conflict):
                self._queue.request_cancel(principal, job_id)
