"""``GET /v1/models`` and ``GET /v1/models/{model}``: the catalog, as OpenAI model objects.

The list also holds what the caller's tenancy serves: its active endpoints (``ep_…``) and
the custom models they host (``cm_…``), each a ``model`` for chat and completions, shown
when the caller may inspect them. Each object carries Atelier's extra fields:
``capabilities``, ``context_length``, ``max_output_tokens`` and ``dimensions``. Loads nothing.
"""

from __future__ import annotations

import time
from datetime import UTC

from fastapi import APIRouter, Request

from atelier.api.deps import AccessDep, CatalogDep
from atelier.api.openai.protocol import ModelCard, ModelList
from atelier.api.resources.custom_models import visible_custom_models
from atelier.api.resources.endpoints import endpoint_service, visible_endpoints
from atelier.catalog import ModelSpec
from atelier.store.tables import CustomModel, Endpoint

router = APIRouter(tags=["openai"])

STARTED = int(time.time())
"""``created`` of every catalog model: the catalog has no dates, the process start stands in."""


def model_card(spec: ModelSpec) -> ModelCard:
    """The OpenAI model object of a catalog entry."""
    embedding = spec.kind == "embedding"
    return ModelCard(
        id=spec.name,
        created=STARTED,
        owned_by=spec.owned_by,
        capabilities=spec.capabilities,
        context_length=(spec.max_input_tokens or spec.context_length) if embedding else spec.context_length,
        max_output_tokens=0 if embedding else spec.max_output_tokens,
        dimensions=spec.dimensions if embedding else 0,
    )


def custom_model_card(row: CustomModel, base: ModelSpec) -> ModelCard:
    """The OpenAI model object of a custom model (its limits are its base model's)."""
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return ModelCard(
        id=row.id, created=int(created.timestamp()), owned_by=row.tenancy_id, capabilities=base.capabilities,
        context_length=base.context_length, max_output_tokens=base.max_output_tokens, dimensions=0,
    )  # fmt: skip


def endpoint_card(row: Endpoint, base: ModelSpec) -> ModelCard:
    """The OpenAI model object of an endpoint (its limits are its base model's)."""
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return ModelCard(
        id=row.id, created=int(created.timestamp()), owned_by=row.tenancy_id, capabilities=base.capabilities,
        context_length=base.context_length, max_output_tokens=base.max_output_tokens, dimensions=0,
    )  # fmt: skip


@router.get("/models", response_model=ModelList, summary="List models")
def list_models(catalog: CatalogDep, request: Request, access: AccessDep) -> ModelList:
    """Every model of the catalog, then your tenancy's active endpoints and the custom models they host."""
    cards = [model_card(spec) for spec in catalog]
    base = {spec.name: spec for spec in catalog if spec.kind == "chat"}
    service = endpoint_service(request)
    for row in visible_endpoints(request, access, service):
        if row.state == "active" and row.base_model in base:
            cards.append(endpoint_card(row, base[row.base_model]))
    hosted = service.hosted_models(access.principal)
    for row in visible_custom_models(request, access):
        if row.id in hosted and row.base_model in base:
            cards.append(custom_model_card(row, base[row.base_model]))
    return ModelList(data=cards)


@router.get("/models/{model}", response_model=ModelCard, summary="Retrieve a model")
async def retrieve_model(model: str, catalog: CatalogDep) -> ModelCard:
    """One model by name; 404 ``model_not_found`` if the catalog has none of that name."""
    return model_card(catalog.get(model))
