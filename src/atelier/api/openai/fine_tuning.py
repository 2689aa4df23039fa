"""``/v1/fine_tuning/jobs``: OpenAI's fine-tuning jobs API over Atelier's job queue.

``client.fine_tuning.jobs.create/list/retrieve/cancel/list_events`` and
``client.fine_tuning.jobs.checkpoints.list`` of the official ``openai`` package work
unchanged; Atelier's settings ride in the same body (``training_config``, ``cluster_id``,
sent with ``extra_body``). ``Idempotency-Key`` makes a create safe to retry. Policies decide
on resource type ``fine-tuning-jobs``; the files named in the body must be ones the caller
may read (``get`` on ``files``), else 400 "not found or not authorized"; the job runs on a
fine-tuning cluster the caller may use (``use`` on ``clusters``; see ``atelier.cloud.fine_tuning``
for how one is chosen, and the 409 when there is none). The work is in
``atelier.cloud.fine_tuning``; this module maps HTTP to it and rows to OpenAI's shapes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from atelier.api.authz import Guard
from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.envelopes import unix
from atelier.cloud.custom_models import custom_model_name
from atelier.cloud.fine_tuning import FILE_FIELDS, Checkpoint, FineTuningService, JobRequest
from atelier.cloud.tensorboard_logs import tensorboard_archive
from atelier.errors import InvalidInput
from atelier.store.tables import Cluster, Job, JobEvent
from atelier.tuning.config import TuneConfig

router = APIRouter(tags=["fine-tuning"])

TYPE = "fine-tuning-jobs"
AfterQuery = Annotated[str | None, Query(max_length=100, description="The last id of the previous page (its cursor).")]
EVENT_PREFIX = "ftevent-"
CHECKPOINT_PREFIX = "ftckpt-"


class JobError(BaseModel):
    """Why a job failed."""

    code: str = Field(description="`invalid_training_file` for bad files, else `job_failed`.")
    message: str = Field(description="What went wrong (every problem of a file, by line).")
    param: str | None = Field(None, description="The request field at fault, if any.")


class FineTuningJob(BaseModel):
    """A fine-tuning job, as OpenAI's API shows one (plus Atelier's `training_config` and `cluster_id`)."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None = None
    model: str = Field(description="The base model.")
    fine_tuned_model: str | None = Field(None, description="The custom model's id, once the job succeeded.")
    organization_id: str = Field(description="The tenancy.")
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    training_file: str
    validation_file: str | None = None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = None
    error: JobError | None = None
    seed: int
    estimated_finish: int | None = None
    integrations: list[Any] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    suffix: str | None = None
    training_config: dict[str, Any] = Field(description="The resolved training settings (OCI's names).")
    cluster_id: str | None = Field(None, description="The fine-tuning cluster the job runs on.")
    waiting_reason: str | None = Field(
        None, description="Why a queued job does not start, when nothing can run it now: no live worker for its kind."
    )
    search: dict[str, Any] | None = Field(
        None, description="A search job's space and budget and, once it succeeded, `best_trial` and every trial's "
        "settings, state and validation loss.")


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEventOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventOut]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class CheckpointOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str = Field(description="A label for the checkpoint (not a servable model).")
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointOut]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


def _error(job: Job) -> JobError | None:
    if job.state != "failed":
        return None
    text = job.error or "failed"
    for param in ("training_file", "validation_file"):
        if text.startswith(param + " "):
            return JobError(code="invalid_training_file", message=text, param=param)
    return JobError(code="job_failed", message=text)


def job_out(job: Job, served_kinds: set[str] | None = None) -> FineTuningJob:
    """OpenAI's ``fine_tuning.job`` for a job row (``served_kinds``: the kinds live workers run)."""
    p, result = job.payload, job.result or {}
    waiting = None
    if job.state == "queued" and served_kinds is not None and job.kind not in served_kinds:
        waiting = f"no live worker for kind {job.kind}: start `atelier serve` (with workers) or `atelier worker`"
    return FineTuningJob(
        id=job.id, created_at=unix(job.created_at), finished_at=unix(job.finished_at), model=p["model"],
        fine_tuned_model=result.get("fine_tuned_model"), organization_id=job.tenancy_id, status=job.state,
        hyperparameters=p["hyperparameters"],
        method={"type": "supervised", "supervised": {"hyperparameters": p["hyperparameters"]}},
        training_file=p["training_file"], validation_file=p.get("validation_file"),
        trained_tokens=result.get("trained_tokens"), error=_error(job), seed=p["seed"], metadata=p.get("metadata"),
        suffix=p.get("suffix"), training_config=TuneConfig.model_validate(p["training_config"]).applicable_dump(), cluster_id=job.cluster_id,
        waiting_reason=waiting,
        search={**p["search"], **(result.get("search") or {})} if p.get("search") else None,
    )  # fmt: skip


def _event_out(row: JobEvent) -> JobEventOut:
    data = row.data or None
    kind = "metrics" if data and data.get("type") == "metrics" else "message"
    return JobEventOut(id=f"{EVENT_PREFIX}{row.id}", created_at=unix(row.created_at), level=row.level,
                       message=row.message, type=kind, data=data)


def _checkpoint_out(job: Job, found: Checkpoint) -> CheckpointOut:
    m = found.metrics
    name = (job.result or {}).get("custom_model_name") or custom_model_name(job.payload["model"], None, job.id)
    return CheckpointOut(
        id=f"{CHECKPOINT_PREFIX}{job.id.removeprefix('job_')}-{found.step}", created_at=unix(found.created_at),
        fine_tuned_model_checkpoint=f"{name}:ckpt-step-{found.step}", fine_tuning_job_id=job.id,
        metrics=CheckpointMetrics(step=found.step, train_loss=m.get("train_loss"), valid_loss=m.get("valid_loss"),
                                  valid_mean_token_accuracy=m.get("valid_token_accuracy")),
        step_number=found.step,
    )  # fmt: skip


def _create(guard: Guard, service: FineTuningService, body: JobRequest, key: str | None) -> FineTuningJob:
    for param, _ in FILE_FIELDS:  # the body's files must be ones the caller may read
        if getattr(body, param) is not None:
            guard.reference("files", getattr(body, param), "get", param)
    compartment_id = guard.creation_compartment(TYPE, body.compartment, None) if body.compartment else None

    def may_use(cluster: Cluster) -> bool:
        return guard.allows(cluster, "invoke")

    return job_out(service.create(guard.principal, body, idempotency_key=key, may_use=may_use,
                                  compartment_id=compartment_id))


@router.post("/fine_tuning/jobs", response_model=FineTuningJob, summary="Create a fine-tuning job")
async def create_job(
    body: JobRequest,
    services: ServicesDep,
    guard: GuardDep,
    idempotency_key: Annotated[str | None, Header(max_length=200, description="Retry-safe key.")] = None,
) -> FineTuningJob:
    """Validate the files (every problem by line) and queue the job; a failed validation returns the failed job."""
    return await run_in_threadpool(_create, guard, services.fine_tuning, body, idempotency_key)


@router.get("/fine_tuning/jobs", response_model=JobList, summary="List fine-tuning jobs")
def list_jobs(
    services: ServicesDep,
    guard: GuardDep,
    after: AfterQuery = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    """Your fine-tuning jobs, newest first (the ones you may inspect)."""
    jobs, more = services.fine_tuning.list(guard.principal, after=after, limit=limit, keep=guard.visible)
    served = _served_kinds(services)
    return JobList(data=[job_out(j, served) for j in jobs], has_more=more)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}", response_model=FineTuningJob, summary="Retrieve a job")
def retrieve_job(fine_tuning_job_id: str, services: ServicesDep, guard: GuardDep) -> FineTuningJob:
    """One fine-tuning job."""
    return job_out(guard.load(TYPE, fine_tuning_job_id, "get"), _served_kinds(services))


def _served_kinds(services) -> set[str]:
    """The job kinds some live worker runs."""
    return {kind for kinds in services.jobs.live_workers().values() for kind in kinds}


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", response_model=FineTuningJob, summary="Cancel a job")
def cancel_job(fine_tuning_job_id: str, services: ServicesDep, guard: GuardDep) -> FineTuningJob:
    """Cancel: at once when waiting, within seconds when running; 409 once it succeeded or failed."""
    job = guard.load(TYPE, fine_tuning_job_id, "update")
    return job_out(services.fine_tuning.cancel(guard.principal, job.id))


def _cursor(after: str | None, prefix: str) -> int | None:
    if after is None:
        return None
    raw = after.removeprefix(prefix)
    if not raw.isdigit():
        raise InvalidInput(f"after must be an id from a previous page ({prefix}…)", param="after")
    return int(raw)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", response_model=EventList, summary="List job events")
def list_events(
    fine_tuning_job_id: str,
    services: ServicesDep,
    guard: GuardDep,
    after: AfterQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> EventList:
    """The job's events (state changes, metrics, checkpoints), newest first."""
    job = guard.load(TYPE, fine_tuning_job_id, "get")
    rows = services.fine_tuning.events(guard.principal, job.id, after=_cursor(after, EVENT_PREFIX),
                                       limit=min(limit + 1, 1000))
    return EventList(data=[_event_out(r) for r in rows[:limit]], has_more=len(rows) > limit)


@router.get(
    "/fine_tuning/jobs/{fine_tuning_job_id}/tensorboard",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "The run's TensorBoard event files."}},
    summary="Download the job's metrics as TensorBoard event files",
)
def download_tensorboard(fine_tuning_job_id: str, services: ServicesDep, guard: GuardDep) -> Response:
    """A `.tar.gz` of `<job id>/events.out.tfevents.*`: every metric at its step (live while the job runs)."""
    job = guard.load(TYPE, fine_tuning_job_id, "get")
    events = services.jobs.history(guard.principal, job.id)
    archive = tensorboard_archive(job.id, [(e.created_at, e.data) for e in events])
    return Response(archive, media_type="application/gzip",
                    headers={"Content-Disposition": f'attachment; filename="{job.id}-tensorboard.tar.gz"'})


@router.get(
    "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints", response_model=CheckpointList, summary="List checkpoints"
)
def list_checkpoints(
    fine_tuning_job_id: str,
    services: ServicesDep,
    guard: GuardDep,
    after: AfterQuery = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> CheckpointList:
    """The checkpoints the job completed, newest first, with the metrics of their step."""
    job = guard.load(TYPE, fine_tuning_job_id, "get")
    step = None
    if after is not None:
        step = _cursor(after.rsplit("-", 1)[-1] if after.startswith(CHECKPOINT_PREFIX) else after, "")
    found = services.fine_tuning.checkpoints(guard.principal, job.id, after=step, limit=min(limit + 1, 100))
    data = [_checkpoint_out(job, c) for c in found[:limit]]
    return CheckpointList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                          has_more=len(found) > limit)
