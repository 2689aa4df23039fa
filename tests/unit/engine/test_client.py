"""LocalEngine: the one client the service uses, on tiny models (preloaded or from a local dir)."""

import asyncio
import time

import pytest

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.engine.client import EngineClient, LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.engine.types import GenerationRequest, SamplingParams
from atelier.errors import NotFound
from atelier.settings import Settings


def tiny_spec(name, path="/nonexistent"):
    return ModelSpec(name=name, kind="chat", source=ModelSource(path=str(path)), context_length=128, max_output_tokens=32)


async def collect(engine, model, request):
    return [ev async for ev in engine.generate(model, request)]


@pytest.fixture
def engine(tmp_path):
    eng = LocalEngine(
        Catalog(list(BUILTIN) + [tiny_spec("tiny")]),
        Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache", threads=1),
        preloaded={"tiny": tiny_loaded("tiny", seed=1)},
    )
    yield eng
    eng.close()


def test_implements_the_protocol(engine):
    assert isinstance(engine, EngineClient)


def test_generate_streams_until_finish(engine):
    tok = engine.tokenizer("tiny")
    req = GenerationRequest("a", tok.encode("hi"), SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    events = asyncio.run(collect(engine, "tiny", req))
    assert events[-1].finish_reason == "length" and events[-1].usage.completion_tokens == 5
    assert all(ev.finish_reason is None for ev in events[:-1])
    # The last event is sent from inside the decode step; the row leaves the batch right after.
    for _ in range(250):
        if engine.health()["chat_models"]["tiny"]["running"] == 0:
            break
        time.sleep(0.02)
    assert engine.health()["chat_models"]["tiny"]["running"] == 0


def test_closing_the_stream_aborts_the_request(engine):
    tok = engine.tokenizer("tiny")

    async def first_then_close():
        req = GenerationRequest("b", tok.encode("x"), SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))
        gen = engine.generate("tiny", req)
        first = await gen.__anext__()
        await gen.aclose()
        for _ in range(250):
            if engine.health()["chat_models"]["tiny"]["running"] == 0:
                return first
            await asyncio.sleep(0.02)
        raise AssertionError("slot not freed")

    assert asyncio.run(first_then_close()).finish_reason is None


def test_unknown_model(engine):
    req = GenerationRequest("c", [1, 2], SamplingParams())
    with pytest.raises(NotFound):
        asyncio.run(collect(engine, "missing", req))


def test_model_from_a_local_directory_is_a_config_entry(tmp_path):
    """A Hugging Face directory on disk, named in the catalog, loads and serves."""
    lm = tiny_loaded(seed=2)
    model_dir = tmp_path / "my-model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    eng = LocalEngine(Catalog(list(BUILTIN) + [tiny_spec("mine", model_dir)]), Settings(data_dir=tmp_path, threads=1))
    try:
        tok = eng.tokenizer("mine")
        req = GenerationRequest("d", tok.encode("hello"), SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
        got = [t for ev in asyncio.run(collect(eng, "mine", req)) for t in ev.token_ids]
        ref = [t for ev in asyncio.run(collect_ref(lm, req)) for t in ev.token_ids]
        assert got == ref
    finally:
        eng.close()


async def collect_ref(lm, req):
    eng = LocalEngine(Catalog(list(BUILTIN) + [tiny_spec("ref")]), Settings(threads=1), preloaded={"ref": lm})
    try:
        return [ev async for ev in eng.generate("ref", req)]
    finally:
        eng.close()


def test_embed_through_the_engine(engine):
    result = asyncio.run(engine.embed("all-minilm-l6-v2", ["hello", "world"]))
    assert len(result.vectors) == 2 and len(result.vectors[0]) == 384
    assert result.prompt_tokens > 0
