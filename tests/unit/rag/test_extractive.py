"""rag.extractive: sentences with exact spans, the best-answering one chosen (cosine, shared words,
retrieval rank), a following sentence kept when it scores nearly as well."""

from __future__ import annotations

import numpy as np

from atelier.rag.extractive import extract, sentences
from atelier.rag.indexing import Hit, StoredChunk

DOC = ("# Pump manual\n\nHow fast does the pump run?\nÀ quoi servent les joints, les vis, etc. ?\nThe pump runs at 3000 rpm. Its filter must be cleaned every 200 hours of operation. "
       "Version 2.1 added a quieter motor.\n\nWarranty lasts two years.")


def hit(text: str, n: int, offset: int = 0) -> Hit:
    chunk = StoredChunk(chunk_id=f"d{n}:0", document_id=f"d{n}", filename=f"d{n}.md", position=0, text=text,
                        start=offset, end=offset + len(text), heading="")
    return Hit(chunk=chunk, score=1.0 / n, rank=n, similarity=None)


def test_sentences_keep_exact_spans_and_skip_headings_questions_and_fragments():
    found = sentences([hit(DOC, 1)])
    assert [s.text for s in found] == [
        "The pump runs at 3000 rpm.", "Its filter must be cleaned every 200 hours of operation.",
        "Version 2.1 added a quieter motor.", "Warranty lasts two years."]
    for s in found:
        assert DOC[s.start:s.end] == s.text and s.index == 1


def test_the_sentence_sharing_the_question_words_wins_and_cites_its_span():
    passages = [hit("Unrelated words about gardens and sheds here.", 1), hit(DOC, 2, offset=500)]
    answer = extract("How often must the filter be cleaned?", passages, None, None)
    assert answer.text.startswith("Its filter must be cleaned every 200 hours of operation. [2]")
    cited = answer.citations[0]
    assert (cited.index, cited.document_id) == (2, "d2")
    assert (cited.start, cited.end) == (500 + DOC.index("Its filter"), 500 + DOC.index("Its filter") + len(cited.text))


def test_the_embedding_cosine_decides_across_languages():
    passages = [hit("The warranty lasts two years from purchase. The pump is blue and quite heavy.", 1)]
    vectors = {"The warranty lasts two years from purchase.": [1.0, 0.0], "The pump is blue and quite heavy.": [0.0, 1.0]}
    embed = lambda texts: np.asarray([vectors[t] for t in texts], dtype=np.float32)  # noqa: E731
    answer = extract("De quelle couleur est la pompe ?", passages, embed, np.asarray([0.0, 1.0], dtype=np.float32))
    assert answer.text == "The pump is blue and quite heavy. [1]"


def test_a_following_sentence_that_scores_nearly_as_well_is_kept():
    passages = [hit("Clean the filter monthly. Clean the filter with water. Paint is red today.", 1)]
    answer = extract("clean the filter", passages, None, None)
    assert answer.text == "Clean the filter monthly. [1] Clean the filter with water. [1]"
    assert len(answer.citations) == 2


def test_no_sentence_no_answer():
    assert extract("anything", [hit("# Title", 1)], None, None) is None
