"""``/v1/files`` through the real app: round trips, limits, purposes, isolation, policies,
and no plaintext of an upload anywhere under the data directory."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from atelier.store.tables import File, StoredObject

FILE_KEYS = {"id", "object", "bytes", "created_at", "filename", "purpose", "status", "status_details", "compartment_id"}
MISSING = "file_" + "0" * 24


def upload(http: TestClient, data: bytes, name: str = "train.jsonl", purpose: str | None = "fine-tune", **fields):
    form = {k: v for k, v in {"purpose": purpose, **fields}.items() if v is not None}
    return http.post("/v1/files", files={"file": (name, data, "application/octet-stream")}, data=form)


def uploaded(http: TestClient, data: bytes = b"{}\n", **kwargs) -> dict:
    response = upload(http, data, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def keyed(client: TestClient, key: str) -> TestClient:
    return TestClient(client.app, headers={"Authorization": f"Bearer {key}"})


def chat_jsonl(marker: str, lines: int) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(lines)
    ]
    rows.insert(lines // 2, {"prompt": marker, "completion": " the distinctive completion"})
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def tenancy_b(client):
    created = client.post("/v1/tenancies", json={"name": "files-beta"})
    assert created.status_code == 201, created.text
    return keyed(client, created.json()["admin_key"])


def test_round_trip(client, app):
    data = "é\x00\xff".encode() + b"\x00\x01\xfe binary" + chat_jsonl("round trip", 5)
    created = uploaded(client, data, name="../../etc/train.jsonl")
    assert set(created) == FILE_KEYS
    assert created["id"].startswith("file_") and created["object"] == "file" and created["status"] == "processed"
    assert (created["bytes"], created["filename"], created["purpose"]) == (len(data), "train.jsonl", "fine-tune")
    assert isinstance(created["created_at"], int) and created["created_at"] > 1_700_000_000
    assert created["compartment_id"] is None
    file_id = created["id"]

    assert client.get(f"/v1/files/{file_id}").json() == created
    assert created in client.get("/v1/files").json()["data"]
    content = client.get(f"/v1/files/{file_id}/content")
    assert content.status_code == 200 and content.content == data
    assert content.headers["content-type"] == "application/octet-stream"

    with app.state.services.db.session() as session:
        row = session.get(File, file_id)
        object_id, tenancy_id = row.object_id, row.tenancy_id
    assert app.state.services.objects.head(tenancy_id, object_id).kind == "file"
    assert client.delete(f"/v1/files/{file_id}").json() == {"id": file_id, "object": "file", "deleted": True}
    assert not app.state.services.objects.exists(tenancy_id, object_id)  # the sealed bytes went too
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
        assert client.get(path).status_code == 404
    assert client.delete(f"/v1/files/{file_id}").status_code == 404


def test_list_filters_orders_and_pages(client):
    ids = [uploaded(client, b"%d" % i, name=f"{i}.jsonl")["id"] for i in range(3)]
    doc = uploaded(client, b"a document", name="doc.txt", purpose="knowledge-base")["id"]

    listing = client.get("/v1/files").json()
    assert listing["object"] == "list" and listing["has_more"] is False
    newest_first = [f["id"] for f in listing["data"] if f["id"] in {*ids, doc}]
    assert newest_first == [doc, *reversed(ids)]
    docs = client.get("/v1/files", params={"purpose": "knowledge-base"}).json()["data"]
    assert doc in [f["id"] for f in docs] and all(f["purpose"] == "knowledge-base" for f in docs)

    oldest = client.get("/v1/files", params={"order": "asc", "limit": 1}).json()
    assert oldest["has_more"] is True and len(oldest["data"]) == 1 and oldest["first_id"] == oldest["last_id"]
    seen, after = [], None
    while True:  # the cursor walks every file once, in order
        page = client.get("/v1/files", params={"order": "asc", "limit": 2, **({"after": after} if after else {})})
        body = page.json()
        seen += [f["id"] for f in body["data"]]
        if not body["has_more"]:
            break
        after = body["last_id"]
    assert [i for i in seen if i in {*ids, doc}] == [*ids, doc] and len(seen) == len(set(seen))
    for i in [*ids, doc]:
        assert client.delete(f"/v1/files/{i}").status_code == 200


def test_bad_form_answers_400(client, check_error):
    error = check_error(upload(client, b"x", purpose="batch"), 400, param="purpose")
    assert "fine-tune" in error["message"]
    check_error(upload(client, b"x", purpose=None), 400, param="purpose")
    check_error(client.post("/v1/files", data={"purpose": "fine-tune"}), 400, param="file")  # no file part
    check_error(client.post("/v1/files", json={"purpose": "fine-tune"}), 400, param="file")  # not multipart
    check_error(upload(client, b"x", name=".."), 400, param="file")
    check_error(client.get("/v1/files", params={"purpose": "assistants"}), 400, param="purpose")
    check_error(client.get("/v1/files", params={"after": MISSING}), 400, param="after")
    two = [("file", ("a.jsonl", b"a")), ("file", ("b.jsonl", b"b"))]
    check_error(client.post("/v1/files", files=two, data={"purpose": "fine-tune"}), 400, param="file")
    boundary = "b0undary"
    cut = f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--{boundary}\r\n'
    cut += 'Content-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\npartial'
    response = client.post(
        "/v1/files", content=cut.encode(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    check_error(response, 400, param="file")  # a cut-off body is not stored as a shorter file
    check_error(upload(client, b"x", compartment="no:such:compartment"), 400, param="compartment")


def test_size_limits(client, make_app, check_error):
    """A file over max_file_bytes is 413; uploads pass the (smaller) global body limit; other routes do not."""
    app = make_app(max_file_bytes=4096, max_body_bytes=1024)
    with TestClient(app, headers={"Authorization": client.headers["Authorization"]}) as http:
        ok = upload(http, b"y" * 4096)  # the whole body is over max_body_bytes
        assert ok.status_code == 200, ok.text
        error = check_error(upload(http, b"y" * 4097), 413, param="file", type_="invalid_request_error")
        assert error["code"] == "payload_too_large" and "4096" in error["message"]
        check_error(upload(http, b"y" * 200_000), 413)  # refused by the body limit before reading
        big_chat = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 2000}]}
        check_error(http.post("/v1/chat/completions", json=big_chat), 413)
        with app.state.services.db.session() as session:  # nothing of the refused uploads was kept
            assert session.scalar(select(func.count()).select_from(File)) == 1
            assert session.scalar(select(func.count()).select_from(StoredObject)) == 1
        assert http.get(f"/v1/files/{ok.json()['id']}/content").content == b"y" * 4096


def test_another_tenancys_file_is_404_like_a_missing_one(client, tenancy_b, check_error):
    ours = uploaded(client, b"tenancy A's data\n")["id"]
    for method, template in (
        ("GET", "/v1/files/{}"), ("GET", "/v1/files/{}/content"), ("DELETE", "/v1/files/{}"),
    ):  # fmt: skip
        theirs = tenancy_b.request(method, template.format(ours))
        missing = tenancy_b.request(method, template.format(MISSING))
        check_error(theirs, 404)
        check_error(missing, 404)
        assert theirs.json()["error"]["message"].replace(ours, "<id>") == missing.json()["error"][
            "message"
        ].replace(MISSING, "<id>")
        assert {k: v for k, v in theirs.json()["error"].items() if k != "message"} == {
            k: v for k, v in missing.json()["error"].items() if k != "message"
        }
    assert ours not in tenancy_b.get("/v1/files").text
    assert client.get(f"/v1/files/{ours}/content").content == b"tenancy A's data\n"  # B's delete did nothing
    theirs_compartment = client.post("/v1/compartments", json={"name": "files-a"}).json()["id"]
    error = check_error(upload(tenancy_b, b"x", compartment=theirs_compartment), 400, param="compartment")
    assert "not found or not authorized" in error["message"]
    own = uploaded(tenancy_b, b"tenancy B's data\n")["id"]
    assert own not in client.get("/v1/files").text
    assert tenancy_b.get(f"/v1/files/{own}/content").content == b"tenancy B's data\n"


def test_no_plaintext_under_the_data_dir(client, api_settings):
    """A dataset over 1 MB (where a spooling parser would write it to disk) never lands in clear."""
    marker = f"distinctive line {uuid.uuid4().hex}"
    data = chat_jsonl(marker, 12_000)
    assert len(data) > 1_100_000
    file_id = uploaded(client, data, name="secret-dataset.jsonl")["id"]
    assert client.get(f"/v1/files/{file_id}/content").content == data  # it is stored, and readable
    needles = [marker.encode(), marker.encode("utf-16-le"), b"the distinctive completion"]
    walked = 0
    for path in api_settings.data_path.rglob("*"):
        if path.is_file():
            walked += 1
            content = path.read_bytes()
            found = [n for n in needles if n in content]
            assert not found, f"plaintext of the upload in {path}"
    assert walked >= 3  # at least the database, the root key and the sealed payload
    db_files = [p.name for p in api_settings.data_path.rglob("atelier.db*")]
    assert "atelier.db" in db_files


def test_policies_decide_per_compartment(client, check_error):
    """A reader of one compartment cannot upload, sees only that compartment's files, and cannot delete;
    a user without any files policy is refused every route; a manager uploads only where granted."""
    created = client.post("/v1/tenancies", json={"name": "files-policies"})
    admin = keyed(client, created.json()["admin_key"])

    def post(path: str, body: dict) -> dict:
        response = admin.post(path, json=body)
        assert response.status_code in (200, 201), response.text
        return response.json()

    eng = post("/v1/compartments", {"name": "eng"})["id"]
    post("/v1/compartments", {"name": "ops"})
    ml = post("/v1/compartments", {"name": "ml", "parent": eng})["id"]
    users = {name: post("/v1/users", {"name": name})["id"] for name in ("ada", "bob", "cy")}
    for group, member in (("readers", "ada"), ("writers", "cy")):
        group_id = post("/v1/groups", {"name": group})["id"]
        post(f"/v1/groups/{group_id}/members", {"user_id": users[member]})
    post("/v1/policies", {"name": "files", "statements": "allow group readers to read files in compartment eng\n"
                                                          "allow group writers to manage files in compartment eng"})
    keys = {n: keyed(client, post("/v1/api-keys", {"name": n, "user_id": u})["key"]) for n, u in users.items()}

    at_root = uploaded(admin, b"root\n", name="root.jsonl")["id"]
    in_ops = uploaded(admin, b"ops\n", name="ops.jsonl", compartment="ops")["id"]
    in_eng = uploaded(admin, b"eng\n", name="eng.jsonl", compartment="eng")
    assert in_eng["compartment_id"] == eng
    in_ml = uploaded(admin, b"ml\n", name="ml.jsonl", compartment=ml)["id"]  # by id; eng:ml is below eng

    ada = keys["ada"]
    check_error(upload(ada, b"x"), 403, type_="permission_error")
    check_error(upload(ada, b"x", compartment="eng"), 403)
    assert {f["id"] for f in ada.get("/v1/files").json()["data"]} == {in_eng["id"], in_ml}
    assert ada.get(f"/v1/files/{in_eng['id']}").json() == in_eng
    assert ada.get(f"/v1/files/{in_ml}/content").content == b"ml\n"
    hidden = check_error(ada.get(f"/v1/files/{at_root}"), 404)
    absent = check_error(ada.get(f"/v1/files/{MISSING}"), 404)
    assert hidden["message"].replace(at_root, "<id>") == absent["message"].replace(MISSING, "<id>")
    check_error(ada.get(f"/v1/files/{in_ops}/content"), 404)
    check_error(ada.delete(f"/v1/files/{in_eng['id']}"), 403)  # visible, but read is too weak
    # no 'manage files' anywhere: refused at the gate, before any file is loaded, whichever the id
    assert check_error(ada.delete(f"/v1/files/{at_root}"), 403) == check_error(ada.delete(f"/v1/files/{MISSING}"), 403)

    bob = keys["bob"]  # no policy on files at all
    check_error(upload(bob, b"x"), 403)
    check_error(bob.get("/v1/files"), 403)
    check_error(bob.get(f"/v1/files/{in_eng['id']}"), 403)

    cy = keys["cy"]
    check_error(upload(cy, b"x"), 403)  # manage in eng only: not at the root
    check_error(upload(cy, b"x", compartment="ops"), 403)
    mine = uploaded(cy, b"cy's data\n", compartment="eng:ml")
    assert mine["compartment_id"] == ml
    assert cy.delete(f"/v1/files/{mine['id']}").json()["deleted"] is True
    check_error(cy.delete(f"/v1/files/{in_ops}"), 404)
    assert admin.get(f"/v1/files/{in_ops}/content").content == b"ops\n"
