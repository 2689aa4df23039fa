"""``/v1/evaluations``: a model scored on a test file, with a k-shot baseline of its base model (jobs).

Create, list, retrieve, cancel and list events. An evaluation is a job
(``atelier.cloud.evaluations``): policies decide on resource type ``fine-tuning-jobs``, the
files named in the body must be ones the caller may read (400 "not found or not authorized"
otherwise), and the model one it may invoke (as for chat). The report is ``report`` once the
evaluation ``succeeded``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from atelier.api.authz import Guard
from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.envelopes import unix
from atelier.cloud.evaluations import EvaluationRequest, EvaluationService
from atelier.errors import InvalidInput, NotFound
from atelier.store.tables import Job, JobEvent

router = APIRouter(tags=["evaluations"])

TYPE = "evaluations"
"""The guard's loader of evaluations (their rows are jobs: policies decide on ``fine-tuning-jobs``)."""
EVENT_PREFIX = "evevent-"


class Evaluation(BaseModel):
    """An evaluation job and, once it succeeded, its report."""

    id: str
    object: Literal["evaluation"] = "evaluation"
    created_at: int
    finished_at: int | None = None
    model: str
    base_model: str
    test_file: str
    metrics: list[str]
    k_shot: dict[str, Any] | None = None
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    report: dict[str, Any] | None = Field(None, description="`metrics` of the model, `baseline` (k-shot), samples.")
    error: str | None = None


class EvaluationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Evaluation]
    has_more: bool


class EvaluationEvent(BaseModel):
    id: str
    object: Literal["evaluation.event"] = "evaluation.event"
    created_at: int
    level: str
    message: str
    data: dict[str, Any] | None = None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvaluationEvent]
    has_more: bool


def evaluation_out(job: Job) -> Evaluation:
    p = job.payload
    return Evaluation(id=job.id, created_at=unix(job.created_at), finished_at=unix(job.finished_at), model=p["model"],
                      base_model=p["base_model"], test_file=p["test_file"], metrics=p["metrics"],
                      k_shot=p.get("k_shot"), status=job.state,
                      report=job.result if job.state == "succeeded" else None, error=job.error)


def _create(guard: Guard, service: EvaluationService, body: EvaluationRequest) -> Evaluation:
    guard.reference("files", body.test_file, "get", "test_file")
    if body.k_shot is not None:
        guard.reference("files", body.k_shot.file, "get", "k_shot.file")
    compartment_id = guard.creation_compartment("fine-tuning-jobs", body.compartment, None) if body.compartment \
        else None
    return evaluation_out(service.create(guard, body, compartment_id=compartment_id))


@router.post("/evaluations", response_model=Evaluation, status_code=201, summary="Create an evaluation")
async def create_evaluation(body: EvaluationRequest, services: ServicesDep, guard: GuardDep) -> Evaluation:
    """Check the model, metrics and files (every problem of a file by line), then queue the evaluation."""
    return await run_in_threadpool(_create, guard, services.evaluations, body)


@router.get("/evaluations", response_model=EvaluationList, summary="List evaluations")
def list_evaluations(
    services: ServicesDep, guard: GuardDep,
    after: Annotated[str | None, Query(max_length=100, description="The last id of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> EvaluationList:
    """Your evaluations, newest first (the ones you may inspect)."""
    try:
        rows = services.evaluations.list(guard.principal, after=after, limit=min(limit + 1, 100))
    except NotFound:
        raise InvalidInput(f"evaluation {after!r} is not in this listing", param="after") from None
    shown = guard.visible(rows)
    return EvaluationList(data=[evaluation_out(j) for j in shown[:limit]], has_more=len(rows) > limit)


@router.get("/evaluations/{evaluation_id}", response_model=Evaluation, summary="Retrieve an evaluation")
def retrieve_evaluation(evaluation_id: str, guard: GuardDep) -> Evaluation:
    """One evaluation, with its report once it succeeded."""
    return evaluation_out(guard.load(TYPE, evaluation_id, "get"))


@router.post("/evaluations/{evaluation_id}/cancel", response_model=Evaluation, summary="Cancel an evaluation")
def cancel_evaluation(evaluation_id: str, services: ServicesDep, guard: GuardDep) -> Evaluation:
    """Cancel: at once when waiting, within a group of requests when running."""
    job = guard.load(TYPE, evaluation_id, "update")
    return evaluation_out(services.evaluations.cancel(guard.principal, job.id))


@router.get("/evaluations/{evaluation_id}/events", response_model=EventList, summary="List evaluation events")
def list_evaluation_events(
    evaluation_id: str, services: ServicesDep, guard: GuardDep,
    after: Annotated[int | None, Query(ge=0, description="The last event number of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventList:
    """The evaluation's events (state changes, progress), oldest first."""
    job = guard.load(TYPE, evaluation_id, "get")
    rows: list[JobEvent] = services.evaluations.events(guard.principal, job.id, after=after,
                                                        limit=min(limit + 1, 1000))
    data = [EvaluationEvent(id=f"{EVENT_PREFIX}{r.id}", created_at=unix(r.created_at), level=r.level,
                            message=r.message, data=r.data or None) for r in rows[:limit]]
    return EventList(data=data, has_more=len(rows) > limit)
