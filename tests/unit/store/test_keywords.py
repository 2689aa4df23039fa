"""Keyword search in the embedded store (SQLite FTS5): BM25 over ANY query word.

The contract checked here: a search returns ``min(top_k, chunks sharing a word with the
query)`` hits, whatever the size of the knowledge base: no word is required in every hit,
and the very common words pruned for speed on large knowledge bases still fill ``top_k``
(after every chunk holding a rarer word). A brute-force count over Python word sets is the
reference.
"""

from __future__ import annotations

import random
import re
import unicodedata

import pytest

from atelier.rag.indexing import Filter, Scope, StoredChunk
from atelier.store import keywords
from atelier.store.keywords import KeywordIndex, query_words

COMMON = "le la de"  # in every chunk
FILLER = ["comment faire le tri de la mémoire", "le réglage de la vanne", "la notice de montage le matin",
          "comment lire le manuel de la machine", "le bruit de la courroie"]
RARE = {"r:joint": "remplacer le joint torique de la cuve", "r:pompe": "la pompe de relevage et le filtre",
        "r:both": "le joint de la vanne"}


def chunk(cid: str, text: str, position: int = 0, tags: tuple[str, ...] = ()) -> StoredChunk:
    return StoredChunk(cid, cid.split(":")[0], f"{cid.split(':')[0]}.txt", position, text, 0, len(text), "", tags)


def words_of(text: str) -> set[str]:
    """The reference word set: letters and digits, lower case, accents of Latin letters removed."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c))
    return set(re.findall(r"[^\W_]+", text))


@pytest.fixture(params=["small", "pruned"])
def kb(request, db, monkeypatch):
    """A knowledge base of 43 chunks; ``pruned``: large enough for the common-word pruning."""
    from atelier.store import repos

    with db.session() as s:
        tenancy = repos.create_tenancy(s, "alpha").id
    index = KeywordIndex(db)
    scope = Scope(tenancy, "kb_words")
    index.create(scope)
    chunks = [chunk(f"f:{i}", f"{FILLER[i % len(FILLER)]} {i}", i, ("even",) if i % 2 == 0 else ()) for i in range(40)]
    chunks += [chunk(cid, text, tags=("even",)) for cid, text in RARE.items()]
    index.add(scope, chunks)
    if request.param == "pruned":
        monkeypatch.setattr(keywords, "PRUNE_ABOVE", 10)
    return index, scope, {c.chunk_id: words_of(c.text) for c in chunks}


@pytest.mark.parametrize(
    "query",
    [
        "comment changer le joint de la pompe",  # no chunk holds every word; joint, pompe are rare
        "le de",  # only words that half the chunks or more hold
        "comment le faire",
        "joint pompe",  # two rare words, never together
        "torique relevage inconnu",  # a word no chunk holds
        "the unknown words",  # nothing shared: no hit
    ],
)
@pytest.mark.parametrize("top_k", [1, 5, 20])
def test_keyword_returns_top_k_when_that_many_chunks_share_a_word(kb, query, top_k):
    index, scope, words = kb
    sharing = {cid for cid, w in words.items() if w & words_of(query)}
    hits = index.search(scope, query, top_k)
    assert len(hits) == min(top_k, len(sharing))
    assert {h.chunk.chunk_id for h in hits} <= sharing
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))  # best first, also across the fill
    even = index.search(scope, query, top_k, Filter(tags=("even",)))
    assert len(even) == min(top_k, len([c for c in sharing if c.startswith("r:") or int(c[2:]) % 2 == 0]))


def test_chunks_holding_a_rare_word_come_before_the_common_only_ones(kb):
    index, scope, words = kb
    query = "comment changer le joint de la pompe"
    assert not any(words_of(query) <= w for w in words.values())
    hits = index.search(scope, query, 10)
    assert {h.chunk.chunk_id for h in hits[:3]} == set(RARE)
    assert all(h.chunk.chunk_id.startswith("f:") for h in hits[3:]) and len(hits) == 10


def test_random_queries_against_a_brute_force_count(kb):
    index, scope, words = kb
    vocabulary = sorted(set().union(*words.values()) | {"absent", "nulle"})
    rng = random.Random(0)
    for _ in range(40):
        query = " ".join(rng.sample(vocabulary, rng.randint(1, 4)))
        top_k = rng.choice([1, 3, 10, 50])
        sharing = {cid for cid, w in words.items() if w & words_of(query)}
        hits = index.search(scope, query, top_k)
        assert len(hits) == min(top_k, len(sharing)), query
        assert len({h.chunk.chunk_id for h in hits}) == len(hits)


def test_query_words_split_and_fold_like_the_fts5_tokenizer():
    """unicode61 (remove_diacritics 2) separates at '_' and folds accents of Latin letters only."""
    assert query_words("max_tokens e\u0301le\u0300ve Élève tiếng") == ["max", "tokens", "eleve", "tieng"]
    assert query_words("мой ёлка ελληνικά") == ["мой", "ёлка", "ελληνικά"]  # other scripts keep their marks


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("le paramètre max tokens", "max_tokens"),
        ("мой дом", "мой"),
        ("ёлка", "ёлка"),
        ("ελληνικά γράμματα", "ελληνικά"),
    ],
)
def test_words_the_index_holds_are_found_in_any_script(db, text, query):
    from atelier.store import repos

    with db.session() as s:
        tenancy = repos.create_tenancy(s, "alpha").id
    index = KeywordIndex(db)
    scope = Scope(tenancy, "kb_scripts")
    index.create(scope)
    index.add(scope, [chunk("d:0", text), chunk("d:1", "autre chose")])
    assert [h.chunk.chunk_id for h in index.search(scope, query, 5)] == ["d:0"]


def test_a_filling_hit_never_scores_above_a_ranked_one(db, monkeypatch):
    """A short chunk repeating a common word would outscore a long one holding a rare word once:
    it still comes after it (the rare word ranks), and its score is capped at the last ranked one's."""
    from atelier.store import repos

    with db.session() as s:
        tenancy = repos.create_tenancy(s, "alpha").id
    index = KeywordIndex(db)
    scope = Scope(tenancy, "kb_fill")
    index.create(scope)
    chunks = [chunk(f"f:{i}", f"la vanne numéro {i}" if i < 3 else f"autre texte {i}") for i in range(20)]
    # "vanne" is in 4 chunks of 22: common (COMMON_SHARE) yet with an idf well above 0
    chunks += [chunk("x:short", "vanne vanne vanne vanne"), chunk("x:long", "joint " + "mot " * 60)]
    index.add(scope, chunks)
    monkeypatch.setattr(keywords, "PRUNE_ABOVE", 10)
    hits = index.search(scope, "joint vanne", 5)
    assert hits[0].chunk.chunk_id == "x:long" and len(hits) == 5
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    short = {h.chunk.chunk_id: h.score for h in index.search(scope, "vanne", 30)}["x:short"]
    assert short > hits[0].score  # its own BM25 was above the ranked hit's: the cap held it down
    assert {h.chunk.chunk_id: h.score for h in hits}.get("x:short", hits[-1].score) <= hits[0].score
