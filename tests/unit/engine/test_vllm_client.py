"""``VllmEngine`` against a fake vLLM server (httpx's MockTransport): the mapping both ways.

The real server is exercised by ``tests/integration/test_vllm_engine.py``; here every
sampling control's name, the stream's parsing, the errors and the adapter bookkeeping are
checked exactly, with no process to start.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from atelier.catalog import BUILTIN, Catalog
from atelier.engine.types import Constraint, GenerationRequest, SamplingParams
from atelier.engine.vllm_client import VllmEngine, parse_urls, request_body
from atelier.errors import InvalidInput, NotFound, Unavailable
from atelier.settings import Settings

MODEL = "smollm2-135m-instruct"
URL = "http://vllm.test:8000"


class FakeVllm:
    """Answers like vLLM's OpenAI server; records every request."""

    def __init__(self, chunks=None, status: int = 200, error: dict | None = None):
        self.requests: list[tuple[str, str, dict | None]] = []
        self.loras: set[str] = set()
        self.chunks = chunks or []
        self.status, self.error = status, error

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))
        path = request.url.path
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": MODEL}, *({"id": n} for n in sorted(self.loras))]})
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/load_lora_adapter":
            assert Path(body["lora_path"]).is_dir()
            self.loras.add(body["lora_name"])
            return httpx.Response(200, text="ok")
        if path == "/v1/unload_lora_adapter":
            self.loras.discard(body["lora_name"])
            return httpx.Response(200, text="ok")
        if self.status >= 400:
            return httpx.Response(self.status, json={"error": self.error or {"message": "boom"}})
        lines = "".join(f"data: {json.dumps(c)}\n\n" for c in self.chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=lines, headers={"content-type": "text/event-stream"})


def chunk(text: str, ids: list[int], finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "text": text, "token_ids": ids, "finish_reason": finish, "logprobs": None}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


@pytest.fixture
def make_engine(tmp_path):
    def make(fake: FakeVllm, **overrides) -> VllmEngine:
        settings = Settings(data_dir=tmp_path / "data", engine="vllm", vllm_url=URL, threads=1, **overrides)
        transport = httpx.MockTransport(fake)
        return VllmEngine(Catalog(list(BUILTIN)), settings, transport=transport, async_transport=transport)

    return make


def collect(engine: VllmEngine, request: GenerationRequest, model: str = MODEL) -> list:
    async def run():
        return [event async for event in engine.generate(model, request)]

    return asyncio.run(run())


def adapter_dir(tmp_path: Path, name: str, peft_type: str = "LORA", size: int = 1000) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "r": 8}))
    (directory / "adapter_model.safetensors").write_bytes(b"\0" * size)
    return directory


def test_every_sampling_control_reaches_vllm_by_its_name():
    params = SamplingParams(max_tokens=7, temperature=0.5, top_k=40, top_p=0.9, frequency_penalty=0.1,
                            presence_penalty=0.2, repetition_penalty=1.1, stop=("\n\n",), seed=42, ignore_eos=True,
                            logit_bias=((5, -100.0),), logprobs=3)
    body = request_body("m", GenerationRequest("r", [1, 2, 3], params, cache_scope="ten_a"))
    assert body["prompt"] == [1, 2, 3] and body["model"] == "m" and body["stream"] is True
    expected = {"max_tokens": 7, "temperature": 0.5, "top_k": 40, "top_p": 0.9, "frequency_penalty": 0.1,
                "presence_penalty": 0.2, "repetition_penalty": 1.1, "stop": ["\n\n"], "seed": 42, "ignore_eos": True,
                "logit_bias": {"5": -100.0}, "logprobs": 3, "return_tokens_as_token_ids": True}
    assert {k: body[k] for k in expected} == expected
    other = request_body("m", GenerationRequest("r", [1], params, cache_scope="ten_b"))
    assert body["cache_salt"] != other["cache_salt"]  # prefixes never shared across tenancies
    assert "top_k" not in request_body("m", GenerationRequest("r", [1], SamplingParams(top_k=0)))
    with pytest.raises(InvalidInput) as refused:
        request_body("m", GenerationRequest("r", [1], SamplingParams(logprobs=1, logprobs_mode="processed")))
    assert refused.value.param == "logprobs_mode"


@pytest.mark.parametrize(("constraint", "expected"), [
    (Constraint("json_schema", '{"type": "object"}'), {"json": {"type": "object"}}),
    (Constraint("json_object"), {"json_object": True}),
    (Constraint("choice", '["yes", "no"]'), {"choice": ["yes", "no"]}),
    (Constraint("regex", "[a-z]+"), {"regex": "[a-z]+"}),
    (Constraint("grammar", 'start: "a"'), {"grammar": 'start: "a"'}),
])  # fmt: skip
def test_constraints_become_structured_outputs(constraint, expected):
    assert request_body("m", GenerationRequest("r", [1], constraint=constraint))["structured_outputs"] == expected


def test_a_stream_maps_to_token_events_and_the_last_one_carries_the_usage(make_engine):
    fake = FakeVllm([chunk("Hel", [10]), chunk("lo", [11], "stop"), USAGE])
    events = collect(make_engine(fake), GenerationRequest("r", [1, 2, 3], SamplingParams(max_tokens=5)))
    assert [(e.text, e.token_ids, e.finish_reason) for e in events] == [("Hel", (10,), None), ("lo", (11,), "stop")]
    assert events[-1].usage.prompt_tokens == 3 and events[-1].usage.completion_tokens == 2


def test_the_loop_guard_ends_a_repeating_output(make_engine):
    fake = FakeVllm([chunk("x", [7]) for _ in range(20)] + [chunk("", [], "length"), USAGE])
    events = collect(make_engine(fake), GenerationRequest("r", [1], SamplingParams(max_tokens=30, loop_guard=True)))
    assert events[-1].finish_reason == "stop" and events[-1].stopped_by == "repetition"
    assert events[-1].usage.completion_tokens == 6  # the 4-gram 7777 seen 3 times


@pytest.mark.parametrize(("status", "error", "raised", "param"), [
    (400, {"message": "bad", "param": "max_tokens"}, InvalidInput, "max_tokens"),
    (404, {"message": "no such model"}, NotFound, "model"),
    (503, {"message": "overloaded"}, Unavailable, None),
    (429, {"message": "busy"}, Unavailable, None),
])  # fmt: skip
def test_vllm_errors_map_to_atelier_errors(make_engine, status, error, raised, param):
    with pytest.raises(raised) as caught:
        collect(make_engine(FakeVllm(status=status, error=error)), GenerationRequest("r", [1]))
    if param is not None:
        assert caught.value.param == param


def test_an_unreachable_server_is_unavailable_with_retry_after(tmp_path):
    settings = Settings(data_dir=tmp_path, engine="vllm", vllm_url="http://127.0.0.1:9", threads=1)
    engine = VllmEngine(Catalog(list(BUILTIN)), settings)
    with pytest.raises(Unavailable) as caught:
        collect(engine, GenerationRequest("r", [1]))
    assert caught.value.retry_after > 0
    health = engine.health()
    assert health["problems"] and health["vllm_servers"][0]["ok"] is False


def test_adapters_load_under_opaque_names_and_unload_with_their_copy(make_engine, tmp_path):
    fake = FakeVllm([chunk("Q", [5], "stop"), USAGE])
    engine = make_engine(fake)
    slot = engine.add_adapter(MODEL, "cm_secret-name", adapter_dir(tmp_path, "a"))
    assert engine.add_adapter(MODEL, "cm_secret-name", adapter_dir(tmp_path, "b")) == slot  # loaded once
    assert engine.adapter_slot("cm_secret-name") == slot
    [name] = fake.loras
    assert name.startswith("atl-") and "secret" not in name
    copy = tmp_path / "data" / "vllm-adapters" / name
    assert (copy / "adapter_config.json").is_file()
    collect(engine, GenerationRequest("r", [1], adapter_slot=slot))
    assert fake.requests[-1][2]["model"] == name
    engine.remove_adapter(slot)
    assert not fake.loras and not copy.exists() and engine.adapter_slot("cm_secret-name") is None
    with pytest.raises(NotFound):
        collect(engine, GenerationRequest("r", [1], adapter_slot=slot))


def test_tfew_adapters_are_refused_and_the_budget_evicts_the_least_recently_used(make_engine, tmp_path):
    engine = make_engine(FakeVllm(), adapter_memory_mb=2500 / 2**20)
    with pytest.raises(InvalidInput, match="LoRA adapters only"):
        engine.add_adapter(MODEL, "cm_ia3", adapter_dir(tmp_path, "ia3", "IA3"))
    first = engine.add_adapter(MODEL, "cm_1", adapter_dir(tmp_path, "one"))
    engine.add_adapter(MODEL, "cm_2", adapter_dir(tmp_path, "two"))
    engine.adapter_slot("cm_1")  # used: now the most recent
    engine.add_adapter(MODEL, "cm_3", adapter_dir(tmp_path, "three"))
    assert engine.adapter_slot("cm_2") is None and engine.adapter_slot("cm_1") == first


def test_several_urls_are_accepted():
    assert parse_urls(" http://a:1/v1, http://b:2/ ") == ["http://a:1", "http://b:2"]
    with pytest.raises(ValueError):
        parse_urls("")
