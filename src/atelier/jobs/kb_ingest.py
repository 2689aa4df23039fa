"""The ``kb-ingest`` job: one sealed document in, its chunks and vectors in the knowledge base out.

Runs in a worker process. For one document it:

1. marks the row ``ingesting`` (a document or knowledge base deleted meanwhile ends the
   job at once) and removes any chunks a previous, interrupted attempt left;
2. opens the sealed bytes, extracts the text and headings (``rag.loaders``) and cuts
   them into chunks of at most ``chunk_size`` tokens of the embedding model
   (``rag.chunking``);
3. embeds the chunks in batches (``search_document``) with the engine's embedder and adds
   them to the vector store, with a progress event (chunks done / total) per batch; the
   writes of a batch overlap the embedding of the next (``rag.pipeline``: same batches,
   same order, one write in flight);
4. marks the row ``ready`` and removes the versions it replaces (same file name) in one
   transaction, then their chunks and sealed bytes.

A failure removes the document's chunks and marks it ``failed`` with a one-line reason
(the job fails with the same reason). Chunk ids are deterministic, so a retry rewrites
the same chunks. When a worker builds this handler it first runs
``store.knowledge_bases.repair``, so chunks left by a crash never outlive a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from atelier.catalog import Catalog, ModelSpec
from atelier.cloud.knowledge_bases import INGEST_KIND as KIND
from atelier.jobs.context import JobContext, JobStopped, one_line
from atelier.rag.chunking import chunk
from atelier.rag.indexing import StoredChunk, VectorStore, chunk_id
from atelier.rag.loaders import extract
from atelier.rag.pipeline import embed_and_write
from atelier.store import knowledge_bases as repo
from atelier.store.db import Database
from atelier.store.objects import ObjectStore
from atelier.store.tables import KnowledgeBase

__all__ = ["KIND", "KbIngestHandler", "build_kb_ingest"]

log = logging.getLogger(__name__)

BATCH = 64
"""Chunks embedded and added per step (one progress event each)."""

EmbedderLoader = Callable[[ModelSpec], Any]
"""``load(spec)`` → an embedder with ``embed(texts, truncate=, input_type=)`` and ``count_tokens(text)``."""


class KbIngestHandler:
    """The handler of ``kb-ingest`` jobs (see the module docstring).

    Args:
        db: The metadata database.
        objects: The sealed object store (the documents' bytes).
        vectors: The vector store.
        catalog: The models (a knowledge base's embedding model).
        load_embedder: Loads an embedding model; each is loaded once per handler.
    """

    def __init__(self, db: Database, objects: ObjectStore, vectors: VectorStore, catalog: Catalog,
                 load_embedder: EmbedderLoader):
        self._db = db
        self._objects = objects
        self._vectors = vectors
        self._catalog = catalog
        self._load_embedder = load_embedder
        self._embedders: dict[str, Any] = {}
        self._lock = threading.Lock()

    def embedder(self, model: str) -> Any:
        """The embedder of ``model``, loaded on first use."""
        with self._lock:
            if model not in self._embedders:
                self._embedders[model] = self._load_embedder(self._catalog.get(model, kind="embedding"))
            return self._embedders[model]

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        """Ingest one document (see the module docstring).

        Returns:
            ``{"document_id", "knowledge_base_id", "chunks", "characters", "replaced": [ids]}``,
            or ``{"document_id", "skipped": reason}`` for a document deleted meanwhile.

        Raises:
            InvalidInput: The document cannot be read (unsupported, corrupt, no text).
            JobStopped: Cancelled, shutting down or lease lost.
        """
        job = ctx.job
        doc_id = job.payload["document_id"]
        doc = repo.start_ingestion(self._db, job.tenancy_id, doc_id, job.id)
        if doc is None:
            return {"document_id": doc_id, "skipped": "the document or its knowledge base was deleted"}
        with self._db.session() as session:
            kb = session.get(KnowledgeBase, doc.knowledge_base_id)
            session.expunge(kb)
        scope = repo.scope_of(doc)
        try:
            self._vectors.delete_documents(scope, [doc.id])  # what an interrupted attempt left
            text_chars, total = self._ingest(ctx, kb, doc, scope)
        except JobStopped:
            if ctx.stop_reason == "cancel_requested":
                self._vectors.delete_documents(scope, [doc.id])
                repo.fail_ingestion(self._db, job.tenancy_id, doc.id, "ingestion was cancelled")
            raise  # shutdown: the next attempt starts over; lease lost: the new worker owns the chunks
        except Exception as exc:
            log.exception("ingestion of document %s failed", doc.id)
            self._vectors.delete_documents(scope, [doc.id])
            repo.fail_ingestion(self._db, job.tenancy_id, doc.id, one_line(exc))
            raise
        finished = repo.finish_ingestion(self._db, job.tenancy_id, doc.id, total)
        if not finished.ready:
            self._vectors.delete_documents(scope, [doc.id])
        repo.discard_documents(self._vectors, self._objects, finished.removed)
        if not finished.ready:
            return {"document_id": doc.id, "skipped": "the document was deleted or superseded during ingestion"}
        ctx.emit(f"ready: {total} chunks", {"type": "ready", "chunks_done": total, "chunks_total": total})
        return {"document_id": doc.id, "knowledge_base_id": kb.id, "chunks": total, "characters": text_chars,
                "replaced": [r.id for r in finished.removed]}

    def _ingest(self, ctx: JobContext, kb: KnowledgeBase, doc, scope) -> tuple[int, int]:
        """Extract, chunk, embed and add; returns (characters of text, chunks)."""
        data = self._objects.get(doc.tenancy_id, doc.object_id)
        extracted = extract(doc.filename, data)
        del data
        embedder = self.embedder(kb.embedding_model)
        pieces = chunk(extracted, embedder.count_tokens, size=kb.chunk_size, overlap=kb.chunk_overlap)
        total = len(pieces)
        self._vectors.create(scope, dimensions=kb.dimensions, search_breadth=kb.search_breadth)
        ctx.emit(f"{len(extracted.text)} characters of text in {total} chunks",
                 {"type": "progress", "chunks_done": 0, "chunks_total": total})
        tags = tuple(doc.tags or ())
        batches = [pieces[begin:begin + BATCH] for begin in range(0, total, BATCH)]
        done = 0

        def embed(batch) -> np.ndarray:
            result = embedder.embed([c.text for c in batch], truncate="END", input_type="search_document")
            vectors = np.asarray(result.vectors, dtype=np.float32)  # (n, d)
            if vectors.shape != (len(batch), kb.dimensions):
                raise ValueError(f"the embedder returned vectors of shape {vectors.shape}, "
                                 f"expected ({len(batch)}, {kb.dimensions})")
            return vectors

        def write(batch, vectors: np.ndarray) -> None:
            stored = [
                StoredChunk(chunk_id=chunk_id(doc.id, c.position), document_id=doc.id, filename=doc.filename,
                            position=c.position, text=c.text, start=c.start, end=c.end, heading=c.heading, tags=tags)
                for c in batch
            ]  # fmt: skip
            self._vectors.add(scope, stored, vectors)

        def written(batch) -> None:
            nonlocal done
            done += len(batch)
            ctx.emit(f"{done}/{total} chunks embedded", {"type": "progress", "chunks_done": done, "chunks_total": total})

        embed_and_write(batches, embed, write, written=written, check=ctx.raise_if_stopped)
        return len(extracted.text), total


def build_kb_ingest(settings, db: Database, objects: ObjectStore) -> KbIngestHandler:
    """The handler as a worker of this service runs it; repairs the vector store first (see the module docstring)."""
    from atelier.engine.embedding import Embedder
    from atelier.store.vectors import open_vector_store

    vectors = open_vector_store(settings, db)
    repaired = repo.repair(db, vectors, objects)
    if repaired != repo.Repaired():
        log.info("knowledge bases repaired at worker start: %s", repaired)
    catalog = Catalog.load(settings.catalog_file)
    return KbIngestHandler(db, objects, vectors, catalog, lambda spec: Embedder.load(spec, settings.device))
