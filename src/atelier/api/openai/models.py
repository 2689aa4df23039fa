"""``GET /v1/models`` and ``GET /v1/models/{model}``: the catalog, as OpenAI model objects.

Each object carries Atelier's extra fields: ``capabilities``, ``context_length``,
``max_output_tokens`` and ``dimensions``. Reads the catalog only; loads nothing.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from atelier.api.deps import CatalogDep
from atelier.api.openai.protocol import ModelCard, ModelList
from atelier.catalog import ModelSpec

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


@router.get("/models", response_model=ModelList, summary="List models")
async def list_models(catalog: CatalogDep) -> ModelList:
    """Every model of the catalog."""
    return ModelList(data=[model_card(spec) for spec in catalog])


@router.get("/models/{model}", response_model=ModelCard, summary="Retrieve a model")
async def retrieve_model(model: str, catalog: CatalogDep) -> ModelCard:
    """One model by name; 404 ``model_not_found`` if the catalog has none of that name."""
    return model_card(catalog.get(model))
