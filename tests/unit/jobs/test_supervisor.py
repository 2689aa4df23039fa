"""``atelier serve``'s workers are supervised: one that ends (SIGTERM or SIGKILL) is reaped and
started again, and the next job still runs."""

from __future__ import annotations

import os
import signal

import pytest
from sleep_count import SLEEP_COUNT, WORKER_COMMAND

from atelier.jobs.supervisor import WorkerSupervisor, describe_exit
from atelier.principal import Principal
from atelier.settings import Settings
from atelier.store import Database, repos
from atelier.store.jobs import JobQueue

pytestmark = pytest.mark.slow


@pytest.fixture
def service(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("ATELIER_")]:
        monkeypatch.delenv(name)
    settings = Settings(data_dir=tmp_path / "data")
    supervisor = WorkerSupervisor(settings, 1, WORKER_COMMAND, check_seconds=0.2, min_delay=0.2).start()
    db = Database(settings.db_url)
    queue = JobQueue(db)
    with db.session() as s:
        principal = Principal(repos.create_tenancy(s, "t").id, "key_t", "admin")
    try:
        yield supervisor, queue, principal
    finally:
        supervisor.stop(grace_seconds=10)
        db.dispose()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_worker_that_ends_is_restarted_and_the_next_job_runs(service, wait_for, sig):
    supervisor, queue, principal = service
    wait_for(lambda: queue.live_workers(), timeout=60)  # the first worker says it is alive
    [pid] = supervisor.pids()
    os.kill(pid, sig)
    wait_for(lambda: supervisor.restarts == 1 and supervisor.running == 1, timeout=30)
    assert supervisor.pids() != [pid]
    with pytest.raises(ChildProcessError):  # reaped by the supervisor: no zombie left behind
        os.waitpid(pid, os.WNOHANG)
    job = queue.submit(principal, SLEEP_COUNT, {"n": 3})
    done = wait_for(lambda: queue.get(principal, job.id).state == "succeeded" and queue.get(principal, job.id),
                    timeout=60)
    assert done.result["count"] == 3


def test_exits_are_described_for_the_log():
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(1) == "exit code 1"
