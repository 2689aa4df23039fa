"""The official ``openai`` client parses every response shape (over ASGI, on the tiny model).

The integration tests drive a real server on the real model; this keeps the shapes honest
in the fast suite: objects, SSE chunks with usage, base64 embeddings (the client's default),
model objects and the exception class of each error status.
"""

from __future__ import annotations

import openai
import pytest


HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def oai(client):
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="test-admin-key-123456", http_client=client, max_retries=0
    )


def test_chat_and_stream(oai):
    full = oai.chat.completions.create(model="tiny", messages=HI, max_tokens=6, temperature=0)
    assert full.choices[0].finish_reason in ("stop", "length") and full.usage.total_tokens > 0
    stream = oai.chat.completions.create(
        model="tiny", messages=HI, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage == full.usage


def test_completion(oai):
    assert oai.completions.create(model="tiny", prompt="abc", max_tokens=3).choices[0].text is not None


def test_embeddings_in_the_clients_default_base64(oai):
    result = oai.embeddings.create(model="all-minilm-l6-v2", input=["hello", "world"])
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.usage.prompt_tokens > 0


def test_models(oai):
    assert "tiny" in {m.id for m in oai.models.list()}
    assert oai.models.retrieve("tiny").context_length == 256  # extra fields survive


@pytest.mark.parametrize(
    ("kwargs", "exception"),
    [
        ({"temperature": 3}, openai.BadRequestError),
        ({"model": "nope"}, openai.NotFoundError),
    ],
)
def test_errors_raise_the_clients_exceptions(oai, kwargs, exception):
    with pytest.raises(exception) as info:
        oai.chat.completions.create(**{"model": "tiny", "messages": HI, **kwargs})
    assert info.value.body["param"] in ("temperature", "model")


def test_wrong_key_raises_authentication_error(client):
    bad = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong-key-0123456789", http_client=client, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
