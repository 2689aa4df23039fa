"""The OpenAI-compatible API of a real server, driven by the official ``openai`` client.

Everything runs on the bundled real models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) on a
CPU that decodes ~15 tokens/s, so every generation asks for a handful of tokens only.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"

JAPAN = [{"role": "user", "content": "What is the capital of Japan?"}]
ERROR_FIELDS = {"message", "type", "param", "code"}


# ---------------------------------------------------------------- helpers


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error_object(response: httpx.Response, status: int, param: str | None, type_: str | None = None) -> dict:
    """The response is ``status`` with OpenAI's error object naming ``param``; returns the object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert ERROR_FIELDS <= set(error), error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["param"] == param, error
    if type_ is not None:
        assert error["type"] == type_, error
    return error


def chat(client: openai.OpenAI, messages=JAPAN, **kwargs):
    kwargs.setdefault("model", CHAT_MODEL)
    kwargs.setdefault("max_tokens", 16)
    return client.chat.completions.create(messages=messages, **kwargs)


def tokenize(http: httpx.Client, text: str, model: str = CHAT_MODEL) -> dict:
    response = http.post("/v1/tokenize", json={"model": model, "text": text})
    assert response.status_code == 200, response.text
    return response.json()


def chat_stats(server_health: dict) -> dict:
    return server_health["engine"]["chat_models"].get(CHAT_MODEL, {"running": 0, "waiting": 0})


@pytest.fixture(scope="module")
def greedy_japan(openai_client: openai.OpenAI):
    """The non-streamed greedy answer to "What is the capital of Japan?" (16 tokens at most)."""
    return chat(openai_client, temperature=0, max_tokens=16)


# ---------------------------------------------------------------- chat


def test_chat_answers_the_capital_of_japan(greedy_japan) -> None:
    answer = greedy_japan.choices[0].message.content
    assert "Tokyo" in answer
    assert greedy_japan.object == "chat.completion"
    assert greedy_japan.model == CHAT_MODEL
    assert greedy_japan.choices[0].message.role == "assistant"
    assert greedy_japan.choices[0].finish_reason == "stop"
    usage = greedy_japan.usage
    assert 0 < usage.completion_tokens <= 16
    assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_greedy_chat_is_deterministic(openai_client, greedy_japan) -> None:
    again = chat(openai_client, temperature=0, max_tokens=16)
    assert again.choices[0].message.content == greedy_japan.choices[0].message.content
    assert again.usage == greedy_japan.usage


def test_chat_usage_counts_the_rendered_prompt_exactly(openai_client, http) -> None:
    system, question = "You are a concise assistant.", "What is the capital of Japan?"
    result = chat(
        openai_client,
        [{"role": "system", "content": system}, {"role": "user", "content": question}],
        temperature=0,
        max_tokens=8,
    )
    # SmolLM2's own chat template is ChatML; with an explicit system message it adds nothing else.
    rendered = (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert result.usage.prompt_tokens == tokenize(http, rendered)["count"]
    assert result.usage.completion_tokens <= 8
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_stream_equals_the_whole_answer_and_ends_with_usage(openai_client, greedy_japan) -> None:
    stream = chat(openai_client, temperature=0, max_tokens=16, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks, "no chunk streamed"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy_japan.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage == greedy_japan.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_sends_no_usage(openai_client) -> None:
    chunks = list(chat(openai_client, temperature=0, max_tokens=4, stream=True))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "length"


def test_same_seed_same_text_other_seeds_differ(openai_client) -> None:
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]

    def sample(seed: int) -> str:
        return chat(openai_client, messages, temperature=1.0, seed=seed, max_tokens=12).choices[0].message.content

    first, second = sample(1234), sample(1234)
    assert first == second
    others = [sample(seed) for seed in (1, 2)]
    assert any(text != first for text in others), f"seeds 1, 2 and 1234 all gave {first!r}"


def test_stop_string_cuts_the_answer_before_it(openai_client, greedy_japan) -> None:
    full = greedy_japan.choices[0].message.content
    assert "Tokyo" in full
    result = chat(openai_client, temperature=0, max_tokens=16, stop=["Tokyo"])
    assert result.choices[0].message.content == full[: full.index("Tokyo")]
    assert result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens < greedy_japan.usage.completion_tokens


def test_max_tokens_ends_with_length(openai_client) -> None:
    messages = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    result = chat(openai_client, messages, temperature=0, max_tokens=5)
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 5
    assert result.choices[0].message.content


def test_max_completion_tokens_is_honoured(openai_client) -> None:
    messages = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    result = openai_client.chat.completions.create(
        model=CHAT_MODEL, messages=messages, temperature=0, max_completion_tokens=3
    )
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 3


def test_concurrent_greedy_requests_equal_their_solo_answers(openai_client) -> None:
    """Continuous batching (left padding, rows joining mid-decode) must not change greedy output."""
    questions = [
        "What is the capital of Japan?",
        "What is 2 + 2?",
        "Name the largest ocean on Earth.",
        "What color is the sky on a clear day?",
    ]

    def ask(question: str) -> str:
        result = chat(openai_client, [{"role": "user", "content": question}], temperature=0, max_tokens=16)
        return result.choices[0].message.content

    solo = [ask(q) for q in questions]
    barrier = threading.Barrier(len(questions))

    def ask_together(question: str) -> str:
        barrier.wait(timeout=30)
        return ask(question)

    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(ask_together, questions))
    assert together == solo


# ---------------------------------------------------------------- completions


def test_completion_continues_a_raw_prompt(openai_client, http) -> None:
    prompt = "The capital of France is"
    result = openai_client.completions.create(model=CHAT_MODEL, prompt=prompt, temperature=0, max_tokens=8)
    assert result.object == "text_completion"
    assert result.choices[0].text
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens == tokenize(http, prompt)["count"]
    assert 0 < result.usage.completion_tokens <= 8
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens

    stream = openai_client.completions.create(
        model=CHAT_MODEL, prompt=prompt, temperature=0, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == result.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == result.usage.total_tokens


# ---------------------------------------------------------------- embeddings


def test_embeddings_are_384_dim_unit_vectors(openai_client) -> None:
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."]
    result = openai_client.embeddings.create(model=EMBEDDING_MODEL, input=texts)  # the client asks for base64
    assert result.model == EMBEDDING_MODEL
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = [d.embedding for d in result.data]
    for vector in vectors:
        assert len(vector) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-3)
    assert result.usage.prompt_tokens > 0

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2

    floats = openai_client.embeddings.create(model=EMBEDDING_MODEL, input=texts[0], encoding_format="float")
    assert len(floats.data) == 1
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(floats.data[0].embedding, vectors[0]))


def test_embeddings_accept_96_inputs_and_refuse_97(openai_client) -> None:
    texts = [f"sentence number {i}" for i in range(97)]
    result = openai_client.embeddings.create(model=EMBEDDING_MODEL, input=texts[:96])
    assert len(result.data) == 96
    assert [d.index for d in result.data] == list(range(96))
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    assert caught.value.param == "input"
    assert_error_object(caught.value.response, 400, "input", "invalid_request_error")


def test_embedding_truncate_none_refuses_a_too_long_input_by_index(openai_client) -> None:
    long_text = "word " * 700  # ~700 tokens, over the 512-token window
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.embeddings.create(model=EMBEDDING_MODEL, input=[long_text], extra_body={"truncate": "NONE"})
    assert caught.value.param == "input[0]"
    assert_error_object(caught.value.response, 400, "input[0]")
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.embeddings.create(
            model=EMBEDDING_MODEL, input=["short", long_text], extra_body={"truncate": "NONE"}
        )
    assert caught.value.param == "input[1]"
    for mode in ("END", "START"):
        result = openai_client.embeddings.create(model=EMBEDDING_MODEL, input=[long_text], extra_body={"truncate": mode})
        assert len(result.data[0].embedding) == 384


# ---------------------------------------------------------------- models, tokenize, health, openapi


def test_models_list_both_bundled_models_with_capabilities(openai_client) -> None:
    models = {m.id: m.to_dict() for m in openai_client.models.list()}
    assert CHAT_MODEL in models and EMBEDDING_MODEL in models
    chat_model, embedding_model = models[CHAT_MODEL], models[EMBEDDING_MODEL]
    assert set(chat_model["capabilities"]) == {"chat", "completion"}
    assert chat_model["context_length"] == 8192
    assert chat_model["max_output_tokens"] > 0
    assert embedding_model["capabilities"] == ["embedding"]
    assert embedding_model["dimensions"] == 384
    assert openai_client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("no-such-model")


def test_tokenize_returns_ids_strings_and_count(http) -> None:
    result = tokenize(http, "Hello world")
    assert result["count"] == len(result["ids"]) == len(result["tokens"]) > 0
    assert "".join(result["tokens"]) == "Hello world"
    embedding = tokenize(http, "Hello world", model=EMBEDDING_MODEL)
    assert embedding["model"] == EMBEDDING_MODEL and embedding["count"] > 0


def test_health_needs_no_key(http) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_openapi_declares_the_bearer_scheme(http) -> None:
    document = http.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert any(s.get("type") == "http" and s.get("scheme", "").lower() == "bearer" for s in schemes.values()), schemes
    chat_route = document["paths"]["/v1/chat/completions"]["post"]
    assert chat_route.get("security"), "the chat route does not declare its security requirement"


# ---------------------------------------------------------------- errors


SAMPLING_ERRORS = [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"extra_body": {"top_k": -1}}, "top_k"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"presence_penalty": -3}, "presence_penalty"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -1}, "max_tokens"),
]


@pytest.mark.parametrize(("kwargs", "param"), SAMPLING_ERRORS, ids=[f"{p}={v}" for (v, p) in SAMPLING_ERRORS])
def test_out_of_bounds_parameters_are_400_naming_them(openai_client, kwargs, param) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(openai_client, **{"max_tokens": 4, **kwargs})
    assert caught.value.param == param
    assert caught.value.type == "invalid_request_error"
    assert_error_object(caught.value.response, 400, param, "invalid_request_error")


def test_max_tokens_above_the_model_limit_is_400(openai_client) -> None:
    limit = openai_client.models.retrieve(CHAT_MODEL).to_dict()["max_output_tokens"]
    with pytest.raises(openai.BadRequestError) as caught:
        chat(openai_client, max_tokens=limit + 1)
    assert caught.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.chat.completions.create(model=CHAT_MODEL, messages=JAPAN, max_completion_tokens=limit + 1)
    assert caught.value.param == "max_completion_tokens"


def test_prompt_longer_than_the_context_is_400(openai_client, http) -> None:
    long_text = "hello " * 9000
    assert tokenize(http, long_text)["count"] > 8192
    with pytest.raises(openai.BadRequestError) as caught:
        chat(openai_client, [{"role": "user", "content": long_text}], max_tokens=4)
    assert caught.value.param == "messages"
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.completions.create(model=CHAT_MODEL, prompt=long_text, max_tokens=4)
    assert caught.value.param == "prompt"


def test_prompt_plus_max_tokens_over_the_context_is_400(openai_client) -> None:
    text = "hello " * 7000  # fits the 8192-token context, but not with 4000 more tokens
    with pytest.raises(openai.BadRequestError) as caught:
        chat(openai_client, [{"role": "user", "content": text}], max_tokens=4000)
    assert caught.value.param == "max_tokens"


def test_body_that_is_not_json_is_400(http) -> None:
    headers = {"Content-Type": "application/json"}
    response = http.post("/v1/chat/completions", content=b'{"model": "smollm2', headers=headers)
    error = assert_error_object(response, 400, None, "invalid_request_error")
    assert error["code"] == "invalid_json"
    response = http.post("/v1/chat/completions", content=b"[1, 2]", headers=headers)
    assert_error_object(response, 400, None, "invalid_request_error")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": CHAT_MODEL}, "messages"),
        ({"messages": JAPAN}, "model"),
        ({"model": CHAT_MODEL, "messages": []}, "messages"),
        ({"model": CHAT_MODEL, "messages": [{"content": "hi"}]}, "messages[0].role"),
    ],
    ids=["no-messages", "no-model", "empty-messages", "no-role"],
)
def test_missing_fields_are_400_naming_them(http, body, param) -> None:
    response = http.post("/v1/chat/completions", json=body)
    assert_error_object(response, 400, param, "invalid_request_error")


def test_unknown_model_is_404(openai_client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        chat(openai_client, model="no-such-model", max_tokens=4)
    assert caught.value.param == "model"
    assert caught.value.code == "model_not_found"
    assert_error_object(caught.value.response, 404, "model")
    with pytest.raises(openai.NotFoundError):
        openai_client.embeddings.create(model="no-such-model", input="hi")
    with pytest.raises(openai.NotFoundError):  # a chat model is not an embedding model
        openai_client.embeddings.create(model=CHAT_MODEL, input="hi")


def test_missing_or_wrong_key_is_401(base_url, admin_key, anonymous_http) -> None:
    http = anonymous_http
    body = {"model": CHAT_MODEL, "messages": JAPAN, "max_tokens": 4}
    for headers in ({}, auth("wrong-key-0123456789abcdef"), auth("atl_nope_nope"), {"Authorization": "Basic abc"}):
        response = http.post("/v1/chat/completions", json=body, headers=headers)
        error = assert_error_object(response, 401, None, "authentication_error")
        assert admin_key not in error["message"]
        assert response.headers.get("www-authenticate", "").lower().startswith("bearer")
    assert http.get("/v1/models").status_code == 401
    wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong-key-0123456789abcdef", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=CHAT_MODEL, messages=JAPAN, max_tokens=4)


# ---------------------------------------------------------------- disconnects and the queue bound


def test_client_disconnect_mid_stream_frees_the_slot(live_server, admin_key) -> None:
    body = {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story about a dragon and a knight."}],
        "temperature": 0,
        "max_tokens": 400,  # ~30 s of decoding: far longer than the few seconds allowed below
        "stream": True,
    }
    with httpx.Client(base_url=live_server.base_url, timeout=60.0) as client:
        with client.stream("POST", "/v1/chat/completions", json=body, headers=auth(admin_key)) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            seen = 0
            for line in lines:
                if line.startswith("data:"):
                    seen += 1
                if seen >= 3:  # the role chunk and two content chunks
                    break
            assert chat_stats(live_server.health())["running"] == 1
    deadline = time.monotonic() + 5.0
    stats = chat_stats(live_server.health())
    while stats["running"] != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = chat_stats(live_server.health())
    assert stats["running"] == 0 and stats["waiting"] == 0, stats


def test_full_queue_is_429_with_retry_after(make_server) -> None:
    tight_server = make_server({"ATELIER_MAX_BATCH": "1", "ATELIER_MAX_WAITING": "1"})  # 1 running + 1 queued
    client = tight_server.client()
    chat(client, max_tokens=1)  # load the model first: the burst below must meet a warm engine
    n = 5
    barrier = threading.Barrier(n)
    messages = [{"role": "user", "content": "Tell me a long story about a dragon."}]

    def call(_: int):
        barrier.wait(timeout=30)
        try:
            return chat(client, messages, temperature=0, max_tokens=24)
        except openai.RateLimitError as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(call, range(n)))
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    served = [r for r in results if not isinstance(r, openai.RateLimitError)]
    assert limited, "no request was refused with 429 although 5 arrived at once for 1 running + 1 queued"
    assert len(served) >= 2, "the running request and the queued one should both be served"
    assert len(served) <= 2, f"{len(served)} requests were accepted for 1 running + 1 queued"
    for exc in limited:
        assert int(exc.response.headers["retry-after"]) >= 1
        assert_error_object(exc.response, 429, None, "rate_limit_error")
    for result in served:
        assert result.usage.completion_tokens == 24 or result.choices[0].finish_reason == "stop"
