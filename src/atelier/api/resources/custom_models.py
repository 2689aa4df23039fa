"""``/v1/custom-models``: the fine-tuned models of the caller's tenancy (list, get, delete, adapter download).

Policies decide on resource type ``custom-models``; a custom model the caller may not
inspect answers 404 exactly like a missing one. ``GET /v1/custom-models/{id}/adapter``
returns the packed PEFT adapter (a tar of ``adapter_config.json`` and
``adapter_model.safetensors``), or for a full fine-tune its model (a tar of ``config.json`` and
``model.safetensors``), for ``atelier models export``; it needs ``get``.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.envelopes import Deleted, unix
from atelier.store.tables import CustomModel

router = APIRouter(tags=["custom-models"])

TYPE = "custom-models"


class CustomModelOut(BaseModel):
    """A fine-tuned adapter over a base model, or a fully fine-tuned copy of it (``method`` full)."""

    id: str = Field(description="Use it as `model` in chat and completions.")
    object: Literal["custom_model"] = "custom_model"
    name: str = Field(description="`ft:<base>:[<suffix>:]<job id>`.")
    base_model: str
    method: str = Field(description="`lora`, `tfew` or `full` (every weight trained: a whole model of the tenancy's).")
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


def custom_model_out(row: CustomModel) -> CustomModelOut:
    """The API object of a custom model row."""
    return CustomModelOut(
        id=row.id, name=row.name, base_model=row.base_model, method=row.method, fine_tuning_job_id=row.job_id,
        trainable_params=row.trainable_params, total_params=row.total_params,
        trainable_fraction=row.trainable_params / row.total_params if row.total_params else 0.0,
        metrics={k: v for k, v in row.metrics.items() if k != "training_config"}, curve=row.curve, state=row.state,
        created_at=unix(row.created_at), compartment_id=row.compartment_id,
    )  # fmt: skip


@router.get("/custom-models", response_model=CustomModelList, summary="List custom models")
def list_custom_models(services: ServicesDep, guard: GuardDep) -> CustomModelList:
    """Your tenancy's custom models, oldest first."""
    rows = guard.visible(services.custom_models.list(guard.principal))
    return CustomModelList(data=[custom_model_out(r) for r in rows])


@router.get("/custom-models/{custom_model_id}", response_model=CustomModelOut, summary="Retrieve a custom model")
def retrieve_custom_model(custom_model_id: str, guard: GuardDep) -> CustomModelOut:
    """One custom model (by id, or by its `ft:…` name), with its metrics and training curve."""
    return custom_model_out(guard.load(TYPE, custom_model_id, "get"))


@router.get(
    "/custom-models/{custom_model_id}/adapter",
    response_class=Response,
    responses={200: {"content": {"application/x-tar": {}},
                     "description": "The packed PEFT adapter (a full fine-tune: its packed model)."}},
    summary="Download a custom model's adapter",
)
def download_adapter(custom_model_id: str, services: ServicesDep, guard: GuardDep) -> Response:
    """The adapter as a tar of `adapter_config.json` and `adapter_model.safetensors` (PEFT's format); for a full
    fine-tune, a tar of `config.json` and `model.safetensors`."""
    row = guard.load(TYPE, custom_model_id, "get")
    return Response(services.custom_models.adapter(guard.principal, row.id), media_type="application/x-tar")


@router.delete("/custom-models/{custom_model_id}", response_model=Deleted, summary="Delete a custom model")
def delete_custom_model(custom_model_id: str, services: ServicesDep, guard: GuardDep) -> Deleted:
    """Delete the custom model and its sealed adapter; 409 while an endpoint hosts it."""
    row = guard.load(TYPE, custom_model_id, "delete")
    services.custom_models.delete(guard.principal, row.id)
    return Deleted(id=row.id, object="custom_model")
