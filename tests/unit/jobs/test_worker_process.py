"""Real worker processes (``atelier worker`` with the test kind): kill -9 mid-job and resume elsewhere, SIGTERM, serve's workers."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sleep_count import HANDLERS, SLEEP_COUNT, WORKER_COMMAND

from atelier.store.jobs import JobQueue
from atelier.jobs.worker import Worker, start_worker_processes, stop_worker_processes
from atelier.principal import Principal
from atelier.settings import Settings
from atelier.store import Database, repos

pytestmark = pytest.mark.slow


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir):
    """The service's database in ``data_dir`` (where a worker started with that data dir looks)."""
    db = Database(f"sqlite:///{data_dir / 'atelier.db'}")
    db.migrate()
    with db.session() as s:
        principal = Principal(repos.create_tenancy(s, "t").id, "key_t", "admin")
    yield db, JobQueue(db), principal
    db.dispose()


class WorkerProcess:
    """``python -m atelier worker`` on ``data_dir`` with a short lease; output kept in a log file."""

    def __init__(self, data_dir: Path, worker_id: str, *extra: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
        env.update(ATELIER_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
        self.log = data_dir.parent / f"{worker_id}.log"
        command = [*WORKER_COMMAND, "--worker-id", worker_id,
                   "--lease-seconds", "2", "--poll-seconds", "0.2", *extra]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def steps(queue, principal, job_id) -> list[int]:
    return [e.data["step"] for e in queue.events(principal, job_id, limit=1000) if e.message.startswith("step ")]


def test_kill_9_mid_job_then_another_worker_finishes_it_from_its_checkpoint(data_dir, store, wait_for):
    db, queue, principal = store
    n = 12
    reference = queue.submit(principal, SLEEP_COUNT, {"n": n})  # the uninterrupted run, in this process
    Worker(db, HANDLERS, data_dir=data_dir).run(max_jobs=1)
    uninterrupted = queue.get(principal, reference.id).result
    assert uninterrupted["count"] == n

    job = queue.submit(principal, SLEEP_COUNT, {"n": n, "step_seconds": 0.15})
    kill_at = random.randint(2, 8)
    first = WorkerProcess(data_dir, "first")
    try:
        wait_for(lambda: len(steps(queue, principal, job.id)) >= kill_at, timeout=60)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    finally:
        first.close()
    assert first.proc.returncode == -signal.SIGKILL
    orphaned = queue.get(principal, job.id)
    assert (orphaned.state, orphaned.lease_owner, orphaned.attempts) == ("running", "first", 1)
    checkpoint_step = len(steps(queue, principal, job.id))  # steps are emitted after their checkpoint
    assert kill_at <= checkpoint_step < n

    second = WorkerProcess(data_dir, "second")
    try:
        wait_for(lambda: queue.get(principal, job.id).state in ("succeeded", "failed"), timeout=60)
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(15) == 0, second.output()
    finally:
        second.close()
    done = queue.get(principal, job.id)
    assert (done.state, done.error, done.attempts) == ("succeeded", None, 2), second.output()
    assert done.result == uninterrupted
    messages = [e.message for e in queue.events(principal, job.id, limit=1000)]
    assert "resumed after worker loss by worker second (attempt 2)" in messages
    resumed_from = [m for m in messages if m.startswith("resuming from checkpoint at step ")]
    assert len(resumed_from) == 1
    resumed_step = int(resumed_from[0].rsplit(" ", 1)[1])
    assert resumed_step >= checkpoint_step
    done_steps = steps(queue, principal, job.id)
    assert done_steps == sorted(set(done_steps))  # no step run twice
    assert set(range(resumed_step + 1, n + 1)) <= set(done_steps)


def test_sigterm_gives_the_job_back_to_the_queue(data_dir, store, wait_for):
    _, queue, principal = store
    job = queue.submit(principal, SLEEP_COUNT, {"n": 1000, "step_seconds": 0.05})
    worker = WorkerProcess(data_dir, "polite")
    try:
        wait_for(lambda: len(steps(queue, principal, job.id)) >= 2, timeout=60)
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(15) == 0, worker.output()
    finally:
        worker.close()
    released = queue.get(principal, job.id)
    assert (released.state, released.lease_owner) == ("queued", None)
    assert "released by worker polite (shutting down); queued to resume" in [
        e.message for e in queue.events(principal, job.id, limit=1000)
    ]


def test_worker_stops_when_its_parent_is_gone(data_dir, store):
    worker = WorkerProcess(data_dir, "orphan", "--parent-pid", "1")  # its real parent is this test
    try:
        assert worker.proc.wait(30) == 0, worker.output()
    finally:
        worker.close()
    assert "parent 1 is gone" in worker.output()


def test_serve_workers_run_jobs_and_give_them_back_when_the_service_stops(data_dir, monkeypatch, wait_for):
    for name in [k for k in os.environ if k.startswith("ATELIER_")]:
        monkeypatch.delenv(name)
    settings = Settings(data_dir=data_dir)
    processes = start_worker_processes(settings, 2, WORKER_COMMAND)  # migrates the fresh data dir first
    db = Database(settings.db_url)
    try:
        assert len(processes) == 2
        queue = JobQueue(db)
        with db.session() as s:
            principal = Principal(repos.create_tenancy(s, "t").id, "key_t", "admin")
        jobs = [queue.submit(principal, SLEEP_COUNT, {"n": 10_000, "step_seconds": 0.05}) for _ in range(2)]

        def owners() -> set[str | None]:
            return {queue.get(principal, j.id).lease_owner for j in jobs}

        wait_for(lambda: None not in owners() and len(steps(queue, principal, jobs[1].id)) > 0, timeout=60)
        assert len(owners()) == 2  # one job in each worker
    finally:
        stop_worker_processes(processes, grace_seconds=15)
    assert [p.returncode for p in processes] == [0, 0]
    assert [queue.get(principal, j.id).state for j in jobs] == ["queued", "queued"]
    db.dispose()
    assert start_worker_processes(settings, 0) == []
