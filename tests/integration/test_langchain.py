"""LangChain's OpenAI classes, unchanged, pointed at a real Atelier server."""

from __future__ import annotations

import math

import langchain_openai
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"


def test_chat_openai_answers(base_url: str, admin_key: str) -> None:
    llm = langchain_openai.ChatOpenAI(
        base_url=f"{base_url}/v1",
        api_key=admin_key,
        model=CHAT_MODEL,
        temperature=0,
        max_tokens=16,
        max_retries=0,
    )
    reply = llm.invoke("What is the capital of Japan?")
    assert "Tokyo" in reply.content
    usage = reply.usage_metadata
    assert usage is not None and 0 < usage["output_tokens"] <= 16
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_chat_openai_streams(base_url: str, admin_key: str) -> None:
    llm = langchain_openai.ChatOpenAI(
        base_url=f"{base_url}/v1", api_key=admin_key, model=CHAT_MODEL, temperature=0, max_tokens=16, max_retries=0
    )
    whole = llm.invoke("What is the capital of Japan?").content
    streamed = "".join(chunk.content for chunk in llm.stream("What is the capital of Japan?"))
    assert streamed == whole


def test_openai_embeddings(base_url: str, admin_key: str) -> None:
    embeddings = langchain_openai.OpenAIEmbeddings(
        model=EMBEDDING_MODEL,
        base_url=f"{base_url}/v1",
        api_key=admin_key,
        tiktoken_enabled=False,
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    texts = ["Tokyo is the capital of Japan.", "Paris is the capital of France.", "I like green apples."]
    vectors = embeddings.embed_documents(texts)
    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-3)
    query = embeddings.embed_query("Which city is Japan's capital?")
    assert len(query) == 384
    scores = [sum(q * v for q, v in zip(query, vector)) for vector in vectors]
    assert max(range(3), key=scores.__getitem__) == 0
