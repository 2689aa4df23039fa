"""Job checkpoints in the object store: restored into a work directory that lacks them (another
node), two slots that survive a crash between put and delete, discarded when the job ends for good."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path, PurePosixPath

import pytest

from atelier.jobs.checkpoints import KIND, JobCheckpoints, pack, slot_ids
from atelier.jobs.context import JobContext, JobStopped
from atelier.security.crypto import KeyManager, RootKey
from atelier.settings import Settings
from atelier.store.objects import LocalObjectStore


@pytest.fixture
def objects(db, tmp_path):
    keys = KeyManager(db, RootKey.from_settings(Settings(data_dir=tmp_path / "data")))
    return LocalObjectStore(tmp_path / "data" / "objects", keys, db)


@pytest.fixture
def checkpoints(objects) -> JobCheckpoints:
    return JobCheckpoints(objects)


@pytest.fixture
def job(queue, alice):
    return queue.submit(alice, "train", {})


def node(job, queue, root: Path) -> JobContext:
    """The job's context on a node whose work directory is ``root/<job id>``."""
    workdir = root / job.id
    workdir.mkdir(parents=True, exist_ok=True)
    return JobContext(job, workdir, queue)


def write_step(ctx: JobContext, step: int) -> Path:
    directory = ctx.workdir / "checkpoints" / f"step-{step}"
    directory.mkdir(parents=True)
    (directory / "weights.bin").write_bytes(bytes([step]) * 1000)
    (directory / "state.json").write_text(f'{{"step": {step}}}')
    return directory


def stored(objects, job) -> list[str]:
    return [i for i in slot_ids(job.id) if objects.exists(job.tenancy_id, i)]


def messages(queue, alice, job) -> list[str]:
    return [e.message for e in queue.events(alice, job.id, limit=100)]


def test_a_node_without_the_checkpoint_gets_it_back_from_the_object_store(checkpoints, objects, job, queue,
                                                                          alice, tmp_path):
    first = node(job, queue, tmp_path / "node-a")
    for step in (2, 4):
        assert checkpoints.save(first, write_step(first, step), step)
    assert len(stored(objects, job)) == 1  # the newest only
    assert objects.head(job.tenancy_id, stored(objects, job)[0]).kind == KIND

    assert checkpoints.restore(first) is None  # this node has it: nothing to do
    other = node(job, queue, tmp_path / "node-b")
    assert checkpoints.restore(other) == 4
    restored = other.workdir / "checkpoints" / "step-4"
    assert sorted(p.name for p in restored.iterdir()) == ["state.json", "weights.bin"]
    assert (restored / "weights.bin").read_bytes() == bytes([4]) * 1000
    assert not (other.workdir / "checkpoints" / "step-2").exists()
    assert [p.name for p in (other.workdir / "checkpoints").iterdir()] == ["step-4"]  # no temporary left
    assert "checkpoint of step 4 restored from the object store" in messages(queue, alice, job)


def test_a_crash_between_put_and_delete_leaves_both_slots_and_the_higher_step_wins(checkpoints, objects, job,
                                                                                   queue, tmp_path):
    ctx = node(job, queue, tmp_path / "a")
    checkpoints.save(ctx, write_step(ctx, 6), 6)
    [taken] = stored(objects, job)
    [free] = [i for i in slot_ids(job.id) if i != taken]
    older = pack(write_step(ctx, 4), PurePosixPath("checkpoints/step-4"), 4)
    objects.put(job.tenancy_id, KIND, older, object_id=free)  # as if the save of step 4 had not deleted step 6's
    assert checkpoints.restore(node(job, queue, tmp_path / "b")) == 6

    assert checkpoints.save(ctx, write_step(ctx, 8), 8)
    assert len(stored(objects, job)) == 1
    assert checkpoints.restore(node(job, queue, tmp_path / "c")) == 8


@pytest.mark.parametrize(("ending", "kept"), [("returns", False), ("raises", False), ("cancel_requested", False),
                                              ("shutdown", True), ("lost", True)])
def test_the_stored_checkpoint_is_discarded_once_the_job_ends_for_good(checkpoints, objects, job, queue, tmp_path,
                                                                       ending, kept):
    ctx = node(job, queue, tmp_path)
    ends = pytest.raises((ValueError, JobStopped)) if ending != "returns" else nullcontext()
    with ends, checkpoints.kept_while_resumable(ctx):
        checkpoints.save(ctx, write_step(ctx, 2), 2)
        if ending == "raises":
            raise ValueError("bad data")
        if ending != "returns":
            ctx.request_stop(ending)
            ctx.raise_if_stopped()
    assert bool(stored(objects, job)) is kept
    assert any(ctx.workdir.iterdir()) is kept  # the plaintext work files go with the job's end


def test_a_store_that_fails_is_reported_and_training_goes_on(checkpoints, objects, job, queue, alice, tmp_path,
                                                             monkeypatch):
    ctx = node(job, queue, tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(objects, "put", broken)
    assert checkpoints.save(ctx, write_step(ctx, 2), 2) is False
    [event] = [e for e in queue.events(alice, job.id, limit=100) if e.level == "warn"]
    assert event.message.startswith("checkpoint of step 2 could not be stored in the object store (OSError)")


def test_an_archive_whose_path_leaves_the_work_directory_is_not_restored(checkpoints, objects, job, queue, alice,
                                                                         tmp_path):
    ctx = node(job, queue, tmp_path / "a")
    escaping = pack(write_step(ctx, 2), PurePosixPath("../../escaped"), 2)
    objects.put(job.tenancy_id, KIND, escaping, object_id=slot_ids(job.id)[0])
    assert checkpoints.restore(node(job, queue, tmp_path / "b")) is None
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "b" / "escaped").exists()
    assert not any(e.message.endswith("restored from the object store") for e in queue.events(alice, job.id))


def test_slot_ids_are_valid_object_ids_and_differ_per_job():
    a, b = slot_ids("job_0123456789abcdef01234567")
    assert a != b and len(a) <= 40 and a.startswith("ckpa_") and b.startswith("ckpb_")
    assert slot_ids("job_other") != (a, b)
