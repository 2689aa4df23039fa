"""The sealed object store (local directory): round trips, tenancy scoping, rewrap,
retirement, moved or altered payloads, shredding, atomic writes, and no plaintext on disk."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import struct

import pytest
from sqlalchemy import select

from atelier.errors import Conflict, InvalidInput, NotFound, Undecryptable
from atelier.security.crypto import KeyManager, RootKey
from atelier.principal import Principal
from atelier.settings import Settings
from atelier.store import Database, repos
from atelier import durable
from atelier.store.objects import GCM_TAG_BYTES, LocalObjectStore, ObjectRef, ObjectStore
from atelier.store.tables import StoredObject

DATA = b"some bytes\x00\xff" * 100


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def db(data_dir):
    database = Database(f"sqlite:///{data_dir / 'atelier.db'}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def root_key(data_dir):
    return RootKey.from_settings(Settings(data_dir=data_dir))  # writes <data>/root.key, 0600


@pytest.fixture
def km(db, root_key):
    return KeyManager(db, root_key)


@pytest.fixture
def store(data_dir, km, db):
    return LocalObjectStore(data_dir / "objects", km, db)


@pytest.fixture
def tenancies(db):
    with db.session() as s:
        return repos.create_tenancy(s, "a").id, repos.create_tenancy(s, "b").id


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def _path(store, ref):
    return store.root / ref.tenancy_id / ref.id


# --- round trips and scoping ---------------------------------------------------------


def test_round_trip(store, tenancies):
    a, _ = tenancies
    ref = store.put(a, "dataset", DATA)
    assert isinstance(ref, ObjectRef) and ref.id.startswith("obj_") and ref.tenancy_id == a
    assert (ref.kind, ref.key_version, ref.size, ref.data_size) == ("dataset", 1, len(DATA) + GCM_TAG_BYTES, len(DATA))
    assert store.get(a, ref.id) == DATA
    assert store.exists(a, ref.id) and store.head(a, ref.id) == ref
    path = _path(store, ref)
    assert path.name == ref.id and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes() != DATA and len(path.read_bytes()) == ref.size
    assert store.get(a, store.put(a, "file", b"").id) == b""


def test_is_an_object_store_and_accepts_a_principal(store, tenancies):
    a, _ = tenancies
    assert isinstance(store, LocalObjectStore)
    _: ObjectStore = store  # the protocol a future S3 backend implements too
    principal = Principal(tenancy_id=a, key_id="key_x", role="user")
    ref = store.put(principal, "adapter", DATA)
    assert store.get(principal, ref.id) == store.get(a, ref.id) == DATA


def test_put_checks_kind_id_and_tenancy(store, tenancies):
    a, _ = tenancies
    with pytest.raises(InvalidInput):
        store.put(a, "weights", DATA)
    for bad in ("../escape", "a/b", ".hidden", "x" * 41, "a:b", "ünï"):
        with pytest.raises(InvalidInput):
            store.put(a, "file", DATA, object_id=bad)
    ref = store.put(a, "file", DATA, object_id="file-abc_123")
    assert ref.id == "file-abc_123" and store.get(a, "file-abc_123") == DATA
    with pytest.raises(Conflict):
        store.put(a, "file", b"again", object_id="file-abc_123")
    assert store.get(a, "file-abc_123") == DATA
    with pytest.raises(NotFound):
        store.put("ten_missing", "file", DATA)
    assert not (store.root / "ten_missing").exists()


def test_another_tenancys_object_is_not_found_like_a_missing_one(store, tenancies):
    a, b = tenancies
    ref = store.put(a, "document", DATA)
    missing = "obj_000000000000000000000000"
    attempts = 0
    for object_id in (ref.id, missing, "../" + ref.id):
        for call in (store.get, store.delete, store.head):
            with pytest.raises(NotFound) as info:
                call(b, object_id)
            attempts += 1
            assert info.value.param == "object_id"
            assert str(info.value) == f"object {object_id!r} not found"
        assert not store.exists(b, object_id)
    assert store.get(a, ref.id) == DATA  # untouched
    print(f"cross-tenant object attempts: {attempts}, succeeded: 0")


def test_delete(store, tenancies, db):
    a, _ = tenancies
    ref = store.put(a, "file", DATA)
    store.delete(a, ref.id)
    assert not _path(store, ref).exists() and not store.exists(a, ref.id)
    with db.session() as s:
        assert s.get(StoredObject, ref.id) is None
    with pytest.raises(NotFound):
        store.get(a, ref.id)
    with pytest.raises(NotFound):
        store.delete(a, ref.id)


def test_rows_hold_nothing_derived_from_the_plaintext(store, tenancies, db):
    a, _ = tenancies
    ref = store.put(a, "dataset", DATA)
    with db.session() as s:
        row = s.get(StoredObject, ref.id)
    columns = set(StoredObject.__table__.columns.keys())
    assert columns == {
        "id", "tenancy_id", "kind", "size", "key_version", "nonce", "wrapped_dek", "dek_nonce", "created_at"
    }
    assert row.size == len(DATA) + GCM_TAG_BYTES and len(row.wrapped_dek) == 48


# --- keys: rotation, rewrap, retirement, shredding -----------------------------------


def test_rotation_then_rewrap_all_changes_rows_only(store, km, tenancies, db):
    a, b = tenancies
    old = [store.put(a, "dataset", DATA + bytes([i])) for i in range(3)]
    other = store.put(b, "dataset", DATA)
    assert km.rotate(a) == 2
    new = store.put(a, "adapter", DATA)
    assert new.key_version == 2 and all(store.get(a, r.id) == DATA + bytes([i]) for i, r in enumerate(old))
    before = {r.id: (_path(store, r).read_bytes(), _path(store, r).stat().st_ino) for r in [*old, new]}
    with db.session() as s:
        rows_before = {r.id: r.wrapped_dek for r in s.scalars(select(StoredObject))}

    assert store.rewrap_all(a) == 3
    after = {r.id: (_path(store, r).read_bytes(), _path(store, r).stat().st_ino) for r in [*old, new]}
    assert after == before  # payload files: same bytes, same files
    assert [store.head(a, r.id).key_version for r in [*old, new]] == [2, 2, 2, 2]
    with db.session() as s:
        rows_after = {r.id: r.wrapped_dek for r in s.scalars(select(StoredObject))}
    assert all(rows_after[r.id] != rows_before[r.id] for r in old)
    assert rows_after[new.id] == rows_before[new.id] and rows_after[other.id] == rows_before[other.id]
    assert [store.get(a, r.id) for r in old] == [DATA + bytes([i]) for i in range(3)]
    assert store.rewrap_all(a) == 0 and store.rewrap_all(b) == 0
    assert store.head(b, other.id).key_version == 1


def test_retired_version_fails_until_rewrapped(store, km, tenancies):
    a, _ = tenancies
    ref = store.put(a, "adapter", DATA)
    km.rotate(a)
    km.retire_below(a, 2)
    with pytest.raises(Undecryptable, match="retired"):
        store.get(a, ref.id)
    assert store.rewrap_all(a) == 1
    assert store.get(a, ref.id) == DATA


def test_shredding_makes_one_tenancy_unreadable(store, km, tenancies, db):
    a, b = tenancies
    refs_a = [store.put(a, kind, DATA) for kind in ("file", "dataset", "adapter", "document")]
    km.rotate(a)
    refs_a.append(store.put(a, "file", DATA))
    refs_b = [store.put(b, "dataset", DATA) for _ in range(3)]
    assert km.shred(a) == 2
    unreadable = 0
    for ref in refs_a:
        with pytest.raises(Undecryptable):
            store.get(a, ref.id)
        unreadable += 1
    assert all(store.get(b, r.id) == DATA for r in refs_b)
    with pytest.raises(Undecryptable):
        store.rewrap_all(a)
    print(f"shredded tenancy: {unreadable}/{len(refs_a)} objects unreadable; other tenancy: {len(refs_b)} still open")


# --- moved or altered payloads -------------------------------------------------------


def test_payload_copied_to_another_object_or_tenancy_does_not_open(store, km, tenancies, db):
    a, b = tenancies
    x, y = store.put(a, "dataset", DATA), store.put(a, "dataset", b"y" * len(DATA))
    z = store.put(b, "dataset", b"z" * len(DATA))
    shutil.copyfile(_path(store, x), _path(store, y))  # x's payload as object y
    shutil.copyfile(_path(store, x), _path(store, z))  # x's payload in tenancy b
    for owner, ref in ((a, y), (b, z)):
        with pytest.raises(Undecryptable):
            store.get(owner, ref.id)
    # Moving the whole row too (payload, nonces and wrapped key) does not help either.
    with db.session() as s:
        src, dst = s.get(StoredObject, x.id), s.get(StoredObject, z.id)
        dst.nonce, dst.wrapped_dek, dst.dek_nonce, dst.key_version = (
            src.nonce, src.wrapped_dek, src.dek_nonce, src.key_version
        )
    with pytest.raises(Undecryptable):
        store.get(b, z.id)
    assert store.get(a, x.id) == DATA


def test_tampered_payload_byte_fails(store, tenancies):
    a, _ = tenancies
    ref = store.put(a, "adapter", DATA)
    path = _path(store, ref)
    original = path.read_bytes()
    for position in (0, len(original) // 2, len(original) - 1):
        tampered = bytearray(original)
        tampered[position] ^= 0x80
        path.write_bytes(bytes(tampered))
        with pytest.raises(Undecryptable):
            store.get(a, ref.id)
    path.write_bytes(original[:-1])
    with pytest.raises(Undecryptable):
        store.get(a, ref.id)
    path.write_bytes(original)
    assert store.get(a, ref.id) == DATA


# --- atomic writes -------------------------------------------------------------------


def test_writes_leave_no_temporary_files(store, tenancies):
    a, b = tenancies
    refs = [store.put(t, "file", DATA) for t in (a, b) for _ in range(5)]
    files = _files(store.root)
    assert len(files) == len(refs) and {p.name for p in files} == {r.id for r in refs}
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


@pytest.mark.parametrize("failing", ["fsync", "replace", "fsync_dir"])
def test_failed_write_leaves_neither_file_nor_row(store, tenancies, db, monkeypatch, failing):
    a, _ = tenancies
    store.put(a, "file", DATA)  # the tenancy's directory exists already

    def boom(*args, **kwargs):
        raise OSError("disk on fire")

    if failing == "fsync_dir":  # fails after the rename: the row must not commit, the file must go
        monkeypatch.setattr(durable, "fsync_dir", boom)
    else:
        monkeypatch.setattr(durable.os, failing, boom)
    with pytest.raises(OSError, match="disk on fire"):
        store.put(a, "dataset", DATA, object_id="obj_failed")
    monkeypatch.undo()
    assert not store.exists(a, "obj_failed")
    assert not (store.root / a / "obj_failed").exists()
    assert not [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]
    with db.session() as s:
        assert s.scalar(select(StoredObject).where(StoredObject.id == "obj_failed")) is None
    assert store.get(a, store.put(a, "dataset", DATA, object_id="obj_failed").id) == DATA  # id is free again


# --- no plaintext anywhere under the data directory ----------------------------------


def _dataset_jsonl() -> tuple[bytes, list[bytes]]:
    markers = [b"QUOKKA-DATASET-MARKER-5e1f", b"zanzibar penguin marmalade 88123"]
    lines = [
        {"prompt": f"{markers[0].decode()} question {i}", "completion": f"{markers[1].decode()} answer {i}"}
        for i in range(200)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines), markers


def _safetensors_like() -> tuple[bytes, list[bytes]]:
    marker = "ADAPTER-MARKER-lora_A-9c4d"
    tensor = os.urandom(4096)
    header = json.dumps(
        {
            f"base_model.model.layers.0.self_attn.q_proj.{marker}.weight": {
                "dtype": "F32", "shape": [16, 64], "data_offsets": [0, len(tensor)]
            },
            "__metadata__": {"format": "pt", "note": "OCELOT-SAFETENSORS-MARKER-31a7"},
        }
    ).encode()
    return struct.pack("<Q", len(header)) + header + tensor, [
        marker.encode(), b"OCELOT-SAFETENSORS-MARKER-31a7", tensor[:64], tensor[-64:], header[:40]
    ]


def test_no_plaintext_under_the_data_dir(store, tenancies, data_dir, db, root_key):
    a, b = tenancies
    dataset, dataset_markers = _dataset_jsonl()
    adapter, adapter_markers = _safetensors_like()
    refs = [store.put(a, "dataset", dataset), store.put(a, "adapter", adapter), store.put(b, "dataset", dataset)]
    assert store.get(a, refs[0].id) == dataset and store.get(a, refs[1].id) == adapter
    store.rewrap_all(a)

    markers = dataset_markers + adapter_markers
    files = _files(data_dir)
    names = {p.name for p in files}
    assert {"atelier.db", "atelier.db-wal", "root.key"} <= names  # the WAL is scanned while in use
    scanned = 0
    found = []
    for path in files:
        content = path.read_bytes()
        scanned += len(content)
        found += [(path.name, m) for m in markers if m in content]
    assert found == []
    # The root secret is in its key file only: never in the database or beside the objects.
    secret = (data_dir / "root.key").read_bytes().strip()
    raw = base64.b64decode(secret)
    assert not [p for p in files if p.name != "root.key" and (secret in p.read_bytes() or raw in p.read_bytes())]
    print(f"plaintext scan: {len(files)} files, {scanned} bytes, {len(markers)} markers, found: {len(found)}")
