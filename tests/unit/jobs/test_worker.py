"""The worker in this process: results, failures, cancel, clean shutdown and resume, lost leases."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import update

from sleep_count import HANDLERS, SLEEP_COUNT

from atelier.errors import InvalidInput
from atelier.jobs.context import JobContext, JobStopped, one_line
from atelier.jobs.worker import Worker
from atelier.store.tables import Job


def expected_count(n: int) -> dict:
    import hashlib

    digest = ""
    for step in range(1, n + 1):
        digest = hashlib.sha256(f"{digest}:{step}".encode()).hexdigest()
    return {"count": n, "total": n * (n + 1) // 2, "digest": digest}


def make_worker(db, tmp_path, handlers=None, **kwargs) -> Worker:
    kwargs.setdefault("lease_seconds", 3.0)
    kwargs.setdefault("poll_seconds", 0.05)
    return Worker(db, handlers or HANDLERS, data_dir=tmp_path / "data", **kwargs)


def in_thread(worker: Worker, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def steps_done(queue, principal, job_id) -> int:
    return max((e.data["step"] for e in queue.events(principal, job_id, limit=1000)
                if e.data and "step" in e.data and e.message.startswith("step")), default=0)


def test_worker_runs_a_job_to_its_result(db, queue, alice, tmp_path):
    job = queue.submit(alice, SLEEP_COUNT, {"n": 5})
    worker = make_worker(db, tmp_path, worker_id="w1")
    assert worker.run(max_jobs=1) == 1
    done = queue.get(alice, job.id)
    assert (done.state, done.result, done.error, done.lease_owner) == ("succeeded", expected_count(5), None, None)
    events = [e.message for e in queue.events(alice, job.id, limit=1000)]
    assert events == ["created", "started by worker w1", *[f"step {i}/5" for i in range(1, 6)], "succeeded"]
    assert (tmp_path / "data" / "jobs" / job.id / "count.json").exists()
    assert worker.run_once() is False  # nothing left


def test_handler_exception_fails_the_job_with_one_line(db, queue, alice, tmp_path):
    def divide(ctx: JobContext) -> dict:
        return {"x": 1 / ctx.job.payload["d"]}

    job = queue.submit(alice, "divide", {"d": 0})
    make_worker(db, tmp_path, {"divide": divide}).run(max_jobs=1)
    failed = queue.get(alice, job.id)
    assert (failed.state, failed.error) == ("failed", "ZeroDivisionError: division by zero")


def test_bad_payload_fails_with_the_parameter_named(db, queue, alice, tmp_path):
    job = queue.submit(alice, SLEEP_COUNT, {"n": 0})
    make_worker(db, tmp_path).run(max_jobs=1)
    failed = queue.get(alice, job.id)
    assert failed.state == "failed" and failed.error.startswith("n: ")


@pytest.mark.parametrize(("returned", "reason"), [([1, 2], "returned a list"), ({"x": {1}}, "must be JSON")])
def test_result_that_is_not_a_json_object_fails_the_job(db, queue, alice, tmp_path, returned, reason):
    job = queue.submit(alice, "odd", {})
    make_worker(db, tmp_path, {"odd": lambda ctx: returned}).run(max_jobs=1)
    failed = queue.get(alice, job.id)
    assert failed.state == "failed" and reason in failed.error


def test_cancel_stops_a_running_job_within_seconds(db, queue, alice, tmp_path, wait_for):
    job = queue.submit(alice, SLEEP_COUNT, {"n": 10_000, "step_seconds": 0.05})
    worker = make_worker(db, tmp_path, poll_seconds=0.2, lease_seconds=30)
    thread = in_thread(worker, max_jobs=1)
    wait_for(lambda: steps_done(queue, alice, job.id) >= 2)
    asked = time.monotonic()
    queue.request_cancel(alice, job.id)
    wait_for(lambda: queue.get(alice, job.id).state == "cancelled", timeout=5)
    assert time.monotonic() - asked < 2.0
    thread.join(5)
    assert not thread.is_alive()
    assert [e.message for e in queue.events(alice, job.id, limit=1000)][-1] == "cancelled"
    assert steps_done(queue, alice, job.id) < 10_000


def test_shutdown_requeues_the_job_and_the_next_worker_resumes_it(db, queue, alice, tmp_path, wait_for):
    job = queue.submit(alice, SLEEP_COUNT, {"n": 30, "step_seconds": 0.02})
    first = make_worker(db, tmp_path, worker_id="first")
    thread = in_thread(first)
    wait_for(lambda: steps_done(queue, alice, job.id) >= 3)
    first.stop()
    thread.join(5)
    assert not thread.is_alive()
    released = queue.get(alice, job.id)
    assert (released.state, released.lease_owner) == ("queued", None)
    stopped_at = steps_done(queue, alice, job.id)
    assert 3 <= stopped_at < 30

    second = make_worker(db, tmp_path, worker_id="second")
    assert second.run(max_jobs=1) == 1
    done = queue.get(alice, job.id)
    assert (done.state, done.result, done.attempts) == ("succeeded", expected_count(30), 1)
    messages = [e.message for e in queue.events(alice, job.id, limit=1000)]
    assert "released by worker first (shutting down); queued to resume" in messages
    assert "resumed by worker second after a clean shutdown" in messages
    assert f"resuming from checkpoint at step {stopped_at}" in messages
    steps = [e.data["step"] for e in queue.events(alice, job.id, limit=1000) if e.message.startswith("step ")]
    assert steps == list(range(1, 31))  # each step once, in order


def test_worker_that_lost_its_lease_leaves_the_job_alone(db, queue, alice, tmp_path, wait_for):
    job = queue.submit(alice, SLEEP_COUNT, {"n": 10_000, "step_seconds": 0.01})
    worker = make_worker(db, tmp_path, worker_id="slow", lease_seconds=0.6, poll_seconds=0.05)
    thread = in_thread(worker, max_jobs=1)
    wait_for(lambda: steps_done(queue, alice, job.id) >= 2)
    with db.session() as s:  # as if the lease had expired and another worker had taken the job
        s.execute(update(Job).where(Job.id == job.id).values(lease_owner="thief"))
    thread.join(5)
    assert not thread.is_alive()
    taken = queue.get(alice, job.id)
    assert (taken.state, taken.lease_owner, taken.result) == ("running", "thief", None)


def test_handler_that_stops_unasked_fails(db, queue, alice, tmp_path):
    def quits(ctx: JobContext) -> dict:
        raise JobStopped("bored")

    job = queue.submit(alice, "quits", {})
    make_worker(db, tmp_path, {"quits": quits}).run(max_jobs=1)
    assert queue.get(alice, job.id).error == "the handler stopped without being asked to"


def test_stop_while_idle_ends_run(db, tmp_path):
    worker = make_worker(db, tmp_path, poll_seconds=0.05)
    thread = in_thread(worker)
    time.sleep(0.2)
    worker.stop()
    thread.join(2)
    assert not thread.is_alive()


def test_heartbeats_keep_a_long_job_leased(db, queue, alice, tmp_path, wait_for):
    """A job running for several lease lengths stays with its worker."""
    job = queue.submit(alice, SLEEP_COUNT, {"n": 10, "step_seconds": 0.3})  # 3 s: 2.5 leases
    worker = make_worker(db, tmp_path, worker_id="keeper", lease_seconds=1.2, poll_seconds=0.05)
    thread = in_thread(worker, max_jobs=1)
    wait_for(lambda: queue.get(alice, job.id).lease_owner == "keeper")
    rival_claims = []
    while thread.is_alive():
        rival_claims.append(queue.claim("rival", [SLEEP_COUNT], 30))
        time.sleep(0.1)
    events = [(e.created_at.time().isoformat(), e.message) for e in queue.events(alice, job.id, limit=1000)]
    assert [c for c in rival_claims if c is not None] == [], events
    done = queue.get(alice, job.id)
    assert (done.state, done.result, done.attempts) == ("succeeded", expected_count(10), 1)


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (ValueError("bad\n  value"), "ValueError: bad value"),
        (KeyError(), "KeyError"),
        (InvalidInput("too long", param="x", line=7), "line 7: too long"),
        (InvalidInput("n: too small", param="n"), "n: too small"),
    ],
)
def test_one_line(exc, line):
    assert one_line(exc) == line
