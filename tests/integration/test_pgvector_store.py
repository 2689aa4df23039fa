"""The ``VectorStore`` contract, run against both stores, and what only PostgreSQL must show.

Every behavioural test takes the ``store`` fixture, parametrised over the embedded store
(Chroma + SQLite FTS5) and the scale-out one (pgvector + full-text on a real PostgreSQL
server started for the session by ``postgres_server``). The pgvector-only tests check the
HNSW index (present, used by the planner, per knowledge base), that every SQL statement
binds tenancy and knowledge base, and that a failed ``add`` leaves nothing behind.

Embeddings come from a deterministic bag-of-words hash (no model), so "nearest" is
predictable: a query shares words with the chunks it should find.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import event, text

from atelier.errors import InvalidInput, NotFound
from atelier.rag.indexing import Filter, Scope, StoredChunk, VectorStore

pytestmark = [pytest.mark.integration]

DIMS = 64
TEN_A = Scope("ten_alpha", "kb_shared")
TEN_B = Scope("ten_beta", "kb_shared")  # the same knowledge-base id in another tenancy
OTHER_KB = Scope("ten_alpha", "kb_other")

DOCS = {
    "doc_volcano": ("volcano.md", ("geology", "en"), [
        "A volcano erupts when magma rises through the crust.",
        "Lava flows from the volcano cooled into basalt.",
        "Ash clouds from an eruption can ground aircraft.",
    ]),
    "doc_bread": ("bread.txt", ("cooking", "en"), [
        "Bread dough rises when yeast ferments the sugars.",
        "Bake the bread in a hot oven until the crust is brown.",
    ]),
    "doc_ecole": ("ecole.html", ("fr",), [
        "L'élève apprend la géologie à l'école.",
        "Le volcan est une montagne de lave et de cendres.",
    ]),
}


def embed(text_: str) -> np.ndarray:
    """A deterministic unit vector: hashed, accent-folded bag of words (float32, ``(DIMS,)``)."""
    vector = np.zeros(DIMS, dtype=np.float32)
    for word in re.findall(r"\w+", text_.lower()):
        word = word.translate(str.maketrans("éèêàç", "eeeac"))
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIMS] += 1.0
    norm = np.linalg.norm(vector)
    return vector / norm if norm else vector


def chunks_of(document_id: str, texts: list[str] | None = None) -> list[StoredChunk]:
    filename, tags, default = DOCS[document_id]
    out, offset = [], 0
    for position, chunk_text in enumerate(texts or default):
        out.append(
            StoredChunk(
                chunk_id=f"{document_id}:{position}", document_id=document_id, filename=filename,
                position=position, text=chunk_text, start=offset, end=offset + len(chunk_text),
                heading="Nature > Volcanoes" if "volcan" in document_id else "", tags=tags,
            )
        )
        offset += len(chunk_text) + 1
    return out


def add_docs(store: VectorStore, scope: Scope, *document_ids: str) -> None:
    for document_id in document_ids:
        chunks = chunks_of(document_id)
        store.add(scope, chunks, np.stack([embed(c.text) for c in chunks]))


@pytest.fixture(params=["chroma", "pgvector"])
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def store(store_kind: str, request, tmp_path) -> Iterator[VectorStore]:
    """A fresh, empty store of each kind, its knowledge bases ``TEN_A``, ``TEN_B`` and ``OTHER_KB`` created."""
    if store_kind == "pgvector":
        from atelier.store.pgvector import PgVectorStore

        server = request.getfixturevalue("postgres_server")
        made: VectorStore = PgVectorStore(server.create_database(f"kb_{uuid.uuid4().hex[:12]}"))
    else:
        from atelier.store.db import Database
        from atelier.store.tables import Tenancy
        from atelier.store.vectors import ChromaStore

        db = Database(f"sqlite:///{tmp_path / 'atelier.db'}")
        db.migrate()
        with db.session() as session:
            session.add_all([Tenancy(id=TEN_A.tenancy_id, name="alpha"), Tenancy(id=TEN_B.tenancy_id, name="beta")])
        made = ChromaStore(tmp_path / "chroma", db)
    for scope in (TEN_A, TEN_B, OTHER_KB):
        made.create(scope, dimensions=DIMS, search_breadth=50)
    try:
        yield made
    finally:
        made.close()


# -- the contract, on both stores --------------------------------------------------------------


def test_add_counts_and_lists_documents(store):
    assert isinstance(store, VectorStore)
    add_docs(store, TEN_A, "doc_volcano", "doc_bread")
    assert store.count(TEN_A) == 5
    assert store.document_ids(TEN_A) == {"doc_volcano", "doc_bread"}
    assert store.count(TEN_B) == 0 and store.document_ids(TEN_B) == set()


def test_re_adding_a_chunk_replaces_it(store):
    add_docs(store, TEN_A, "doc_bread")
    changed = chunks_of("doc_bread", ["Sourdough bread needs a starter.", "Bake it hot."])
    store.add(TEN_A, changed, np.stack([embed(c.text) for c in changed]))
    assert store.count(TEN_A) == 2
    top = store.keyword(TEN_A, "sourdough starter", 5)
    assert [h.chunk.chunk_id for h in top] == ["doc_bread:0"]
    assert top[0].chunk.text == "Sourdough bread needs a starter."


def test_dense_ranks_by_cosine_similarity(store):
    add_docs(store, TEN_A, "doc_volcano", "doc_bread", "doc_ecole")
    target = chunks_of("doc_volcano")[1]
    hits = store.dense(TEN_A, embed(target.text), 4)
    assert hits[0].chunk == target
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].similarity == pytest.approx(hits[0].score)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    expected = sorted(
        (float(embed(c.text) @ embed(target.text)) for d in DOCS for c in chunks_of(d)), reverse=True
    )[:4]
    assert scores == pytest.approx(expected, abs=1e-3)


def test_keyword_finds_words_accent_insensitively(store):
    add_docs(store, TEN_A, "doc_volcano", "doc_bread", "doc_ecole")
    hits = store.keyword(TEN_A, "bread yeast", 3)
    assert hits[0].chunk.chunk_id == "doc_bread:0"  # both words
    assert {h.chunk.document_id for h in hits} == {"doc_bread"}
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert [h.chunk.chunk_id for h in store.keyword(TEN_A, "ELEVE ecole", 5)] == ["doc_ecole:0"]
    assert store.keyword(TEN_A, "?!", 5) == []
    assert store.keyword(TEN_A, "zeppelin", 5) == []


@pytest.mark.parametrize("top_k", [2, 5, 10])
def test_keyword_matches_any_word_and_fills_top_k(store, top_k):
    add_docs(store, TEN_A, "doc_volcano", "doc_bread", "doc_ecole")
    query = "Magma, bread, oven ash: école?"  # no chunk holds all of its words
    sharing = {"doc_volcano:0", "doc_volcano:2", "doc_bread:0", "doc_bread:1", "doc_ecole:0"}
    hits = store.keyword(TEN_A, query, top_k)
    assert len(hits) == min(top_k, len(sharing))
    assert {h.chunk.chunk_id for h in hits} <= sharing
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score > 0 for a, b in zip(hits, hits[1:]))
    assert len(store.keyword(TEN_A, query, top_k, Filter(tags=("cooking",)))) == min(top_k, 2)


def test_keyword_query_syntax_is_data(store):
    add_docs(store, TEN_A, "doc_volcano")
    for query in ["volcano'); DROP TABLE x; --", 'volcano" OR "', "volcano & !magma | (", "volcano\\'"]:
        hits = store.keyword(TEN_A, query, 5)
        assert hits and all(h.chunk.document_id == "doc_volcano" for h in hits)
    assert store.count(TEN_A) == 3


@pytest.mark.parametrize("search", ["dense", "keyword"])
def test_filters_by_document_and_tags(store, search):
    add_docs(store, TEN_A, "doc_volcano", "doc_bread", "doc_ecole")

    def run(filter: Filter) -> set[str]:
        if search == "dense":
            hits = store.dense(TEN_A, embed("volcano lava crust bread"), 10, filter)
        else:
            hits = store.keyword(TEN_A, "volcano lava crust bread volcan", 10, filter)
        return {h.chunk.document_id for h in hits}

    assert run(Filter()) >= {"doc_volcano", "doc_bread"}
    assert run(Filter(document_ids=("doc_bread",))) == {"doc_bread"}
    assert run(Filter(document_ids=("doc_bread", "doc_ecole"))) == {"doc_bread", "doc_ecole"}
    assert run(Filter(tags=("fr",))) == {"doc_ecole"}
    assert run(Filter(tags=("geology", "cooking"))) == {"doc_volcano", "doc_bread"}
    assert run(Filter(document_ids=("doc_volcano",), tags=("cooking",))) == set()
    assert run(Filter(document_ids=("doc_missing",))) == set()


def test_delete_documents_removes_both_sides(store):
    add_docs(store, TEN_A, "doc_volcano", "doc_bread")
    assert store.delete_documents(TEN_A, ["doc_volcano", "doc_never_added"]) == 3
    assert store.document_ids(TEN_A) == {"doc_bread"}
    assert store.count(TEN_A) == 2
    assert all(h.chunk.document_id == "doc_bread" for h in store.dense(TEN_A, embed("volcano magma"), 10))
    assert store.keyword(TEN_A, "volcano magma lava", 10) == []
    assert store.delete_documents(TEN_A, []) == 0


def test_drop_removes_the_knowledge_base_only(store):
    add_docs(store, TEN_A, "doc_volcano")
    add_docs(store, OTHER_KB, "doc_bread")
    store.drop(TEN_A)
    assert store.count(TEN_A) == 0 and store.document_ids(TEN_A) == set()
    assert store.dense(TEN_A, embed("volcano"), 5) == []
    assert store.keyword(TEN_A, "volcano", 5) == []
    assert store.count(OTHER_KB) == 2
    store.create(TEN_A, dimensions=DIMS)
    add_docs(store, TEN_A, "doc_ecole")
    assert store.document_ids(TEN_A) == {"doc_ecole"}


def test_tenancies_never_see_each_other(store):
    add_docs(store, TEN_A, "doc_volcano")
    secret = chunks_of("doc_bread")
    store.add(TEN_B, secret, np.stack([embed(c.text) for c in secret]))
    for scope, own in ((TEN_A, "doc_volcano"), (TEN_B, "doc_bread")):
        for query in ("volcano magma lava crust", "bread dough yeast oven crust"):
            assert {h.chunk.document_id for h in store.dense(scope, embed(query), 10)} <= {own}
            assert {h.chunk.document_id for h in store.keyword(scope, query, 10)} <= {own}
        assert store.document_ids(scope) == {own}
    assert store.delete_documents(TEN_B, ["doc_volcano"]) == 0  # A's document, named from B
    assert store.count(TEN_A) == 3
    store.drop(TEN_B)
    assert store.count(TEN_A) == 3
    assert store.dense(OTHER_KB, embed("volcano"), 5) == []  # same tenancy, other knowledge base


def test_contract_errors(store):
    with pytest.raises(InvalidInput):
        store.create(TEN_A, dimensions=DIMS + 1)
    chunks = chunks_of("doc_bread")
    with pytest.raises(InvalidInput):
        store.add(TEN_A, chunks, np.zeros((len(chunks), DIMS + 1), dtype=np.float32))
    with pytest.raises(InvalidInput):
        store.add(TEN_A, chunks, np.zeros((len(chunks) + 1, DIMS), dtype=np.float32))
    with pytest.raises(NotFound):
        store.add(Scope("ten_alpha", "kb_never_created"), chunks, np.stack([embed(c.text) for c in chunks]))
    assert store.count(TEN_A) == 0
    assert store.dense(Scope("ten_alpha", "kb_never_created"), embed("x"), 3) == []
    assert store.keyword(Scope("ten_alpha", "kb_never_created"), "bread", 3) == []
    store.create(TEN_A, dimensions=DIMS, search_breadth=200)  # idempotent; breadth may change


# -- PostgreSQL only ---------------------------------------------------------------------------


@pytest.fixture
def pg(postgres_server) -> Iterator:
    from atelier.store.pgvector import PgVectorStore

    made = PgVectorStore(postgres_server.create_database(f"kb_{uuid.uuid4().hex[:12]}"))
    for scope in (TEN_A, TEN_B, OTHER_KB):
        made.create(scope, dimensions=DIMS)
    try:
        yield made
    finally:
        made.close()


class Statements:
    """Every SQL statement an engine sends, with its parameters."""

    def __init__(self, engine):
        self.seen: list[tuple[str, object]] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, _conn, _cursor, statement, parameters, _context, _many):
        self.seen.append((statement, parameters))


def random_units(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    vectors = rng.normal(size=(n, dims)).astype(np.float32)  # (n, dims)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def bulk_chunks(document_id: str, n: int, tag: str) -> list[StoredChunk]:
    return [
        StoredChunk(f"{document_id}:{i}", document_id, f"{document_id}.txt", i, f"chunk {i} of {document_id}",
                    0, 10, "", (tag,))
        for i in range(n)
    ]


def test_each_knowledge_base_has_an_hnsw_index_the_planner_uses(pg):
    from atelier.store.pgvector import index_name

    rng = np.random.default_rng(0)
    vectors = random_units(rng, 3000, DIMS)  # (3000, DIMS)
    pg.create(TEN_A, dimensions=DIMS, search_breadth=40)
    pg.create(Scope("ten_alpha", "kb_small"), dimensions=8)
    pg.add(TEN_A, bulk_chunks("doc_bulk", 3000, "bulk"), vectors)
    with pg.engine.connect() as conn:
        definition = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": index_name(TEN_A)}
        ).scalar_one()
        kinds = conn.execute(text("SELECT count(*) FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%'")).scalar_one()
    assert "USING hnsw" in definition and "vector_cosine_ops" in definition
    assert "ten_alpha" in definition and "kb_shared" in definition and f"vector({DIMS})" in definition
    assert kinds == 4  # one per knowledge base: TEN_A, TEN_B, OTHER_KB, kb_small

    statements = Statements(pg.engine)
    query = random_units(rng, 1, DIMS)[0]
    hits = pg.dense(TEN_A, query, 5)
    assert len(hits) == 5
    assert any("hnsw.ef_search = 40" in s for s, _ in statements.seen)
    select, params = next((s, p) for s, p in statements.seen if s.lstrip().startswith("SELECT chunk_id"))
    with pg.engine.begin() as conn:
        conn.execute(text("SET LOCAL hnsw.ef_search = 40"))
        plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + select, params).scalars())
    assert index_name(TEN_A) in plan, plan
    exact = np.argsort(-(vectors @ query))[:5]
    recall = len({f"doc_bulk:{i}" for i in exact} & {h.chunk.chunk_id for h in hits}) / 5
    assert recall >= 0.8


def test_a_selective_filter_still_fills_top_k(pg):
    rng = np.random.default_rng(1)
    pg.add(TEN_A, bulk_chunks("doc_many", 2000, "many"), random_units(rng, 2000, DIMS))
    pg.add(TEN_A, bulk_chunks("doc_few", 12, "few"), random_units(rng, 12, DIMS))
    query = random_units(rng, 1, DIMS)[0]
    assert len(pg.dense(TEN_A, query, 10, Filter(tags=("few",)))) == 10
    assert len(pg.dense(TEN_A, query, 10, Filter(document_ids=("doc_few",)))) == 10


def test_every_statement_is_confined_to_its_scope(pg):
    statements = Statements(pg.engine)
    add_docs(pg, TEN_A, "doc_volcano", "doc_bread")
    pg.dense(TEN_A, embed("volcano"), 3, Filter(document_ids=("doc_volcano",), tags=("geology",)))
    pg.keyword(TEN_A, "volcano", 3, Filter(tags=("geology",)))
    pg.document_ids(TEN_A)
    pg.count(TEN_A)
    pg.delete_documents(TEN_A, ["doc_bread"])
    pg.drop(TEN_A)
    from atelier.store.pgvector import index_name

    drops = [s for s, _ in statements.seen if s.startswith("DROP INDEX")]
    assert drops == [f"DROP INDEX IF EXISTS {index_name(TEN_A)}"]
    touching = [(s, p) for s, p in statements.seen if "kb_vector_" in s and s not in drops]
    assert len(touching) >= 8
    for statement, params in touching:
        rows = params if isinstance(params, (list, tuple)) else [params]
        assert rows, statement
        for row in rows:
            assert row["t"] == TEN_A.tenancy_id and row["k"] == TEN_A.knowledge_base_id, statement
        if not statement.lstrip().startswith("INSERT"):
            assert "tenancy_id = %(t)s" in statement and "knowledge_base_id = %(k)s" in statement, statement


def test_a_failed_add_leaves_nothing(pg):
    add_docs(pg, TEN_A, "doc_volcano")
    bad = chunks_of("doc_bread")
    bad[1] = StoredChunk("doc_bread:1", "doc_bread", "bread.txt", 1, "NUL \x00 is refused by PostgreSQL", 0, 5)
    with pytest.raises(Exception):
        pg.add(TEN_A, bad, np.stack([embed(c.text) for c in bad]))
    assert pg.document_ids(TEN_A) == {"doc_volcano"}
    assert pg.count(TEN_A) == 3


def test_keywords_drop_english_and_french_stop_words(pg):
    add_docs(pg, TEN_A, "doc_volcano", "doc_ecole")
    assert pg.keyword(TEN_A, "the of and when le la de est une", 5) == []
    assert [h.chunk.chunk_id for h in pg.keyword(TEN_A, "the volcan est une montagne", 5)] == ["doc_ecole:1"]


def test_repeated_chunk_ids_in_one_add_are_refused(pg):
    chunks = chunks_of("doc_bread")
    with pytest.raises(InvalidInput):
        pg.add(TEN_A, chunks + chunks[:1], np.stack([embed(c.text) for c in chunks + chunks[:1]]))
    assert pg.count(TEN_A) == 0


def test_knowledge_bases_of_different_sizes_share_the_table(pg):
    small = Scope("ten_alpha", "kb_small")
    pg.create(small, dimensions=3)
    pg.add(small, bulk_chunks("doc_tiny", 2, "t"), np.eye(3, dtype=np.float32)[:2])
    add_docs(pg, TEN_A, "doc_volcano")
    assert [h.chunk.chunk_id for h in pg.dense(small, np.array([0, 1, 0], dtype=np.float32), 1)] == ["doc_tiny:1"]
    assert pg.dense(TEN_A, embed("volcano"), 1)[0].chunk.document_id == "doc_volcano"
    with pytest.raises(InvalidInput):
        pg.dense(small, embed("volcano"), 1)


def test_open_vector_store_selects_pgvector(postgres_server, tmp_path):
    from atelier.settings import Settings
    from atelier.store.db import Database
    from atelier.store.pgvector import PgVectorStore
    from atelier.store.vectors import open_vector_store

    url = postgres_server.create_database(f"kb_{uuid.uuid4().hex[:12]}")
    db = Database(f"sqlite:///{tmp_path / 'atelier.db'}")
    settings = Settings(data_dir=tmp_path, vector_store="pgvector", vector_database_url=url)
    opened = open_vector_store(settings, db)
    try:
        assert isinstance(opened, PgVectorStore)
        opened.create(TEN_A, dimensions=DIMS)
        add_docs(opened, TEN_A, "doc_bread")
        assert opened.count(TEN_A) == 2
    finally:
        opened.close()
        db.dispose()
