"""``POST /v1/knowledge-bases/{id}/documents/batch``: several files in one request, a bad one reported
while the others go through; and the multipart reader collecting several file parts."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from atelier.api.app import create_app
from atelier.api.resources.kb_documents import MAX_BATCH_FILES
from atelier.api.uploads import FormFile, read_form, upload_limit
from atelier.client.client import AtelierClient
from atelier.errors import InvalidInput
from atelier.settings import Settings

DISKS = b"To add a disk, open the storage panel and press the add button. The disk appears after a rescan."
BREAD = b"Bake the bread at two hundred degrees for forty minutes. Let the dough rest overnight."
HOP_HEADERS = ("host", "content-length", "transfer-encoding", "content-encoding")


def batch(http, kb_id: str, files: list[tuple[str, bytes]], tags: str | None = None, client=None):
    """The batch route's response for ``files`` sent as parts ``files``."""
    parts = [("files", (name, data)) for name, data in files]
    return (client or http).post(f"/v1/knowledge-bases/{kb_id}/documents/batch", files=parts,
                                 data={"tags": tags} if tags is not None else None)


@pytest.fixture
def small_files(kb_app, monkeypatch):
    """``max_file_bytes`` of 256 for the test (the body limit stays the app's)."""
    monkeypatch.setattr(kb_app.state.services.settings, "max_file_bytes", 256)
    return 256


def test_bad_files_are_reported_and_the_others_go_through(http, make_kb, drain, small_files):
    kb = make_kb("batch-mixed")
    sent = batch(http, kb["id"], [("disks.txt", DISKS), ("empty.txt", b""), ("image.png", b"\x89PNG\r\n"),
                                  ("huge.txt", b"word " * 200), ("bread.md", BREAD)], tags='["ops"]')
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert (body["object"], body["uploaded"], body["failed"]) == ("list", 2, 3)
    entries = body["data"]
    assert [(e["filename"], e["status"]) for e in entries] == [
        ("disks.txt", "created"), ("empty.txt", "failed"), ("image.png", "failed"), ("huge.txt", "failed"),
        ("bread.md", "created")]
    for good in (entries[0], entries[4]):
        assert good["error"] is None and good["document"]["state"] == "pending" and good["document"]["tags"] == ["ops"]
    empty, image, huge = (e["error"] for e in entries[1:4])
    assert "empty" in empty["message"] and (empty["code"], empty["param"]) == ("invalid_value", "files")
    assert "unsupported file type" in image["message"] and image["param"] == "files"
    assert "256" in huge["message"] and (huge["code"], huge["param"]) == ("payload_too_large", "files")
    assert all(e["document"] is None for e in entries[1:4])

    assert drain() == 2
    listed = http.get(f"/v1/knowledge-bases/{kb['id']}/documents").json()["data"]
    assert [(d["filename"], d["state"]) for d in listed] == [("disks.txt", "ready"), ("bread.md", "ready")]
    found = http.post(f"/v1/knowledge-bases/{kb['id']}/query", json={"query": "storage panel disk", "top_k": 1})
    assert found.json()["data"][0]["filename"] == "disks.txt"

    again = batch(http, kb["id"], [("disks.txt", DISKS), ("bread-copy.md", BREAD)])
    assert again.status_code == 200, again.text
    assert [(e["status"], e["document"]["id"]) for e in again.json()["data"]] == [
        ("unchanged", listed[0]["id"]), ("unchanged", listed[1]["id"])]
    assert (again.json()["uploaded"], again.json()["failed"]) == (2, 0)
    assert drain() == 0  # nothing queued


def test_the_whole_request_is_refused_without_files_or_with_too_many(http, make_kb, check_error):
    kb = make_kb("batch-refused")
    route = f"/v1/knowledge-bases/{kb['id']}/documents/batch"
    check_error(http.post(route, files={"tags": (None, "ops")}), 400, param="files")  # a form without files
    check_error(http.post(route, json={"files": ["x"]}), 400, param="files")  # not multipart
    cut_off = http.post(route, content=b"--b\r\nnonsense", headers={"Content-Type": "multipart/form-data; boundary=b"})
    check_error(cut_off, 400, param="files")
    check_error(http.post(route, files={"file": ("a.txt", b"x")}), 400, param="file")  # the single route's name
    too_many = [(f"f{i}.txt", f"file {i}".encode()) for i in range(MAX_BATCH_FILES + 1)]
    error = check_error(batch(http, kb["id"], too_many), 400, param="files")
    assert str(MAX_BATCH_FILES) in error["message"]
    check_error(batch(http, kb["id"], [("a.txt", b"fine text")], tags='["bad tag!"]'), 400, param="tags")
    assert http.get(f"/v1/knowledge-bases/{kb['id']}/documents").json()["data"] == []  # nothing was stored


def test_a_foreign_tenancys_knowledge_base_is_404_before_the_body_is_read(http, kb_app, make_kb, check_error):
    kb = make_kb("batch-foreign")
    created = http.post("/v1/tenancies", json={"name": "batch-other"})
    assert created.status_code == 201, created.text
    other = TestClient(kb_app, headers={"Authorization": f"Bearer {created.json()['admin_key']}"})
    route = f"/v1/knowledge-bases/{kb['id']}/documents/batch"
    check_error(batch(http, kb["id"], [("a.txt", b"some text")], client=other), 404)
    check_error(other.post(route, content=b"not a form", headers={"Content-Type": "text/plain"}), 404)
    check_error(other.post(route, files={"tags": (None, "x")}), 404)  # would be 400 if the body were read
    assert http.get(f"/v1/knowledge-bases/{kb['id']}/documents").json()["data"] == []


def test_the_batch_body_may_hold_four_of_the_largest_files(tmp_path, kb_settings, kb_engine, kb_catalog,
                                                          check_error):
    size = 64 * 1024
    key = kb_settings.admin_key.get_secret_value()
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache", admin_key=key, threads=1,
                        max_file_bytes=size, max_body_bytes=1024)
    assert upload_limit(settings) == 2 * size and upload_limit(settings, files=4) == 5 * size
    with TestClient(create_app(settings, engine=kb_engine, catalog=kb_catalog),
                    headers={"Authorization": f"Bearer {key}"}) as small:
        kb = small.post("/v1/knowledge-bases", json={"name": "limits", "embedding_model": "hash-embed"}).json()
        three = [(f"{i}.txt", b"w " * (size // 2 - 100)) for i in range(3)]  # over one file's body limit
        sent = batch(small, kb["id"], three)
        assert sent.status_code == 200 and sent.json()["uploaded"] == 3, sent.text[:300]
        single = [("file", file) for file in three]
        check_error(small.post(f"/v1/knowledge-bases/{kb['id']}/documents", files=single), 413)  # keeps its limit
        check_error(batch(small, kb["id"], [(f"{i}.txt", b"v" * (size - 1)) for i in range(5)]), 413)


def test_client_add_many(http, make_kb, drain):
    def forward(request: httpx.Request) -> httpx.Response:
        answer = http.request(request.method, request.url.path, content=request.read(),
                              headers={k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS})
        return httpx.Response(answer.status_code, content=answer.content, headers={"content-type": "application/json"})

    kb = make_kb("batch-client")
    client = AtelierClient("http://atelier.test", transport=httpx.MockTransport(forward))
    result = client.knowledge_bases.documents.add_many(kb["id"], [("a.txt", DISKS), ("b.png", b"\x89PNG")],
                                                       tags=["ops", "v2"])
    assert [(e["filename"], e["status"]) for e in result["data"]] == [("a.txt", "created"), ("b.png", "failed")]
    assert result["data"][0]["document"]["tags"] == ["ops", "v2"] and result["data"][1]["error"]["param"] == "files"
    assert drain() == 1


# the reader


def form_request(body: bytes, boundary: str = "xyz") -> Request:
    """A request whose body is ``body``, in two chunks, as ``multipart/form-data``."""
    chunks = [body[: len(body) // 2], body[len(body) // 2:]]

    async def receive():
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    headers = [(b"content-type", f"multipart/form-data; boundary={boundary}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}, receive)


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "xyz") -> bytes:
    """``(name, filename or None, data)`` parts as a multipart body."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def read(body: bytes, **options):
    return asyncio.run(read_form(form_request(body), file_field="files", max_file_bytes=8, **options))


def test_reader_collects_several_files_in_order_and_marks_the_too_large():
    body = multipart(("files", "a.txt", b"aaa"), ("tags", None, b"x,y"), ("files", "big.txt", b"b" * 5000),
                     ("files", "c.txt", b"12345678"), ("files", None, b"noname"))
    form = read(body, max_files=10)
    assert form.files == [FormFile("a.txt", b"aaa"), FormFile("big.txt", b"", too_large=True),
                          FormFile("c.txt", b"12345678"), FormFile(None, b"noname")]
    assert form.fields == {"tags": "x,y"} and form.data is None and form.filename is None


def test_reader_refuses_more_files_than_asked_and_keeps_one_file_without_max_files():
    body = multipart(*[("files", f"{i}.txt", b"x") for i in range(4)])
    assert len(read(body, max_files=4).files) == 4
    with pytest.raises(InvalidInput, match="at most 3 files") as caught:
        read(body, max_files=3)
    assert caught.value.param == "files"
    with pytest.raises(InvalidInput, match="one file per request"):
        read(body)
    single = read(multipart(("files", "a.txt", b"abc")))
    assert (single.filename, single.data, single.files) == ("a.txt", b"abc", [])
    assert read(multipart(("tags", None, b"t")), max_files=3).files == []
