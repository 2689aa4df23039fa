"""POST /v1/chat/completions on a tiny random model: response shapes, streaming, determinism,
prompt engineering, and a 400 naming the param for every bad input."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from atelier.api.openai.chat import build_messages
from atelier.api.openai.protocol import ChatCompletionRequest
from atelier.errors import InvalidInput, QuotaExceeded
from atelier.prompts.templates import ZERO_SHOT_COT

URL = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello!"}]


def chat(client, **fields):
    return client.post(URL, json={"model": "tiny", "messages": HELLO, **fields})


def sse_events(response) -> list:
    """The ``data:`` payloads of an SSE body, parsed (``[DONE]`` kept as a string)."""
    assert response.text.endswith("\n\n")
    events = []
    for block in response.text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_non_streamed_completion_has_openai_shape(client):
    response = chat(client, max_tokens=8, temperature=0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == "tiny"
    assert body["system_fingerprint"].startswith("fp_")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_is_deterministic_and_seed_repeats(client):
    first = chat(client, max_tokens=12, temperature=0).json()["choices"][0]["message"]["content"]
    assert chat(client, max_tokens=12, temperature=0).json()["choices"][0]["message"]["content"] == first
    seeded = [chat(client, max_tokens=12, temperature=1.0, seed=7).json()["choices"][0]["message"] for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_ignore_eos_generates_to_max_tokens(client):
    eos = {"257": 100}  # the tiny tokenizer's <|im_end|>, made certain
    body = chat(client, max_tokens=6, temperature=0, logit_bias=eos).json()
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"]["completion_tokens"] == 1
    body = chat(client, max_tokens=6, temperature=0, logit_bias=eos, ignore_eos=True).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 6


def test_default_max_tokens_is_the_model_limit(client):
    body = chat(client, temperature=0, seed=1).json()
    assert body["usage"]["completion_tokens"] <= 64
    if body["choices"][0]["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == 64


def test_stream_is_sse_with_role_content_finish_usage_and_done(client):
    response = chat(client, max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks, usage_chunk = events[:-2], events[-2]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in events[:-1]}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] >= 1
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    plain = chat(client, max_tokens=10, temperature=0).json()
    assert streamed == plain["choices"][0]["message"]["content"]
    assert usage_chunk["usage"] == plain["usage"]


def test_stream_without_include_usage_has_no_usage_chunk(client):
    events = sse_events(chat(client, max_tokens=4, stream=True))
    assert events[-1] == "[DONE]"
    assert all(e["choices"] for e in events[:-1])
    assert all(e.get("usage") is None for e in events[:-1])


def test_stop_sequence_is_accepted(client):
    assert chat(client, max_tokens=8, stop=["\n", "xyz"]).status_code == 200
    assert chat(client, max_tokens=8, stop="xyz").status_code == 200


@pytest.mark.parametrize("chat_format", ["template", "chatml", "llama2"])
def test_chat_formats(client, chat_format):
    response = chat(client, max_tokens=2, chat_format=chat_format)
    assert response.status_code == 200, response.text


def test_prompt_engineering_adds_to_the_prompt(client):
    base = chat(client, max_tokens=1).json()["usage"]["prompt_tokens"]
    for extra in (
        {"preamble": "You are terse."},
        {"examples": [{"input": "2+2", "output": "4"}]},
        {"chain_of_thought": True},
    ):
        assert chat(client, max_tokens=1, **extra).json()["usage"]["prompt_tokens"] > base, extra


def test_build_messages_applies_examples_and_cot_to_the_last_user_message():
    body = ChatCompletionRequest(
        model="tiny",
        messages=[
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "What is 3+4?"},
        ],
        examples=[{"input": "1+1", "output": "2"}],
        chain_of_thought=True,
        preamble="Be exact.",
    )
    messages = build_messages(body)
    assert messages[0] == {"role": "system", "content": "Be exact."}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[3:5] == [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]
    assert messages[-1]["content"].startswith("What is 3+4?") and messages[-1]["content"].endswith(ZERO_SHOT_COT)


def test_build_messages_needs_a_user_message_for_examples():
    body = ChatCompletionRequest(
        model="tiny", messages=[{"role": "system", "content": "s"}], examples=[{"input": "a", "output": "b"}]
    )
    with pytest.raises(InvalidInput) as info:
        build_messages(body)
    assert info.value.param == "examples"


LONG = "word " * 60  # 300 byte tokens > the tiny model's 256-token context


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.01}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"presence_penalty": 2.1}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 65}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_completion_tokens": 1000}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"seed": 2**70}, "seed"),
        ({"n": 9}, "n"),
        ({"n": 0}, "n"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}] * 2}, "tools[1].function.name"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"logit_bias": {"50256": -101}}, "logit_bias.50256"),
        ({"logit_bias": {"word": 1}}, "logit_bias"),
        ({"structured_outputs": {"regex": "a+", "choice": ["a"]}}, "structured_outputs"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"chat_format": "alpaca"}, "chat_format"),
        ({"stream": "yes please"}, "stream"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "messages[1].role"),
        ({"messages": [{"role": "user", "content": LONG}]}, "messages"),
        ({"messages": [{"role": "user", "content": "word " * 40}], "max_tokens": 64}, "max_tokens"),
        ({"examples": [{"input": "", "output": "x"}]}, "examples[0].input"),
        ({"model": None}, "model"),
    ],
)
def test_bad_input_is_400_naming_the_param(client, check_error, fields, param):
    check_error(chat(client, **fields), 400, param=param, type_="invalid_request_error")


def test_tool_choice_without_tools_is_refused_as_openai_does(client, check_error):
    assert "only allowed when tools" in check_error(chat(client, tool_choice="required"), 400,
                                                    param="tool_choice")["message"]


def test_prompt_longer_than_the_context(client, check_error):
    error = check_error(chat(client, messages=[{"role": "user", "content": LONG}]), 400, param="messages")
    assert error["code"] == "context_length_exceeded" and "256" in error["message"]


@pytest.mark.parametrize("missing", ["model", "messages"])
def test_missing_fields(client, check_error, missing):
    body = {"model": "tiny", "messages": HELLO}
    del body[missing]
    error = check_error(client.post(URL, json=body), 400, param=missing)
    assert error["code"] == "missing_required_parameter"


def test_body_not_json(client, check_error):
    response = client.post(URL, content=b'{"model": "tiny", ', headers={"content-type": "application/json"})
    assert check_error(response, 400)["param"] is None


@pytest.mark.parametrize("model", ["no-such-model", "all-minilm-l6-v2"])
def test_unknown_or_non_chat_model_is_404(client, check_error, model):
    error = check_error(chat(client, model=model), 404, param="model", type_="not_found_error")
    assert error["code"] == "model_not_found"


class FullEngine:
    """An engine whose queue is always full."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.started = 0

    def tokenizer(self, model):
        return self._tokenizer

    async def generate(self, model, request):
        self.started += 1
        raise QuotaExceeded("the model is busy", retry_after=2.0)
        yield  # pragma: no cover  (makes this an async generator)

    def health(self):
        return {}

    def close(self):
        pass


@pytest.mark.parametrize("stream", [False, True])
def test_full_queue_is_a_real_429_with_retry_after(make_app, engine, check_error, stream):
    app = make_app(engine=FullEngine(engine.tokenizer("tiny")))
    with TestClient(app, headers={"Authorization": "Bearer test-admin-key-123456"}) as c:
        response = chat(c, stream=stream)
    check_error(response, 429, type_="rate_limit_error")
    assert response.headers["retry-after"] == "2"


def test_n_choices_equal_separate_seeded_requests(client):
    together = chat(client, n=3, seed=11, temperature=1.0, max_tokens=6).json()
    assert [c["index"] for c in together["choices"]] == [0, 1, 2]
    alone = [chat(client, seed=11 + i, temperature=1.0, max_tokens=6).json()["choices"][0]["message"]["content"]
             for i in range(3)]
    assert [c["message"]["content"] for c in together["choices"]] == alone
    assert together["usage"]["prompt_tokens"] == chat(client, max_tokens=1).json()["usage"]["prompt_tokens"]


def test_a_json_schema_answer_always_parses_and_validates(client):
    import json

    import jsonschema

    schema = {"type": "object", "additionalProperties": False, "required": ["ok", "n"],
              "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}}}
    for seed in range(5):
        reply = chat(client, seed=seed, temperature=1.0, max_tokens=40,
                     response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}).json()
        assert reply["choices"][0]["finish_reason"] == "stop", reply
        jsonschema.validate(json.loads(reply["choices"][0]["message"]["content"]), schema)
