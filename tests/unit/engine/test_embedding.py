"""Embedder on the real all-MiniLM-L6-v2 (loads in about a second): equality with
sentence-transformers, limits, truncation on token ids, input-type prefixes, similarity."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from atelier.catalog import BUILTIN
from atelier.engine.embedding import Embedder, cosine_similarity, dot_product
from atelier.engine.types import MAX_INPUTS
from atelier.errors import InvalidInput

SPEC = next(s for s in BUILTIN if s.name == "all-minilm-l6-v2")
LIMIT = SPEC.max_input_tokens  # special tokens included
BUDGET = LIMIT - 2  # content tokens between [CLS] and [SEP]

TEXTS = [
    "A man is eating food.",
    "The new movie is awesome, I loved every minute of it and will see it again next week.",
    "Paris",
    "Quantum computers use qubits, which can be in superpositions of states, to solve some problems faster.",
    "Ünïcødé café — naïve 東京 🙂",
    "Two dogs play in the snow.",
    "The central bank raised interest rates by a quarter point on Tuesday.",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load(SPEC)


@pytest.fixture(scope="module")
def words(embedder: Embedder) -> list[str]:
    """700 distinct lowercase words that are each exactly one token, so that joining any
    slice with spaces gives a text of exactly that many content tokens."""
    tok = embedder.tokenizer
    out = []
    for word in sorted(tok.get_vocab()):
        if word.isascii() and word.isalpha() and word.islower() and len(word) > 3:
            if tok(word, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(word)]:
                out.append(word)
        if len(out) == 700:
            break
    assert len(out) == 700
    return out


def _t(result) -> torch.Tensor:
    return torch.tensor(result.vectors)


def test_equals_sentence_transformers_encode(embedder: Embedder):
    small_batches = Embedder(SPEC, embedder.model, batch_size=3)  # several batches, sorted by length
    ours = _t(small_batches.embed(TEXTS))
    ref = embedder.model.encode(TEXTS, normalize_embeddings=True, convert_to_tensor=True).cpu()
    assert ours.shape == (len(TEXTS), SPEC.dimensions)
    assert_close(ours, ref.float(), atol=1e-5, rtol=0)
    # One at a time gives the same rows: padding and order do not leak between inputs.
    singles = torch.cat([_t(embedder.embed([t])) for t in TEXTS])
    assert_close(ours, singles, atol=1e-5, rtol=0)


def test_vectors_are_unit_norm_and_tokens_counted(embedder: Embedder):
    result = embedder.embed(TEXTS)
    assert all(len(v) == SPEC.dimensions for v in result.vectors)
    assert_close(_t(result).norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    assert result.prompt_tokens == sum(embedder.count_tokens(t) for t in TEXTS)


def test_count_tokens_includes_special_tokens(embedder: Embedder):
    assert embedder.count_tokens("hello world") == 4  # [CLS] hello world [SEP]


def test_input_count_limits(embedder: Embedder):
    assert len(embedder.embed(["hi"] * MAX_INPUTS).vectors) == MAX_INPUTS == 96
    with pytest.raises(InvalidInput) as err:
        embedder.embed(["hi"] * (MAX_INPUTS + 1))
    assert err.value.param == "input"
    with pytest.raises(InvalidInput) as err:
        embedder.embed([])
    assert err.value.param == "input"


def test_empty_string_names_its_index(embedder: Embedder):
    with pytest.raises(InvalidInput) as err:
        embedder.embed(["fine", "also fine", ""])
    assert err.value.param == "input[2]"


def test_none_rejects_an_input_over_the_limit(embedder: Embedder, words: list[str]):
    at_limit = " ".join(words[:BUDGET])
    assert embedder.count_tokens(at_limit) == LIMIT
    assert embedder.embed(["short", at_limit], truncate="NONE").prompt_tokens == 3 + LIMIT

    over = " ".join(words[: BUDGET + 1])
    with pytest.raises(InvalidInput) as err:
        embedder.embed(["short", over], truncate="NONE")
    assert err.value.param == "input[1]"
    assert f"input[1] has {LIMIT + 1} tokens, more than the model's limit of {LIMIT}" in err.value.message


def test_end_keeps_the_first_tokens(embedder: Embedder, words: list[str]):
    long = " ".join(words)
    result = embedder.embed([long], truncate="END")
    assert result.prompt_tokens == LIMIT
    head = embedder.embed([" ".join(words[:BUDGET])], truncate="NONE")
    assert_close(_t(result), _t(head), atol=1e-5, rtol=0)
    # sentence-transformers truncates at the end too, with the same window.
    ref = embedder.model.encode([long], normalize_embeddings=True, convert_to_tensor=True).cpu()
    assert_close(_t(result), ref.float(), atol=1e-5, rtol=0)


def test_start_keeps_the_last_tokens(embedder: Embedder, words: list[str]):
    long = " ".join(words)
    result = embedder.embed([long], truncate="START")
    assert result.prompt_tokens == LIMIT
    tail = embedder.embed([" ".join(words[-BUDGET:])], truncate="NONE")
    assert_close(_t(result), _t(tail), atol=1e-5, rtol=0)
    end = embedder.embed([long], truncate="END")
    assert not torch.allclose(_t(result), _t(end), atol=1e-3)


def test_truncation_leaves_short_inputs_alone(embedder: Embedder):
    plain = _t(embedder.embed(TEXTS, truncate="NONE"))
    assert_close(_t(embedder.embed(TEXTS, truncate="START")), plain, atol=1e-6, rtol=0)
    assert_close(_t(embedder.embed(TEXTS, truncate="END")), plain, atol=1e-6, rtol=0)


def test_input_type_prefix_applied_when_the_spec_defines_it(embedder: Embedder):
    spec = SPEC.model_copy(update={"input_type_prefixes": {"search_query": "query: "}})
    prefixed = Embedder(spec, embedder.model)
    text = "how do I rotate an encryption key?"
    got = prefixed.embed([text], input_type="search_query")
    want = embedder.embed(["query: " + text])
    assert_close(_t(got), _t(want), atol=1e-6, rtol=0)
    assert got.prompt_tokens == embedder.count_tokens("query: " + text)
    # A type without a prefix, or a model without prefixes: accepted and ignored.
    plain = _t(embedder.embed([text]))
    assert_close(_t(prefixed.embed([text], input_type="search_document")), plain, atol=1e-6, rtol=0)
    assert_close(_t(embedder.embed([text], input_type="search_query")), plain, atol=1e-6, rtol=0)


def test_start_truncation_keeps_the_prefix(embedder: Embedder, words: list[str]):
    spec = SPEC.model_copy(update={"input_type_prefixes": {"search_query": "query: "}})
    prefixed = Embedder(spec, embedder.model)
    n_prefix = embedder.count_tokens("query:") - 2  # "query", ":"
    got = prefixed.embed([" ".join(words)], truncate="START", input_type="search_query")
    want = embedder.embed(["query: " + " ".join(words[-(BUDGET - n_prefix) :])], truncate="NONE")
    assert got.prompt_tokens == LIMIT
    assert_close(_t(got), _t(want), atol=1e-5, rtol=0)


def test_unknown_truncate_and_input_type_are_rejected(embedder: Embedder):
    with pytest.raises(InvalidInput) as err:
        embedder.embed(["x"], truncate="MIDDLE")  # type: ignore[arg-type]
    assert err.value.param == "truncate"
    with pytest.raises(InvalidInput) as err:
        embedder.embed(["x"], input_type="poetry")  # type: ignore[arg-type]
    assert err.value.param == "input_type"


def test_semantic_sanity(embedder: Embedder):
    v = embedder.embed(
        [
            "A man is playing a guitar on stage.",
            "A musician performs a song with his guitar in front of an audience.",
            "The stock market fell sharply after the earnings report.",
        ]
    ).vectors
    assert cosine_similarity(v[0], v[1]) > cosine_similarity(v[0], v[2]) + 0.2


@pytest.mark.parametrize(
    ("a", "b", "cos", "dot"),
    [
        ([1.0, 0.0], [1.0, 0.0], 1.0, 1.0),
        ([1.0, 0.0], [0.0, 3.0], 0.0, 0.0),
        ([1.0, 0.0], [1.0, 1.0], 1 / math.sqrt(2), 1.0),
        ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], 32 / (math.sqrt(14) * math.sqrt(77)), 32.0),
        ([1.0, 2.0], [-2.0, -4.0], -1.0, -10.0),
        ([0.0, 0.0], [1.0, 1.0], 0.0, 0.0),
    ],
)
def test_similarity_of_vectors(a, b, cos, dot):
    assert isinstance(cosine_similarity(a, b), float)
    assert cosine_similarity(a, b) == pytest.approx(cos, abs=1e-12)
    assert dot_product(a, b) == pytest.approx(dot, abs=1e-12)
    assert cosine_similarity(torch.tensor(a), torch.tensor(b)) == pytest.approx(cos, abs=1e-6)


def test_similarity_of_matrices():
    a = [[1.0, 0.0], [0.0, 2.0]]  # (2, 2)
    b = [[1.0, 1.0], [3.0, 0.0], [0.0, -1.0]]  # (3, 2)
    s2 = 1 / math.sqrt(2)
    cos = cosine_similarity(a, b)
    assert cos.shape == (2, 3)
    assert_close(cos, torch.tensor([[s2, 1.0, 0.0], [s2, 0.0, -1.0]], dtype=torch.float64))
    dot = dot_product(torch.tensor(a), torch.tensor(b))
    assert_close(dot, torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, -2.0]], dtype=torch.float64))
    # One vector against a matrix: (m,)
    assert_close(cosine_similarity(a[0], b), torch.tensor([s2, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        dot_product([1.0, 2.0], [1.0, 2.0, 3.0])
