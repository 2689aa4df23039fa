"""store/files.py: a file row and its sealed object, kept together and scoped by tenancy."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from atelier.errors import InvalidInput, NotFound
from atelier.principal import Principal
from atelier.security.crypto import KeyManager, RootKey
from atelier.settings import Settings
from atelier.store import Database, identity, repos
from atelier.store import files as files_module
from atelier.store.files import FileStore, check_purpose, clean_filename
from atelier.store.objects import LocalObjectStore
from atelier.store.tables import File, StoredObject

DATA = b'{"prompt": "2+2=", "completion": " 4"}\n' * 50


@pytest.fixture
def objects(tmp_path, db):
    keys = KeyManager(db, RootKey.from_settings(Settings(data_dir=tmp_path)))
    return LocalObjectStore(tmp_path / "objects", keys, db)


@pytest.fixture
def store(db, objects):
    return FileStore(db, objects)


@pytest.fixture
def principals(db):
    with db.session() as s:
        a, b = repos.create_tenancy(s, "a").id, repos.create_tenancy(s, "b").id
    return Principal(tenancy_id=a, key_id="key_a", role="admin"), Principal(tenancy_id=b, key_id="key_b", role="admin")


def counts(db) -> tuple[int, int]:
    with db.session() as s:
        files = s.scalar(select(func.count()).select_from(File))
        return files, s.scalar(select(func.count()).select_from(StoredObject))


def payloads(objects) -> list:
    return [p for p in objects.root.rglob("*") if p.is_file()]


def test_round_trip_and_delete(store, objects, principals, db):
    a, _ = principals
    row = store.create_file(a, filename="train.jsonl", purpose="fine-tune", data=DATA)
    assert row.id.startswith("file_") and row.tenancy_id == a.tenancy_id and row.bytes == len(DATA)
    assert store.get_file(a, row.id).object_id == row.object_id
    assert store.file_content(a, row.id) == DATA
    assert objects.head(a, row.object_id).kind == "file"
    assert [f.id for f in store.list_files(a)] == [row.id]
    assert store.delete_file(a, row.id).id == row.id
    assert counts(db) == (0, 0) and payloads(objects) == []
    for call in (store.get_file, store.file_content, store.delete_file):
        with pytest.raises(NotFound):
            call(a, row.id)


def test_another_tenancys_file_is_missing_with_the_same_message(store, principals):
    a, b = principals
    row = store.create_file(a, filename="a.jsonl", purpose="fine-tune", data=DATA)
    for call in (store.get_file, store.file_content, store.delete_file):
        with pytest.raises(NotFound) as theirs:
            call(b, row.id)
        with pytest.raises(NotFound) as missing:
            call(b, "file_" + "0" * 24)
        assert theirs.value.message.replace(row.id, "<id>") == missing.value.message.replace("file_" + "0" * 24, "<id>")
    assert store.list_files(b) == []
    assert store.file_content(a, row.id) == DATA  # B's delete attempt changed nothing


def test_list_filters_by_purpose_oldest_first(store, principals):
    a, _ = principals
    first = store.create_file(a, filename="1.jsonl", purpose="fine-tune", data=b"1")
    doc = store.create_file(a, filename="doc.txt", purpose="knowledge-base", data=b"2")
    second = store.create_file(a, filename="2.jsonl", purpose="fine-tune", data=b"3")
    assert [f.id for f in store.list_files(a)] == [first.id, doc.id, second.id]
    assert [f.id for f in store.list_files(a, purpose="fine-tune")] == [first.id, second.id]


def test_a_failed_row_leaves_no_object(store, objects, principals, db, monkeypatch):
    a, _ = principals

    def broken_clock():
        raise RuntimeError("the row cannot be built")

    monkeypatch.setattr(files_module, "utcnow", broken_clock)  # fails after the object was sealed
    with pytest.raises(RuntimeError):
        store.create_file(a, filename="train.jsonl", purpose="fine-tune", data=DATA)
    assert counts(db) == (0, 0) and payloads(objects) == []


def test_a_failed_object_leaves_no_row(store, objects, principals, db, monkeypatch):
    a, _ = principals

    def broken_put(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(objects, "put", broken_put)
    with pytest.raises(OSError):
        store.create_file(a, filename="train.jsonl", purpose="fine-tune", data=DATA)
    assert counts(db) == (0, 0)


def test_compartment_must_be_the_callers(store, principals, db, objects):
    a, b = principals
    with db.session() as s:
        theirs = identity.create_compartment(s, b, "eng").id
        ours = identity.create_compartment(s, a, "eng").id
    with pytest.raises(NotFound):
        store.create_file(a, filename="x.jsonl", purpose="fine-tune", data=DATA, compartment_id=theirs)
    assert counts(db) == (0, 0)
    row = store.create_file(a, filename="x.jsonl", purpose="fine-tune", data=DATA, compartment_id=ours)
    assert row.compartment_id == ours


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("train.jsonl", "train.jsonl"),
        ("../../etc/train.jsonl", "train.jsonl"),
        ("C:\\data\\train.jsonl", "train.jsonl"),
        ("bad\x00na\nme.txt", "badname.txt"),
        ("  spaced.txt ", "spaced.txt"),
        ("x" * 300 + ".jsonl", "x" * 249 + ".jsonl"),
        ("données.jsonl", "données.jsonl"),
    ],
)
def test_clean_filename(raw, clean):
    assert clean_filename(raw) == clean


@pytest.mark.parametrize("raw", [None, "", "dir/", "..", "\x01\x02"])
def test_clean_filename_refuses_nothing_left(raw):
    with pytest.raises(InvalidInput) as exc:
        clean_filename(raw)
    assert exc.value.param == "file"


@pytest.mark.parametrize("purpose", [None, "", "batch", "assistants", "FINE-TUNE"])
def test_unknown_purposes_are_refused(purpose, store, principals):
    with pytest.raises(InvalidInput) as exc:
        check_purpose(purpose)
    assert exc.value.param == "purpose"
    with pytest.raises(InvalidInput):
        store.create_file(principals[0], filename="x", purpose=purpose, data=b"x")
