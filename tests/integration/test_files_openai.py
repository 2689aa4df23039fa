"""``/v1/files`` on a real server, driven by the official ``openai`` client unchanged."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = [
    {"messages": [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": str(2 * i)}]}
    for i in range(12)
]
DATA = "".join(json.dumps(row) + "\n" for row in ROWS).encode()


@pytest.fixture
def training_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(DATA)
    return path


def test_files_create_list_retrieve_content_delete(openai_client: openai.OpenAI, training_file):
    with training_file.open("rb") as handle:
        created = openai_client.files.create(file=handle, purpose="fine-tune")
    assert created.id.startswith("file_") and created.object == "file"
    assert (created.filename, created.bytes, created.purpose, created.status) == (
        "train.jsonl", len(DATA), "fine-tune", "processed",
    )  # fmt: skip
    assert isinstance(created.created_at, int)

    listed = openai_client.files.list(purpose="fine-tune")
    assert created.id in [f.id for f in listed]
    assert created.id in [f.id for f in openai_client.files.list()]
    retrieved = openai_client.files.retrieve(created.id)
    assert retrieved.model_dump() == created.model_dump()
    assert openai_client.files.content(created.id).read() == DATA

    deleted = openai_client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        openai_client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        openai_client.files.content(created.id)
    assert created.id not in [f.id for f in openai_client.files.list()]


def test_bad_purpose_and_other_tenancys_file(openai_client: openai.OpenAI, http: httpx.Client, base_url, training_file):
    with training_file.open("rb") as handle, pytest.raises(openai.BadRequestError) as bad:
        openai_client.files.create(file=handle, purpose="batch")
    assert bad.value.status_code == 400 and bad.value.param == "purpose"

    with training_file.open("rb") as handle:
        ours = openai_client.files.create(file=handle, purpose="fine-tune")
    created = http.post("/v1/tenancies", json={"name": "files-openai-beta"})
    assert created.status_code == 201, created.text
    other = openai.OpenAI(base_url=f"{base_url}/v1", api_key=created.json()["admin_key"], max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(ours.id)
        with pytest.raises(openai.NotFoundError):
            other.files.delete(ours.id)
        assert ours.id not in [f.id for f in other.files.list()]
    finally:
        other.close()
    assert openai_client.files.content(ours.id).read() == DATA
    openai_client.files.delete(ours.id)


def test_file_over_the_limit_is_413(make_server, training_file):
    server = make_server({"ATELIER_MAX_FILE_BYTES": "100"})
    client = server.client()
    try:
        with training_file.open("rb") as handle, pytest.raises(openai.APIStatusError) as too_large:
            client.files.create(file=handle, purpose="fine-tune")
        assert too_large.value.status_code == 413
        assert too_large.value.body["code"] == "payload_too_large"
        assert list(client.files.list()) == []
    finally:
        client.close()
