"""Managed keys: the root secret, key rings, envelope encryption, rotation, rewrap,
retirement, associated data and crypto-shredding."""

from __future__ import annotations

import base64
import os
import pickle
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from atelier.errors import InvalidInput, NotFound, Unavailable, Undecryptable
from atelier.security.crypto import KeyManager, RootKey, SealedBlob, _create_key_file
from atelier.settings import Settings
from atelier.store import Database, repos
from atelier.store.tables import KeyRing, KeyVersion

DATA = b'{"prompt": "hello", "completion": "world"}\n' * 10


@pytest.fixture
def tenancies(db):
    with db.session() as s:
        return repos.create_tenancy(s, "a").id, repos.create_tenancy(s, "b").id


@pytest.fixture
def km(db):
    return KeyManager(db, RootKey.generate())


# --- envelope encryption -------------------------------------------------------------


def test_round_trip(km, tenancies):
    a, _ = tenancies
    blob = km.seal(a, "obj_1", DATA)
    assert blob.key_version == 1
    assert len(blob.ciphertext) == len(DATA) + 16 and len(blob.nonce) == 12 and len(blob.dek_nonce) == 12
    assert DATA not in blob.ciphertext and len(blob.wrapped_dek) == 32 + 16
    assert km.open(a, "obj_1", blob) == DATA
    assert km.open(a, "obj_e", km.seal(a, "obj_e", b"")) == b""
    assert "ciphertext=<" in repr(blob) and repr(km.seal(a, "x", b"secret")).count("secret") == 0


def test_each_object_gets_a_fresh_data_key_and_nonce(km, tenancies):
    a, _ = tenancies
    one, two = km.seal(a, "obj_1", DATA), km.seal(a, "obj_1", DATA)
    assert one.ciphertext != two.ciphertext and one.wrapped_dek != two.wrapped_dek
    assert one.nonce != two.nonce and one.dek_nonce != two.dek_nonce


def test_ring_is_created_once_with_version_one(km, tenancies, db):
    a, _ = tenancies
    assert km.current_version(a) is None
    assert km.ensure_ring(a) == 1 and km.ensure_ring(a) == 1
    with db.session() as s:
        assert s.scalars(select(KeyVersion.version).where(KeyVersion.tenancy_id == a)).all() == [1]
        ring = s.get(KeyRing, a)
        assert (ring.current_version, ring.min_decrypt_version) == (1, 1)


def test_unknown_tenancy_and_malformed_ids(km, tenancies):
    a, _ = tenancies
    with pytest.raises(NotFound):
        km.seal("ten_missing", "obj_1", DATA)
    with pytest.raises(NotFound):
        km.rotate("ten_missing")
    for bad in ("../x", "a:b", "", "x" * 41, "a/b"):
        with pytest.raises(InvalidInput):
            km.seal(a, bad, DATA)


# --- the five properties of issue 3, item 9(d) ---------------------------------------


def check_rotation(km, a, b):
    old = km.seal(a, "obj_old", DATA)
    assert km.rotate(a) == 2 and km.current_version(a) == 2
    new = km.seal(a, "obj_new", DATA)
    assert (old.key_version, new.key_version) == (1, 2)
    assert km.open(a, "obj_old", old) == DATA and km.open(a, "obj_new", new) == DATA
    assert km.rotate(a) == 3 and km.seal(a, "obj_3", DATA).key_version == 3
    assert km.current_version(b) is None  # another tenancy's ring is untouched


def check_rewrap(km, a, b):
    old = km.seal(a, "obj_1", DATA)
    km.rotate(a)
    km.rotate(a)
    moved = km.rewrap(a, "obj_1", old)
    assert moved.key_version == 3
    assert moved.ciphertext is old.ciphertext and moved.nonce == old.nonce  # payload untouched
    assert moved.wrapped_dek != old.wrapped_dek
    assert km.open(a, "obj_1", moved) == DATA and km.open(a, "obj_1", old) == DATA
    assert km.rewrap(a, "obj_1", moved) is moved  # already at the newest version
    # Re-wrapping needs no payload at all (the object store passes none).
    stub = replace(old, ciphertext=b"")
    assert km.open(a, "obj_1", replace(km.rewrap(a, "obj_1", stub), ciphertext=old.ciphertext)) == DATA


def check_retired(km, a, b, db):
    old = km.seal(a, "obj_1", DATA)
    km.rotate(a)
    km.retire_below(a, 2)
    with pytest.raises(Undecryptable, match="retired"):
        km.open(a, "obj_1", old)
    with db.session() as s:
        states = dict(s.execute(select(KeyVersion.version, KeyVersion.state).where(KeyVersion.tenancy_id == a)).all())
    assert states == {1: "retired", 2: "enabled"}
    assert km.open(a, "obj_1", km.rewrap(a, "obj_1", old)) == DATA  # re-wrapped, it opens again
    with pytest.raises(InvalidInput):
        km.retire_below(a, 1)  # cannot be undone
    with pytest.raises(InvalidInput):
        km.retire_below(a, 3)  # no such version yet
    with pytest.raises(NotFound):
        km.retire_below(b, 1)  # no ring


def check_wrong_aad(km, a, b):
    km.ensure_ring(b)
    x, y = km.seal(a, "obj_x", DATA), km.seal(a, "obj_y", b"other")
    attempts = [
        (a, "obj_y", x),  # x's bytes presented as object y
        (b, "obj_x", x),  # x's bytes presented as the same id in tenancy b
        (a, "obj_y", replace(y, wrapped_dek=x.wrapped_dek, dek_nonce=x.dek_nonce)),  # x's data key on y
        (a, "obj_x", replace(x, ciphertext=y.ciphertext, nonce=y.nonce)),  # y's payload under x's key
    ]
    for tenancy_id, object_id, blob in attempts:
        with pytest.raises(Undecryptable):
            km.open(tenancy_id, object_id, blob)
    km.rotate(a)
    with pytest.raises(Undecryptable):  # relabelled version: the data key's AAD names version 1
        km.open(a, "obj_x", replace(x, key_version=2))
    with pytest.raises(Undecryptable):  # a data key moved elsewhere cannot be re-wrapped either
        km.rewrap(a, "obj_y", x)


def check_shredding(km, a, b, db):
    km.rotate(a)
    sealed_a = [km.seal(a, f"obj_a{i}", DATA) for i in range(3)]
    sealed_b = [km.seal(b, f"obj_b{i}", DATA) for i in range(3)]
    with db.session() as s:
        wrapped = list(s.scalars(select(KeyVersion.wrapped_key).where(KeyVersion.tenancy_id == a)))
    assert km.shred(a) == 2
    for i, blob in enumerate(sealed_a):
        with pytest.raises(Undecryptable, match="shredded"):
            km.open(a, f"obj_a{i}", blob)
        with pytest.raises(Undecryptable):
            km.rewrap(a, f"obj_a{i}", blob)
    assert [km.open(b, f"obj_b{i}", blob) for i, blob in enumerate(sealed_b)] == [DATA] * 3
    assert km.current_version(a) is None and km.shred(a) == 0
    # A new ring for the tenancy has new keys: the old objects stay lost.
    km.ensure_ring(a)
    with pytest.raises(Undecryptable):
        km.open(a, "obj_a0", sealed_a[0])
    # The shredded wrapped keys do not linger in the database files (secure_delete + checkpoint).
    files = _db_files(db)
    assert files and not any(w in p.read_bytes() for p in files for w in wrapped)


def _db_files(db):
    main = Path(db.engine.url.database)
    return [p for p in (main, main.with_name(main.name + "-wal"), main.with_name(main.name + "-shm")) if p.exists()]


SCENARIOS = {
    "rotation": check_rotation,
    "rewrap": check_rewrap,
    "retired": check_retired,
    "wrong-AAD": check_wrong_aad,
    "shredding": check_shredding,
}


def _run(name, km, tenancies, db):
    fn = SCENARIOS[name]
    args = (km, *tenancies, db) if fn.__code__.co_argcount == 4 else (km, *tenancies)
    fn(*args)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_key_property(name, km, tenancies, db):
    _run(name, km, tenancies, db)


def test_key_properties_summary(tmp_path):
    """Every property on a fresh database each, with a count for the closing note."""
    passed = []
    for i, name in enumerate(SCENARIOS):
        database = Database(f"sqlite:///{tmp_path / f'{i}.db'}")
        database.migrate()
        with database.session() as s:
            pair = repos.create_tenancy(s, "a").id, repos.create_tenancy(s, "b").id
        try:
            _run(name, KeyManager(database, RootKey.generate()), pair, database)
            passed.append(name)
        finally:
            database.dispose()
    print(f"key tests: {', '.join(SCENARIOS)}: {len(passed)}/{len(SCENARIOS)}")
    assert passed == list(SCENARIOS)


# --- tampering -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "wrapped_dek", "dek_nonce"])
def test_any_flipped_byte_fails(km, tenancies, field):
    a, _ = tenancies
    blob = km.seal(a, "obj_1", DATA)
    value = getattr(blob, field)
    failures = 0
    for position in sorted({0, 1, len(value) // 2, len(value) - 1}):
        tampered = bytearray(value)
        tampered[position] ^= 0x01
        with pytest.raises(Undecryptable):
            km.open(a, "obj_1", replace(blob, **{field: bytes(tampered)}))
        failures += 1
    assert failures >= 3
    assert km.open(a, "obj_1", blob) == DATA


def test_truncated_ciphertext_fails(km, tenancies):
    a, _ = tenancies
    blob = km.seal(a, "obj_1", DATA)
    for cut in (blob.ciphertext[:-1], blob.ciphertext[:16], b""):
        with pytest.raises(Undecryptable):
            km.open(a, "obj_1", replace(blob, ciphertext=cut))


def test_altered_key_version_row_fails(km, tenancies, db):
    a, _ = tenancies
    blob = km.seal(a, "obj_1", DATA)
    with db.session() as s:
        row = s.scalars(select(KeyVersion).where(KeyVersion.tenancy_id == a)).one()
        row.wrapped_key = bytes([row.wrapped_key[0] ^ 1]) + row.wrapped_key[1:]
    with pytest.raises(Undecryptable, match="root key"):
        km.open(a, "obj_1", blob)


def test_another_root_key_opens_nothing(km, tenancies, db):
    a, _ = tenancies
    blob = km.seal(a, "obj_1", DATA)
    with pytest.raises(Undecryptable, match="root key"):
        KeyManager(db, RootKey.generate()).open(a, "obj_1", blob)


def test_key_versions_hold_no_key_in_clear(km, tenancies, db):
    a, _ = tenancies
    km.rotate(a)
    with db.session() as s:
        rows = list(s.scalars(select(KeyVersion)))
    assert len(rows) == 2
    assert all(len(r.wrapped_key) == 32 + 16 and len(r.nonce) == 12 for r in rows)
    assert "wrapped" not in repr(rows[0]) and str(rows[0].wrapped_key) not in repr(rows[0])


def test_manager_inside_a_callers_session(db, tenancies):
    a, b = tenancies
    root = RootKey.generate()
    with pytest.raises(RuntimeError), db.session() as s:
        KeyManager(s, root).ensure_ring(a)
        raise RuntimeError("rolled back")
    assert KeyManager(db, root).current_version(a) is None  # the caller's rollback won
    with db.session() as s:
        km = KeyManager(s, root)
        blob = km.seal(b, "obj_1", DATA)
        assert km.rotate(b) == 2
    assert KeyManager(db, root).open(b, "obj_1", blob) == DATA


# --- the root secret -----------------------------------------------------------------


def test_root_key_file_is_created_0600_and_reused(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    first = RootKey.from_settings(settings)
    path = tmp_path / "data" / "root.key"
    assert settings.root_key_path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(path.read_bytes().strip())) == 32
    assert RootKey.from_settings(settings).derive("x") == first.derive("x")
    assert sorted(p.name for p in path.parent.iterdir()) == ["root.key"]  # no temporary file left


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_root_key_file_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "root.key"
    RootKey.from_settings(Settings(data_dir=tmp_path))
    path.chmod(mode)
    with pytest.raises(Unavailable, match=f"mode {mode:04o}.*chmod 600"):
        RootKey.from_settings(Settings(data_dir=tmp_path))
    path.chmod(0o400)  # owner-only modes are fine, read-only included
    RootKey.from_settings(Settings(data_dir=tmp_path))


def test_root_key_file_setting_and_bad_contents(tmp_path):
    path = tmp_path / "keys" / "my.key"
    key = RootKey.from_settings(Settings(data_dir=tmp_path / "data", root_key_file=path))
    assert path.exists() and not (tmp_path / "data" / "root.key").exists()
    assert RootKey.from_settings(Settings(root_key_file=path)).derive("x") == key.derive("x")
    path.write_bytes(b"not base64!\n")
    with pytest.raises(Unavailable, match="base64"):
        RootKey.from_settings(Settings(root_key_file=path))
    path.write_bytes(base64.b64encode(os.urandom(16)))
    with pytest.raises(Unavailable, match="16 bytes"):
        RootKey.from_settings(Settings(root_key_file=path))
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(Unavailable):
        RootKey.from_settings(Settings(root_key_file=tmp_path / "dir.key"))


def test_root_key_from_environment(tmp_path, monkeypatch):
    secret = os.urandom(32)
    monkeypatch.setenv("ATELIER_ROOT_KEY", base64.b64encode(secret).decode())
    settings = Settings(data_dir=tmp_path)
    assert RootKey.from_settings(settings).derive("x") == RootKey(secret).derive("x")
    assert not (tmp_path / "root.key").exists()  # nothing written when the key comes from the env
    assert str(base64.b64encode(secret).decode()) not in repr(settings)
    for bad in ("%%%", base64.b64encode(os.urandom(31)).decode()):
        monkeypatch.setenv("ATELIER_ROOT_KEY", bad)
        with pytest.raises(Unavailable, match="ATELIER_ROOT_KEY"):
            RootKey.from_settings(Settings(data_dir=tmp_path))


def test_creating_the_key_file_never_replaces_one(tmp_path):
    path = tmp_path / "root.key"
    _create_key_file(path)
    before = path.read_bytes()
    _create_key_file(path)  # a second process losing the race keeps the first key
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["root.key"]


def test_root_key_is_hidden_and_derives_distinct_keys():
    root = RootKey.generate()
    assert repr(root) == "RootKey(<hidden>)"
    assert root.derive("a") != root.derive("b") and len(root.derive("a")) == 32
    with pytest.raises(TypeError):
        pickle.dumps(root)
    with pytest.raises(ValueError):
        RootKey(b"short")


def test_sealed_blob_is_the_store_contract():
    from atelier.store.objects import SealedBlob as StoreBlob

    assert SealedBlob is StoreBlob
