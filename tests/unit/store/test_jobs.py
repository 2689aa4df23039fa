"""The job queue: idempotent submits, exclusive claims, leases, heartbeats, cancels, tenancy scoping."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from atelier.errors import Conflict, InvalidInput, NotFound
from atelier.principal import Principal
from atelier.store import Database, repos
from atelier.store.jobs import JobQueue
from atelier.store.tables import Job, JobEvent, utcnow

KIND = "sleep-count"


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db)


def _principal(db: Database, name: str) -> Principal:
    with db.session() as s:
        return Principal(repos.create_tenancy(s, name).id, f"key_{name}", "admin")


@pytest.fixture
def alice(db: Database) -> Principal:
    return _principal(db, "alice")


@pytest.fixture
def bob(db: Database) -> Principal:
    return _principal(db, "bob")


def messages(queue, principal, job_id) -> list[str]:
    return [e.message for e in queue.events(principal, job_id, limit=1000)]


def states(queue, principal, job_id) -> list[str]:
    return [e.data["state"] for e in queue.events(principal, job_id, limit=1000) if e.data and "state" in e.data]


# --- submit ---------------------------------------------------------------------------------


def test_submit_queues_a_job_with_an_event(queue, alice):
    job = queue.submit(alice, KIND, {"n": 3})
    assert (job.state, job.kind, job.payload, job.attempts) == ("queued", KIND, {"n": 3}, 0)
    assert job.tenancy_id == alice.tenancy_id
    assert job.id.startswith("job_")
    assert queue.get(alice, job.id).state == "queued"
    assert states(queue, alice, job.id) == ["queued"]


def test_same_idempotency_key_returns_the_same_job(queue, alice, bob):
    first = queue.submit(alice, KIND, {"n": 3}, idempotency_key="k1")
    again = queue.submit(alice, KIND, {"n": 3}, idempotency_key="k1")
    assert again.id == first.id
    other_key = queue.submit(alice, KIND, {"n": 3}, idempotency_key="k2")
    other_tenancy = queue.submit(bob, KIND, {"n": 3}, idempotency_key="k1")
    assert len({first.id, other_key.id, other_tenancy.id}) == 3
    assert [j.id for j in queue.list(alice)] == [other_key.id, first.id]


def test_idempotency_key_reused_for_another_request_is_a_conflict(queue, alice):
    queue.submit(alice, KIND, {"n": 3}, idempotency_key="k")
    with pytest.raises(Conflict) as exc:
        queue.submit(alice, KIND, {"n": 4}, idempotency_key="k")
    assert exc.value.param == "idempotency_key"
    with pytest.raises(Conflict):
        queue.submit(alice, "other-kind", {"n": 3}, idempotency_key="k")


def test_concurrent_submits_with_one_key_make_one_job(queue, alice):
    threads = 8
    barrier = threading.Barrier(threads)

    def submit(_):
        barrier.wait()
        return queue.submit(alice, KIND, {"n": 5}, idempotency_key="same").id

    with ThreadPoolExecutor(threads) as pool:
        ids = set(pool.map(submit, range(threads)))
    assert len(ids) == 1
    assert len(queue.list(alice)) == 1


def test_lost_race_rereads_the_winner(queue, alice, monkeypatch):
    """The unique constraint decides a race the first lookup missed (as on PostgreSQL)."""
    winner = queue.submit(alice, KIND, {"n": 1}, idempotency_key="race")
    real = queue.by_key
    calls = []

    def missed_first_time(principal, key):
        calls.append(key)
        return None if len(calls) == 1 else real(principal, key)

    monkeypatch.setattr(queue, "by_key", missed_first_time)
    assert queue.submit(alice, KIND, {"n": 1}, idempotency_key="race").id == winner.id
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("kind", "payload", "kwargs", "param"),
    [
        ("", {}, {}, "kind"),
        ("k" * 33, {}, {}, "kind"),
        (KIND, {"x": object()}, {}, "payload"),
        (KIND, {}, {"idempotency_key": ""}, "idempotency_key"),
        (KIND, {}, {"idempotency_key": "k" * 201}, "idempotency_key"),
        (KIND, {}, {"state": "running"}, "state"),
    ],
)
def test_submit_rejects_bad_input(queue, alice, kind, payload, kwargs, param):
    with pytest.raises(InvalidInput) as exc:
        queue.submit(alice, kind, payload, **kwargs)
    assert exc.value.param == param


# --- claim ----------------------------------------------------------------------------------


def test_claim_takes_the_oldest_job_of_the_workers_kinds(queue, alice):
    a = queue.submit(alice, KIND, {"i": 1})
    b = queue.submit(alice, "other", {"i": 2})
    c = queue.submit(alice, KIND, {"i": 3})
    first = queue.claim("w1", [KIND], 30)
    assert first.id == a.id
    assert (first.state, first.lease_owner, first.attempts) == ("running", "w1", 1)
    assert first.started_at is not None and first.lease_expires_at > utcnow() + timedelta(seconds=25)
    assert queue.claim("w1", [KIND], 30).id == c.id
    assert queue.claim("w1", [KIND], 30) is None
    assert queue.claim("w2", ["other"], 30).id == b.id
    assert queue.claim("w2", [], 30) is None
    assert "started by worker w1" in messages(queue, alice, a.id)


def test_claim_skips_jobs_still_validating_files(queue, alice):
    job = queue.submit(alice, KIND, {}, state="validating_files")
    assert queue.claim("w", [KIND], 30) is None
    assert queue.enqueue(alice, job.id).state == "queued"
    assert queue.claim("w", [KIND], 30).id == job.id
    with pytest.raises(Conflict):
        queue.enqueue(alice, job.id)


def test_reject_fails_a_validating_job_with_its_reason(queue, alice):
    job = queue.submit(alice, KIND, {}, state="validating_files")
    rejected = queue.reject(alice, job.id, "line 3: missing field 'completion'")
    assert (rejected.state, rejected.error) == ("failed", "line 3: missing field 'completion'")
    assert rejected.finished_at is not None
    assert states(queue, alice, job.id) == ["validating_files", "failed"]


def test_threads_claim_each_job_exactly_once(queue, alice):
    ids = {queue.submit(alice, KIND, {"i": i}).id for i in range(40)}
    workers = 6
    barrier = threading.Barrier(workers)

    def drain(w):
        barrier.wait()
        taken = []
        while (job := queue.claim(f"w{w}", [KIND], 30)) is not None:
            taken.append((job.id, f"w{w}"))
        return taken

    with ThreadPoolExecutor(workers) as pool:
        claims = [c for taken in pool.map(drain, range(workers)) for c in taken]
    assert sorted(job_id for job_id, _ in claims) == sorted(ids)
    with queue.db.session() as s:
        owners = dict(s.execute(select(Job.id, Job.lease_owner)).all())
    assert all(owners[job_id] == worker for job_id, worker in claims)


def _drain_in_process(url: str, worker: str, start, results) -> None:
    db = Database(url)
    try:
        queue = JobQueue(db)
        queue.lease_status("job_warm_up", worker)  # connected before the race starts
        start.wait()
        taken = []
        while (job := queue.claim(worker, [KIND], 30)) is not None:
            taken.append(job.id)
        results.put((worker, taken))
    finally:
        db.dispose()


@pytest.mark.slow
def test_processes_claim_each_job_exactly_once(db, queue, alice):
    ids = {queue.submit(alice, KIND, {"i": i}).id for i in range(60)}
    url = db.url.render_as_string(hide_password=False)
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(3), spawn.Queue()
    processes = [spawn.Process(target=_drain_in_process, args=(url, f"p{i}", start, results)) for i in range(3)]
    for p in processes:
        p.start()
    per_process = dict(results.get(timeout=60) for _ in processes)
    for p in processes:
        p.join(10)
    claimed = [job_id for taken in per_process.values() for job_id in taken]
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    with db.session() as s:
        owners = dict(s.execute(select(Job.id, Job.lease_owner)).all())
    for worker, taken in per_process.items():
        assert all(owners[job_id] == worker for job_id in taken)


# --- leases ---------------------------------------------------------------------------------


def test_expired_lease_is_taken_by_another_worker(queue, alice):
    job = queue.submit(alice, KIND, {})
    assert queue.claim("w1", [KIND], 0.2).attempts == 1
    assert queue.claim("w2", [KIND], 30) is None  # still leased
    time.sleep(0.3)
    resumed = queue.claim("w2", [KIND], 30)
    assert (resumed.id, resumed.lease_owner, resumed.attempts) == (job.id, "w2", 2)
    assert any(m.startswith("resumed after worker loss by worker w2") for m in messages(queue, alice, job.id))
    # The lost worker can no longer renew, finish or fail the job.
    assert queue.heartbeat(job.id, "w1", 30) is False
    assert queue.lease_status(job.id, "w1") == "lost"
    assert queue.finish(job.id, "w1", {"by": "w1"}) is False
    assert queue.fail(job.id, "w1", "late") is False
    assert queue.finish(job.id, "w2", {"by": "w2"}) is True
    done = queue.get(alice, job.id)
    assert (done.state, done.result, done.lease_owner) == ("succeeded", {"by": "w2"}, None)


def test_heartbeat_renews_the_lease(queue, alice):
    job = queue.submit(alice, KIND, {})
    claimed = queue.claim("w1", [KIND], 1.0)
    for _ in range(4):  # 1.2 s in all: longer than one lease
        time.sleep(0.3)
        assert queue.heartbeat(job.id, "w1", 1.0) is True
        assert queue.claim("w2", [KIND], 30) is None
    renewed = queue.get(alice, job.id)
    assert renewed.lease_expires_at > claimed.lease_expires_at
    assert renewed.heartbeat_at > claimed.heartbeat_at
    assert queue.lease_status(job.id, "w1") == "held"


def test_worker_lost_too_often_fails_the_job(db, alice):
    queue = JobQueue(db, max_attempts=2)
    job = queue.submit(alice, KIND, {})
    queue.claim("w1", [KIND], 0.1)
    time.sleep(0.15)
    assert queue.claim("w2", [KIND], 0.1).attempts == 2
    time.sleep(0.15)
    assert queue.claim("w3", [KIND], 0.1) is None
    failed = queue.get(alice, job.id)
    assert failed.state == "failed" and "lost 2 times" in failed.error


def test_release_requeues_without_counting_an_attempt(queue, alice):
    job = queue.submit(alice, KIND, {})
    queue.claim("w1", [KIND], 30)
    assert queue.release(job.id, "w2") is False  # not its lease
    assert queue.release(job.id, "w1") is True
    released = queue.get(alice, job.id)
    assert (released.state, released.lease_owner) == ("queued", None)
    again = queue.claim("w2", [KIND], 30)
    assert (again.id, again.attempts, again.started_at) == (job.id, 1, released.started_at)
    assert messages(queue, alice, job.id)[-1] == "resumed by worker w2 after a clean shutdown"
    assert states(queue, alice, job.id) == ["queued", "running", "queued", "running"]


def test_fail_records_a_reason(queue, alice):
    job = queue.submit(alice, KIND, {})
    queue.claim("w", [KIND], 30)
    assert queue.fail(job.id, "w", "ValueError: bad\n") is True
    failed = queue.get(alice, job.id)
    assert (failed.state, failed.error) == ("failed", "ValueError: bad")
    assert queue.events(alice, job.id, limit=1000)[-1].level == "error"
    assert queue.finish(job.id, "w", {}) is False  # already over


def test_finish_refuses_a_result_that_is_not_json(queue, alice):
    job = queue.submit(alice, KIND, {})
    queue.claim("w", [KIND], 30)
    with pytest.raises(InvalidInput):
        queue.finish(job.id, "w", {"x": {1, 2}})
    assert queue.get(alice, job.id).state == "running"


# --- cancel ---------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_is_immediate(queue, alice):
    job = queue.submit(alice, KIND, {})
    cancelled = queue.request_cancel(alice, job.id)
    assert (cancelled.state, cancelled.finished_at is not None) == ("cancelled", True)
    assert queue.claim("w", [KIND], 30) is None
    assert queue.request_cancel(alice, job.id).state == "cancelled"  # again: no change
    assert states(queue, alice, job.id) == ["queued", "cancelled"]


def test_cancel_of_a_running_job_is_seen_by_its_worker(queue, alice):
    job = queue.submit(alice, KIND, {})
    queue.claim("w", [KIND], 30)
    requested = queue.request_cancel(alice, job.id)
    assert (requested.state, requested.cancel_requested) == ("running", True)
    assert queue.lease_status(job.id, "w") == "cancel_requested"
    assert queue.heartbeat(job.id, "w", 30) is False
    assert queue.mark_cancelled(job.id, "w") is True
    assert queue.get(alice, job.id).state == "cancelled"
    assert states(queue, alice, job.id) == ["queued", "running", "running", "cancelled"]


def test_cancel_of_a_finished_job_is_a_conflict(queue, alice):
    job = queue.submit(alice, KIND, {})
    queue.claim("w", [KIND], 30)
    queue.finish(job.id, "w", {"ok": True})
    with pytest.raises(Conflict):
        queue.request_cancel(alice, job.id)


def test_expired_job_being_cancelled_is_cancelled_not_resumed(queue, alice):
    job = queue.submit(alice, KIND, {})
    queue.claim("w1", [KIND], 0.1)
    queue.request_cancel(alice, job.id)
    time.sleep(0.15)
    assert queue.claim("w2", [KIND], 30) is None
    assert queue.get(alice, job.id).state == "cancelled"


def test_release_of_a_job_being_cancelled_cancels_it(queue, alice):
    job = queue.submit(alice, KIND, {})
    queue.claim("w", [KIND], 30)
    queue.request_cancel(alice, job.id)
    assert queue.release(job.id, "w") is True
    assert queue.get(alice, job.id).state == "cancelled"


# --- tenancy scoping ------------------------------------------------------------------------


def test_another_tenancys_job_is_not_found_like_a_missing_one(queue, alice, bob):
    job = queue.submit(alice, KIND, {}, state="validating_files")
    missing = "job_" + "0" * 24
    for job_id in (job.id, missing):
        for call in (
            lambda: queue.get(bob, job_id),
            lambda: queue.events(bob, job_id),
            lambda: queue.request_cancel(bob, job_id),
            lambda: queue.enqueue(bob, job_id),
            lambda: queue.reject(bob, job_id, "no"),
        ):
            with pytest.raises(NotFound) as exc:
                call()
            assert exc.value.message == f"job {job_id!r} not found"
    with pytest.raises(NotFound):
        queue.list(bob, after=job.id)
    assert queue.list(bob) == []
    assert queue.get(alice, job.id).state == "validating_files"  # untouched by bob's attempts


# --- listing and events ---------------------------------------------------------------------


def test_list_is_newest_first_and_pages_by_job_id(queue, alice):
    ids = [queue.submit(alice, KIND if i % 2 else "other", {"i": i}).id for i in range(5)]
    newest_first = ids[::-1]
    page1 = queue.list(alice, limit=2)
    page2 = queue.list(alice, after=page1[-1].id, limit=2)
    page3 = queue.list(alice, after=page2[-1].id, limit=2)
    assert [j.id for j in page1 + page2 + page3] == newest_first
    assert [j.id for j in queue.list(alice, kind=KIND)] == [ids[3], ids[1]]
    for limit in (0, 101):
        with pytest.raises(InvalidInput):
            queue.list(alice, limit=limit)


def test_list_pages_jobs_created_in_the_same_instant(queue, alice, db):
    ids = [queue.submit(alice, KIND, {"i": i}).id for i in range(4)]
    with db.session() as s:
        s.execute(update(Job).values(created_at=utcnow()))
    seen = []
    after = None
    while page := queue.list(alice, after=after, limit=1):
        seen.append(page[0].id)
        after = page[0].id
    assert sorted(seen) == sorted(ids) and len(seen) == 4


def test_events_page_forward_and_backward(queue, alice):
    job = queue.submit(alice, KIND, {})
    for i in range(5):
        queue.add_event(job.id, f"step {i}", {"step": i})
    everything = queue.events(alice, job.id)
    assert [e.message for e in everything] == ["created"] + [f"step {i}" for i in range(5)]
    first = queue.events(alice, job.id, limit=2)
    rest = queue.events(alice, job.id, after=first[-1].id, limit=10)
    assert [e.id for e in first + rest] == [e.id for e in everything]
    newest = queue.events(alice, job.id, limit=2, newest_first=True)
    older = queue.events(alice, job.id, after=newest[-1].id, limit=10, newest_first=True)
    assert [e.id for e in newest + older] == [e.id for e in everything][::-1]
    assert everything[1].data == {"step": 0} and everything[1].tenancy_id == alice.tenancy_id


def test_add_event_checks_its_input(queue, alice):
    job = queue.submit(alice, KIND, {})
    with pytest.raises(InvalidInput):
        queue.add_event(job.id, "x", level="debug")
    with pytest.raises(InvalidInput):
        queue.add_event(job.id, "x", {"bad": object()})
    with pytest.raises(NotFound):
        queue.add_event("job_missing", "x")
    with queue.db.session() as s:
        assert s.scalar(select(JobEvent.message).order_by(JobEvent.id.desc())) == "created"
