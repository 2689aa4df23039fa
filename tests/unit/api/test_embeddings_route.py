"""POST /v1/embeddings on the real all-MiniLM-L6-v2: shapes, base64, limits, 400s and 404s."""

from __future__ import annotations

import base64
import math
import struct

import pytest

URL = "/v1/embeddings"
MODEL = "all-minilm-l6-v2"


def embed(client, **fields):
    return client.post(URL, json={"model": MODEL, "input": ["a cat", "a dog"], **fields})


def test_float_embeddings_have_openai_shape(client):
    response = embed(client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item in body["data"]:
        assert item["object"] == "embedding" and len(item["embedding"]) == 384
        assert math.isclose(math.sqrt(sum(v * v for v in item["embedding"])), 1.0, rel_tol=1e-4)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_a_single_string_input(client):
    assert len(embed(client, input="hello").json()["data"]) == 1


def test_base64_is_little_endian_float32_of_the_same_vector(client):
    floats = embed(client, input="hello", dimensions=384).json()["data"][0]["embedding"]
    encoded = embed(client, input="hello", encoding_format="base64").json()["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == 384
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(decoded, floats))


def test_96_inputs_pass(client):
    assert len(embed(client, input=[f"text {i}" for i in range(96)]).json()["data"]) == 96


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ["x"] * 97}, "input"),
        ({"input": []}, "input"),
        ({"input": [[1, 2, 3]]}, "input"),
        ({"input": ["ok", ""]}, "input[1]"),
        ({"input": ["word " * 600], "truncate": "NONE"}, "input[0]"),
        ({"dimensions": 128}, "dimensions"),
        ({"encoding_format": "hex"}, "encoding_format"),
        ({"truncate": "MIDDLE"}, "truncate"),
        ({"input_type": "poetry"}, "input_type"),
    ],
)
def test_bad_input_is_400_naming_the_param(client, check_error, fields, param):
    check_error(embed(client, **fields), 400, param=param)


def test_token_arrays_are_refused_with_a_hint(client, check_error):
    assert "check_embedding_ctx_length" in check_error(embed(client, input=[[1, 2]]), 400)["message"]


def test_long_input_is_truncated_by_default(client):
    assert embed(client, input=["word " * 600]).status_code == 200


@pytest.mark.parametrize("model", ["nope", "tiny"])
def test_unknown_or_non_embedding_model_is_404(client, check_error, model):
    check_error(embed(client, model=model), 404, param="model")
