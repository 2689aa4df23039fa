"""cloud.grounding.read: how each answer mode's finished text becomes the answer and its citations."""

from __future__ import annotations

import json

from atelier.cloud.grounding import Grounded, Grounding, answer_schema
from atelier.rag.answer import NO_ANSWER
from atelier.rag.indexing import Hit, StoredChunk

PASSAGES = [
    Hit(StoredChunk(f"d{n}:0", f"d{n}", f"d{n}.md", 0, text, 0, len(text), ""), 1.0 / n, n, 0.9)
    for n, text in enumerate(["The shed key is blue.", "The gate code is 1234."], start=1)
]


def grounded(mode: str) -> Grounded:
    return Grounded(served=None, passages=PASSAGES, prepared=object(), mode=mode)  # only read's inputs matter


def test_generative_markers_and_dropped_numbers():
    answered = Grounding.read(grounded("generative"), "According to [1], the key is blue [2][3].")
    assert [c.index for c in answered.citations] == [1, 2] and answered.found_by == "marker"
    assert answered.dropped_citations == 1


def test_generative_without_markers_falls_back_to_shared_words():
    answered = Grounding.read(grounded("generative"), "The gate code is 1234.")
    assert [c.document_id for c in answered.citations] == ["d2"] and answered.found_by == "overlap"


def test_structured_answer_shows_its_citations_and_drops_unknown_ones():
    text = json.dumps({"citations": [2, 2, 9], "answer": " The code is 1234. "})
    answered = Grounding.read(grounded("structured"), text)
    assert answered.text == "The code is 1234. [2]" and [c.index for c in answered.citations] == [2]
    assert answered.dropped_citations == 1


def test_a_structured_answer_cut_short_keeps_what_was_written():
    answered = Grounding.read(grounded("structured"), '{"citations": [1, 2], "answer": "The key is \\"blue')
    assert answered.text == 'The key is "blue [1][2]' and [c.index for c in answered.citations] == [1, 2]
    assert Grounding.read(grounded("structured"), '{"citations": [').text == ""


def test_an_answer_the_loop_guard_ended_is_cut_where_the_loop_began():
    looping = "According to [1], the key is blue. The key is blue. The key is blue. The key"
    answered = Grounding.read(grounded("generative"), looping, "repetition")
    assert answered.text == "According to [1], the key is blue." and [c.index for c in answered.citations] == [1]
    assert Grounding.read(grounded("generative"), looping).text == looping  # not ended by the guard: untouched
    structured = '{"citations": [2], "answer": "code 1234 is the code 1234 is the code 1234 is the'
    assert Grounding.read(grounded("structured"), structured, "repetition").text == "code 1234 is the [2]"


def test_no_generation_answers_the_fixed_text():
    answered = Grounding.read(Grounded(served=None, passages=[], prepared=None), "")
    assert answered.text == NO_ANSWER and answered.citations == []


def test_the_schema_lists_the_passage_numbers_and_puts_citations_first():
    schema = answer_schema(3)
    assert list(schema["properties"]) == ["citations", "answer"] and schema["required"] == ["citations", "answer"]
    assert schema["properties"]["citations"]["items"]["enum"] == [1, 2, 3]
