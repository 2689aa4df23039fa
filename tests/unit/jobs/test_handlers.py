"""Handlers: the service registers its own kinds only; the test kind ``sleep-count`` resumes from any
checkpoint to the uninterrupted result."""

from __future__ import annotations

import json

import pytest

from atelier.errors import InvalidInput
from sleep_count import CHECKPOINT_FILE, SLEEP_COUNT, sleep_count

from atelier.jobs.handlers import build_handlers
from atelier.jobs.context import JobContext, JobStopped, write_atomically
from atelier.settings import Settings


def context(queue, principal, tmp_path, payload) -> JobContext:
    job = queue.submit(principal, SLEEP_COUNT, payload)
    workdir = tmp_path / job.id
    workdir.mkdir()
    return JobContext(job, workdir, queue)


def test_the_service_registers_its_own_kinds_and_no_test_kind(db, tmp_path, monkeypatch):
    for name in ("ATELIER_ROOT_KEY", "ATELIER_ROOT_KEY_FILE", "ATELIER_DATA_DIR", "ATELIER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert set(build_handlers(Settings(data_dir=tmp_path / "data"), db)) == {"fine-tune", "kb-ingest", "evaluate"}


@pytest.mark.parametrize("stop_after", [1, 4, 7, 8])
def test_resume_from_any_checkpoint_gives_the_uninterrupted_result(queue, alice, tmp_path, stop_after):
    whole = sleep_count(context(queue, alice, tmp_path, {"n": 8}))

    ctx = context(queue, alice, tmp_path, {"n": 8})
    original_emit = ctx.emit

    def emit_then_stop(message, data=None, **kw):  # the worker is asked to stop after step `stop_after`
        original_emit(message, data, **kw)
        if data and data.get("step") == stop_after:
            ctx.request_stop("shutdown")

    ctx.emit = emit_then_stop
    if stop_after < 8:
        with pytest.raises(JobStopped):
            sleep_count(ctx)
    else:  # asked to stop after its last step: it is done anyway (then killed before recording it)
        assert sleep_count(ctx) == whole
    assert json.loads((ctx.workdir / CHECKPOINT_FILE).read_text())["step"] == stop_after
    resumed_ctx = JobContext(ctx.job, ctx.workdir, queue)  # a new worker, same work dir
    assert sleep_count(resumed_ctx) == whole
    assert whole["count"] == 8 and whole["total"] == 36
    messages = [e.message for e in queue.events(alice, ctx.job.id, limit=100)]
    assert f"resuming from checkpoint at step {stop_after}" in messages


@pytest.mark.parametrize(
    ("payload", "param"),
    [({"n": 0}, "n"), ({"n": 100_001}, "n"), ({}, "n"), ({"n": 2, "step_seconds": -1}, "step_seconds"),
     ({"n": 2, "extra": 1}, "extra")],
)
def test_bad_payload_names_the_parameter(queue, alice, tmp_path, payload, param):
    with pytest.raises(InvalidInput) as exc:
        sleep_count(context(queue, alice, tmp_path, payload))
    assert exc.value.param == param


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_atomically(target, b"one")
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
