"""``/v1/custom-models``: the fine-tuned models of the caller's tenancy (list, get, delete, adapter download).

Policies decide on resource type ``custom-models``; a custom model the caller may not
inspect answers 404 exactly like a missing one. ``GET /v1/custom-models/{id}/adapter``
returns the packed PEFT adapter (a tar of ``adapter_config.json`` and
``adapter_model.safetensors``) for ``atelier models export``; it needs ``get``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from atelier.api.access import Access
from atelier.api.deps import AccessDep
from atelier.api.envelopes import Deleted
from atelier.cloud.custom_models import CustomModelService
from atelier.cloud.endpoints import live_endpoints_of
from atelier.errors import Conflict
from atelier.store import identity
from atelier.store.tables import CustomModel

router = APIRouter(tags=["custom-models"])

TYPE = "custom-models"


class CustomModelOut(BaseModel):
    """A fine-tuned adapter over a base model."""

    id: str = Field(description="Use it as `model` in chat and completions.")
    object: Literal["custom_model"] = "custom_model"
    name: str = Field(description="`ft:<base>:[<suffix>:]<job id>`.")
    base_model: str
    method: str = Field(description="`lora` or `tfew`.")
    fine_tuning_job_id: str | None
    trainable_params: int
    total_params: int
    trainable_fraction: float
    metrics: dict[str, Any] = Field(description="Final metrics (valid loss, token accuracy, perplexity...).")
    curve: list[dict[str, Any]] = Field(description="Every metrics event of the training, by step.")
    state: str
    created_at: int
    compartment_id: str | None = None


class CustomModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CustomModelOut]


def _service(request: Request) -> CustomModelService:
    return CustomModelService(request.app.state.db, request.app.state.objects)


ServiceDep = Annotated[CustomModelService, Depends(_service)]


def _unix(moment: datetime) -> int:
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def custom_model_out(row: CustomModel) -> CustomModelOut:
    """The API object of a custom model row."""
    return CustomModelOut(
        id=row.id, name=row.name, base_model=row.base_model, method=row.method, fine_tuning_job_id=row.job_id,
        trainable_params=row.trainable_params, total_params=row.total_params,
        trainable_fraction=row.trainable_params / row.total_params if row.total_params else 0.0,
        metrics={k: v for k, v in row.metrics.items() if k != "training_config"}, curve=row.curve, state=row.state,
        created_at=_unix(row.created_at), compartment_id=row.compartment_id,
    )  # fmt: skip


def _path(request: Request, access: Access, row: CustomModel) -> tuple[str, ...]:
    if not row.compartment_id:
        return ()
    with request.app.state.db.session() as session:
        return identity.compartment_path(session, access.principal, row.compartment_id)


def _loaded(request: Request, access: Access, service: CustomModelService, model_id: str, op: str) -> CustomModel:
    row = service.get(access.principal, model_id)
    access.require(op, TYPE, target_id=row.id, target_name=row.name, compartment_path=_path(request, access, row),
                   what=f"custom model {model_id!r}")
    return row


def visible_custom_models(request: Request, access: Access) -> list[CustomModel]:
    """The caller's tenancy's custom models that the caller may inspect."""
    rows = _service(request).list(access.principal)
    return [r for r in rows if access.visible(TYPE, target_id=r.id, target_name=r.name,
                                              compartment_path=_path(request, access, r))]


@router.get("/custom-models", response_model=CustomModelList, summary="List custom models")
def list_custom_models(request: Request, access: AccessDep) -> CustomModelList:
    """Your tenancy's custom models, oldest first."""
    return CustomModelList(data=[custom_model_out(r) for r in visible_custom_models(request, access)])


@router.get("/custom-models/{custom_model_id}", response_model=CustomModelOut, summary="Retrieve a custom model")
def retrieve_custom_model(custom_model_id: str, request: Request, access: AccessDep,
                          service: ServiceDep) -> CustomModelOut:
    """One custom model, with its metrics and training curve."""
    return custom_model_out(_loaded(request, access, service, custom_model_id, "get"))


@router.get(
    "/custom-models/{custom_model_id}/adapter",
    response_class=Response,
    responses={200: {"content": {"application/x-tar": {}}, "description": "The packed PEFT adapter."}},
    summary="Download a custom model's adapter",
)
def download_adapter(custom_model_id: str, request: Request, access: AccessDep, service: ServiceDep) -> Response:
    """The adapter as a tar of `adapter_config.json` and `adapter_model.safetensors` (PEFT's format)."""
    row = _loaded(request, access, service, custom_model_id, "get")
    return Response(service.adapter(access.principal, row.id), media_type="application/x-tar")


@router.delete("/custom-models/{custom_model_id}", response_model=Deleted, summary="Delete a custom model")
def delete_custom_model(custom_model_id: str, request: Request, access: AccessDep, service: ServiceDep) -> Deleted:
    """Delete the custom model and its sealed adapter; 409 while an endpoint hosts it."""
    row = _loaded(request, access, service, custom_model_id, "delete")
    with request.app.state.db.session() as session:
        hosted = live_endpoints_of(session, row.id)
    if hosted:
        raise Conflict(f"custom model {row.id!r} is hosted by {hosted} endpoint(s): delete them first")
    service.delete(access.principal, row.id)
    engine = request.app.state.engine
    slot = getattr(engine, "adapter_slot", lambda key: None)(row.id)
    if slot is not None:
        engine.remove_adapter(slot)
    return Deleted(id=row.id, object="custom_model")
