"""The research console (``atelier.console``) on the real knowledge-base API, without a browser.

The app of this folder's conftest (real routes, policies, store, job queue and ingestion
handler; the hash embedder and the ``scripted`` chat model, which answers "The answer is in
[1].") is served by uvicorn on a free port in a thread, so the console reaches it over real
HTTP exactly as in production. ``actions`` are called directly; the Streamlit script runs in
Streamlit's ``AppTest`` (which cannot drive a file uploader: the page's upload goes through
the same ``actions.upload`` here, and through the real widget in ``tests/e2e``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from streamlit.testing.v1 import AppTest

from atelier.client import ApiError
from atelier.console import APP_PATH, actions
from atelier.console.actions import Connection
from atelier.jobs.kb_ingest import KIND, KbIngestHandler
from atelier.jobs.worker import Worker

DOC = (
    b"# The Brass Lighthouse\n\nThe Brass Lighthouse of Port Elwen was built in 1887 by the engineer Mara Quill.\n\n"
    b"## Keepers\n\nThe last keeper, Tobias Wren, left the lighthouse in 1962 when the lamp became automatic.\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def api_url(kb_app) -> Iterator[str]:
    """The conftest's app served by uvicorn (lifespan included) in a thread."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(kb_app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def drain(api_url, kb_app, kb_catalog, embedder, kb_settings):
    """``drain()`` runs the queued ingestion jobs to their end (the worker is not running by itself)."""
    state = kb_app.state.services
    handler = KbIngestHandler(state.db, state.objects, state.vectors, kb_catalog, lambda spec: embedder)
    worker = Worker(state.db, {KIND: handler}, poll_seconds=0.05, data_dir=kb_settings.data_path)

    def run() -> int:
        done = 0
        while worker.run_once():
            done += 1
        return done

    return run


@pytest.fixture(scope="module")
def admin(api_url, kb_settings) -> Connection:
    return Connection(api_url, kb_settings.admin_key.get_secret_value(), "environment")


def test_actions_create_upload_ingest_search_and_ask(admin, drain):
    with admin.client() as client:
        kb = actions.create_knowledge_base(client, "console-notes", "hash-embed", 40, 5)
        assert kb["id"] in [k["id"] for k in actions.knowledge_bases(client)]
        assert "hash-embed" in actions.models_with(client, "embedding")
        assert "scripted" in actions.models_with(client, "chat")
        doc, created = actions.upload(client, kb["id"], "lighthouse.md", DOC, "history, maritime")
        assert created and (doc.filename, doc.state, doc.finished) == ("lighthouse.md", "pending", False)
        again, created_again = actions.upload(client, kb["id"], "lighthouse.md", DOC)
        assert (again.id, created_again) == (doc.id, False)
        assert [d.state for d in actions.documents(client, kb["id"])] == ["pending"]
        assert drain() == 1
        [ready] = actions.documents(client, kb["id"])
        assert ready.state == "ready" and ready.chunk_count >= 2 and ready.status.startswith("ready · ")

        hits = actions.search(client, kb["id"], "last keeper Tobias Wren", mode="keyword", top_k=3)
        assert hits and hits[0].index == 1 and "Tobias Wren" in hits[0].text
        assert hits[0].label.startswith("[1] lighthouse.md · characters ")
        assert DOC.decode()[hits[0].start:hits[0].end] == hits[0].text  # the span is the passage's

        answer = actions.ask(client, kb["id"], "Who was the last keeper?", mode="hybrid", top_k=3, max_tokens=32)
        assert answer.text == "According to [1], The answer is in [1]." and answer.model == "scripted"
        assert answer.answer_mode == "generative"
        assert [(c.index, c.filename) for c in answer.citations] == [(1, "lighthouse.md")]
        assert answer.passages and answer.passages[0].text == answer.citations[0].text
        assert answer.markdown == r"According to **\[1\]**, The answer is in **\[1\]**\."

        quoted = actions.ask(client, kb["id"], "Who was the last keeper?", top_k=3, answer_mode="extractive")
        assert quoted.answer_mode == "extractive" and quoted.citations
        assert all(f"{c.text} [{c.index}]" in quoted.text for c in quoted.citations)
        assert all(DOC.decode()[c.start:c.end] == c.text for c in quoted.citations)  # quoted exactly


def test_actions_surface_the_api_errors(admin, api_url):
    with admin.client() as client:
        with pytest.raises(ApiError) as missing:
            actions.ask(client, "kb_does_not_exist", "anything?")
        assert actions.describe_error(missing.value).startswith("Not found (HTTP 404): ")
        with pytest.raises(ApiError) as bad:
            actions.create_knowledge_base(client, "bad name with spaces", "hash-embed")
        assert actions.describe_error(bad.value).startswith("Invalid request (HTTP 400): ")
        assert "(param: name)" in actions.describe_error(bad.value)
    with Connection(api_url, "atl_nope_nope", "sidebar").client() as client:
        with pytest.raises(ApiError) as denied:
            actions.knowledge_bases(client)
        assert denied.value.status == 401
        assert actions.describe_error(denied.value).endswith("— check the API key in the sidebar.")


def by_label(elements, label: str):
    found = [e for e in elements if e.label == label]
    assert len(found) == 1, [e.label for e in elements]
    return found[0]


def texts(at: AppTest) -> str:
    """Everything the page shows as Markdown, captions and alerts, one line each (escapes and bold removed)."""
    kinds = ("markdown", "caption", "success", "info", "error", "warning")
    return "\n".join(str(e.value).replace("\\", "").replace("**", "") for kind in kinds for e in getattr(at, kind))


def test_page_creates_a_kb_shows_ingestion_answers_with_sources_and_errors(api_url, admin, drain, monkeypatch):
    monkeypatch.setenv("ATELIER_URL", api_url)
    monkeypatch.setenv("ATELIER_API_KEY", admin.api_key)
    at = AppTest.from_file(str(APP_PATH), default_timeout=60).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Research assistant"
    assert "Key: from the environment" in texts(at)

    # Create a knowledge base from the sidebar's form: it becomes the selected one.
    by_label(at.sidebar.text_input, "Name").input("page-notes")
    by_label(at.sidebar.selectbox, "Embedding model").select("hash-embed")
    by_label(at.sidebar.number_input, "Chunk size (tokens)").set_value(40)
    by_label(at.sidebar.number_input, "Chunk overlap (tokens)").set_value(5)
    by_label(at.sidebar.button, "Create").click()
    at.run()
    assert not at.exception, at.exception
    kb_id = at.sidebar.selectbox(key="kb_id").value
    with admin.client() as client:
        assert client.knowledge_bases.get(kb_id)["name"] == "page-notes"
        actions.upload(client, kb_id, "lighthouse.md", DOC)
    assert "Created knowledge base page-notes." in texts(at)

    # While the document waits for the worker, the page shows it pending; then ready.
    at.run()
    assert "lighthouse.md — pending" in texts(at)
    assert len(at.get("progress")) == 1
    drain()
    at.run()
    assert "lighthouse.md — ready · " in texts(at) and not at.get("progress")

    # Ask: the answer with its [n] marker, and the cited source with its file and span.
    at.text_area[0].input("Who was the last keeper?")
    by_label(at.number_input, "Most answer tokens").set_value(32)  # the scripted model's limit is 64
    by_label(at.button, "Ask").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert r"According to **\[1\]**, The answer is in **\[1\]**\." in [m.value for m in at.markdown]  # the cited marker in bold
    assert "[1] lighthouse.md · characters " in texts(at)

    # A plain search, in keyword mode, lists passages with their file.
    at.radio(key="mode").set_value("keyword")
    by_label(at.text_input, "Search the documents").input("Tobias Wren keeper")
    by_label(at.button, "Search").click()
    at.run()
    assert "(keyword)" in texts(at) and "Tobias Wren" in texts(at)

    # A wrong key typed in the sidebar: the API's 401 shown as such; an unreachable URL too.
    at.sidebar.text_input(key="api_key").input("atl_wrong_key").run()
    assert [e.value for e in at.error] and "Not authenticated (HTTP 401)" in at.error[0].value
    assert "Key: typed above" in texts(at)
    at.sidebar.text_input(key="api_url").input(f"http://127.0.0.1:{free_port()}").run()
    assert "Cannot reach the Atelier server" in at.error[0].value
