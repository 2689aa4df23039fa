"""Knowledge-base vectors: the embedded Chroma store (with SQLite FTS5 keywords) and the factory.

``ChromaStore`` implements ``rag.indexing.VectorStore``: vectors in a Chroma
``PersistentClient`` under ``<data_dir>/chroma`` (one cosine HNSW collection per knowledge
base, named by a hash of tenancy and knowledge base, tagged with both and checked on every
call), chunk rows and BM25 in the metadata database (``store/keywords.py``). Vectors are
always passed explicitly: Chroma's own embedding function (which would download a model)
is never configured.

Consistency: ``add`` writes the vectors first, then the chunk rows and their FTS entries in
one transaction; ``delete_documents`` removes the rows, then the vectors; ``document_ids``
is the union of both sides, so a crash between two steps leaves a document id that the
service's startup repair finds and deletes.

Several processes (the API server, job workers) share the directory. Chroma's persistent
client is not process-safe: each process keeps an in-memory HNSW index that goes stale
when another one writes, and a stale index persisted later would overwrite newer records.
So every Chroma call runs under an exclusive ``flock`` on ``<data_dir>/chroma/.lock``, each
write bumps a generation counter beside it, and a process that finds the counter moved
since its last call closes its Chroma client and opens a new one, which loads the
directory from disk, before doing anything.

Only Chroma's public API is used for that: ``Client.close()`` stops the in-memory state
Chroma shares between the clients of one path in a process once the last of them closes.
So a process holds exactly one Chroma client per directory, whatever the number of
``ChromaVectors`` open on it (``_Directory``, shared and counted), and nothing else in the
service may open a Chroma client on ``<data_dir>/chroma``.

This module knows nothing about HTTP, models or policies.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from atelier.errors import InvalidInput, NotFound, Unavailable
from atelier.rag.indexing import Filter, Hit, Scope, StoredChunk, VectorStore, vectors_for
from atelier.store.db import Database
from atelier.store.keywords import KeywordIndex

if TYPE_CHECKING:
    from atelier.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_SEARCH_BREADTH = 100
"""HNSW ``ef_search`` of a new collection: candidates examined per query (recall vs. time)."""

EF_CONSTRUCTION = 200
"""HNSW ``ef_construction``: candidates examined per insert (graph quality)."""


def open_vector_store(settings: Settings, db: Database) -> VectorStore:
    """The store named by ``settings.vector_store``.

    Args:
        settings: ``vector_store`` (``chroma`` or ``pgvector``), ``data_dir`` and
            ``vector_database_url``.
        db: The metadata database (the Chroma store keeps its chunk rows and FTS5 there).

    Raises:
        Unavailable: the store cannot be opened (e.g. ``chroma`` over a PostgreSQL metadata
            database, or ``pgvector`` without ``vector_database_url``).
    """
    if settings.vector_store == "chroma":
        return ChromaStore(settings.data_path / "chroma", db)
    if settings.vector_store == "pgvector":
        from atelier.store.pgvector import PgVectorStore  # psycopg is only needed on this path

        url = settings.vector_database_url
        if url is None and db.url.get_backend_name() == "postgresql":
            url = db.url.render_as_string(hide_password=False)  # the metadata database itself
        if url is None:
            raise Unavailable("vector_store 'pgvector' needs vector_database_url (postgresql+psycopg://...)")
        return PgVectorStore(url)
    raise Unavailable(f"vector_store {settings.vector_store!r} is not available")


def collection_name(scope: Scope) -> str:
    """The Chroma collection of a knowledge base: ``kb-`` + 40 hex digits of SHA-256 of the scope."""
    digest = hashlib.sha256(f"{scope.tenancy_id}\x00{scope.knowledge_base_id}".encode()).hexdigest()
    return f"kb-{digest[:40]}"


def tag_key(tag: str) -> str:
    """The Chroma metadata key that marks a vector with ``tag`` (a hash: tags may hold any character)."""
    return "tag_" + hashlib.sha256(tag.encode()).hexdigest()[:24]


def _where(filter: Filter | None) -> dict[str, Any] | None:
    """Chroma's ``where`` for a ``Filter``: documents any-of, tags any-of, both required."""
    if filter is None:
        return None
    clauses: list[dict[str, Any]] = []
    if filter.document_ids:
        clauses.append({"document_id": {"$in": list(filter.document_ids)}})
    if filter.tags:
        tags = [{tag_key(t): True} for t in filter.tags]
        clauses.append(tags[0] if len(tags) == 1 else {"$or": tags})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


class _Directory:
    """A Chroma directory as this process holds it: one client, one lock, one generation.

    Shared by every ``ChromaVectors`` of the process on the same path (``_DIRECTORIES``) and
    closed with the last of them; see the module for why there is exactly one.
    """

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.RLock()  # the process's threads; the flock below orders the processes
        self.lock_file = open(path / ".lock", "a+")  # noqa: SIM115 - held for the directory's life
        self.generation_file = path / ".generation"
        self.client: Any = None
        self.generation = -1
        """The generation this process's client has seen (-1: none opened yet)."""
        self.collections: dict[str, Any] = {}
        self.users = 0

    def read_generation(self) -> int:
        try:
            return int(self.generation_file.read_text() or 0)
        except FileNotFoundError:
            return 0

    def write_generation(self, generation: int) -> None:
        tmp = self.generation_file.with_suffix(".tmp")
        tmp.write_text(str(generation))
        os.replace(tmp, self.generation_file)

    def reopen(self) -> None:
        """Close the client (Chroma then drops its in-memory state of the path) and open a new one from disk."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        self.close_client()
        self.client = chromadb.PersistentClient(
            path=str(self.path), settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        )

    def close_client(self) -> None:
        self.collections.clear()
        client, self.client = self.client, None
        self.generation = -1
        if client is not None:
            client.close()


_DIRECTORIES: dict[Path, _Directory] = {}
"""The Chroma directories open in this process, by resolved path."""
_DIRECTORIES_LOCK = threading.Lock()


class ChromaVectors:
    """One Chroma persistent directory, safe to share between processes (see the module).

    Args:
        path: The directory (created with mode 0700).
    """

    def __init__(self, path: Path):
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _DIRECTORIES_LOCK:
            directory = _DIRECTORIES.get(self.path)
            if directory is None:
                directory = _DIRECTORIES[self.path] = _Directory(self.path)
            directory.users += 1
        self._directory: _Directory | None = directory

    def close(self) -> None:
        """Let go of the directory; the last ``ChromaVectors`` of the process on it closes the client and lock file.

        Idempotent. Other ``ChromaVectors`` on the same path keep working.
        """
        with _DIRECTORIES_LOCK:
            directory, self._directory = self._directory, None
            if directory is None:
                return
            directory.users -= 1
            if directory.users > 0:
                return
            del _DIRECTORIES[self.path]
            with directory.lock:
                directory.close_client()
                directory.lock_file.close()

    # -- process safety --------------------------------------------------------------------

    @contextmanager
    def _session(self, *, write: bool) -> Iterator[Any]:
        """The Chroma client, current with the disk, under the directory's exclusive lock.

        A write bumps the generation even when it fails part-way: what it did write must be
        reloaded by the other processes.
        """
        directory = self._directory
        if directory is None:
            raise Unavailable("the vector store is closed")
        with directory.lock:
            fcntl.flock(directory.lock_file.fileno(), fcntl.LOCK_EX)
            try:
                generation = directory.read_generation()
                if directory.client is None or generation != directory.generation:
                    directory.reopen()
                    directory.generation = generation
                try:
                    yield directory.client
                finally:
                    if write:
                        directory.generation = generation + 1
                        directory.write_generation(directory.generation)
            finally:
                fcntl.flock(directory.lock_file.fileno(), fcntl.LOCK_UN)

    def _collection(self, client: Any, scope: Scope, *, missing_ok: bool = False) -> Any:
        """The scope's collection, its tenancy tag checked; None if absent and ``missing_ok``.

        Raises:
            NotFound: absent (and not ``missing_ok``), or tagged with another scope.
        """
        name = collection_name(scope)
        col = self._collections.get(name)
        if col is None:
            try:
                col = client.get_collection(name, embedding_function=None)
            except Exception as exc:  # noqa: BLE001 - chromadb raises NotFoundError/ValueError by version
                if missing_ok:
                    return None
                raise NotFound("knowledge base index not found") from exc
            self._collections[name] = col
        meta = col.metadata or {}
        if meta.get("tenancy_id") != scope.tenancy_id or meta.get("knowledge_base_id") != scope.knowledge_base_id:
            raise NotFound("knowledge base index not found")
        return col

    @property
    def _collections(self) -> dict[str, Any]:
        """Collection handles by name, cached for the directory's current client (empty once closed)."""
        return {} if self._directory is None else self._directory.collections

    # -- operations ------------------------------------------------------------------------

    def create(self, scope: Scope, dimensions: int, search_breadth: int) -> None:
        if dimensions < 1 or search_breadth < 1:
            raise InvalidInput("dimensions and search_breadth must be positive", param="search_breadth")
        with self._session(write=True) as client:
            col = self._collection(client, scope, missing_ok=True)
            if col is None:
                client.create_collection(
                    collection_name(scope),
                    embedding_function=None,
                    metadata={
                        "tenancy_id": scope.tenancy_id,
                        "knowledge_base_id": scope.knowledge_base_id,
                        "dimensions": dimensions,
                    },
                    configuration={
                        "hnsw": {"space": "cosine", "ef_search": search_breadth, "ef_construction": EF_CONSTRUCTION}
                    },
                )
                return
            if (col.metadata or {}).get("dimensions") != dimensions:
                raise InvalidInput(
                    f"the knowledge base holds {col.metadata.get('dimensions')}-dimension vectors, not {dimensions}",
                    param="dimensions",
                )
            if (col.configuration or {}).get("hnsw", {}).get("ef_search") != search_breadth:
                col.modify(configuration={"hnsw": {"ef_search": search_breadth}})
                self._collections.pop(col.name, None)

    def upsert(self, scope: Scope, chunks: Sequence[StoredChunk], vectors: np.ndarray) -> None:
        with self._session(write=True) as client:
            col = self._collection(client, scope, missing_ok=True)
            if col is None:
                raise NotFound("knowledge base index not found: create it first")
            dims = (col.metadata or {}).get("dimensions")
            if dims is not None and vectors.shape[1] != dims:
                raise InvalidInput(f"vectors have {vectors.shape[1]} dimensions, the index {dims}", param="vectors")
            step = max(1, int(client.get_max_batch_size()))
            for i in range(0, len(chunks), step):
                part = chunks[i : i + step]
                col.upsert(
                    ids=[c.chunk_id for c in part],
                    embeddings=vectors[i : i + step],
                    metadatas=[{"document_id": c.document_id, **{tag_key(t): True for t in c.tags}} for c in part],
                )

    def delete_documents(self, scope: Scope, document_ids: Sequence[str]) -> int:
        if not document_ids:
            return 0
        with self._session(write=True) as client:
            col = self._collection(client, scope, missing_ok=True)
            if col is None:
                return 0
            ids = col.get(where={"document_id": {"$in": list(document_ids)}}, include=[])["ids"]
            if ids:
                col.delete(ids=ids)
            return len(ids)

    def drop(self, scope: Scope) -> None:
        with self._session(write=True) as client:
            if self._collection(client, scope, missing_ok=True) is not None:
                client.delete_collection(collection_name(scope))
            self._collections.pop(collection_name(scope), None)

    def query(self, scope: Scope, vector: np.ndarray, top_k: int, filter: Filter | None) -> list[tuple[str, float]]:
        """``(chunk_id, cosine similarity)`` of the ``top_k`` nearest vectors, nearest first."""
        with self._session(write=False) as client:
            col = self._collection(client, scope, missing_ok=True)
            if col is None:
                return []
            result = col.query(
                query_embeddings=vector.reshape(1, -1), n_results=top_k, where=_where(filter), include=["distances"]
            )
        ids = result["ids"][0]
        distances = result["distances"][0]
        return [(cid, 1.0 - float(d)) for cid, d in zip(ids, distances, strict=True)]

    def document_ids(self, scope: Scope) -> set[str]:
        with self._session(write=False) as client:
            col = self._collection(client, scope, missing_ok=True)
            if col is None:
                return set()
            out: set[str] = set()
            page = 5000
            offset = 0
            while True:
                got = col.get(include=["metadatas"], limit=page, offset=offset)
                out.update(str(m.get("document_id")) for m in got["metadatas"] if m and m.get("document_id"))
                if len(got["ids"]) < page:
                    return out
                offset += page

    def count(self, scope: Scope) -> int:
        with self._session(write=False) as client:
            col = self._collection(client, scope, missing_ok=True)
            return 0 if col is None else int(col.count())


class ChromaStore:
    """The embedded ``VectorStore``: Chroma vectors + SQLite FTS5 keywords (see the module).

    Args:
        path: Chroma's directory (``<data_dir>/chroma``).
        db: The SQLite metadata database, migrated.
    """

    def __init__(self, path: Path, db: Database):
        self.keywords = KeywordIndex(db)
        self.vectors = ChromaVectors(path)

    def create(self, scope: Scope, *, dimensions: int, search_breadth: int = DEFAULT_SEARCH_BREADTH) -> None:
        """Create (or update the search breadth of) the knowledge base's collection and FTS table.

        Raises:
            InvalidInput: it exists with other dimensions.
        """
        self.vectors.create(scope, dimensions, search_breadth)
        self.keywords.create(scope)

    def add(self, scope: Scope, chunks: Sequence[StoredChunk], vectors: np.ndarray) -> None:
        """Vectors first, then chunk rows and FTS entries in one transaction (see the module).

        Raises:
            InvalidInput: ``vectors`` is not float ``(len(chunks), dimensions)``.
            NotFound: the knowledge base was not created.
        """
        vectors = vectors_for(chunks, vectors)
        if not chunks:
            return
        self.vectors.upsert(scope, chunks, vectors)
        self.keywords.add(scope, chunks)

    def delete_documents(self, scope: Scope, document_ids: Sequence[str]) -> int:
        """Rows and FTS entries first, then vectors; returns the chunks removed (the larger side)."""
        removed_rows = self.keywords.delete_documents(scope, document_ids)
        removed_vectors = self.vectors.delete_documents(scope, document_ids)
        return max(removed_rows, removed_vectors)

    def drop(self, scope: Scope) -> None:
        """Remove the knowledge base's rows, FTS table and collection."""
        self.keywords.drop(scope)
        self.vectors.drop(scope)

    def dense(self, scope: Scope, vector: np.ndarray, top_k: int, filter: Filter | None = None) -> list[Hit]:
        """Nearest chunks by cosine similarity (HNSW), best first; vectors without a chunk row are skipped."""
        if top_k < 1:
            return []
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        found = self.vectors.query(scope, query, top_k, filter)
        rows = self.keywords.rows(scope, [cid for cid, _ in found])
        hits: list[Hit] = []
        for cid, similarity in found:
            chunk = rows.get(cid)
            if chunk is not None:
                hits.append(Hit(chunk=chunk, score=similarity, rank=len(hits) + 1, similarity=similarity))
        return hits

    def keyword(self, scope: Scope, query: str, top_k: int, filter: Filter | None = None) -> list[Hit]:
        """Chunks by BM25 (FTS5), best first."""
        return self.keywords.search(scope, query, top_k, filter)

    def document_ids(self, scope: Scope) -> set[str]:
        """Documents with chunk rows or vectors."""
        return self.keywords.document_ids(scope) | self.vectors.document_ids(scope)

    def count(self, scope: Scope) -> int:
        """Chunk rows of the knowledge base (what search can return)."""
        return self.keywords.count(scope)

    def close(self) -> None:
        """Release Chroma and the lock file."""
        self.vectors.close()
