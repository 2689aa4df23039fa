"""POST /v1/tokenize: ids, per-token strings and count, exactly what the engine sees."""

from __future__ import annotations


def test_tokenize(client):
    body = client.post("/v1/tokenize", json={"model": "tiny", "text": "héllo"}).json()
    assert body["model"] == "tiny"
    assert body["count"] == len(body["ids"]) == len(body["tokens"]) == 6  # é is two bytes
    assert body["tokens"][0] == "h"


def test_tokenize_an_embedding_model(client):
    body = client.post("/v1/tokenize", json={"model": "all-minilm-l6-v2", "text": "hello world"}).json()
    assert body["count"] == 2 and body["tokens"] == ["hello", "world"]


def test_tokenize_errors(client, check_error):
    check_error(client.post("/v1/tokenize", json={"model": "tiny"}), 400, param="text")
    check_error(client.post("/v1/tokenize", json={"model": "nope", "text": "x"}), 404, param="model")
