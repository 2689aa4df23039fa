"""``kill -9`` of a worker mid fine-tuning: a second worker resumes the job from its last
complete checkpoint and ends with the very adapter tensors of an uninterrupted run.

The data dir has a tiny random Llama registered through ``ATELIER_CATALOG_FILE``; files
and jobs are created through the services in this process (as the routes do), and every
job runs in a real ``python -m atelier worker`` subprocess on one torch thread (exact
resumption assumes the same thread count) with a 2 s lease. The reference job is run once
by a worker that is never killed; each parametrized seed picks a random kill step, kills
the first worker with SIGKILL once that step's metrics are recorded, starts a second one
and compares the unsealed adapters tensor by tensor.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from atelier.catalog import Catalog
from atelier.cloud.clusters import ClusterRequest, ClusterService
from atelier.cloud.custom_models import CustomModelService
from atelier.cloud.fine_tuning import FineTuningService, JobRequest
from atelier.cloud.unit_limits import set_unit_limits
from atelier.cloud.units import UnitTable
from atelier.store.jobs import JobQueue
from atelier.principal import Principal
from atelier.security.crypto import KeyManager, RootKey
from atelier.settings import Settings
from atelier.store import Database, repos
from atelier.store.files import FileStore
from atelier.store.objects import LocalObjectStore
from atelier.tuning.export import read_adapter

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-kill9"
WORDS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "navy", "lime", "plum", "rose", "sand"]
TRAINING_CONFIG = {
    "type": "lora", "total_training_epochs": 4, "training_batch_size": 2, "lora_r": 4, "learning_rate": 0.01,
    "log_model_metrics_interval_in_steps": 2, "checkpoint_interval_in_steps": 2, "early_stopping_patience": 0,
}  # fmt: skip
"""30 examples, 24 for training: 12 steps per epoch, 48 steps (about 0.1 s each on one thread)."""
TOTAL_STEPS = 48
CHECKPOINT_INTERVAL = 2
METRIC_STEPS = [*range(1, 21), *range(22, TOTAL_STEPS + 1, 2)]
"""Metrics at every step up to 20, then every 2 steps."""
JOB_TIMEOUT = 150.0


def examples() -> bytes:
    rows = [{"prompt": f"Name colour number {i}, please, in one lowercase word.",
             "completion": f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]}"} for i in range(30)]  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


@dataclass
class Service:
    """The data dir and the services a server on it would use."""

    data_dir: Path
    env: dict[str, str]
    db: Database
    queue: JobQueue
    fine_tuning: FineTuningService
    custom_models: CustomModelService
    principal: Principal
    training_file: str

    def create_job(self) -> str:
        body = JobRequest(model=MODEL, training_file=self.training_file, seed=7, training_config=TRAINING_CONFIG)
        job = self.fine_tuning.create(self.principal, body)
        assert job.state == "queued", job.error
        return job.id

    def job(self, job_id: str):
        return self.queue.get(self.principal, job_id)

    def events(self, job_id: str) -> list:
        return self.queue.events(self.principal, job_id, limit=1000)

    def steps(self, job_id: str, kind: str) -> list[int]:
        return [e.data["step"] for e in self.events(job_id) if (e.data or {}).get("type") == kind]

    def wait_done(self, job_id: str, worker: "WorkerProcess"):
        def done():
            job = self.job(job_id)
            if job.state in ("succeeded", "failed", "cancelled"):
                return job
            if worker.proc.poll() is not None:
                pytest.fail(f"worker exited with {worker.proc.returncode}:\n{worker.output()}")
            return None

        job = wait_for(done, JOB_TIMEOUT, f"job {job_id} done", interval=0.2)
        assert (job.state, job.error) == ("succeeded", None), worker.output()
        return job

    def adapter(self, job_id: str) -> tuple[dict, dict[str, torch.Tensor]]:
        """The job's custom model's adapter, unsealed: (adapter_config.json, tensors)."""
        files = read_adapter(self.custom_models.adapter(self.principal, self.job(job_id).result["fine_tuned_model"]))
        config = json.loads(files["adapter_config.json"])
        config["target_modules"] = sorted(config["target_modules"])  # PEFT writes a set: order varies by process
        return config, load_safetensors(files["adapter_model.safetensors"])

    def curve(self, job_id: str) -> list[dict]:
        return self.custom_models.get(self.principal, self.job(job_id).result["fine_tuned_model"]).curve

    def assert_same_adapter(self, job_id: str, reference: tuple[str, dict, dict[str, torch.Tensor]],
                            what: str = "") -> None:
        """The job's adapter (config, every tensor exactly) and curve are the reference job's; metrics once per step."""
        reference_id, reference_config, reference_tensors = reference
        assert sorted(self.steps(job_id, "metrics")) == METRIC_STEPS  # each recorded once
        config, tensors = self.adapter(job_id)
        assert config == reference_config
        assert tensors.keys() == reference_tensors.keys() and tensors
        different = [name for name, t in tensors.items() if not torch.equal(t, reference_tensors[name])]
        assert not different, f"{what}{different} differ"
        assert self.curve(job_id) == self.curve(reference_id)


class WorkerProcess:
    """``python -m atelier worker`` on the data dir, one torch thread, 2 s lease; output in a log file."""

    def __init__(self, service: Service, worker_id: str):
        self.log = service.data_dir.parent / f"{worker_id}.log"
        command = [sys.executable, "-m", "atelier", "worker", "--worker-id", worker_id,
                   "--lease-seconds", "2", "--poll-seconds", "0.2"]  # fmt: skip
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(command, env=service.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        """SIGTERM (the worker is idle: it exits 0), SIGKILL if it does not."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    """A fresh data dir whose catalog has the tiny model, a tenancy and its uploaded training file."""
    from transformers import AutoTokenizer

    from atelier.engine.loading import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("kill9")
    model_dir = root / "tiny-model"
    tokenizer = tiny_tokenizer()
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    catalog_file = root / "catalog.json"
    entry = {"name": MODEL, "kind": "chat", "source": {"path": str(model_dir)}, "context_length": 256,
             "max_output_tokens": 32}  # fmt: skip
    catalog_file.write_text(json.dumps([entry]))
    data_dir = root / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(ATELIER_DATA_DIR=str(data_dir), ATELIER_CATALOG_FILE=str(catalog_file), ATELIER_THREADS="1",
               ATELIER_CACHE_DIR=str(root / "cache"), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:  # settings as the workers read them, whatever this shell has
        for name in [k for k in os.environ if k.startswith("ATELIER_")]:
            mp.delenv(name)
        settings = Settings(data_dir=data_dir, catalog_file=catalog_file, cache_dir=root / "cache", threads=1)
    data_dir.mkdir(parents=True)
    db = Database(settings.db_url)
    db.migrate()
    with db.session() as s:
        principal = Principal(repos.create_tenancy(s, "kill9").id, "key_kill9", "admin")
    objects = LocalObjectStore(settings.data_path / "objects", KeyManager(db, RootKey.from_settings(settings)), db)
    files = FileStore(db, objects)
    training_file = files.create_file(principal, filename="train.jsonl", purpose="fine-tune", data=examples()).id
    base_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    catalog, units = Catalog.load(catalog_file), UnitTable.load()
    with db.session() as s:  # jobs run on a fine-tuning cluster of the tenancy: the operator grants units first
        set_unit_limits(s, principal.tenancy_id, {"small": 8}, units)
    clusters = ClusterService(db, catalog, units)
    clusters.create(principal, ClusterRequest(name="ft", type="fine-tuning", unit_type="small", unit_count=8,
                                              base_model=MODEL))
    fine_tuning = FineTuningService(db, files, catalog, lambda name: base_tokenizer, JobQueue(db), clusters)
    yield Service(data_dir, env, db, fine_tuning.queue, fine_tuning, CustomModelService(db, objects), principal,
                  training_file)  # fmt: skip
    db.dispose()


@pytest.fixture(scope="module")
def uninterrupted(service) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """The reference: the same job spec run by a worker that is never killed (job id, config, tensors)."""
    job_id = service.create_job()
    worker = WorkerProcess(service, "steady")
    try:
        job = service.wait_done(job_id, worker)
    finally:
        worker.stop()
    assert job.attempts == 1 and job.result["steps"] == TOTAL_STEPS
    assert service.steps(job_id, "metrics") == METRIC_STEPS
    assert not service.steps(job_id, "resumed")
    config, tensors = service.adapter(job_id)
    return job_id, config, tensors


@pytest.mark.parametrize("seed", [11, 23])
def test_kill_9_mid_training_resumes_to_the_same_adapter(service, uninterrupted, seed):
    kill_step = random.Random(seed).randint(3, TOTAL_STEPS - 12)  # leaves ≥ 1 s of training to interrupt
    job_id = service.create_job()

    first = WorkerProcess(service, f"first-{seed}")
    try:
        wait_for(lambda: any(s >= kill_step for s in service.steps(job_id, "metrics")), JOB_TIMEOUT,
                 f"metrics of step {kill_step}")  # fmt: skip
        os.kill(first.proc.pid, signal.SIGKILL)
        assert first.proc.wait(10) == -signal.SIGKILL
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait()
    killed = service.job(job_id)
    assert (killed.state, killed.lease_owner, killed.attempts) == ("running", f"first-{seed}", 1)
    reached = max(service.steps(job_id, "metrics"))
    saved = max(service.steps(job_id, "checkpoint"))
    assert kill_step <= reached < TOTAL_STEPS and CHECKPOINT_INTERVAL <= saved <= reached

    second = WorkerProcess(service, f"second-{seed}")
    try:
        done = service.wait_done(job_id, second)
    finally:
        second.stop()
    assert done.attempts == 2 and done.result["steps"] == TOTAL_STEPS
    messages = [e.message for e in service.events(job_id)]
    assert f"resumed after worker loss by worker second-{seed} (attempt 2)" in messages
    resumed = service.steps(job_id, "resumed")
    assert len(resumed) == 1 and saved <= resumed[0] <= reached and resumed[0] % CHECKPOINT_INTERVAL == 0, (
        resumed, saved, reached)  # fmt: skip
    service.assert_same_adapter(job_id, uninterrupted, f"killed at step {reached}, resumed from {resumed[0]}: ")
