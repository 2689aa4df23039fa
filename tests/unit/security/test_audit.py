"""The audit log: chain and checkpoint math, the four tamperings, concurrency, failure."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from atelier.errors import Unavailable
from atelier.security.audit import (
    ZERO_HASH,
    AuditEvent,
    AuditLog,
    canonical_json,
    entry_hash,
    sign,
)
from atelier.security.crypto import RootKey
from atelier.store.db import Database
from atelier.store.tables import utcnow

KEY = b"k" * 32


@pytest.fixture
def db(tmp_path: Path):
    database = Database(f"sqlite:///{tmp_path / 'audit.db'}")
    database.migrate()
    yield database
    database.dispose()


def make_log(db: Database, tmp_path: Path, every: int = 5, key: bytes = KEY) -> AuditLog:
    return AuditLog(db, key, checkpoint_every=every, head_file=tmp_path / "audit.head")


def event(i: int, **overrides) -> AuditEvent:
    values = dict(
        request_id=f"req_{i:04d}", tenancy_id="ten_a", principal_id="usr_a", key_id="key_a",
        action="POST /v1/key-ring/rotate", resource_type="keys", resource_id="ten_a", decision="allow",
        statement="allow group Administrators to manage keys in tenancy", outcome="policy", status=None,
        source="127.0.0.1",
    )  # fmt: skip
    return AuditEvent(**{**values, **overrides})


def fill(log: AuditLog, n: int) -> None:
    for i in range(1, n + 1):
        log.append(event(i))


def sql(db: Database, statement: str, **params) -> None:
    with db.engine.begin() as connection:
        connection.execute(text(statement), params)


# --- the math ------------------------------------------------------------------------


def test_entries_chain_by_sha256_of_prev_hash_and_canonical_fields(db, tmp_path):
    log = make_log(db, tmp_path)
    first, second = log.append(event(1)), log.append(event(2, decision="deny", statement=None, outcome="no"))
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == ZERO_HASH and second.prev_hash == first.hash
    fields = {**first.to_dict()}
    payload = json.dumps(
        {k: fields[k] for k in ("seq", "time", "request_id", "tenancy_id", "principal_id", "key_id", "action",
                                "resource_type", "resource_id", "decision", "statement", "outcome", "status",
                                "source")},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )  # fmt: skip
    assert canonical_json(fields) == payload
    assert first.hash == hashlib.sha256((ZERO_HASH + payload).encode()).hexdigest()
    assert second.hash == entry_hash(first.hash, second.to_dict())
    assert fields["time"].endswith("+00:00") and "." in fields["time"]  # ISO UTC with microseconds


def test_stored_entries_read_back_equal_and_verify(db, tmp_path):
    log = make_log(db, tmp_path)
    appended = [log.append(event(i)) for i in range(1, 8)]
    assert log.query(None, limit=100) == appended
    report = log.verify()
    assert report.ok and report.entries == 7 and report.checkpoints == 1 and report.problems == []


def test_a_checkpoint_every_n_entries_signed_with_hmac_and_in_the_head_file(db, tmp_path):
    log = make_log(db, tmp_path, every=5)
    fill(log, 12)
    with db.engine.connect() as connection:
        rows = connection.execute(text("SELECT seq, hash, signature FROM audit_checkpoints ORDER BY seq")).all()
        hashes = dict(connection.execute(text("SELECT seq, hash FROM audit_entries")).all())
    assert [r.seq for r in rows] == [5, 10]
    for seq, hash_, signature in rows:
        assert hash_ == hashes[seq]
        assert signature == hmac.new(KEY, f"{seq}:{hash_}".encode(), hashlib.sha256).hexdigest()
        assert signature == sign(KEY, seq, hash_)
    head_file = tmp_path / "audit.head"
    assert json.loads(head_file.read_text()) == {"seq": 10, "hash": hashes[10], "signature": sign(KEY, 10, hashes[10])}
    assert stat.S_IMODE(os.stat(head_file).st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_service_log_signs_with_a_key_derived_from_the_root_key(db, tmp_path):
    root = RootKey.generate()
    log = AuditLog.for_service(db, root, tmp_path)
    assert log.head_file == tmp_path / "audit.head"
    fill(log, 100)
    assert log.verify().ok
    other = AuditLog.for_service(db, RootKey.generate(), tmp_path)  # another root key cannot vouch for it
    problems = other.verify().problems
    assert any("seq 100: checkpoint signature is not valid" in p for p in problems), problems


# --- tampering -----------------------------------------------------------------------


def _flip(db):
    sql(db, "UPDATE audit_entries SET decision = 'deny', outcome = 'not the operator' WHERE seq = 7")
    sql(db, "UPDATE audit_entries SET principal_id = 'usr_mallory' WHERE seq = 3")


def _delete(db):
    sql(db, "DELETE FROM audit_entries WHERE seq = 4")


def _reorder(db):
    sql(db, "UPDATE audit_entries SET seq = -1 WHERE seq = 3")
    sql(db, "UPDATE audit_entries SET seq = 3 WHERE seq = 6")
    sql(db, "UPDATE audit_entries SET seq = 6 WHERE seq = -1")


def _truncate(db):
    sql(db, "DELETE FROM audit_entries WHERE seq > 8")
    sql(db, "DELETE FROM audit_checkpoints WHERE seq > 8")


TAMPERINGS = {
    "flip a field": (_flip, ["seq 3: hash does not match", "seq 7: hash does not match"]),
    "delete an entry": (_delete, ["seq 4: missing", "seq 5: prev_hash is not the hash"]),
    "reorder two entries": (_reorder, ["seq 3: hash does not match", "seq 3: prev_hash", "seq 6: hash does not match"]),
    "truncate the tail": (_truncate, ["seq 10: the head file points past the last entry (seq 8)"]),
}


def test_each_of_the_four_tamperings_is_detected(tmp_path):
    detected = []
    for name, (tamper, expected) in TAMPERINGS.items():
        path = tmp_path / name.replace(" ", "-")
        path.mkdir()
        db = Database(f"sqlite:///{path / 'audit.db'}")
        try:
            db.migrate()
            log = make_log(db, path, every=5)
            fill(log, 13)
            assert log.verify().ok
            tamper(db)
            report = log.verify()
        finally:
            db.dispose()
        found = [e for e in expected if any(p.startswith(e) for p in report.problems)]
        assert found == expected, (name, report.problems)
        if not report.ok and found == expected:
            detected.append(name)
    print(f"audit tampering detected: {len(detected)} of {len(TAMPERINGS)}")
    assert len(detected) == len(TAMPERINGS) == 4


def test_a_checkpoint_with_another_hash_reveals_a_rewritten_chain(db, tmp_path):
    """Someone who recomputes every hash after an edit still cannot re-sign the checkpoint."""
    log = make_log(db, tmp_path, every=5)
    fill(log, 6)
    sql(db, "UPDATE audit_entries SET outcome = 'edited' WHERE seq = 2")
    with db.engine.begin() as connection:  # recompute the whole chain, as an attacker could
        rows = connection.execute(text("SELECT * FROM audit_entries ORDER BY seq")).mappings().all()
        prev = ZERO_HASH
        for row in rows:
            values = dict(row)
            values["time"] = log.query(None, after_seq=row["seq"] - 1, limit=1)[0].time
            digest = entry_hash(prev, values)
            connection.execute(
                text("UPDATE audit_entries SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": prev, "h": digest, "s": row["seq"]},
            )
            prev = digest
    problems = log.verify().problems
    assert "seq 5: the signed checkpoint holds another hash (entries altered)" in problems
    assert "seq 5: the signed head file holds another hash (entries altered)" in problems


def test_deleted_checkpoints_and_a_forged_signature_are_reported(db, tmp_path):
    log = make_log(db, tmp_path, every=5)
    fill(log, 11)
    sql(db, "DELETE FROM audit_checkpoints WHERE seq = 5")
    sql(db, "UPDATE audit_checkpoints SET signature = :s WHERE seq = 10", s="0" * 64)
    problems = log.verify().problems
    assert "seq 5: its checkpoint is missing" in problems
    assert any(p.startswith("seq 10: checkpoint signature is not valid") for p in problems)


def test_a_missing_or_altered_head_file_is_reported(db, tmp_path):
    log = make_log(db, tmp_path, every=5)
    fill(log, 5)
    head = tmp_path / "audit.head"
    data = json.loads(head.read_text())
    head.write_text(json.dumps({**data, "seq": 4}))
    assert any("head file's signature is not valid" in p for p in log.verify().problems)
    head.unlink()
    assert any("seq 5: the head file" in p and "is missing" in p for p in log.verify().problems)


def test_verify_streams_in_batches(db, tmp_path, monkeypatch):
    import atelier.security.audit as audit

    monkeypatch.setattr(audit, "VERIFY_BATCH", 4)
    log = make_log(db, tmp_path, every=5)
    fill(log, 10)
    assert log.verify().entries == 10 and log.verify().ok
    sql(db, "DELETE FROM audit_entries WHERE seq = 8")  # a gap across batch boundaries
    assert any(p.startswith("seq 8: missing") for p in log.verify().problems)


# --- query and observers -------------------------------------------------------------


def test_query_filters_and_pages(db, tmp_path):
    log = make_log(db, tmp_path, every=100)
    log.append(event(1))
    log.append(event(2, tenancy_id="ten_b", principal_id="usr_b", key_id="key_b"))
    log.append(event(3, decision="none", outcome="error", status=403, statement=None))
    log.append(event(4, tenancy_id=None, principal_id=None, key_id=None, status=401, decision="none"))
    assert [e.seq for e in log.query("ten_a")] == [1, 3]
    assert [e.seq for e in log.query("ten_b")] == [2]
    assert [e.seq for e in log.query(None)] == [1, 2, 3, 4]
    assert [e.seq for e in log.query(None, status=401)] == [4]
    assert [e.seq for e in log.query("ten_a", decision="allow")] == [1]
    assert [e.seq for e in log.query(None, key_id="key_b")] == [2]
    assert [e.seq for e in log.query(None, after_seq=1, limit=2)] == [2, 3]
    assert log.query(None, since=utcnow() + timedelta(seconds=5)) == []
    assert len(log.query(None, until=utcnow() + timedelta(seconds=5))) == 4


def test_observers_see_each_entry_and_cannot_break_append(db, tmp_path):
    log = make_log(db, tmp_path)
    seen = []

    def broken(entry):
        raise RuntimeError("observer bug")

    log.subscribe(broken)
    log.subscribe(seen.append)
    entry = log.append(event(1))
    assert seen == [entry]
    assert log.verify().ok


def test_long_texts_are_cut_to_their_columns_before_hashing(db, tmp_path):
    log = make_log(db, tmp_path)
    entry = log.append(event(1, outcome="x" * 500, action="GET /" + "a" * 500))
    assert len(entry.outcome) == 40 and len(entry.action) == 120
    assert log.query(None)[0] == entry
    assert log.verify().ok


# --- concurrency and failure ---------------------------------------------------------


def test_threads_appending_together_leave_an_unbroken_chain(db, tmp_path):
    log = make_log(db, tmp_path, every=10)
    errors = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                log.append(event(t * 100 + i))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = log.verify()
    assert report.ok, report.problems
    assert report.entries == 100 and report.checkpoints == 10


def test_verifying_while_entries_are_appended_raises_no_false_alarm(db, tmp_path):
    log = make_log(db, tmp_path, every=3)
    done = threading.Event()

    def write() -> None:
        for i in range(90):
            log.append(event(i))
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reports = []
    while not done.is_set():
        reports.append(log.verify())
    writer.join()
    reports.append(log.verify())
    assert all(r.ok for r in reports), [r.problems for r in reports if not r.ok][:1]
    assert len(reports) > 1 and reports[-1].entries == 90


def test_two_logs_on_one_database_share_one_chain(db, tmp_path):
    """Two processes' logs: the seq primary key makes a racing writer start over."""
    one, two = make_log(db, tmp_path), make_log(db, tmp_path)
    threads = [threading.Thread(target=fill, args=(log, 20)) for log in (one, two)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = one.verify()
    assert report.ok and report.entries == 40, report.problems


def test_an_unwritable_database_is_unavailable(db, tmp_path):
    make_log(db, tmp_path).append(event(1))
    readonly = Database(f"sqlite:///file:{tmp_path / 'audit.db'}?mode=ro&uri=true")
    try:
        log = make_log(readonly, tmp_path)
        with pytest.raises(Unavailable, match="audit log cannot be written"):
            log.append(event(2))
        assert log.verify().ok  # reading still works
    finally:
        readonly.dispose()


def test_an_unwritable_head_file_is_unavailable(db, tmp_path):
    log = AuditLog(db, KEY, checkpoint_every=1, head_file=tmp_path / "missing-dir" / "file" / "audit.head")
    (tmp_path / "missing-dir").write_text("a file where a directory should be")
    with pytest.raises(Unavailable, match="head file"):
        log.append(event(1))


def test_bad_events_and_settings_are_refused(db):
    with pytest.raises(ValueError):
        event(1, decision="maybe")
    with pytest.raises(ValueError):
        AuditLog(db, KEY, checkpoint_every=0)
    with pytest.raises(ValueError):
        AuditLog(db, b"short")
