"""The ``model`` of a chat or text completion: a catalog base model, an endpoint, or a hosted custom model.

- a catalog chat model's name: the shared base model, for any authenticated caller;
- an endpoint id (``ep_…``) of the caller's tenancy: policy ``invoke`` on ``endpoints``; the
  endpoint must be active; it serves its base model or its custom model's adapter;
- a custom model id (``cm_…``) of the caller's tenancy: policy ``invoke`` on
  ``custom-models``; it must be hosted on an active endpoint (else 400 ``model_not_hosted``,
  saying to create one).

Another tenancy's id, or one the caller may not see, answers exactly what an unknown model
answers (404 ``model_not_found``). The engine then gets an opaque adapter slot, never a path
or a name from the request: the adapter was loaded once when its endpoint was created
(``atelier.cloud.endpoints.AdapterHost``), and is loaded again only if the engine evicted it.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from atelier.api.resources.clusters import compartment_path
from atelier.api.resources.endpoints import endpoint_service
from atelier.catalog import Catalog, ModelSpec
from atelier.cloud.custom_models import CustomModelService
from atelier.cloud.endpoints import CUSTOM_MODEL_PREFIX, ENDPOINT_PREFIX, EndpointService
from atelier.engine.client import EngineClient
from atelier.errors import InvalidInput, NotFound

RESOURCE_TYPE = "custom-models"
ENDPOINTS = "endpoints"


@dataclass(frozen=True)
class ServedModel:
    """What to generate with: the base model's spec, the adapter slot (None: the base), the name to show."""

    spec: ModelSpec
    adapter_slot: int | None
    name: str


def custom_models(request: Request) -> CustomModelService:
    """The custom-model service over the app's database and sealed object store."""
    return CustomModelService(request.app.state.db, request.app.state.objects)


async def resolve(request: Request, engine: EngineClient, catalog: Catalog, name: str) -> ServedModel:
    """The served model named ``name`` for this request's caller.

    Raises:
        NotFound: Not a catalog chat model, nor an endpoint or custom model the caller may
            invoke (the same error either way, ``model_not_found``).
        Forbidden: An endpoint or custom model the caller may see but not invoke.
        InvalidInput: A custom model that no active endpoint hosts (``model_not_hosted``).
        Conflict: An endpoint that is not active.
        Unavailable: The engine cannot serve adapters, or the adapter cannot be loaded.
    """
    if name.startswith(ENDPOINT_PREFIX):
        return await run_in_threadpool(_endpoint, request, catalog, name)
    if name.startswith(CUSTOM_MODEL_PREFIX):
        return await run_in_threadpool(_custom_model, request, catalog, name)
    spec = catalog.get(name, kind="chat")
    return ServedModel(spec, None, spec.name)


def _endpoint(request: Request, catalog: Catalog, name: str) -> ServedModel:
    access = request.state.access
    service: EndpointService = endpoint_service(request)
    try:
        row = service.get(access.principal, name)
        access.require("invoke", ENDPOINTS, target_id=row.id, target_name=row.name,
                       compartment_path=compartment_path(request, access, row.compartment_id))
    except NotFound:
        catalog.get(name, kind="chat")  # raises the unknown-model error, word for word
        raise
    spec = catalog.get(row.base_model, kind="chat")
    return ServedModel(spec, service.serving_slot(access.principal, row), name)


def _custom_model(request: Request, catalog: Catalog, name: str) -> ServedModel:
    access = request.state.access
    try:
        row = custom_models(request).get(access.principal, name)
        access.require("invoke", RESOURCE_TYPE, target_id=row.id, target_name=row.name,
                       compartment_path=compartment_path(request, access, row.compartment_id))
    except NotFound:
        catalog.get(name, kind="chat")  # raises the unknown-model error, word for word
        raise
    service = endpoint_service(request)
    endpoint = service.hosted(access.principal, row.id)
    if endpoint is None:
        raise InvalidInput(
            f"custom model {row.id!r} is not hosted: create an endpoint for it on a hosting cluster of "
            f"{row.base_model} (POST /v1/endpoints {{\"name\": ..., \"cluster_id\": ..., \"model\": \"{row.id}\"}}, "
            f"or atelier endpoint create <name> --cluster <cluster id> --model {row.id}), then call it by the "
            "endpoint's id or by this id",
            param="model", code="model_not_hosted",
        )  # fmt: skip
    spec = catalog.get(row.base_model, kind="chat")
    return ServedModel(spec, service.serving_slot(access.principal, endpoint), name)
