"""``/v1/clusters``: dedicated AI clusters of the caller's tenancy (create, list, get, update, delete).

Policies decide on resource type ``clusters``, per cluster's compartment; a cluster the
caller may not inspect answers 404 exactly like a missing one. Sizing, unit limits (409
``limit_exceeded`` past them) and lifecycle are ``atelier.cloud.clusters``'s; this module
maps HTTP to it. Local provisioning is instant: a created cluster answers ``active``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from atelier.api.access import Access
from atelier.api.deps import AccessDep
from atelier.api.envelopes import Deleted
from atelier.api.references import body_reference
from atelier.cloud.clusters import ClusterRequest, ClusterService, ClusterUpdate
from atelier.errors import Forbidden
from atelier.store import identity
from atelier.store.tables import Cluster

router = APIRouter(tags=["clusters"])

TYPE = "clusters"


class ClusterOut(BaseModel):
    """A dedicated AI cluster."""

    id: str = Field(description="`dac_…`.")
    object: Literal["cluster"] = "cluster"
    name: str
    description: str
    type: Literal["hosting", "fine-tuning"]
    unit_type: str
    unit_count: int
    base_model: str
    state: str = Field(description="creating, active, updating, deleting, deleted, failed or needs_attention.")
    state_details: str = Field(description="Why it is in that state, when there is something to say.")
    total_endpoint_capacity: int | None = Field(None, description="Endpoints it may host (hosting clusters).")
    used_endpoint_capacity: int | None = Field(None, description="Endpoints it hosts (hosting clusters).")
    units_held_by_jobs: int | None = Field(None, description="Units its jobs under way hold (fine-tuning clusters).")
    compartment_id: str | None = None
    created_at: int
    updated_at: int
    deleted_at: int | None = None


class ClusterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ClusterOut]


def cluster_service(request: Request) -> ClusterService:
    """The cluster service over the app's database, catalog and unit table."""
    state = request.app.state
    return ClusterService(state.db, state.catalog, state.units)


ServiceDep = Annotated[ClusterService, Depends(cluster_service)]


def unix(moment: datetime | None) -> int | None:
    """Unix seconds of a stored time (None stays None)."""
    if moment is None:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def cluster_out(request: Request, service: ClusterService, row: Cluster) -> ClusterOut:
    """The API object of a cluster row, with its capacity or held units."""
    with request.app.state.db.session() as session:
        total, used = service.capacity(session, row)
        held = service.held_units(session, row)
    hosting = row.type == "hosting"
    return ClusterOut(
        id=row.id, name=row.name, description=row.description, type=row.type, unit_type=row.unit_type,
        unit_count=row.unit_count, base_model=row.base_model, state=row.state, state_details=row.state_details,
        total_endpoint_capacity=total if hosting else None, used_endpoint_capacity=used if hosting else None,
        units_held_by_jobs=None if hosting else held, compartment_id=row.compartment_id,
        created_at=unix(row.created_at), updated_at=unix(row.updated_at), deleted_at=unix(row.deleted_at),
    )  # fmt: skip


def compartment_path(request: Request, access: Access, compartment_id: str | None) -> tuple[str, ...]:
    """The path of an object's compartment (``()`` for the tenancy root)."""
    if not compartment_id:
        return ()
    with request.app.state.db.session() as session:
        return identity.compartment_path(session, access.principal, compartment_id)


def creation_compartment(request: Request, access: Access, resource_type: str, ref: str | None,
                         name: str) -> str | None:
    """The compartment a new object goes into (body field ``compartment``), once the caller may create there.

    Raises:
        InvalidInput: No such compartment in the caller's tenancy (``param="compartment"``).
        Forbidden: The caller's policies do not allow creating there.
    """
    compartment_id, path = None, ()
    if ref:
        with request.app.state.db.session() as session, body_reference("compartment"):
            compartment = identity.resolve_compartment(session, access.principal, ref)
            path = identity.compartment_path(session, access.principal, compartment.id)
        compartment_id = compartment.id
    decision = access.decide("create", resource_type, target_name=name, compartment_path=path)
    if not decision.allowed:  # the type-level check passed: the compartment or a condition refused it
        raise Forbidden(f"not authorized: {decision.reason}")
    return compartment_id


def require_cluster(request: Request, access: Access, row: Cluster, operation: str) -> None:
    """Allow ``operation`` on the cluster, or raise (404 when the caller may not even inspect it)."""
    access.require(operation, TYPE, target_id=row.id, target_name=row.name,
                   compartment_path=compartment_path(request, access, row.compartment_id), what=f"cluster {row.id!r}")


def _loaded(request: Request, access: Access, service: ClusterService, cluster_id: str, operation: str) -> Cluster:
    row = service.get(access.principal, cluster_id)
    require_cluster(request, access, row, operation)
    return row


@router.post("/clusters", response_model=ClusterOut, status_code=201, summary="Create a cluster")
def create_cluster(body: ClusterRequest, request: Request, access: AccessDep, service: ServiceDep) -> ClusterOut:
    """Reserve units for fine-tuning or hosting a base model; 409 `limit_exceeded` past your tenancy's unit limit."""
    compartment_id = creation_compartment(request, access, TYPE, body.compartment, body.name)
    return cluster_out(request, service, service.create(access.principal, body, compartment_id=compartment_id))


@router.get("/clusters", response_model=ClusterList, summary="List clusters")
def list_clusters(
    request: Request,
    access: AccessDep,
    service: ServiceDep,
    include_deleted: Annotated[bool, Query(description="Show deleted clusters too.")] = False,
) -> ClusterList:
    """Your tenancy's clusters you may inspect, oldest first."""
    rows = [
        row for row in service.list(access.principal, include_deleted=include_deleted)
        if access.visible(TYPE, target_id=row.id, target_name=row.name,
                          compartment_path=compartment_path(request, access, row.compartment_id))
    ]  # fmt: skip
    return ClusterList(data=[cluster_out(request, service, row) for row in rows])


@router.get("/clusters/{cluster_id}", response_model=ClusterOut, summary="Retrieve a cluster")
def retrieve_cluster(cluster_id: str, request: Request, access: AccessDep, service: ServiceDep) -> ClusterOut:
    """One cluster, with its capacity (hosting) or the units its jobs hold (fine-tuning)."""
    return cluster_out(request, service, _loaded(request, access, service, cluster_id, "get"))


@router.patch("/clusters/{cluster_id}", response_model=ClusterOut, summary="Update a cluster")
def update_cluster(cluster_id: str, body: ClusterUpdate, request: Request, access: AccessDep,
                   service: ServiceDep) -> ClusterOut:
    """Rename it or change its unit count (growing counts against your unit limit)."""
    row = _loaded(request, access, service, cluster_id, "update")
    return cluster_out(request, service, service.update(access.principal, row.id, body))


@router.delete("/clusters/{cluster_id}", response_model=Deleted, summary="Delete a cluster")
def delete_cluster(cluster_id: str, request: Request, access: AccessDep, service: ServiceDep) -> Deleted:
    """Release its units; 409 while it hosts endpoints or runs fine-tuning jobs."""
    row = _loaded(request, access, service, cluster_id, "delete")
    service.delete(access.principal, row.id)
    return Deleted(id=row.id, object="cluster")
