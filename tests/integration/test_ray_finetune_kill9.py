"""``kill -9`` of a Ray worker actor mid fine-tuning (``jobs="ray"``), on a local Ray the test starts:
the job resumes from its last checkpoint and ends with the very adapter tensors of an
uninterrupted run on Ray, whether Ray restarts the actor on the same node or the job goes to
a node whose work directory has never seen it (the checkpoint comes from the object store).

The data dir, tiny model, tenancy, training file and job spec are those of
``test_finetune_kill9`` (same tolerance: tensors equal); the workers are ``jobs.ray_pool``
actors running the service's own handlers on one torch thread with a 2 s lease. The "other
node" is a second data dir sharing only what nodes share: the database, the object store
(a symlink standing for S3 or a shared mount) and the root key; its work directories are its own.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from sqlalchemy import select

from test_finetune_kill9 import (  # noqa: F401 - `service` is a fixture this module uses too
    CHECKPOINT_INTERVAL, JOB_TIMEOUT, METRIC_STEPS, TOTAL_STEPS, Service, service, wait_for,
)  # fmt: skip

from atelier.jobs.ray_pool import RayWorkerPool
from atelier.settings import Settings
from atelier.store.tables import StoredObject

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def node_settings(service: Service, data_dir: Path | None = None) -> Settings:
    """The settings of a node: the service's, or those of a node with its own data dir that shares the
    database, the object store and the root key of the service's."""
    env = service.env
    shared = {} if data_dir is None else {"database_url": f"sqlite:///{service.data_dir / 'atelier.db'}",
                                          "root_key_file": service.data_dir / "root.key"}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:  # only what is given here travels to the actors
        for name in [k for k in os.environ if k.startswith("ATELIER_")]:
            mp.delenv(name)
        return Settings(data_dir=data_dir or service.data_dir, catalog_file=Path(env["ATELIER_CATALOG_FILE"]),
                        cache_dir=Path(env["ATELIER_CACHE_DIR"]), threads=1, **shared)  # fmt: skip


def start_pool(settings: Settings, **options) -> RayWorkerPool:
    """One actor running the service's handlers (2 s lease), as ``atelier serve`` with ``jobs=ray`` starts them."""
    return RayWorkerPool(settings, 1, lease_seconds=2.0, poll_seconds=0.2, check_seconds=0.5, **options).start()


def finished(service: Service, job_id: str):
    job = wait_for(lambda: (j := service.job(job_id)).state in ("succeeded", "failed", "cancelled") and j,
                   JOB_TIMEOUT, f"job {job_id} done", interval=0.2)  # fmt: skip
    assert (job.state, job.error) == ("succeeded", None)
    return job


def kill_actor_after_metrics(service: Service, pool: RayWorkerPool, job_id: str, seed: int) -> tuple[int, int]:
    """SIGKILL the actor's process once the metrics of a random step are recorded; returns (reached, saved)."""
    import ray

    kill_step = random.Random(seed).randint(3, TOTAL_STEPS - 12)  # after the first checkpoint (step 2)
    wait_for(lambda: any(s >= kill_step for s in service.steps(job_id, "metrics")), JOB_TIMEOUT,
             f"metrics of step {kill_step}")  # fmt: skip
    [actor] = pool.actors
    pid = ray.get(actor.status.remote())[0]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), 30, f"actor process {pid} gone")
    killed = service.job(job_id)
    assert (killed.state, killed.attempts) == ("running", 1)
    reached, saved = max(service.steps(job_id, "metrics")), max(service.steps(job_id, "checkpoint"))
    assert kill_step <= reached < TOTAL_STEPS and CHECKPOINT_INTERVAL <= saved <= reached
    return reached, saved


def _alive(pid: int) -> bool:
    """Whether the process still runs (a zombie Ray has not reaped yet does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stored_checkpoints(service: Service) -> list[str]:
    with service.db.session() as session:
        return list(session.scalars(select(StoredObject.id).where(StoredObject.kind == "checkpoint")))


@pytest.fixture(scope="module")
def reference(service, local_ray) -> Iterator[tuple[str, dict, dict[str, torch.Tensor]]]:
    """The same job spec run on a Ray actor that is never killed: (job id, adapter config, tensors)."""
    pool = start_pool(node_settings(service))
    try:
        job_id = service.create_job()
        job = finished(service, job_id)
    finally:
        pool.stop()
    assert job.attempts == 1 and job.result["steps"] == TOTAL_STEPS
    assert service.steps(job_id, "metrics") == METRIC_STEPS and not service.steps(job_id, "resumed")
    config, tensors = service.adapter(job_id)
    yield job_id, config, tensors


def test_kill_9_of_the_actor_ray_restarts_it_and_the_job_resumes_to_the_same_adapter(service, reference):
    pool = start_pool(node_settings(service))
    try:
        job_id = service.create_job()
        reached, saved = kill_actor_after_metrics(service, pool, job_id, seed=11)
        done = finished(service, job_id)
        assert wait_for(lambda: pool.restarts, 30, "the restart seen by the pool") == 1
    finally:
        pool.stop()
    assert done.attempts == 2 and done.result["steps"] == TOTAL_STEPS
    messages = [e.message for e in service.events(job_id)]
    assert any(m.startswith("resumed after worker loss by worker ") and m.endswith("(attempt 2)") for m in messages)
    [resumed] = service.steps(job_id, "resumed")
    assert saved <= resumed <= reached and resumed % CHECKPOINT_INTERVAL == 0, (resumed, saved, reached)
    service.assert_same_adapter(job_id, reference)
    assert not stored_checkpoints(service)  # discarded once the job ended


def test_after_kill_9_a_node_without_the_work_directory_resumes_from_the_object_store(service, reference, tmp_path):
    node_b = tmp_path / "node-b"
    node_b.mkdir()
    (node_b / "objects").symlink_to(service.data_dir / "objects")  # what S3 or a shared mount gives every node
    first = start_pool(node_settings(service), max_restarts=0)  # node A's actor stays dead
    try:
        job_id = service.create_job()
        reached, saved = kill_actor_after_metrics(service, first, job_id, seed=23)
    finally:
        first.stop()
    assert stored_checkpoints(service)  # one (two after a kill between a put and its delete)
    second = start_pool(node_settings(service, node_b))
    try:
        done = finished(service, job_id)
    finally:
        second.stop()
    assert done.attempts == 2 and done.result["steps"] == TOTAL_STEPS
    restored = [e.data["step"] for e in service.events(job_id) if (e.data or {}).get("type") == "checkpoint_restored"]
    [resumed] = service.steps(job_id, "resumed")
    assert restored == [resumed] and saved <= resumed <= reached, (restored, resumed, saved, reached)
    work_b = node_b / "jobs" / job_id  # node B trained in its own work directory (restored into it), now emptied
    assert work_b.is_dir() and not any(work_b.iterdir())
    service.assert_same_adapter(job_id, reference)
    assert not stored_checkpoints(service)
