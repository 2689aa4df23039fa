"""POST /v1/completions: text and token-id prompts, streaming, and 400s naming the param."""

from __future__ import annotations

import json

import pytest

URL = "/v1/completions"


def complete(client, **fields):
    return client.post(URL, json={"model": "tiny", "prompt": "Once upon a time", **fields})


def test_text_completion_has_openai_shape(client):
    response = complete(client, max_tokens=6, temperature=0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert isinstance(choice["text"], str) and choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] == len("Once upon a time")  # one byte token per character


def test_prompt_forms_are_equivalent(client, engine):
    ids = engine.tokenizer("tiny")("Once upon a time", add_special_tokens=False)["input_ids"]
    texts = {
        json.dumps(complete(client, prompt=p, max_tokens=5, temperature=0).json()["choices"][0]["text"])
        for p in ("Once upon a time", ["Once upon a time"], list(ids))
    }
    assert len(texts) == 1


def test_stream_with_usage(client):
    response = complete(client, max_tokens=5, temperature=0, stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")[:-1]
    assert blocks[-1] == "data: [DONE]"
    events = [json.loads(b[len("data: ") :]) for b in blocks[:-1]]
    assert all(e["object"] == "text_completion" for e in events)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] >= 1
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = "".join(e["choices"][0]["text"] for e in events[:-1])
    assert streamed == complete(client, max_tokens=5, temperature=0).json()["choices"][0]["text"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [1, 2, 100000]}, "prompt[2]"),
        ({"prompt": "x" * 300}, "prompt"),
        ({"prompt": "x" * 200, "max_tokens": 60}, "max_tokens"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 9}, "best_of"),
        ({"best_of": 1, "n": 2}, "best_of"),
        ({"best_of": 2, "stream": True}, "best_of"),
        ({"logprobs": 6}, "logprobs"),
        ({"n": 9}, "n"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"presence_penalty": 9}, "presence_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 65}, "max_tokens"),
    ],
)
def test_bad_input_is_400_naming_the_param(client, check_error, fields, param):
    check_error(complete(client, **fields), 400, param=param)


def test_missing_prompt(client, check_error):
    check_error(client.post(URL, json={"model": "tiny"}), 400, param="prompt")


def test_unknown_model(client, check_error):
    check_error(complete(client, model="nope"), 404, param="model")
