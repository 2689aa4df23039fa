"""The embedded vector store (Chroma + SQLite FTS5) on a temporary directory: both sides kept
consistent, every query confined to its tenancy and knowledge base, safe across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sqlalchemy import event

from atelier.errors import InvalidInput, NotFound
from atelier.rag.indexing import Filter, Scope, StoredChunk, VectorStore
from atelier.settings import Settings
from atelier.store import repos
from atelier.store import keywords
from atelier.store.keywords import KeywordIndex, fts_query, fts_table, query_words
from atelier.store.vectors import ChromaStore, collection_name, open_vector_store

DIM = 8


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def basis(i: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i % DIM] = 1.0
    if noise:
        v += noise * np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return unit(v)


def chunks_of(doc: str, texts: list[str], tags: tuple[str, ...] = (), filename: str | None = None) -> list[StoredChunk]:
    return [
        StoredChunk(
            chunk_id=f"{doc}:{i}", document_id=doc, filename=filename or f"{doc}.txt", position=i, text=t,
            start=0, end=len(t), heading="Top > Sub" if i == 0 else "", tags=tags,
        )
        for i, t in enumerate(texts)
    ]


@pytest.fixture
def tenancies(db):
    with db.session() as s:
        return repos.create_tenancy(s, "alpha").id, repos.create_tenancy(s, "beta").id


@pytest.fixture
def store(db, tmp_path):
    s = ChromaStore(tmp_path / "chroma", db)
    yield s
    s.close()


@pytest.fixture
def scope(store, tenancies):
    sc = Scope(tenancies[0], "kb_same")
    store.create(sc, dimensions=DIM)
    return sc


def test_factory_and_protocol(db, tmp_path):
    settings = Settings(data_dir=tmp_path, vector_store="chroma")
    s = open_vector_store(settings, db)
    assert isinstance(s, VectorStore) and isinstance(s, ChromaStore)
    assert s.vectors.path == (tmp_path / "chroma").resolve()
    s.close()


def test_add_then_dense_and_keyword(store, scope):
    store.add(scope, chunks_of("d1", ["apt installs packages", "fdisk partitions disks"]), np.stack([basis(0), basis(1)]))
    dense = store.dense(scope, basis(1, 0.1), 2)
    assert [h.chunk.chunk_id for h in dense] == ["d1:1", "d1:0"]
    assert dense[0].rank == 1 and dense[0].score == pytest.approx(dense[0].similarity) and dense[0].score > 0.9
    kw = store.keyword(scope, "How are disks partitioned?", 5)
    assert [h.chunk.chunk_id for h in kw] == ["d1:1"] and kw[0].score > 0
    c = kw[0].chunk
    assert (c.document_id, c.filename, c.position, c.text, c.start, c.end) == ("d1", "d1.txt", 1, "fdisk partitions disks", 0, 22)
    assert store.count(scope) == 2


def test_add_is_idempotent_per_chunk_id(store, scope):
    store.add(scope, chunks_of("d1", ["one", "two"]), np.stack([basis(0), basis(1)]))
    store.add(scope, chunks_of("d1", ["one bis", "two"]), np.stack([basis(2), basis(1)]))
    assert store.count(scope) == 2 and store.vectors.count(scope) == 2
    assert [h.chunk.text for h in store.keyword(scope, "bis", 5)] == ["one bis"]
    assert store.keyword(scope, "one", 5)[0].chunk.chunk_id == "d1:0"
    assert store.dense(scope, basis(2), 1)[0].chunk.text == "one bis"


def test_create_is_idempotent_refuses_other_dimensions_and_updates_breadth(store, scope):
    store.create(scope, dimensions=DIM)
    with pytest.raises(InvalidInput, match="dimension"):
        store.create(scope, dimensions=DIM + 1)
    store.create(scope, dimensions=DIM, search_breadth=321)
    with store.vectors._session(write=False) as client:
        config = client.get_collection(collection_name(scope), embedding_function=None).configuration
    assert config["hnsw"]["ef_search"] == 321 and config["hnsw"]["space"] == "cosine"
    assert config.get("embedding_function") is None


def test_wrong_shapes_are_refused(store, scope):
    with pytest.raises(InvalidInput):
        store.add(scope, chunks_of("d1", ["a", "b"]), np.stack([basis(0)]))
    with pytest.raises(InvalidInput):
        store.add(scope, chunks_of("d1", ["a"]), np.ones((1, DIM + 2), dtype=np.float32))


def test_keyword_is_accent_and_case_insensitive_and_injection_proof(store, scope):
    store.add(scope, chunks_of("d1", ["L'élève répète la leçon", "NEAR the station"]), np.stack([basis(0), basis(1)]))
    assert [h.chunk.chunk_id for h in store.keyword(scope, "ELEVE lecon", 5)] == ["d1:0"]
    for hostile in ['"', "NEAR(a b)", "text: x", "a AND OR NOT", "*", "heading:Top", "^start", "( ) { }", ""]:
        store.keyword(scope, hostile, 5)  # never an FTS5 syntax error
    assert fts_query(query_words('a "b" NEAR(c) Élève a')) == '"a" OR "b" OR "near" OR "c" OR "eleve"'
    assert [h.chunk.chunk_id for h in store.keyword(scope, "near", 5)] == ["d1:1"]


def test_filters_on_documents_and_tags_both_sides(store, scope):
    store.add(scope, chunks_of("d1", ["disk one"], tags=("ops",)), np.stack([basis(0)]))
    store.add(scope, chunks_of("d2", ["disk two"], tags=("dev", "ops")), np.stack([basis(0, 0.05)]))
    store.add(scope, chunks_of("d3", ["disk three"]), np.stack([basis(0, 0.1)]))
    for f, expected in [
        (Filter(document_ids=("d2", "d3")), {"d2", "d3"}),
        (Filter(tags=("ops",)), {"d1", "d2"}),
        (Filter(tags=("dev", "nope")), {"d2"}),
        (Filter(document_ids=("d1",), tags=("dev",)), set()),
        (Filter(), {"d1", "d2", "d3"}),
    ]:
        assert {h.chunk.document_id for h in store.dense(scope, basis(0), 10, f)} == expected
        assert {h.chunk.document_id for h in store.keyword(scope, "disk", 10, f)} == expected
    assert store.keyword(scope, "disk", 10, Filter(tags=("ops",)))[0].chunk.tags in (("ops",), ("dev", "ops"))


def test_isolation_same_kb_id_and_chunk_ids_in_two_tenancies(store, tenancies):
    a, b = Scope(tenancies[0], "kb_same"), Scope(tenancies[1], "kb_same")
    store.create(a, dimensions=DIM)
    store.create(b, dimensions=DIM)
    store.add(a, chunks_of("doc", ["alpha secret about zebras"]), np.stack([basis(0)]))
    store.add(b, chunks_of("doc", ["beta secret about zebras"]), np.stack([basis(0)]))
    for scope, word in ((a, "alpha"), (b, "beta")):
        assert [h.chunk.text.split()[0] for h in store.dense(scope, basis(0), 10)] == [word]
        assert [h.chunk.text.split()[0] for h in store.keyword(scope, "secret zebras alpha beta", 10)] == [word]
        assert store.count(scope) == 1 and store.document_ids(scope) == {"doc"}
    other_kb = Scope(tenancies[0], "kb_other")
    assert store.dense(other_kb, basis(0), 10) == [] and store.keyword(other_kb, "zebras", 10) == []
    assert store.count(other_kb) == 0 and store.document_ids(other_kb) == set()
    assert collection_name(a) != collection_name(b) and fts_table(a) != fts_table(b)
    assert store.delete_documents(a, ["doc"]) == 1
    assert store.count(a) == 0 and store.count(b) == 1
    assert [h.chunk.text for h in store.keyword(b, "zebras", 10)] == ["beta secret about zebras"]
    store.drop(a)
    assert [h.chunk.text for h in store.dense(b, basis(0), 10)] == ["beta secret about zebras"]


def test_a_collection_tagged_with_another_scope_is_not_found(store, tenancies):
    a = Scope(tenancies[0], "kb_x")
    store.create(a, dimensions=DIM)
    store.add(a, chunks_of("doc", ["text"]), np.stack([basis(0)]))
    with store.vectors._session(write=True) as client:
        client.get_collection(collection_name(a), embedding_function=None).modify(
            metadata={"tenancy_id": tenancies[1], "knowledge_base_id": "kb_x", "dimensions": DIM}
        )
        store.vectors._collections.clear()
    with pytest.raises(NotFound):
        store.dense(a, basis(0), 3)


def test_delete_documents_removes_both_sides(store, scope):
    store.add(scope, chunks_of("d1", ["keep me"]), np.stack([basis(0)]))
    store.add(scope, chunks_of("d2", ["remove me", "remove too"]), np.stack([basis(1), basis(2)]))
    assert store.delete_documents(scope, ["d2", "never-there"]) == 2
    assert store.count(scope) == 1 and store.vectors.count(scope) == 1
    assert store.document_ids(scope) == {"d1"}
    assert store.keyword(scope, "remove", 5) == []
    assert [h.chunk.document_id for h in store.dense(scope, basis(1), 5)] == ["d1"]
    assert store.delete_documents(scope, ["d2"]) == 0


def test_a_crash_between_the_two_sides_leaves_a_detectable_orphan(store, scope, monkeypatch):
    def crash(*_args, **_kwargs):
        raise RuntimeError("killed between the vector and the row writes")

    monkeypatch.setattr(store.keywords, "add", crash)
    with pytest.raises(RuntimeError):
        store.add(scope, chunks_of("half", ["vector only"]), np.stack([basis(3)]))
    monkeypatch.undo()
    assert store.count(scope) == 0 and store.vectors.count(scope) == 1
    assert store.document_ids(scope) == {"half"}  # startup repair sees it
    assert store.dense(scope, basis(3), 5) == []  # never served without its row
    assert store.delete_documents(scope, ["half"]) == 1
    assert store.document_ids(scope) == set() and store.vectors.count(scope) == 0


def test_rows_without_vectors_are_detected_too(store, scope):
    store.add(scope, chunks_of("d1", ["rows only"]), np.stack([basis(0)]))
    store.vectors.delete_documents(scope, ["d1"])  # as if a crash came after deleting vectors only
    assert store.document_ids(scope) == {"d1"}
    assert store.delete_documents(scope, ["d1"]) == 1 and store.document_ids(scope) == set()


def test_drop_removes_everything(store, scope):
    store.add(scope, chunks_of("d1", ["a b c"]), np.stack([basis(0)]))
    store.drop(scope)
    assert store.count(scope) == 0 and store.document_ids(scope) == set()
    assert store.dense(scope, basis(0), 3) == [] and store.keyword(scope, "a", 3) == []
    store.create(scope, dimensions=DIM)  # can be made again
    assert store.count(scope) == 0


def test_writes_from_another_process_are_seen_and_never_lost(store, scope, db, tmp_path):
    store.add(scope, chunks_of("p0", ["parent first"]), np.stack([basis(0)]))
    assert store.dense(scope, basis(0), 5)[0].chunk.document_id == "p0"  # the parent's HNSW is loaded
    child = textwrap.dedent(
        f"""
        import numpy as np
        from atelier.store.db import Database
        from atelier.store.vectors import ChromaStore
        from atelier.rag.indexing import Scope, StoredChunk
        db = Database({str(db.url)!r})
        s = ChromaStore({str(tmp_path / "chroma")!r}, db)
        sc = Scope({scope.tenancy_id!r}, {scope.knowledge_base_id!r})
        v = np.zeros((1, {DIM}), dtype=np.float32); v[0, 1] = 1
        s.add(sc, [StoredChunk("c1:0", "c1", "c1.txt", 0, "child text", 0, 10)], v)
        """
    )
    subprocess.run([sys.executable, "-c", child], check=True, timeout=120)
    assert store.dense(scope, basis(1), 1)[0].chunk.document_id == "c1"  # not the stale in-memory index
    store.add(scope, chunks_of("p1", ["parent second"]), np.stack([basis(2)]))
    fresh = ChromaStore(tmp_path / "chroma", db)
    try:
        assert fresh.vectors.count(scope) == 3
        assert {h.chunk.document_id for h in fresh.dense(scope, basis(0), 10)} == {"p0", "c1", "p1"}
    finally:
        fresh.close()


def test_words_in_half_the_chunks_only_fill_top_k_on_large_knowledge_bases(db, tenancies, monkeypatch):
    index = KeywordIndex(db)
    scope = Scope(tenancies[0], "kb_big")
    index.create(scope)
    index.add(scope, [StoredChunk(f"d:{i}", "d", "d.txt", i, f"the common word {i}", 0, 5) for i in range(30)]
              + [StoredChunk("r:0", "r", "r.txt", 0, "the rare zebra", 0, 5)])
    full = index.search(scope, "the zebra", 50)
    assert len(full) == 31 and full[0].chunk.chunk_id == "r:0"  # small: every word ranked
    monkeypatch.setattr(keywords, "PRUNE_ABOVE", 10)
    ranked: list[str] = []  # the FTS5 queries sorted by score: never one with a common word

    @event.listens_for(db.engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):
        if "ORDER BY score" in statement:
            ranked.append(parameters["q"] if isinstance(parameters, dict) else str(parameters))

    try:
        hits = index.search(scope, "the zebra", 50)
        assert hits[0].chunk.chunk_id == "r:0" and len(hits) == 31 and hits[1].score < hits[0].score
        assert [h.chunk.chunk_id for h in index.search(scope, "the zebra", 3)] == ["r:0", "d:0", "d:1"]
        assert len(index.search(scope, "the common", 50)) == 31  # nothing informative: filled all the same
        assert [h.chunk.chunk_id for h in index.search(scope, "the 7", 2)] == ["d:7", "d:0"]
        index.add(scope, [StoredChunk(f"z:{i}", "z", "z.txt", i, f"the zebra herd {i}", 0, 5) for i in range(40)])
        assert len(index.search(scope, "the zebra", 50)) == 50  # the cache followed the change: zebra is common now
        assert [h.chunk.chunk_id for h in index.search(scope, "the rare zebra", 50)][0] == "r:0"
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert ranked and not any('"the"' in q or '"common"' in q for q in ranked)
    assert '"zebra"' in ranked[0] and '"zebra"' not in ranked[-1]
