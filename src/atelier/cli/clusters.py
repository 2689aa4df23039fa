"""``atelier cluster create|list|get|update|delete``: dedicated AI clusters.

A client of ``/v1/clusters`` like the rest of the CLI, so the caller's key and the tenancy's
policies and unit limits apply. A cluster is named by id (``dac_…``) or by name. Output is
an aligned table; ``--json`` prints the API's JSON.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from atelier.cli.common import CompartmentOpt, DescriptionOpt, JsonOpt, client_for, fail, resolve_ref, show
from atelier.client import AtelierClient

cluster_app = typer.Typer(
    name="cluster", help="Dedicated AI clusters: units reserved for fine-tuning or hosting.", no_args_is_help=True
)

AllOpt = Annotated[bool, typer.Option("--all", help="Show deleted ones too.")]
ClusterArg = Annotated[str, typer.Argument(help="Cluster id (dac_…) or name.")]


class ClusterType(str, Enum):
    """``--type``: what a cluster's units are reserved for."""

    fine_tuning = "fine-tuning"
    hosting = "hosting"


def _capacity(row: dict[str, Any]) -> str | None:
    if row.get("type") == "hosting":
        return f"{row.get('used_endpoint_capacity')}/{row.get('total_endpoint_capacity')} endpoints"
    if row.get("units_held_by_jobs") is not None:
        return f"{row['units_held_by_jobs']}/{row.get('unit_count')} units busy"
    return None


CLUSTER_COLUMNS = [
    ("ID", "id"), ("NAME", "name"), ("TYPE", "type"),
    ("UNITS", lambda r: f"{r.get('unit_count')} {r.get('unit_type')}"),
    ("MODEL", "base_model"), ("STATE", "state"), ("CAPACITY", _capacity),
]  # fmt: skip


def cluster_id(client: AtelierClient, ref: str) -> str:
    """The id of the cluster named ``ref`` (an id as is, else the one of that name)."""
    return resolve_ref(ref, "dac", client.clusters.list, "cluster")


@cluster_app.command("create")
def create_cluster(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique among your clusters.")],
    model: Annotated[str, typer.Option("--model", "-m", help="The base model it serves.")],
    type_: Annotated[ClusterType, typer.Option("--type", "-t", help="fine-tuning or hosting.")] = ClusterType.hosting,
    units: Annotated[int, typer.Option("--units", "-u", min=1, help="Units to reserve.")] = 1,
    unit_type: Annotated[str, typer.Option("--unit-type", help="Unit type (the model's sizing).")] = "small",
    compartment: CompartmentOpt = None,
    description: DescriptionOpt = None,
    raw: JsonOpt = False,
) -> None:
    """Reserve units for fine-tuning or hosting a base model."""
    created = client_for(ctx).clusters.create(name, type_.value, unit_type, units, model, compartment=compartment,
                                              description=description)
    show(created, CLUSTER_COLUMNS, raw)


@cluster_app.command("list")
def list_clusters(ctx: typer.Context, all_: AllOpt = False, raw: JsonOpt = False) -> None:
    """Your clusters, oldest first."""
    show(client_for(ctx).clusters.list(all_), CLUSTER_COLUMNS, raw)


@cluster_app.command("get")
def get_cluster(ctx: typer.Context, cluster: ClusterArg, raw: JsonOpt = False) -> None:
    """One cluster, with its capacity."""
    client = client_for(ctx)
    show(client.clusters.get(cluster_id(client, cluster)), CLUSTER_COLUMNS, raw)


@cluster_app.command("update")
def update_cluster(
    ctx: typer.Context,
    cluster: ClusterArg,
    units: Annotated[int | None, typer.Option("--units", "-u", min=1, help="New unit count.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    description: DescriptionOpt = None,
    raw: JsonOpt = False,
) -> None:
    """Grow, shrink, rename or describe a cluster."""
    if units is None and name is None and description is None:
        fail("give at least one of --units, --name, --description")
    client = client_for(ctx)
    updated = client.clusters.update(cluster_id(client, cluster), name=name, unit_count=units, description=description)
    show(updated, CLUSTER_COLUMNS, raw)


@cluster_app.command("delete")
def delete_cluster(ctx: typer.Context, cluster: ClusterArg) -> None:
    """Release a cluster's units (its endpoints and jobs must be gone first)."""
    client = client_for(ctx)
    deleted = client.clusters.delete(cluster_id(client, cluster))
    typer.echo(f"deleted {deleted.get('id', cluster)}")
