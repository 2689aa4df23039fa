"""``atelier cluster …`` and ``atelier endpoint …``: dedicated AI clusters and the endpoints they host.

Clients of ``/v1/clusters`` and ``/v1/endpoints`` like the rest of the CLI, so the caller's
key and the tenancy's policies and unit limits apply. A cluster or an endpoint may be named
by id (``dac_…``, ``ep_…``) or by name. Output is an aligned table; ``--json`` prints the API's JSON.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from atelier.cli_admin import _call, _fail, _show

cluster_app = typer.Typer(
    name="cluster", help="Dedicated AI clusters: units reserved for fine-tuning or hosting.", no_args_is_help=True
)
endpoint_app = typer.Typer(
    name="endpoint", help="Endpoints: a base or custom model served on a hosting cluster.", no_args_is_help=True
)

RawOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Show deleted ones too.")]
DescriptionOpt = Annotated[str | None, typer.Option("--description", "-d", help="Free text (up to 400 characters).")]
CompartmentOpt = Annotated[
    str | None, typer.Option("--compartment", "-c", help="Compartment id or path (eng:ml); default the root.")
]
ClusterArg = Annotated[str, typer.Argument(help="Cluster id (dac_…) or name.")]
EndpointArg = Annotated[str, typer.Argument(help="Endpoint id (ep_…) or name.")]


class ClusterType(str, Enum):
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
ENDPOINT_COLUMNS = [
    ("ID", "id"), ("NAME", "name"), ("MODEL", "model"), ("CLUSTER", "cluster_id"), ("STATE", "state"),
]  # fmt: skip


def _ref(ctx: typer.Context, ref: str, prefix: str, lister: str, noun: str) -> str:
    """The id of the object named ``ref`` (an id as is, else the one of that name)."""
    if ref.startswith(prefix):
        return ref
    matches = [o["id"] for o in _call(ctx, lister) if o.get("name") == ref]
    if not matches:
        _fail(f"no {noun} {ref!r} that you may see (name it by id or name)")
    return matches[0]


# --- clusters ----------------------------------------------------------------------------


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
    raw: RawOpt = False,
) -> None:
    """Reserve units for fine-tuning or hosting a base model."""
    created = _call(ctx, "create_cluster", name, type_.value, unit_type, units, model, compartment=compartment,
                    description=description)
    _show(created, CLUSTER_COLUMNS, raw)


@cluster_app.command("list")
def list_clusters(ctx: typer.Context, all_: AllOpt = False, raw: RawOpt = False) -> None:
    """Your clusters, oldest first."""
    _show(_call(ctx, "clusters", all_), CLUSTER_COLUMNS, raw)


@cluster_app.command("get")
def get_cluster(ctx: typer.Context, cluster: ClusterArg, raw: RawOpt = False) -> None:
    """One cluster, with its capacity."""
    _show(_call(ctx, "cluster", _ref(ctx, cluster, "dac_", "clusters", "cluster")), CLUSTER_COLUMNS, raw)


@cluster_app.command("update")
def update_cluster(
    ctx: typer.Context,
    cluster: ClusterArg,
    units: Annotated[int | None, typer.Option("--units", "-u", min=1, help="New unit count.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    description: DescriptionOpt = None,
    raw: RawOpt = False,
) -> None:
    """Grow, shrink, rename or describe a cluster."""
    if units is None and name is None and description is None:
        _fail("give at least one of --units, --name, --description")
    cluster_id = _ref(ctx, cluster, "dac_", "clusters", "cluster")
    updated = _call(ctx, "update_cluster", cluster_id, name=name, unit_count=units, description=description)
    _show(updated, CLUSTER_COLUMNS, raw)


@cluster_app.command("delete")
def delete_cluster(ctx: typer.Context, cluster: ClusterArg) -> None:
    """Release a cluster's units (its endpoints and jobs must be gone first)."""
    deleted = _call(ctx, "delete_cluster", _ref(ctx, cluster, "dac_", "clusters", "cluster"))
    typer.echo(f"deleted {deleted.get('id', cluster)}")


# --- endpoints ---------------------------------------------------------------------------


@endpoint_app.command("create")
def create_endpoint(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique among your endpoints.")],
    cluster: Annotated[str, typer.Option("--cluster", help="Hosting cluster id (dac_…) or name.")],
    model: Annotated[str, typer.Option("--model", "-m", help="The cluster's base model, or a custom model id.")],
    compartment: CompartmentOpt = None,
    description: DescriptionOpt = None,
    raw: RawOpt = False,
) -> None:
    """Serve a base or custom model; chat with it using the endpoint's id as the model."""
    cluster_id = _ref(ctx, cluster, "dac_", "clusters", "cluster")
    created = _call(ctx, "create_endpoint", name, cluster_id, model, compartment=compartment,
                    description=description)
    _show(created, ENDPOINT_COLUMNS, raw)


@endpoint_app.command("list")
def list_endpoints(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Only this cluster's endpoints.")] = None,
    all_: AllOpt = False,
    raw: RawOpt = False,
) -> None:
    """Your endpoints, oldest first."""
    cluster_id = _ref(ctx, cluster, "dac_", "clusters", "cluster") if cluster else None
    _show(_call(ctx, "endpoints", cluster_id, all_), ENDPOINT_COLUMNS, raw)


@endpoint_app.command("get")
def get_endpoint(ctx: typer.Context, endpoint: EndpointArg, raw: RawOpt = False) -> None:
    """One endpoint."""
    _show(_call(ctx, "endpoint", _ref(ctx, endpoint, "ep_", "endpoints", "endpoint")), ENDPOINT_COLUMNS, raw)


@endpoint_app.command("update")
def update_endpoint(
    ctx: typer.Context,
    endpoint: EndpointArg,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    description: DescriptionOpt = None,
    raw: RawOpt = False,
) -> None:
    """Rename or describe an endpoint."""
    if name is None and description is None:
        _fail("give at least one of --name, --description")
    endpoint_id = _ref(ctx, endpoint, "ep_", "endpoints", "endpoint")
    _show(_call(ctx, "update_endpoint", endpoint_id, name=name, description=description), ENDPOINT_COLUMNS, raw)


@endpoint_app.command("delete")
def delete_endpoint(ctx: typer.Context, endpoint: EndpointArg) -> None:
    """Stop serving an endpoint (the last one of a custom model frees its adapter)."""
    deleted = _call(ctx, "delete_endpoint", _ref(ctx, endpoint, "ep_", "endpoints", "endpoint"))
    typer.echo(f"deleted {deleted.get('id', endpoint)}")
