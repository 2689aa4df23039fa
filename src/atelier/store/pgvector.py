"""Knowledge-base chunks in PostgreSQL: pgvector (HNSW, cosine) and full-text search, one table.

The scale-out implementation of ``atelier.rag.indexing.VectorStore`` (structurally: nothing
here subclasses it). A chunk's text, metadata, embedding and ``tsvector`` live in one row of
``kb_vector_chunks``, so the dense side and the keyword side cannot disagree: every ``add``,
``delete_documents`` and ``drop`` is one transaction.

Layout:
    ``kb_vector_collections``: one row per knowledge base (dimensions, search breadth, the
    name of its HNSW index). ``kb_vector_chunks``: one row per chunk; ``embedding`` is an
    untyped ``vector`` so that knowledge bases of different dimensions share the table, and
    each knowledge base gets its own *partial* HNSW index on ``(embedding::vector(d))``
    restricted to its rows: a search walks only that knowledge base's graph, so it never
    comes back short because another tenancy's chunks were nearer. ``tsv`` is a generated
    column in the ``atelier_text`` text-search configuration (``simple`` plus ``unaccent``:
    no stemming, English and French stop words dropped), indexed with GIN.

Keyword ranking is PostgreSQL's ``ts_rank_cd`` (cover density, normalised by document
length) over the OR of the query's terms. It is **not BM25**: there is no inverse document
frequency, so a common word weighs as much as a rare one (stop words, at least, are gone), and
its cost grows with the number of chunks that match any query word: every match is ranked.
Hybrid retrieval fuses ranks (RRF), so what matters is the order.

Tenancy: every statement binds ``tenancy_id`` and ``knowledge_base_id``; the only SQL built
from strings is the per-knowledge-base index DDL (ids checked against ``_SAFE_ID`` first) and
integer settings. This module knows nothing about HTTP, principals or models.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from atelier.errors import InvalidInput, NotFound, Unavailable
from atelier.rag.indexing import Filter, Hit, Scope, StoredChunk, vectors_for

CHUNKS = "kb_vector_chunks"
COLLECTIONS = "kb_vector_collections"
TEXT_CONFIG = "atelier_text"
"""Text-search configuration of the keyword side: ``simple`` (+ ``unaccent`` when available),
English and French stop words removed."""
STOP_LISTS = ("english", "french")
"""PostgreSQL's stop-word files dropped from chunks and queries (the service's two languages)."""

RANK_WEIGHTS = "{0.1, 0.2, 0.5, 1.0}"
"""``ts_rank_cd`` weights of labels D, C, B, A: chunk text is A (1.0), its heading path B (0.5)."""

MAX_DIMENSIONS = 2000
"""pgvector's HNSW limit for ``vector``."""
MAX_EF_SEARCH = 1000
"""pgvector's upper bound for ``hnsw.ef_search``."""
MIN_PGVECTOR = (0, 5, 0)
"""First pgvector release with HNSW."""
ITERATIVE_SCAN = (0, 8, 0)
"""First pgvector release with iterative index scans (filtered HNSW searches that fill ``top_k``)."""

_SCHEMA_LOCK = 0x61746C72_6B627673  # pg_advisory_xact_lock key: concurrent starts create the schema once
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_COLUMNS = "chunk_id, document_id, filename, position, start_offset, end_offset, heading, tags, text"


def _schema_statements(unaccent: bool) -> list[str]:
    """The idempotent DDL of the store (run under the schema advisory lock).

    ``atelier_text``: each word goes through English then French stop lists (``simple``
    dictionaries with ``ACCEPT = false``: a stop word is dropped, any other word passes on),
    then, for non-ASCII words, ``unaccent``, then ``simple`` (lower case, no stemming).
    """
    stops = ", ".join(f"{TEXT_CONFIG}_stop_{lang}" for lang in STOP_LISTS)
    dictionaries = "".join(
        f"CREATE TEXT SEARCH DICTIONARY {TEXT_CONFIG}_stop_{lang}"
        f" (TEMPLATE = simple, STOPWORDS = {lang}, ACCEPT = false);\n"
        for lang in STOP_LISTS
    )
    accented = f"{stops}, unaccent, simple" if unaccent else f"{stops}, simple"
    return [
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = '{TEXT_CONFIG}') THEN
                {dictionaries}
                CREATE TEXT SEARCH CONFIGURATION {TEXT_CONFIG} (COPY = simple);
                ALTER TEXT SEARCH CONFIGURATION {TEXT_CONFIG}
                    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart WITH {stops}, simple;
                ALTER TEXT SEARCH CONFIGURATION {TEXT_CONFIG}
                    ALTER MAPPING FOR word, hword, hword_part WITH {accented};
            END IF;
        END $$
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {COLLECTIONS} (
            tenancy_id text NOT NULL,
            knowledge_base_id text NOT NULL,
            dimensions integer NOT NULL CHECK (dimensions BETWEEN 1 AND {MAX_DIMENSIONS}),
            search_breadth integer NOT NULL CHECK (search_breadth >= 1),
            index_name text NOT NULL,
            PRIMARY KEY (tenancy_id, knowledge_base_id)
        )
        """,
        f"""
        CREATE TABLE IF NOT EXISTS {CHUNKS} (
            tenancy_id text NOT NULL,
            knowledge_base_id text NOT NULL,
            chunk_id text NOT NULL,
            document_id text NOT NULL,
            filename text NOT NULL,
            position integer NOT NULL,
            start_offset integer NOT NULL,
            end_offset integer NOT NULL,
            heading text NOT NULL DEFAULT '',
            tags text[] NOT NULL DEFAULT '{{}}',
            text text NOT NULL,
            embedding vector NOT NULL,
            tsv tsvector GENERATED ALWAYS AS (
                setweight(to_tsvector('{TEXT_CONFIG}'::regconfig, text), 'A')
                || setweight(to_tsvector('{TEXT_CONFIG}'::regconfig, heading), 'B')
            ) STORED,
            PRIMARY KEY (tenancy_id, knowledge_base_id, chunk_id),
            FOREIGN KEY (tenancy_id, knowledge_base_id)
                REFERENCES {COLLECTIONS} (tenancy_id, knowledge_base_id) ON DELETE CASCADE
        )
        """,
        f"CREATE INDEX IF NOT EXISTS {CHUNKS}_document ON {CHUNKS} (tenancy_id, knowledge_base_id, document_id)",
        f"CREATE INDEX IF NOT EXISTS {CHUNKS}_tsv ON {CHUNKS} USING gin (tsv)",
    ]


def _version(value: str) -> tuple[int, ...]:
    """``"0.8.0"`` → ``(0, 8, 0)`` (non-numeric parts dropped)."""
    return tuple(int(part) for part in re.findall(r"\d+", value)[:3])


def _literal(value: str) -> str:
    """A SQL string literal of an id already checked against ``_SAFE_ID``."""
    if not _SAFE_ID.match(value):
        raise ValueError(f"unsafe identifier for DDL: {value!r}")
    return "'" + value.replace("'", "''") + "'"


def index_name(scope: Scope) -> str:
    """The name of a knowledge base's partial HNSW index (PostgreSQL names are ≤ 63 bytes)."""
    digest = hashlib.sha256(f"{scope.tenancy_id}\0{scope.knowledge_base_id}".encode()).hexdigest()[:24]
    return f"kb_vector_hnsw_{digest}"


def psycopg_url(url: str | URL) -> URL:
    """``url`` with the psycopg 3 driver (``postgresql://`` would pick psycopg2)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername="postgresql+psycopg")


class PgVectorStore:
    """The ``VectorStore`` protocol over one PostgreSQL database with pgvector.

    Opening creates the schema idempotently (``CREATE EXTENSION IF NOT EXISTS vector``, the
    tables, the text-search configuration); the role needs the right to create the
    extension once, or a DBA creates it beforehand.

    Args:
        url: SQLAlchemy URL of the database, e.g. ``postgresql+psycopg://atelier@db/atelier``.

    Raises:
        Unavailable: The server has no pgvector, or one older than 0.5 (no HNSW).
    """

    def __init__(self, url: str | URL):
        self.url = psycopg_url(url)
        try:
            import pgvector.psycopg  # noqa: F401 - needed by _register_vector
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise Unavailable(
                "vector_store 'pgvector' needs psycopg and pgvector: pip install 'atelier[postgres]'"
            ) from exc
        # prepare_threshold=None: no server-side prepared statements, so every query is
        # planned with its parameter values and the knowledge base's partial index matches.
        self.engine: Engine = create_engine(
            self.url, pool_pre_ping=True, connect_args={"prepare_threshold": None}
        )
        try:
            self.pgvector_version = self._create_schema()
        except OperationalError as exc:
            self.engine.dispose()
            raise Unavailable(f"cannot reach the pgvector database {self!r}: {exc.orig}") from exc
        self.engine.dispose()  # connections opened before the vector type existed
        event.listen(self.engine, "connect", _register_vector)

    def _create_schema(self) -> tuple[int, ...]:
        """Create the extension, configuration, tables and shared indexes; return pgvector's version."""
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            available = conn.execute(
                text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
            ).scalar()
            if available is None and not self._installed(conn, "vector"):
                raise Unavailable(
                    "the PostgreSQL server has no pgvector extension: install it "
                    "(scripts/install_postgres.sh on Debian) or use vector_store='chroma'"
                )
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
            unaccent = self._installed(conn, "unaccent") or conn.execute(
                text("SELECT 1 FROM pg_available_extensions WHERE name = 'unaccent'")
            ).scalar() is not None
            if unaccent:
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS unaccent"))
            for statement in _schema_statements(unaccent):
                conn.execute(text(statement))
            version = _version(
                conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar_one()
            )
        if version < MIN_PGVECTOR:
            raise Unavailable(f"pgvector {'.'.join(map(str, version))} has no HNSW: 0.5.0 or newer is needed")
        return version

    @staticmethod
    def _installed(conn: Connection, name: str) -> bool:
        return conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = :n"), {"n": name}).scalar() is not None

    # -- knowledge bases ------------------------------------------------------------------

    def create(self, scope: Scope, *, dimensions: int, search_breadth: int = 100) -> None:
        """Register the knowledge base and build its (empty) partial HNSW index; idempotent.

        Args:
            scope: Tenancy and knowledge base.
            dimensions: Embedding size, 1–2000.
            search_breadth: HNSW ``ef_search`` of its queries (updated when called again).

        Raises:
            InvalidInput: Bad sizes, or the knowledge base exists with other dimensions.
        """
        if not 1 <= dimensions <= MAX_DIMENSIONS:
            raise InvalidInput(
                f"dimensions must be between 1 and {MAX_DIMENSIONS}, got {dimensions}", param="dimensions"
            )
        if search_breadth < 1:
            raise InvalidInput(f"search_breadth must be positive, got {search_breadth}", param="search_breadth")
        name = index_name(scope)
        predicate = (
            f"tenancy_id = {_literal(scope.tenancy_id)} AND knowledge_base_id = {_literal(scope.knowledge_base_id)}"
        )
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"), {"name": name})
            existing = conn.execute(
                text(
                    f"INSERT INTO {COLLECTIONS} (tenancy_id, knowledge_base_id, dimensions, search_breadth, index_name)"
                    " VALUES (:t, :k, :d, :b, :i)"
                    " ON CONFLICT (tenancy_id, knowledge_base_id)"
                    " DO UPDATE SET search_breadth = EXCLUDED.search_breadth"
                    f" RETURNING dimensions"
                ),
                {"t": scope.tenancy_id, "k": scope.knowledge_base_id, "d": dimensions, "b": search_breadth, "i": name},
            ).scalar_one()
            if existing != dimensions:
                raise InvalidInput(
                    f"the knowledge base holds {existing}-dimension vectors, not {dimensions}", param="dimensions"
                )
            conn.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS {name} ON {CHUNKS}"
                    f" USING hnsw ((embedding::vector({int(dimensions)})) vector_cosine_ops) WHERE {predicate}"
                )
            )

    def drop(self, scope: Scope) -> None:
        """Remove the knowledge base: its chunks, vectors and index (one transaction)."""
        with self.engine.begin() as conn:
            conn.execute(
                text(f"DELETE FROM {COLLECTIONS} WHERE tenancy_id = :t AND knowledge_base_id = :k"),
                _scope_params(scope),
            )  # chunks go by ON DELETE CASCADE
            conn.execute(text(f"DROP INDEX IF EXISTS {index_name(scope)}"))

    def _collection(self, conn: Connection, scope: Scope) -> tuple[int, int] | None:
        """``(dimensions, search_breadth)`` of the knowledge base, or ``None`` if it does not exist."""
        row = conn.execute(
            text(
                f"SELECT dimensions, search_breadth FROM {COLLECTIONS}"
                " WHERE tenancy_id = :t AND knowledge_base_id = :k"
            ),
            _scope_params(scope),
        ).first()
        return None if row is None else (int(row[0]), int(row[1]))

    # -- writes ---------------------------------------------------------------------------

    def add(self, scope: Scope, chunks: Sequence[StoredChunk], vectors: np.ndarray) -> None:
        """Store chunks with their vectors in one transaction; re-adding a ``chunk_id`` replaces it.

        Args:
            scope: Tenancy and knowledge base (created beforehand).
            chunks: The chunks, in the order of ``vectors``' rows.
            vectors: float32 ``(n, d)``, L2-normalised.

        Raises:
            InvalidInput: Shapes disagree with the chunks or the knowledge base's dimensions.
            NotFound: The knowledge base was never created.
        """
        vectors = vectors_for(chunks, vectors)
        if not chunks:
            return
        ids = [c.chunk_id for c in chunks]
        if len(set(ids)) != len(ids):
            raise InvalidInput("chunk ids repeat within one add", param="chunks")
        rows = [
            {
                "t": scope.tenancy_id,
                "k": scope.knowledge_base_id,
                "chunk_id": c.chunk_id,
                "document_id": c.document_id,
                "filename": c.filename,
                "position": c.position,
                "start": c.start,
                "end": c.end,
                "heading": c.heading,
                "tags": list(c.tags),
                "text": c.text,
                "embedding": vector,
            }
            for c, vector in zip(chunks, vectors)
        ]
        with self.engine.begin() as conn:
            dimensions = self._require(conn, scope)[0]
            if vectors.shape[1] != dimensions:
                raise InvalidInput(
                    f"vectors have {vectors.shape[1]} dimensions, the index {dimensions}", param="vectors"
                )
            conn.execute(
                text(
                    f"INSERT INTO {CHUNKS} (tenancy_id, knowledge_base_id, {_COLUMNS}, embedding)"
                    " VALUES (:t, :k, :chunk_id, :document_id, :filename, :position, :start, :end, :heading,"
                    " CAST(:tags AS text[]), :text, :embedding)"
                    " ON CONFLICT (tenancy_id, knowledge_base_id, chunk_id) DO UPDATE SET"
                    " document_id = EXCLUDED.document_id, filename = EXCLUDED.filename,"
                    " position = EXCLUDED.position, start_offset = EXCLUDED.start_offset,"
                    " end_offset = EXCLUDED.end_offset, heading = EXCLUDED.heading, tags = EXCLUDED.tags,"
                    " text = EXCLUDED.text, embedding = EXCLUDED.embedding"
                ),
                rows,
            )

    def _require(self, conn: Connection, scope: Scope) -> tuple[int, int]:
        collection = self._collection(conn, scope)
        if collection is None:
            raise NotFound("knowledge base index not found: create it first")
        return collection

    def delete_documents(self, scope: Scope, document_ids: Sequence[str]) -> int:
        """Remove the documents' chunks (text, vector and keywords are one row); returns how many."""
        if not document_ids:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(
                text(
                    f"DELETE FROM {CHUNKS} WHERE tenancy_id = :t AND knowledge_base_id = :k"
                    " AND document_id = ANY(CAST(:docs AS text[]))"
                ),
                {**_scope_params(scope), "docs": list(document_ids)},
            )
            return int(result.rowcount)

    # -- reads ----------------------------------------------------------------------------

    def dense(self, scope: Scope, vector: np.ndarray, top_k: int, filter: Filter | None = None) -> list[Hit]:
        """Nearest chunks by cosine similarity through the knowledge base's HNSW index, best first.

        ``hnsw.ef_search`` is the knowledge base's search breadth (at least ``top_k``). With a
        filter, pgvector ≥ 0.8 scans the graph iteratively until ``top_k`` rows pass it; older
        versions search exactly (no index) so that a selective filter never returns short.

        Returns:
            Up to ``top_k`` hits, ``score`` = ``similarity`` = cosine similarity.

        Raises:
            InvalidInput: The vector's size is not the knowledge base's.
        """
        if top_k <= 0:
            return []
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        where, params = _where(scope, filter)
        with self.engine.begin() as conn:
            collection = self._collection(conn, scope)
            if collection is None:
                return []
            dimensions, breadth = collection
            if query.shape[0] != dimensions:
                raise InvalidInput(
                    f"the query vector has {query.shape[0]} dimensions, the index {dimensions}", param="vector"
                )
            conn.execute(text(f"SET LOCAL hnsw.ef_search = {min(max(breadth, top_k), MAX_EF_SEARCH)}"))
            if filter is not None and (filter.document_ids or filter.tags):
                if self.pgvector_version >= ITERATIVE_SCAN:
                    conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
                else:
                    conn.execute(text("SET LOCAL enable_indexscan = off"))
            distance = f"(embedding::vector({dimensions}) <=> CAST(:q AS vector({dimensions})))"
            rows = conn.execute(
                text(
                    f"SELECT {_COLUMNS}, 1 - {distance} AS similarity FROM {CHUNKS}"
                    f" WHERE {where} ORDER BY {distance} LIMIT :top_k"
                ),
                {**params, "q": query, "top_k": top_k},
            ).all()
        return [
            Hit(chunk=_chunk(row), score=float(row.similarity), rank=i, similarity=float(row.similarity))
            for i, row in enumerate(rows, start=1)
        ]

    def keyword(self, scope: Scope, query: str, top_k: int, filter: Filter | None = None) -> list[Hit]:
        """Chunks matching any of the query's terms, ranked by ``ts_rank_cd`` (not BM25), best first.

        The query goes through the same ``atelier_text`` configuration as the chunks; its
        lexemes are OR-ed (a question rarely has all its words in one passage).

        Returns:
            Up to ``top_k`` hits; ``score`` is the cover-density rank (higher = better).
        """
        if top_k <= 0 or not query.strip():
            return []
        where, params = _where(scope, filter)
        terms = (
            "(SELECT string_agg('''' || replace(replace(lexeme, '\\', '\\\\'), '''', '''''') || '''', ' | ')"
            f" FROM unnest(to_tsvector('{TEXT_CONFIG}'::regconfig, CAST(:query AS text))))::tsquery"
        )
        with self.engine.begin() as conn:
            rows = conn.execute(
                text(
                    f"WITH q AS (SELECT {terms} AS tsq)"
                    f" SELECT {_COLUMNS}, ts_rank_cd('{RANK_WEIGHTS}', tsv, q.tsq, 1) AS score FROM {CHUNKS}, q"
                    f" WHERE {where} AND tsv @@ q.tsq ORDER BY score DESC, chunk_id LIMIT :top_k"
                ),
                {**params, "query": query, "top_k": top_k},
            ).all()
        return [Hit(chunk=_chunk(row), score=float(row.score), rank=i) for i, row in enumerate(rows, start=1)]

    def document_ids(self, scope: Scope) -> set[str]:
        """Documents that have chunks in the knowledge base."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                text(f"SELECT DISTINCT document_id FROM {CHUNKS} WHERE tenancy_id = :t AND knowledge_base_id = :k"),
                _scope_params(scope),
            ).scalars()
            return set(rows)

    def count(self, scope: Scope) -> int:
        """Chunks stored in the knowledge base."""
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    text(f"SELECT count(*) FROM {CHUNKS} WHERE tenancy_id = :t AND knowledge_base_id = :k"),
                    _scope_params(scope),
                ).scalar_one()
            )

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"PgVectorStore({self.url.render_as_string(hide_password=True)!r})"


def _register_vector(dbapi_connection: Any, _record: Any) -> None:
    """Let psycopg send and receive numpy arrays as ``vector`` (binary, no text formatting)."""
    from pgvector.psycopg import register_vector

    register_vector(dbapi_connection)


def _scope_params(scope: Scope) -> dict[str, str]:
    return {"t": scope.tenancy_id, "k": scope.knowledge_base_id}


def _where(scope: Scope, filter: Filter | None) -> tuple[str, dict[str, Any]]:
    """The WHERE clause of a search: the scope, always, and the filter's any-of constraints."""
    clauses = ["tenancy_id = :t", "knowledge_base_id = :k"]
    params: dict[str, Any] = _scope_params(scope)
    if filter is not None and filter.document_ids:
        clauses.append("document_id = ANY(CAST(:documents AS text[]))")
        params["documents"] = list(filter.document_ids)
    if filter is not None and filter.tags:
        clauses.append("tags && CAST(:tags AS text[])")
        params["tags"] = list(filter.tags)
    return " AND ".join(clauses), params


def _chunk(row: Any) -> StoredChunk:
    return StoredChunk(row.chunk_id, row.document_id, row.filename, int(row.position), row.text,
                       int(row.start_offset), int(row.end_offset), row.heading, tuple(row.tags))
