"""``GET /v1/models`` and ``GET /v1/models/{model}``: the catalog, as OpenAI model objects.

The list also holds what the caller's tenancy serves: its active endpoints (``ep_…``) and
the custom models they host (``cm_…``), each a ``model`` for chat and completions, shown
when the caller may inspect them. Each object carries Atelier's extra fields:
``capabilities``, ``context_length``, ``max_output_tokens`` and ``dimensions``. Loads nothing.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.envelopes import unix
from atelier.api.openai.protocol import ModelCard, ModelList
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


def served_card(row: CustomModel | Endpoint, base: ModelSpec) -> ModelCard:
    """The OpenAI model object of an endpoint or a hosted custom model (its limits are its base model's)."""
    return ModelCard(
        id=row.id, created=unix(row.created_at), owned_by=row.tenancy_id, capabilities=base.capabilities,
        context_length=base.context_length, max_output_tokens=base.max_output_tokens, dimensions=0,
    )  # fmt: skip


@router.get("/models", response_model=ModelList, summary="List models")
def list_models(services: ServicesDep, guard: GuardDep) -> ModelList:
    """Every model of the catalog, then your tenancy's active endpoints and the custom models they host."""
    cards = [model_card(spec) for spec in services.catalog]
    cards += [served_card(row, base) for row, base in services.models.listed(guard)]
    return ModelList(data=cards)


@router.get("/models/{model}", response_model=ModelCard, summary="Retrieve a model")
async def retrieve_model(model: str, services: ServicesDep) -> ModelCard:
    """One model by name; 404 ``model_not_found`` if the catalog has none of that name."""
    return model_card(services.catalog.get(model))
