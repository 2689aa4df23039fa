"""``atelier kb …`` against the real app: the CLI's requests go through ``httpx.MockTransport`` to a
``TestClient``, while a worker thread runs the ingestion jobs, so ``add --wait`` is followed to its end."""

from __future__ import annotations

import json
import os
import threading

import httpx
import pytest
from typer.testing import CliRunner

from atelier.cli import State, app
from atelier.jobs.kb_ingest import KIND, KbIngestHandler
from atelier.jobs.worker import Worker

HOP_HEADERS = ("host", "content-length", "transfer-encoding", "content-encoding")


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path, kb_settings):
    for name in list(os.environ):
        if name.startswith("ATELIER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "client-data"))
    monkeypatch.setenv("ATELIER_API_KEY", kb_settings.admin_key.get_secret_value())


@pytest.fixture
def background_worker(kb_app, kb_catalog, embedder, kb_settings):
    """A worker thread over the app's database, objects and store, stopped after the test."""
    state = kb_app.state.services
    handler = KbIngestHandler(state.db, state.objects, state.vectors, kb_catalog, lambda spec: embedder)
    worker = Worker(state.db, {KIND: handler}, poll_seconds=0.05, data_dir=kb_settings.data_path)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield worker
    worker.stop()
    thread.join(timeout=30)


def run(http, *args: str):
    def forward(request: httpx.Request) -> httpx.Response:
        answer = http.request(
            request.method, request.url.path, params=str(request.url.params), content=request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS},
        )  # fmt: skip
        headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)

    return CliRunner().invoke(app, ["kb", *args], obj=State(transport=httpx.MockTransport(forward)))


def test_create_add_folder_list_query_ask(http, tmp_path, background_worker, kb_engine):
    created = run(http, "create", "handbook", "--embedding-model", "hash-embed", "--chunk-size", "32",
                  "--chunk-overlap", "4", "--json")
    assert created.exit_code == 0, created.output
    kb_id = json.loads(created.output)["id"]

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "install.md").write_text("# Install\n\nRun the installer and choose the disk layout.\n")
    (folder / "sub" / "network.txt").write_text("The bridge connects the virtual machines to the network.")
    (folder / "sub" / "page.html").write_text("<html><body><h1>Backups</h1><p>Backups run nightly.</p></body></html>")
    (folder / "image.png").write_bytes(b"\x89PNG")  # skipped in folders
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "secret.txt").write_text("not uploaded")
    single = tmp_path / "faq.txt"
    single.write_text("Questions and answers about the disk layout.")

    added = run(http, "add", "handbook", str(folder), str(single), "--tags", "docs,v1")
    assert added.exit_code == 0, added.output
    assert "uploaded" in added.output and "ingested" in added.output and "chunks" in added.output  # the bars
    for name in ("install.md", "network.txt", "page.html", "faq.txt"):
        assert name in added.output
    assert "image.png" not in added.output and "secret.txt" not in added.output
    listed = run(http, "list", "handbook", "--json")
    docs = json.loads(listed.output)
    assert sorted(d["filename"] for d in docs) == ["faq.txt", "install.md", "network.txt", "page.html"]
    assert {d["state"] for d in docs} == {"ready"} and all(d["tags"] == ["docs", "v1"] for d in docs)

    again = run(http, "add", kb_id, str(single))
    assert again.exit_code == 0 and "1 unchanged" in again.output

    found = run(http, "query", "handbook", "virtual machines bridge network", "--top-k", "1")
    assert found.exit_code == 0, found.output
    assert found.output.startswith("1. [") and "network.txt" in found.output
    kbs = run(http, "list")
    assert "handbook" in kbs.output and "hash-embed" in kbs.output

    asked = run(http, "ask", "handbook", "How does the bridge connect the virtual machines?", "--model", "scripted")
    assert asked.exit_code == 0, asked.output
    assert asked.output.startswith("According to [1], " + kb_engine.reply)
    assert "Sources:" in asked.output and "[1] network.txt" in asked.output
    requests = len(kb_engine.requests)
    quoted = run(http, "ask", "handbook", "How does the bridge connect the virtual machines?", "--answer-mode",
                 "extractive", "--json")
    assert quoted.exit_code == 0, quoted.output
    answer = json.loads(quoted.output)
    assert answer["answer_mode"] == "extractive" and answer["citations"][0]["filename"] == "network.txt"
    assert len(kb_engine.requests) == requests  # quoted from the passages, no model
    wrong = run(http, "ask", "handbook", "q", "--answer-mode", "poetic")
    assert wrong.exit_code != 0 and "answer_mode" in wrong.output


def test_add_reports_failures_and_refuses_unsupported_files(http, tmp_path, background_worker):
    assert run(http, "create", "broken-docs", "--embedding-model", "hash-embed").exit_code == 0
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4 not a pdf at all")
    result = run(http, "add", "broken-docs", str(bad))
    assert result.exit_code == 1 and "failed" in result.output and "bad.pdf" in result.output
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG")
    refused = run(http, "add", "broken-docs", str(png))
    assert refused.exit_code == 1 and "unsupported file type" in refused.output
    missing = run(http, "add", "no-such-kb", str(bad))
    assert missing.exit_code == 1 and "no knowledge base 'no-such-kb'" in missing.output


def test_one_bad_file_in_a_folder_is_reported_while_the_others_go_through(http, tmp_path, background_worker):
    assert run(http, "create", "mixed", "--embedding-model", "hash-embed").exit_code == 0
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "faq.txt").write_bytes(b"")  # empty: refused by the service
    (folder / "pump.md").write_text("# Pump\n\nReplace the pump seal every 500 hours.")
    (folder / "leave.txt").write_text("Employees take 25 days of leave a year.")
    result = run(http, "add", "mixed", str(folder), str(tmp_path / "missing.txt"))
    assert result.exit_code == 1, result.output
    assert "2 of 4 uploaded, 2 failed" in result.output
    assert "faq.txt: " in result.output and "the file is empty" in result.output
    assert "missing.txt: no such file or folder" in result.output
    listed = run(http, "list", "mixed", "--json")
    docs = json.loads(listed.output[listed.output.index("["):])
    assert sorted(d["filename"] for d in docs) == ["leave.txt", "pump.md"]
    assert all(d["state"] == "ready" for d in docs)


def test_no_wait_returns_pending_documents(http, tmp_path):
    assert run(http, "create", "later", "--embedding-model", "hash-embed").exit_code == 0
    doc = tmp_path / "a.txt"
    doc.write_text("Some text to ingest later.")
    result = run(http, "add", "later", str(doc), "--no-wait", "--json")
    assert result.exit_code == 0, result.output
    body = result.output[result.output.index("["):]
    assert json.loads(body)[0]["state"] == "pending"
