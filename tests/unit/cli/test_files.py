"""``atelier files …`` against the real app: the CLI's requests go through ``httpx.MockTransport``
to a ``TestClient``, so upload, list, show, download and delete are checked end to end."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from atelier.api.app import create_app
from atelier.cli import State, app
from atelier.settings import Settings

ADMIN_KEY = "cli-files-admin-key-0123456789"
HOP_HEADERS = ("host", "content-length", "transfer-encoding", "content-encoding")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("cli-files")
    settings = Settings(data_dir=data, cache_dir=data / "cache", admin_key=ADMIN_KEY, threads=1)
    with TestClient(create_app(settings)) as http:
        yield http


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("ATELIER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "client-data"))
    monkeypatch.setenv("ATELIER_API_KEY", ADMIN_KEY)
    monkeypatch.chdir(tmp_path)


def run(server: TestClient, *args: str):
    def forward(request: httpx.Request) -> httpx.Response:
        answer = server.request(
            request.method, request.url.path, params=str(request.url.params), content=request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS},
        )  # fmt: skip
        headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)

    return CliRunner().invoke(app, ["files", *args], obj=State(transport=httpx.MockTransport(forward)))


def test_upload_list_show_download_delete(server, tmp_path):
    data = b'{"prompt": "2+2=", "completion": " 4"}\n' * 20 + b"\x00\xff"
    source = tmp_path / "train.jsonl"
    source.write_bytes(data)
    uploaded = run(server, "upload", str(source), "--json")
    assert uploaded.exit_code == 0, uploaded.output
    created = json.loads(uploaded.output)
    file_id = created["id"]
    assert (created["filename"], created["bytes"], created["purpose"]) == ("train.jsonl", len(data), "fine-tune")

    listed = run(server, "list")
    assert listed.exit_code == 0 and file_id in listed.output and "train.jsonl" in listed.output
    assert listed.output.splitlines()[0].split() == ["ID", "FILENAME", "PURPOSE", "BYTES", "COMPARTMENT", "CREATED"]
    assert file_id not in run(server, "list", "--purpose", "knowledge-base").output
    shown = run(server, "show", file_id)
    assert shown.exit_code == 0 and str(len(data)) in shown.output

    out = tmp_path / "downloads"
    out.mkdir()
    downloaded = run(server, "download", file_id, "-o", str(out / "copy.jsonl"))
    assert downloaded.exit_code == 0, downloaded.output
    assert (out / "copy.jsonl").read_bytes() == data
    refused = run(server, "download", file_id, "-o", str(out / "copy.jsonl"))
    assert refused.exit_code == 1 and "--force" in refused.output
    source.unlink()
    by_name = run(server, "download", file_id)  # default: the file's own name, in the current directory
    assert by_name.exit_code == 0 and (tmp_path / "train.jsonl").read_bytes() == data

    deleted = run(server, "delete", file_id)
    assert deleted.exit_code == 0 and f"deleted {file_id}" in deleted.output
    missing = run(server, "show", file_id)
    assert missing.exit_code == 1 and "not found" in missing.output


def test_upload_errors_are_one_line(server, tmp_path):
    source = tmp_path / "doc.txt"
    source.write_text("hello")
    bad = run(server, "upload", str(source), "--purpose", "batch")
    assert bad.exit_code == 1 and "--purpose must be one of" in bad.output
    nowhere = run(server, "upload", str(source), "--compartment", "no-such")
    assert nowhere.exit_code == 1 and "compartment" in nowhere.output
    ok = run(server, "upload", str(source), "-p", "knowledge-base", "--name", "renamed.txt")
    assert ok.exit_code == 0 and "renamed.txt" in ok.output and "knowledge-base" in ok.output
