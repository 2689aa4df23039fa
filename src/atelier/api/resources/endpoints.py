"""``/v1/endpoints``: served models on hosting clusters (create, list, get, update, delete).

Policies decide on resource type ``endpoints``; the cluster named in the body needs
``use`` on ``clusters`` and a custom model named as ``model`` needs ``use`` on
``custom-models`` (otherwise, or when they are another tenancy's: 400 "not found or not
authorized"). A full hosting cluster answers 409 ``capacity_exceeded``. The work is
``atelier.cloud.endpoints``'s; chat and completions reach an endpoint through
``atelier.cloud.served_models``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.envelopes import Deleted, unix
from atelier.cloud.custom_models import is_custom_model_ref
from atelier.cloud.endpoints import EndpointRequest, EndpointUpdate
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


def endpoint_out(row: Endpoint) -> EndpointOut:
    """The API object of an endpoint row."""
    return EndpointOut(
        id=row.id, name=row.name, description=row.description, cluster_id=row.cluster_id,
        model=row.custom_model_id or row.base_model, base_model=row.base_model, custom_model_id=row.custom_model_id,
        state=row.state, state_details=row.state_details, compartment_id=row.compartment_id,
        created_at=unix(row.created_at), updated_at=unix(row.updated_at), deleted_at=unix(row.deleted_at),
    )  # fmt: skip


@router.post("/endpoints", response_model=EndpointOut, status_code=201, summary="Create an endpoint")
def create_endpoint(body: EndpointRequest, services: ServicesDep, guard: GuardDep) -> EndpointOut:
    """Serve the cluster's base model or a custom model of it; 409 `capacity_exceeded` on a full cluster."""
    compartment_id = guard.creation_compartment(TYPE, body.compartment, body.name)
    guard.reference("clusters", body.cluster_id, "invoke", "cluster_id")
    if is_custom_model_ref(body.model):
        guard.reference("custom-models", body.model, "invoke", "model")
    return endpoint_out(services.endpoints.create(guard.principal, body, compartment_id=compartment_id))


@router.get("/endpoints", response_model=EndpointList, summary="List endpoints")
def list_endpoints(
    services: ServicesDep,
    guard: GuardDep,
    cluster_id: Annotated[str | None, Query(max_length=100, description="Only this cluster's endpoints.")] = None,
    include_deleted: Annotated[bool, Query(description="Show deleted endpoints too.")] = False,
) -> EndpointList:
    """Your tenancy's endpoints you may inspect, oldest first."""
    rows = services.endpoints.list(guard.principal, cluster_id=cluster_id, include_deleted=include_deleted)
    return EndpointList(data=[endpoint_out(row) for row in guard.visible(rows)])


@router.get("/endpoints/{endpoint_id}", response_model=EndpointOut, summary="Retrieve an endpoint")
def retrieve_endpoint(endpoint_id: str, guard: GuardDep) -> EndpointOut:
    """One endpoint."""
    return endpoint_out(guard.load(TYPE, endpoint_id, "get"))


@router.patch("/endpoints/{endpoint_id}", response_model=EndpointOut, summary="Update an endpoint")
def update_endpoint(endpoint_id: str, body: EndpointUpdate, services: ServicesDep, guard: GuardDep) -> EndpointOut:
    """Rename it or change its description."""
    row = guard.load(TYPE, endpoint_id, "update")
    return endpoint_out(services.endpoints.update(guard.principal, row.id, body))


@router.delete("/endpoints/{endpoint_id}", response_model=Deleted, summary="Delete an endpoint")
def delete_endpoint(endpoint_id: str, services: ServicesDep, guard: GuardDep) -> Deleted:
    """Stop serving it; the last endpoint of a custom model frees the adapter's memory."""
    row = guard.load(TYPE, endpoint_id, "delete")
    services.endpoints.delete(guard.principal, row.id)
    return Deleted(id=row.id, object="endpoint")
