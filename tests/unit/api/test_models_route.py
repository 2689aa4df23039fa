"""GET /v1/models and /v1/models/{id}: the catalog as OpenAI model objects with limits."""

from __future__ import annotations


def test_list_models(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2", "tiny"} <= set(by_id)
    for model in body["data"]:
        assert model["object"] == "model" and isinstance(model["created"], int) and model["owned_by"]
    assert by_id["tiny"]["capabilities"] == ["chat", "completion"]
    assert by_id["tiny"]["context_length"] == 256 and by_id["tiny"]["max_output_tokens"] == 64
    assert by_id["all-minilm-l6-v2"]["capabilities"] == ["embedding"]
    assert by_id["all-minilm-l6-v2"]["dimensions"] == 384
    assert by_id["smollm2-135m-instruct"]["dimensions"] == 0


def test_retrieve_model(client):
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"


def test_retrieve_unknown_model(client, check_error):
    error = check_error(client.get("/v1/models/nope"), 404, param="model")
    assert error["code"] == "model_not_found"
