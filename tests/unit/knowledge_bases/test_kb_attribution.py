"""Citations of an answer without ``[n]`` markers: the passages it shares content words with."""

from __future__ import annotations

import pytest

from atelier.rag.answer import NO_ANSWER
from atelier.rag.attribution import attribute, cite, content_words
from atelier.rag.indexing import Hit, StoredChunk

PASSAGES = [
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "The water pump must be serviced every six months.",
    "Bread dough should rest overnight before baking.",
]
HITS = [Hit(StoredChunk(f"doc_{i}:0", f"doc_{i}", f"f{i}.txt", 0, t, 0, len(t)), 1.0 / (i + 1), i + 1, 0.9)
        for i, t in enumerate(PASSAGES)]


def test_content_words_skip_function_words_and_short_tokens():
    assert content_words("The pump, the PUMP and the seal of it: 42 times") == {"pump", "seal", "42", "times"}
    assert content_words("Les pompes et la tour") == {"pompes", "tour"}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("The Eiffel Tower was completed in 1889.", [1]),
        ("Service the water pump every six months; the tower dates from 1889 (World's Fair).", [2, 1]),
        ("I like turtles.", []),
        (NO_ANSWER, []),
    ],
)
def test_attribute(answer, expected):
    assert [c.index for c in attribute(answer, HITS)] == expected


def test_markers_win_over_overlap():
    marked, how = cite("It was finished in 1889 [1][3].", HITS)
    assert ([c.index for c in marked], how) == ([1, 3], "marker")
    inferred, how = cite("The Eiffel Tower was completed in 1889.", HITS)
    assert ([c.document_id for c in inferred], how) == (["doc_0"], "overlap")
    assert inferred[0].text == PASSAGES[0] and (inferred[0].start, inferred[0].end) == (0, len(PASSAGES[0]))
