"""The sealed object store on an S3-compatible bucket, over real HTTP to moto's emulator.

moto's server mode runs in this process on 127.0.0.1 (a free port); boto3 reaches it
through its ordinary HTTP path, as it would reach a real service (about ten seconds in all,
hence a unit test; ``db`` is the unit tests' migrated SQLite database). The bucket must hold
only ciphertext under opaque keys, large objects must go up in parts and come back in
ranged reads, tenancies must not see each other's objects, a key rotation must touch rows
only, and a dead or failing endpoint must be ``Unavailable`` (503), never a botocore error.
Last, the real app with ``object_store = "s3://..."`` serves an uploaded file from the bucket.

moto is an emulator: this proves the client side (requests, ordering, errors), not real
S3's consistency, latency, IAM policies, server-side encryption or multipart limits.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer

from atelier.api.app import create_app
from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.engine.client import LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.errors import NotFound, Unavailable
from atelier.security.crypto import KeyManager, RootKey
from atelier.settings import Settings
from atelier.store import repos
from atelier.store.object_stores import open_object_store
from atelier.store.objects import GCM_TAG_BYTES, LocalObjectStore, ObjectStore
from atelier.store.s3_objects import PART_BYTES, S3ObjectStore, parse_location
from atelier.store.tables import File, StoredObject

DATA = b"QUOKKA-S3-MARKER-7d2e some bytes\x00\xff" * 50
PREFIX = "sealed/v1"
ADMIN_KEY = "test-admin-key-s3-123456"


# --- the emulator, a bucket, the store -------------------------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 over HTTP on 127.0.0.1 (port chosen by the OS)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path):
    """Dummy credentials; nothing from the machine's AWS or Atelier environment or files."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "ATELIER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def s3(endpoint):
    """A plain boto3 client on the emulator: the test's own view of the bucket."""
    return boto3.client("s3", endpoint_url=endpoint)


@pytest.fixture
def bucket(s3) -> str:
    name = f"atelier-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def km(db) -> KeyManager:
    return KeyManager(db, RootKey.generate())


@pytest.fixture
def store(bucket, km, db, endpoint) -> S3ObjectStore:
    return S3ObjectStore(f"s3://{bucket}/{PREFIX}/", km, db, endpoint_url=endpoint)


@pytest.fixture
def tenancies(db) -> tuple[str, str]:
    with db.session() as s:
        return repos.create_tenancy(s, "a").id, repos.create_tenancy(s, "b").id


def raw(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


# --- round trips, ciphertext only, multipart -----------------------------------------


def test_round_trip_and_the_bucket_holds_only_ciphertext(store, s3, bucket, tenancies, db):
    a, _ = tenancies
    _: ObjectStore = store
    ref = store.put(a, "dataset", DATA)
    assert (ref.tenancy_id, ref.kind, ref.key_version, ref.size) == (a, "dataset", 1, len(DATA) + GCM_TAG_BYTES)
    assert store.get(a, ref.id) == DATA and store.head(a, ref.id) == ref and store.exists(a, ref.id)
    empty = store.put(a, "file", b"")
    assert store.get(a, empty.id) == b""

    assert keys(s3, bucket) == sorted([f"{PREFIX}/{a}/{ref.id}", f"{PREFIX}/{a}/{empty.id}"])
    stored = raw(s3, bucket, store.key(a, ref.id))
    assert len(stored) == len(DATA) + GCM_TAG_BYTES == ref.size
    assert b"QUOKKA" not in stored and DATA[:16] not in stored
    assert len(raw(s3, bucket, store.key(a, empty.id))) == GCM_TAG_BYTES
    with db.session() as s:  # the data key stays in the row, never in the bucket
        row = s.get(StoredObject, ref.id)
        assert row.wrapped_dek not in stored


def test_a_large_object_goes_up_in_parts_and_comes_back_in_ranges(s3, bucket, km, db, tenancies):
    a, _ = tenancies
    calls: dict[str, list[dict]] = {"CreateMultipartUpload": [], "UploadPart": [], "PutObject": [], "GetObject": []}
    for operation, seen in calls.items():
        s3.meta.events.register(f"provide-client-params.s3.{operation}", lambda params, seen=seen, **_: seen.append(
            dict(params)))
    store = S3ObjectStore(f"s3://{bucket}/{PREFIX}", km, db, client=s3)
    data = b"ZEBRA-MULTIPART-MARKER" + os.urandom(PART_BYTES + 2**20)  # 9 MiB and a bit: two parts
    ref = store.put(a, "adapter", data)

    assert len(calls["CreateMultipartUpload"]) == 1 and calls["PutObject"] == []
    assert len(calls["UploadPart"]) == 2
    head = s3.head_object(Bucket=bucket, Key=store.key(a, ref.id))
    assert head["ContentLength"] == len(data) + GCM_TAG_BYTES
    assert head["ETag"].strip('"').endswith("-2")  # S3's ETag of a two-part upload
    assert b"ZEBRA" not in raw(s3, bucket, store.key(a, ref.id))

    calls["GetObject"].clear()
    assert store.get(a, ref.id) == data
    ranges = [c.get("Range") for c in calls["GetObject"] if c["Key"] == store.key(a, ref.id)]
    assert len(ranges) == 2 and all(r and r.startswith("bytes=") for r in ranges)


# --- scoping, deletion, keys -----------------------------------------------------------


def test_another_tenancys_object_is_not_found_like_a_missing_one(store, s3, bucket, tenancies):
    a, b = tenancies
    ref = store.put(a, "document", DATA)
    for object_id in (ref.id, "obj_000000000000000000000000", "../" + ref.id):
        for call in (store.get, store.delete, store.head):
            with pytest.raises(NotFound) as info:
                call(b, object_id)
            assert info.value.param == "object_id" and str(info.value) == f"object {object_id!r} not found"
        assert not store.exists(b, object_id)
    assert store.get(a, ref.id) == DATA and keys(s3, bucket) == [f"{PREFIX}/{a}/{ref.id}"]


def test_delete_removes_the_bucket_object_and_the_row(store, s3, bucket, tenancies, db):
    a, _ = tenancies
    ref, kept = store.put(a, "file", DATA), store.put(a, "file", DATA)
    store.delete(a, ref.id)
    assert keys(s3, bucket) == [store.key(a, kept.id)]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key=store.key(a, ref.id))
    with db.session() as s:
        assert s.get(StoredObject, ref.id) is None
    for call in (store.get, store.delete, store.head):
        with pytest.raises(NotFound):
            call(a, ref.id)
    assert store.get(a, kept.id) == DATA


def test_a_row_whose_payload_is_gone_is_unavailable(store, s3, bucket, tenancies):
    a, _ = tenancies
    ref = store.put(a, "file", DATA)
    s3.delete_object(Bucket=bucket, Key=store.key(a, ref.id))
    with pytest.raises(Unavailable, match="missing"):
        store.get(a, ref.id)


def test_rewrap_all_after_rotation_touches_rows_only(store, km, s3, bucket, tenancies):
    a, b = tenancies
    old = [store.put(a, "dataset", DATA + bytes([i])) for i in range(3)]
    other = store.put(b, "dataset", DATA)
    assert km.rotate(a) == 2
    before = {k: (raw(s3, bucket, k), s3.head_object(Bucket=bucket, Key=k)["LastModified"]) for k in keys(s3, bucket)}

    assert store.rewrap_all(a) == 3 and store.rewrap_all(a) == 0 and store.rewrap_all(b) == 0
    km.retire_below(a, 2)  # version 1 no longer opens: only the re-wrapped keys can
    after = {k: (raw(s3, bucket, k), s3.head_object(Bucket=bucket, Key=k)["LastModified"]) for k in keys(s3, bucket)}
    assert after == before
    assert [store.head(a, r.id).key_version for r in old] == [2, 2, 2]
    assert [store.get(a, r.id) for r in old] == [DATA + bytes([i]) for i in range(3)]
    assert store.get(b, other.id) == DATA


# --- a dead or failing endpoint --------------------------------------------------------


class _Failing(BaseHTTPRequestHandler):
    """Answers every request with a 503 SlowDown, after reading its body."""

    def _fail(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _fail

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def failing_endpoint() -> Iterator[str]:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Failing) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}"
        server.shutdown()


@pytest.fixture
def dead_endpoint() -> str:
    """An endpoint nobody listens on: the port was free a moment ago and stays closed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    port = server.server_address[1]
    server.server_close()
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("broken", ["dead_endpoint", "failing_endpoint"])
def test_an_unreachable_or_failing_endpoint_is_unavailable(broken, request, monkeypatch, store, km, db, tenancies):
    a, _ = tenancies
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # boto3's own retries, from its environment
    url = request.getfixturevalue(broken)
    stored = store.put(a, "file", DATA)  # in the working bucket
    broken_store = S3ObjectStore(f"s3://{store.bucket}/{PREFIX}", km, db, endpoint_url=url)

    with pytest.raises(Unavailable) as info:
        broken_store.put(a, "file", DATA, object_id="obj_never")
    assert "could not store" in str(info.value)
    assert not broken_store.exists(a, "obj_never")  # the reserved row did not commit
    with pytest.raises(Unavailable, match="could not read"):
        broken_store.get(a, stored.id)
    assert broken_store.head(a, stored.id) == stored  # rows do not need the bucket
    # Deleting drops the row (and the data key with it) even if the ciphertext stays behind.
    broken_store.delete(a, stored.id)
    assert not store.exists(a, stored.id)


# --- the factory -----------------------------------------------------------------------


def test_open_object_store_follows_the_settings(tmp_path, km, db, endpoint, bucket, tenancies, monkeypatch, s3):
    a, _ = tenancies
    local = open_object_store(Settings(data_dir=tmp_path / "data"), km, db)
    assert isinstance(local, LocalObjectStore) and local.root == tmp_path / "data" / "objects"

    explicit = open_object_store(
        Settings(data_dir=tmp_path / "data", object_store=f"s3://{bucket}/p", s3_endpoint_url=endpoint), km, db
    )
    assert isinstance(explicit, S3ObjectStore) and (explicit.bucket, explicit.prefix) == (bucket, "p")
    ref = explicit.put(a, "file", DATA)
    assert keys(s3, bucket) == [f"p/{a}/{ref.id}"]

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # boto3's own resolution when the setting is unset
    from_env = open_object_store(Settings(data_dir=tmp_path / "data", object_store=f"s3://{bucket}"), km, db)
    at_root = from_env.put(a, "file", b"root")
    assert from_env.get(a, at_root.id) == b"root"
    assert keys(s3, bucket) == sorted([f"p/{a}/{ref.id}", f"{a}/{at_root.id}"])  # no prefix: at the bucket's root
    assert parse_location("s3://b") == ("b", "") and parse_location("s3://b//x/y/") == ("b", "x/y")
    with pytest.raises(ValueError):
        parse_location("https://b/x")


# --- the real app --------------------------------------------------------------------


def test_the_app_serves_files_from_the_bucket(tmp_path, endpoint, s3, bucket):
    tiny = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=256,
                     max_output_tokens=64)
    catalog = Catalog(list(BUILTIN) + [tiny])
    settings = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", admin_key=ADMIN_KEY, threads=1,
                        object_store=f"s3://{bucket}/atelier", s3_endpoint_url=endpoint)
    engine = LocalEngine(catalog, settings, preloaded={"tiny": tiny_loaded("tiny")})
    marker = b"PANGOLIN-UPLOAD-MARKER-41c9"
    data = b'{"prompt": "' + marker + b'", "completion": " yes"}\n' * 20
    try:
        app = create_app(settings, engine=engine, catalog=catalog)
        with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            assert isinstance(app.state.services.objects, S3ObjectStore)
            created = client.post("/v1/files", files={"file": ("train.jsonl", data, "application/octet-stream")},
                                  data={"purpose": "fine-tune"})
            assert created.status_code == 200, created.text
            file_id = created.json()["id"]
            content = client.get(f"/v1/files/{file_id}/content")
            assert content.status_code == 200 and content.content == data

            with app.state.services.db.session() as session:
                row = session.get(File, file_id)
                tenancy_id, object_id = row.tenancy_id, row.object_id
            assert keys(s3, bucket) == [f"atelier/{tenancy_id}/{object_id}"]
            stored = raw(s3, bucket, f"atelier/{tenancy_id}/{object_id}")
            assert len(stored) == len(data) + GCM_TAG_BYTES and marker not in stored
            local = [p for p in (tmp_path / "data").rglob("*") if p.is_file() and marker in p.read_bytes()]
            assert local == []  # nor anywhere on the local disk

            assert client.delete(f"/v1/files/{file_id}").status_code == 200
            assert keys(s3, bucket) == []
            assert client.get(f"/v1/files/{file_id}/content").status_code == 404
    finally:
        engine.close()
