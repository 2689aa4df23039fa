"""Jobs on Ray actors (``jobs.ray_pool``) with the test kind ``sleep-count``, on a local Ray the
test starts: the states, events and result of a local worker, cancel, a clean stop that gives
the job back, and ``kill -9`` of an actor's process: Ray restarts it and the job resumes from
its checkpoint to the uninterrupted result. Ray talks to no other machine meanwhile."""

from __future__ import annotations

import os
import random
import re
import signal
import sys

import psutil
import pytest

import sleep_count
from sleep_count import HANDLERS, SLEEP_COUNT

from atelier.jobs.ray_pool import RayWorkerPool, portable_settings
from atelier.jobs.worker import Worker
from atelier.settings import Settings

pytestmark = pytest.mark.slow

JOB_TIMEOUT = 120.0
"""Generous: an actor starts in seconds, but the machine is shared."""


def sleep_count_handlers(settings, db):
    """The handler factory the actors run: the test kind only."""
    return HANDLERS


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"  # where the `db` fixture's database is


@pytest.fixture
def start_pool(local_ray, data_dir, db):
    """``start_pool()``: one worker actor running ``sleep-count`` (2 s lease), stopped after the test."""
    for module in (sleep_count, sys.modules[__name__]):  # the actors get these by value, not by import
        local_ray.cloudpickle.register_pickle_by_value(module)
    pools = []

    def start() -> RayWorkerPool:
        pool = RayWorkerPool(Settings(data_dir=data_dir), 1, handlers=sleep_count_handlers, lease_seconds=2.0,
                             poll_seconds=0.2, check_seconds=0.5)  # fmt: skip
        pools.append(pool.start())
        return pool

    yield start
    for pool in pools:
        pool.stop(grace_seconds=10)


def steps(queue, principal, job_id) -> list[int]:
    return [e.data["step"] for e in queue.events(principal, job_id, limit=1000) if e.message.startswith("step ")]


def ended(queue, principal, job_id):
    job = queue.get(principal, job_id)
    return job if job.state in ("succeeded", "failed", "cancelled") else None


def story(queue, principal, job_id) -> list[tuple[str, str | None]]:
    """The job's events as (message, new state), worker names left out."""
    return [(re.sub(r"by worker \S+", "by worker W", e.message), (e.data or {}).get("state"))
            for e in queue.events(principal, job_id, limit=1000)]  # fmt: skip


def foreign_connections() -> list[tuple[int, str]]:
    """Connections of this process and its descendants (Ray's) to addresses that are not this machine's."""
    mine = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    found = []
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(process.pid, c.raddr.ip) for c in connections
                  if c.raddr and c.raddr.ip.removeprefix("::ffff:") not in mine]  # fmt: skip
    return found


def test_a_job_on_a_ray_actor_has_the_states_events_and_result_of_a_local_worker(db, queue, alice, data_dir,
                                                                                 start_pool, wait_for):
    local = queue.submit(alice, SLEEP_COUNT, {"n": 4})
    Worker(db, HANDLERS, data_dir=data_dir).run(max_jobs=1)
    start_pool()
    on_ray = queue.submit(alice, SLEEP_COUNT, {"n": 4})
    done = wait_for(lambda: ended(queue, alice, on_ray.id), timeout=JOB_TIMEOUT)
    assert (done.state, done.attempts, done.result) == ("succeeded", 1, queue.get(alice, local.id).result)
    assert story(queue, alice, on_ray.id) == story(queue, alice, local.id)
    assert story(queue, alice, on_ray.id)[-1] == ("succeeded", "succeeded")
    assert not foreign_connections()


def test_a_job_on_a_ray_actor_is_cancelled_like_on_a_local_worker(queue, alice, start_pool, wait_for):
    start_pool()
    job = queue.submit(alice, SLEEP_COUNT, {"n": 1000, "step_seconds": 0.05})
    wait_for(lambda: len(steps(queue, alice, job.id)) >= 2, timeout=JOB_TIMEOUT)
    queue.request_cancel(alice, job.id)
    done = wait_for(lambda: ended(queue, alice, job.id), timeout=30)
    assert done.state == "cancelled" and len(steps(queue, alice, job.id)) < 1000
    messages = [message for message, _ in story(queue, alice, job.id)]
    assert messages.index("cancel requested; the worker stops at its next check") < messages.index("cancelled")


def test_stopping_the_pool_gives_the_running_job_back_to_the_queue(queue, alice, start_pool, wait_for):
    pool = start_pool()
    job = queue.submit(alice, SLEEP_COUNT, {"n": 1000, "step_seconds": 0.05})
    wait_for(lambda: len(steps(queue, alice, job.id)) >= 2, timeout=JOB_TIMEOUT)
    assert wait_for(lambda: pool.running, timeout=30) == 1
    pool.stop(grace_seconds=10)
    assert queue.get(alice, job.id).state == "queued"
    assert story(queue, alice, job.id)[-1] == ("released by worker W (shutting down); queued to resume", "queued")


def test_kill_9_of_an_actor_process_restarts_it_and_the_job_resumes_from_its_checkpoint(
        db, queue, alice, data_dir, start_pool, local_ray, wait_for):
    n = 12
    reference = queue.submit(alice, SLEEP_COUNT, {"n": n})
    Worker(db, HANDLERS, data_dir=data_dir).run(max_jobs=1)
    pool = start_pool()
    [actor] = pool.actors
    job = queue.submit(alice, SLEEP_COUNT, {"n": n, "step_seconds": 0.15})
    kill_at = random.Random(5).randint(2, 8)
    wait_for(lambda: len(steps(queue, alice, job.id)) >= kill_at, timeout=JOB_TIMEOUT)
    pid = local_ray.get(actor.status.remote())[0]
    os.kill(pid, signal.SIGKILL)

    done = wait_for(lambda: ended(queue, alice, job.id), timeout=JOB_TIMEOUT)
    assert (done.state, done.attempts) == ("succeeded", 2)
    assert done.result == queue.get(alice, reference.id).result
    messages = [message for message, _ in story(queue, alice, job.id)]
    assert "resumed after worker loss by worker W (attempt 2)" in messages
    [resumed] = [int(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("resuming from checkpoint at step")]
    assert kill_at <= resumed < n
    assert local_ray.get(actor.status.remote())[0] != pid  # the same actor, in a new process
    assert wait_for(lambda: pool.restarts, timeout=30) == 1


def test_secrets_do_not_travel_to_the_actors(tmp_path):
    settings = Settings(data_dir=tmp_path, root_key="c2VjcmV0", admin_key="admin", threads=1)
    assert portable_settings(settings) == {"data_dir": tmp_path, "threads": 1}
