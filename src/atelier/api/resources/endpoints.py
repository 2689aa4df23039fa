"""``/v1/endpoints``: served models on hosting clusters (create, list, get, update, delete).

Policies decide on resource type ``endpoints``; the cluster named in the body needs
``use`` on ``clusters`` and a custom model named as ``model`` needs ``use`` on
``custom-models`` (otherwise, or when they are another tenancy's: 400 "not found or not
authorized"). A full hosting cluster answers 409 ``capacity_exceeded``. The work is
``atelier.cloud.endpoints``'s; chat and completions reach an endpoint through
``api/openai/served_models.py``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from atelier.api.access import Access
from atelier.api.deps import AccessDep
from atelier.api.envelopes import Deleted
from atelier.api.references import body_reference
from atelier.api.resources.clusters import cluster_service, compartment_path, creation_compartment, unix
from atelier.cloud.custom_models import CustomModelService
from atelier.cloud.endpoints import CUSTOM_MODEL_PREFIX, EndpointRequest, EndpointService, EndpointUpdate
from atelier.store.tables import Endpoint

router = APIRouter(tags=["endpoints"])

TYPE = "endpoints"


class EndpointOut(BaseModel):
    """An endpoint: use its id as `model` in chat and completions."""

    id: str = Field(description="`ep_…`: the `model` of chat and completions requests.")
    object: Literal["endpoint"] = "endpoint"
    name: str
    description: str
    cluster_id: str
    model: str = Field(description="What it serves: the base model's name, or the custom model's id.")
    base_model: str
    custom_model_id: str | None = None
    state: str = Field(description="creating, active, updating, deleting, deleted or failed.")
    state_details: str
    compartment_id: str | None = None
    created_at: int
    updated_at: int
    deleted_at: int | None = None


class EndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EndpointOut]


def endpoint_service(request: Request) -> EndpointService:
    """The endpoint service over the app's database, catalog and loaded adapters."""
    state = request.app.state
    return EndpointService(state.db, state.catalog, CustomModelService(state.db, state.objects), state.adapters)


ServiceDep = Annotated[EndpointService, Depends(endpoint_service)]


def endpoint_out(row: Endpoint) -> EndpointOut:
    """The API object of an endpoint row."""
    return EndpointOut(
        id=row.id, name=row.name, description=row.description, cluster_id=row.cluster_id,
        model=row.custom_model_id or row.base_model, base_model=row.base_model, custom_model_id=row.custom_model_id,
        state=row.state, state_details=row.state_details, compartment_id=row.compartment_id,
        created_at=unix(row.created_at), updated_at=unix(row.updated_at), deleted_at=unix(row.deleted_at),
    )  # fmt: skip


def require_endpoint(request: Request, access: Access, row: Endpoint, operation: str) -> None:
    """Allow ``operation`` on the endpoint, or raise (404 when the caller may not even inspect it)."""
    access.require(operation, TYPE, target_id=row.id, target_name=row.name,
                   compartment_path=compartment_path(request, access, row.compartment_id), what=f"endpoint {row.id!r}")


def visible_endpoints(request: Request, access: Access, service: EndpointService, **filters) -> list[Endpoint]:
    """The tenancy's endpoints the caller may inspect."""
    return [
        row for row in service.list(access.principal, **filters)
        if access.visible(TYPE, target_id=row.id, target_name=row.name,
                          compartment_path=compartment_path(request, access, row.compartment_id))
    ]  # fmt: skip


def _loaded(request: Request, access: Access, service: EndpointService, endpoint_id: str, operation: str) -> Endpoint:
    row = service.get(access.principal, endpoint_id)
    require_endpoint(request, access, row, operation)
    return row


def _check_references(request: Request, access: Access, body: EndpointRequest) -> None:
    """The body's cluster and custom model must be ones the caller may use: otherwise 400 naming the field."""
    clusters = cluster_service(request)
    with body_reference("cluster_id"):
        cluster = clusters.get(access.principal, body.cluster_id)
        access.require("invoke", "clusters", target_id=cluster.id, target_name=cluster.name,
                       compartment_path=compartment_path(request, access, cluster.compartment_id),
                       what=f"cluster {body.cluster_id!r}")
    if body.model.startswith(CUSTOM_MODEL_PREFIX):
        models = CustomModelService(request.app.state.db, request.app.state.objects)
        with body_reference("model"):
            row = models.get(access.principal, body.model)
            access.require("invoke", "custom-models", target_id=row.id, target_name=row.name,
                           compartment_path=compartment_path(request, access, row.compartment_id),
                           what=f"custom model {body.model!r}")


@router.post("/endpoints", response_model=EndpointOut, status_code=201, summary="Create an endpoint")
def create_endpoint(body: EndpointRequest, request: Request, access: AccessDep, service: ServiceDep) -> EndpointOut:
    """Serve the cluster's base model or a custom model of it; 409 `capacity_exceeded` on a full cluster."""
    compartment_id = creation_compartment(request, access, TYPE, body.compartment, body.name)
    _check_references(request, access, body)
    return endpoint_out(service.create(access.principal, body, compartment_id=compartment_id))


@router.get("/endpoints", response_model=EndpointList, summary="List endpoints")
def list_endpoints(
    request: Request,
    access: AccessDep,
    service: ServiceDep,
    cluster_id: Annotated[str | None, Query(max_length=100, description="Only this cluster's endpoints.")] = None,
    include_deleted: Annotated[bool, Query(description="Show deleted endpoints too.")] = False,
) -> EndpointList:
    """Your tenancy's endpoints you may inspect, oldest first."""
    rows = visible_endpoints(request, access, service, cluster_id=cluster_id, include_deleted=include_deleted)
    return EndpointList(data=[endpoint_out(row) for row in rows])


@router.get("/endpoints/{endpoint_id}", response_model=EndpointOut, summary="Retrieve an endpoint")
def retrieve_endpoint(endpoint_id: str, request: Request, access: AccessDep, service: ServiceDep) -> EndpointOut:
    """One endpoint."""
    return endpoint_out(_loaded(request, access, service, endpoint_id, "get"))


@router.patch("/endpoints/{endpoint_id}", response_model=EndpointOut, summary="Update an endpoint")
def update_endpoint(endpoint_id: str, body: EndpointUpdate, request: Request, access: AccessDep,
                    service: ServiceDep) -> EndpointOut:
    """Rename it or change its description."""
    row = _loaded(request, access, service, endpoint_id, "update")
    return endpoint_out(service.update(access.principal, row.id, body))


@router.delete("/endpoints/{endpoint_id}", response_model=Deleted, summary="Delete an endpoint")
def delete_endpoint(endpoint_id: str, request: Request, access: AccessDep, service: ServiceDep) -> Deleted:
    """Stop serving it; the last endpoint of a custom model frees the adapter's memory."""
    row = _loaded(request, access, service, endpoint_id, "delete")
    service.delete(access.principal, row.id)
    return Deleted(id=row.id, object="endpoint")
