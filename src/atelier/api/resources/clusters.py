"""``/v1/clusters``: dedicated AI clusters of the caller's tenancy (create, list, get, update, delete).

Policies decide on resource type ``clusters``, per cluster's compartment; a cluster the
caller may not inspect answers 404 exactly like a missing one. Sizing, unit limits (409
``limit_exceeded`` past them) and lifecycle are ``atelier.cloud.clusters``'s; this module
maps HTTP to it. Local provisioning is instant: a created cluster answers ``active``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from atelier.api.deps import GuardDep, ServicesDep
from atelier.api.envelopes import Deleted, unix
from atelier.cloud.clusters import ClusterRequest, ClusterService, ClusterUpdate
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


def cluster_out(service: ClusterService, row: Cluster) -> ClusterOut:
    """The API object of a cluster row, with its capacity or held units."""
    total, used, held = service.occupancy(row)
    hosting = row.type == "hosting"
    return ClusterOut(
        id=row.id, name=row.name, description=row.description, type=row.type, unit_type=row.unit_type,
        unit_count=row.unit_count, base_model=row.base_model, state=row.state, state_details=row.state_details,
        total_endpoint_capacity=total if hosting else None, used_endpoint_capacity=used if hosting else None,
        units_held_by_jobs=None if hosting else held, compartment_id=row.compartment_id,
        created_at=unix(row.created_at), updated_at=unix(row.updated_at), deleted_at=unix(row.deleted_at),
    )  # fmt: skip


@router.post("/clusters", response_model=ClusterOut, status_code=201, summary="Create a cluster")
def create_cluster(body: ClusterRequest, services: ServicesDep, guard: GuardDep) -> ClusterOut:
    """Reserve units for fine-tuning or hosting a base model; 409 `limit_exceeded` past your tenancy's unit limit."""
    compartment_id = guard.creation_compartment(TYPE, body.compartment, body.name)
    service = services.clusters
    return cluster_out(service, service.create(guard.principal, body, compartment_id=compartment_id))


@router.get("/clusters", response_model=ClusterList, summary="List clusters")
def list_clusters(
    services: ServicesDep,
    guard: GuardDep,
    include_deleted: Annotated[bool, Query(description="Show deleted clusters too.")] = False,
) -> ClusterList:
    """Your tenancy's clusters you may inspect, oldest first."""
    service = services.clusters
    rows = guard.visible(service.list(guard.principal, include_deleted=include_deleted))
    return ClusterList(data=[cluster_out(service, row) for row in rows])


@router.get("/clusters/{cluster_id}", response_model=ClusterOut, summary="Retrieve a cluster")
def retrieve_cluster(cluster_id: str, services: ServicesDep, guard: GuardDep) -> ClusterOut:
    """One cluster, with its capacity (hosting) or the units its jobs hold (fine-tuning)."""
    return cluster_out(services.clusters, guard.load(TYPE, cluster_id, "get"))


@router.patch("/clusters/{cluster_id}", response_model=ClusterOut, summary="Update a cluster")
def update_cluster(cluster_id: str, body: ClusterUpdate, services: ServicesDep, guard: GuardDep) -> ClusterOut:
    """Rename it or change its unit count (growing counts against your unit limit)."""
    row = guard.load(TYPE, cluster_id, "update")
    service = services.clusters
    return cluster_out(service, service.update(guard.principal, row.id, body))


@router.delete("/clusters/{cluster_id}", response_model=Deleted, summary="Delete a cluster")
def delete_cluster(cluster_id: str, services: ServicesDep, guard: GuardDep) -> Deleted:
    """Release its units; 409 while it hosts endpoints or runs fine-tuning jobs."""
    row = guard.load(TYPE, cluster_id, "delete")
    services.clusters.delete(guard.principal, row.id)
    return Deleted(id=row.id, object="cluster")
