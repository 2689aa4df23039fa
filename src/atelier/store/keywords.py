"""The keyword side of the embedded store: chunk rows and one SQLite FTS5 index per knowledge base.

Chunks are rows of ``kb_chunks`` (text, span, heading, tags) in the metadata database; each
knowledge base has its own FTS5 table over them (``unicode61 remove_diacritics 2``:
case- and accent-insensitive, so "élève" matches "eleve"), created with the knowledge
base, so BM25 statistics (document count, average length, term frequencies) are those of
that knowledge base alone. The FTS table uses ``kb_chunks`` as external content: it stores
only the index, and rows and index entries are written and removed in one transaction.

A search ranks the chunks that hold ANY word of the query (the words are OR-ed, none is
required), so it returns ``top_k`` hits whenever that many chunks share a word with the
query. Once a knowledge base is large (``PRUNE_ABOVE`` chunks), the query words held by
``COMMON_SHARE`` (10 %) of the chunks or more are kept out of the ranking: ranking "the"
or "de" makes FTS5 score and sort every chunk holding them (0.75 s at 100k chunks for a
word in half of them), while their BM25 idf, ``log((N - n + 0.5) / (n + 0.5))``, is at most
``log 9`` ≈ 2.2 against 5 to 11 for the words that tell chunks apart. The chunks holding the
other words are ranked first; when they are fewer than ``top_k``, the rest is filled with
chunks holding the common words, taken in index order without sorting all of them, each
scored at most as the last ranked hit (so scores never rise down the list). Measured with
``bench/rag.py``'s sets and its 100k-chunk store (EN/FR/ES sentences): keyword nDCG@10
unchanged on every split but one (Wikipedia EN→EN 0.847 → 0.846) against a share of one
half, and a search's p50 2.4 ms instead of 25 ms at 100k chunks (0.25: 6.9 ms).

Document frequencies come from an ``fts5vocab`` table beside the index; they and the chunk
count are cached for ``STATS_SECONDS`` (counting 100k rows costs 7 ms) and dropped at once
when this process writes the knowledge base. They only decide which words count as
common: a word whose share crosses ``COMMON_SHARE`` within those seconds moves between
ranking and filling, which changes no guarantee above.

Every statement filters by tenancy and knowledge base. This module knows nothing about
HTTP, models or vectors.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import unicodedata
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.orm import Session

from atelier.errors import InvalidInput, Unavailable
from atelier.rag.indexing import Filter, Hit, Scope, StoredChunk
from atelier.store.db import Database
from atelier.store.tables import KbChunk

MAX_QUERY_TERMS = 64
"""Distinct query words sent to FTS5; the rest of a very long query is ignored."""

BM25_WEIGHTS = (1.0, 0.5)
"""Column weights of ``bm25()``: chunk text, heading path."""

PRUNE_ABOVE = 1000
"""Chunks above which query words present in ``COMMON_SHARE`` of the chunks or more only fill ``top_k`` (see the module)."""

COMMON_SHARE = 0.1
"""Share of the chunks from which a query word only fills ``top_k`` (see the module for the measurements)."""

STATS_SECONDS = 5.0
"""How long the chunk count and document frequencies of a knowledge base are reused (see the module)."""

_BATCH = 500  # rows per IN (...) list: far under SQLite's bound-parameter limit
_WORD = re.compile(r"[^\W_]+")

_COLUMNS = (
    KbChunk.chunk_id,
    KbChunk.document_id,
    KbChunk.filename,
    KbChunk.position,
    KbChunk.text,
    KbChunk.start,
    KbChunk.end,
    KbChunk.heading,
    KbChunk.tags,
)


def fts_table(scope: Scope) -> str:
    """The FTS5 table name of a knowledge base: ``kb_fts_`` + 32 hex digits of SHA-256 of the scope."""
    digest = hashlib.sha256(f"{scope.tenancy_id}\x00{scope.knowledge_base_id}".encode()).hexdigest()
    return f"kb_fts_{digest[:32]}"


def _fold(text: str) -> str:
    """``text`` with the accents of Latin letters removed, as ``remove_diacritics 2`` does
    ("é" → "e", also when written "e" + U+0301); other scripts keep their marks, as in the
    index ("й", "ά")."""
    out: list[str] = []
    for ch in text:
        if unicodedata.combining(ch) and out and "a" <= out[-1] <= "z":
            continue  # a decomposed accent on a Latin letter
        parts = unicodedata.normalize("NFD", ch)
        latin = len(parts) > 1 and "a" <= parts[0] <= "z" and all(unicodedata.combining(p) for p in parts[1:])
        out.append(parts[0] if latin else ch)
    return "".join(out)


def query_words(query: str) -> list[str]:
    """The distinct words of ``query`` as the index's tokenizer (``unicode61 remove_diacritics 2``)
    cuts and folds them: runs of letters and digits (``_`` and punctuation separate), lower
    case, accents of Latin letters removed; at most ``MAX_QUERY_TERMS``."""
    words: list[str] = []
    for word in _WORD.findall(_fold(query.lower())):
        if word not in words:
            words.append(word)
        if len(words) == MAX_QUERY_TERMS:
            break
    return words


def fts_query(words: list[str]) -> str:
    """An FTS5 query matching any of ``words``: each quoted (so no FTS5 operator or column
    filter can be injected), joined by ``OR``; ``""`` when there is none."""
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def _batches(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _BATCH):
        yield items[i : i + _BATCH]


def _chunk(row) -> StoredChunk:
    return StoredChunk(row.chunk_id, row.document_id, row.filename, row.position, row.text, row.start, row.end,
                       row.heading, tuple(row.tags or ()))


class KeywordIndex:
    """Chunk rows and per-knowledge-base FTS5 tables in a SQLite metadata database.

    Args:
        db: The metadata database (migrated to 0006 or later).

    Raises:
        Unavailable: the database is not SQLite (FTS5 is SQLite's; use the pgvector store).
    """

    def __init__(self, db: Database):
        if db.engine.dialect.name != "sqlite":
            raise Unavailable(
                "vector_store 'chroma' keeps its keyword index in SQLite FTS5 and needs a SQLite metadata "
                "database; with PostgreSQL use vector_store 'pgvector'"
            )
        self.db = db
        self._df: dict[str, tuple[float, int, dict[str, int]]] = {}
        """Per FTS table: (monotonic time the entry expires, chunk count, word → chunks holding it)."""
        self._df_lock = threading.Lock()

    # -- schema ----------------------------------------------------------------------------

    def create(self, scope: Scope) -> None:
        """Create the knowledge base's FTS5 table; a no-op if it exists."""
        with self.db.session() as s:
            self._create(s, scope)

    @staticmethod
    def _create(s: Session, scope: Scope) -> str:
        table = fts_table(scope)
        s.execute(
            text(
                f'CREATE VIRTUAL TABLE IF NOT EXISTS "{table}" USING fts5(text, heading, '
                "content='kb_chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 2')"
            )
        )
        s.execute(text(f'CREATE VIRTUAL TABLE IF NOT EXISTS "{table}_vocab" USING fts5vocab("{table}", \'row\')'))
        return table

    def drop(self, scope: Scope) -> None:
        """Remove every chunk of the knowledge base and its FTS5 table."""
        self._forget(scope)
        with self.db.session() as s:
            s.execute(text(f'DROP TABLE IF EXISTS "{fts_table(scope)}_vocab"'))
            s.execute(text(f'DROP TABLE IF EXISTS "{fts_table(scope)}"'))
            s.execute(delete(KbChunk).where(*self._in_scope(scope)))

    def _forget(self, scope: Scope) -> None:
        """Drop the cached statistics of the knowledge base (this process writes it)."""
        with self._df_lock:
            self._df.pop(fts_table(scope), None)

    @staticmethod
    def _in_scope(scope: Scope):
        return KbChunk.tenancy_id == scope.tenancy_id, KbChunk.knowledge_base_id == scope.knowledge_base_id

    # -- writes ----------------------------------------------------------------------------

    def add(self, scope: Scope, chunks: Sequence[StoredChunk]) -> None:
        """Insert or replace ``chunks`` (by ``chunk_id``) and index them, in one transaction."""
        if not chunks:
            return
        ids = [c.chunk_id for c in chunks]
        if len(set(ids)) != len(ids):
            raise InvalidInput("chunk ids repeat within one add", param="chunks")
        self._forget(scope)
        with self.db.session() as s:
            table = self._create(s, scope)
            for batch in _batches(ids):
                self._unindex(s, table, scope, KbChunk.chunk_id.in_(batch))
                s.execute(delete(KbChunk).where(*self._in_scope(scope), KbChunk.chunk_id.in_(batch)))
            s.execute(
                insert(KbChunk),
                [
                    {
                        "tenancy_id": scope.tenancy_id,
                        "knowledge_base_id": scope.knowledge_base_id,
                        "document_id": c.document_id,
                        "chunk_id": c.chunk_id,
                        "position": c.position,
                        "start": c.start,
                        "end": c.end,
                        "heading": c.heading,
                        "filename": c.filename,
                        "tags": list(c.tags),
                        "text": c.text,
                    }
                    for c in chunks
                ],
            )
            for batch in _batches(ids):
                rows = s.execute(
                    select(KbChunk.id, KbChunk.text, KbChunk.heading).where(
                        *self._in_scope(scope), KbChunk.chunk_id.in_(batch)
                    )
                ).all()
                s.execute(
                    text(f'INSERT INTO "{table}" (rowid, text, heading) VALUES (:id, :text, :heading)'),
                    [{"id": r.id, "text": r.text, "heading": r.heading} for r in rows],
                )

    def _unindex(self, s: Session, table: str, scope: Scope, condition) -> None:
        """Remove the FTS entries of the scope's rows matching ``condition`` (before deleting the rows:
        an external-content FTS5 table needs the old values to remove their entries)."""
        rows = s.execute(
            select(KbChunk.id, KbChunk.text, KbChunk.heading).where(*self._in_scope(scope), condition)
        ).all()
        if rows:
            s.execute(
                text(
                    f'INSERT INTO "{table}" ("{table}", rowid, text, heading) '
                    "VALUES ('delete', :id, :text, :heading)"
                ),
                [{"id": r.id, "text": r.text, "heading": r.heading} for r in rows],
            )

    def delete_documents(self, scope: Scope, document_ids: Sequence[str]) -> int:
        """Remove the documents' chunks and index entries; returns the chunks removed."""
        removed = 0
        self._forget(scope)
        with self.db.session() as s:
            table = self._create(s, scope)
            for batch in _batches(list(document_ids)):
                self._unindex(s, table, scope, KbChunk.document_id.in_(batch))
                result = s.execute(delete(KbChunk).where(*self._in_scope(scope), KbChunk.document_id.in_(batch)))
                removed += result.rowcount or 0
        return removed

    # -- reads -----------------------------------------------------------------------------

    def search(self, scope: Scope, query: str, top_k: int, filter: Filter | None = None) -> list[Hit]:
        """Chunks ranked by BM25 on any word of ``query``, best first (score = -bm25, higher = better).

        Semantics (``common``: the words held by ``COMMON_SHARE`` of the chunks or more, on a
        knowledge base of more than ``PRUNE_ABOVE`` chunks; none otherwise)::

            hits = chunks holding a word not in common, by BM25 over those words, best first
            if len(hits) < top_k:
                fill = chunks holding a common word and not in hits (index order), by their BM25
                hits += fill, each score capped at the last hit's
            return hits[:top_k]

        Args:
            scope: The tenancy and knowledge base searched.
            query: Free text; its words are data (quoted), never FTS5 syntax.
            top_k: Hits wanted.
            filter: Document and tag constraints.

        Returns:
            ``min(top_k, chunks sharing a word with the query)`` hits (within ``filter``), ranks 1..n.
        """
        words = query_words(query)
        if not words or top_k < 1:
            return []
        table = fts_table(scope)
        params: dict[str, object] = {"t": scope.tenancy_id, "kb": scope.knowledge_base_id, "k": top_k}
        filters = self._filter_sql(filter, params)
        with self.db.session() as s:
            if not self._exists(s, table):
                return []
            informative, common = self._split(s, scope, table, words)
            rows: list = []
            if informative:
                sql = self._statement(table, filters, ranked=True)
                rows = s.execute(sql, {**params, "q": fts_query(informative)}).all()
            fill: list = []
            if len(rows) < top_k and common:
                # the first top_k matches in index order hold top_k - len(rows) new ones at least
                sql = self._statement(table, filters, ranked=False)
                seen = {r.row_id for r in rows}
                more = [r for r in s.execute(sql, {**params, "q": fts_query(common)}).all() if r.row_id not in seen]
                fill = sorted(more, key=lambda r: (-r.score, r.row_id))[: top_k - len(rows)]
        ceiling = float(rows[-1].score) if rows else float("inf")
        return [Hit(chunk=_chunk(r), score=float(r.score), rank=i + 1) for i, r in enumerate(rows)] + [
            Hit(chunk=_chunk(r), score=min(float(r.score), ceiling), rank=len(rows) + i + 1) for i, r in enumerate(fill)
        ]

    @staticmethod
    def _statement(table: str, filters: list[str], *, ranked: bool):
        """The SELECT of the chunks matching ``:q`` (at most ``:k``): by score when ``ranked``, else
        the first in index order (FTS5 then stops after ``:k`` matches instead of scoring all)."""
        weights = ", ".join(str(w) for w in BM25_WEIGHTS)
        columns = (
            'c.id AS row_id, c.chunk_id, c.document_id, c.filename, c.position, c.text, c.start, c."end", '
            "c.heading, c.tags"
        )
        if not filters:
            order = "ORDER BY score DESC, rowid " if ranked else ""  # rank in the FTS table alone, then read only the k rows kept
            sql = (
                f"SELECT {columns}, r.score FROM (SELECT rowid, -bm25(\"{table}\", {weights}) AS score "
                f'FROM "{table}" WHERE "{table}" MATCH :q {order}LIMIT :k) AS r '
                f"JOIN kb_chunks AS c ON c.id = r.rowid WHERE c.tenancy_id = :t AND c.knowledge_base_id = :kb "
                f"ORDER BY r.score DESC, c.id"
            )
        else:
            where = [f'"{table}" MATCH :q', "c.tenancy_id = :t", "c.knowledge_base_id = :kb", *filters]
            order = "ORDER BY score DESC, c.id " if ranked else ""
            sql = (
                f'SELECT {columns}, -bm25("{table}", {weights}) AS score '
                f'FROM "{table}" JOIN kb_chunks AS c ON c.id = "{table}".rowid '
                f"WHERE {' AND '.join(where)} {order}LIMIT :k"
            )
        return text(sql).columns(tags=KbChunk.tags.type)

    def _split(self, s: Session, scope: Scope, table: str, words: list[str]) -> tuple[list[str], list[str]]:
        """``words`` as (informative, common): common are those held by ``COMMON_SHARE`` of the chunks
        or more, once the knowledge base has more than ``PRUNE_ABOVE`` chunks.
        Words the vocabulary does not list under that spelling count as informative."""
        now = time.monotonic()
        with self._df_lock:
            cached = self._df.get(table)
        if cached is None or cached[0] <= now:
            n = int(s.execute(select(func.count()).select_from(KbChunk).where(*self._in_scope(scope))).scalar_one())
            cached = (now + STATS_SECONDS, n, {})
        expires, n, df = cached
        if n <= PRUNE_ABOVE:
            with self._df_lock:
                self._df[table] = cached
            return words, []
        missing = [w for w in words if w not in df]
        if missing:
            names = ", ".join(f":w{i}" for i in range(len(missing)))
            found = dict(
                s.execute(
                    text(f'SELECT term, doc FROM "{table}_vocab" WHERE term IN ({names})'),
                    {f"w{i}": w for i, w in enumerate(missing)},
                ).all()
            )
            df = {**df, **{w: int(found.get(w, 0)) for w in missing}}
        with self._df_lock:
            self._df[table] = (expires, n, df)
        return [w for w in words if df[w] < COMMON_SHARE * n], [w for w in words if df[w] >= COMMON_SHARE * n]

    @staticmethod
    def _filter_sql(filter: Filter | None, params: dict[str, object]) -> list[str]:
        clauses: list[str] = []
        if filter is None:
            return clauses
        def bound(values: tuple[str, ...], prefix: str) -> str:
            """``:d0, :d1…`` for ``values``, which go into ``params`` (never into the SQL text)."""
            params.update({f"{prefix}{i}": value for i, value in enumerate(values)})
            return ", ".join(f":{prefix}{i}" for i in range(len(values)))

        if filter.document_ids:
            clauses.append(f"c.document_id IN ({bound(filter.document_ids, 'd')})")
        if filter.tags:
            clauses.append(f"EXISTS (SELECT 1 FROM json_each(c.tags) WHERE json_each.value IN ({bound(filter.tags, 'g')}))")
        return clauses

    @staticmethod
    def _exists(s: Session, table: str) -> bool:
        return (
            s.execute(text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :n"), {"n": table}).first()
            is not None
        )

    def rows(self, scope: Scope, chunk_ids: Sequence[str]) -> dict[str, StoredChunk]:
        """The scope's chunks among ``chunk_ids``, by id (ids of other scopes or missing rows are absent)."""
        out: dict[str, StoredChunk] = {}
        with self.db.session() as s:
            for batch in _batches(list(chunk_ids)):
                for row in s.execute(select(*_COLUMNS).where(*self._in_scope(scope), KbChunk.chunk_id.in_(batch))):
                    out[row.chunk_id] = _chunk(row)
        return out

    def document_ids(self, scope: Scope) -> set[str]:
        """Documents with at least one chunk row."""
        with self.db.session() as s:
            return set(s.execute(select(KbChunk.document_id).where(*self._in_scope(scope)).distinct()).scalars())

    def count(self, scope: Scope) -> int:
        """Chunk rows of the knowledge base."""
        with self.db.session() as s:
            return int(s.execute(select(func.count()).select_from(KbChunk).where(*self._in_scope(scope))).scalar_one())
