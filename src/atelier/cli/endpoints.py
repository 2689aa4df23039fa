"""``atelier endpoint create|list|get|update|delete``: a base or custom model served on a hosting cluster.

A client of ``/v1/endpoints``; chat with an endpoint by using its id (``ep_…``) as the model.
An endpoint is named by id or by name, its cluster likewise. Output is an aligned table;
``--json`` prints the API's JSON.
"""

from __future__ import annotations

from typing import Annotated

import typer

from atelier.cli.clusters import AllOpt, cluster_id
from atelier.cli.common import CompartmentOpt, DescriptionOpt, JsonOpt, client_for, fail, resolve_ref, show
from atelier.client import AtelierClient

endpoint_app = typer.Typer(
    name="endpoint", help="Endpoints: a base or custom model served on a hosting cluster.", no_args_is_help=True
)

EndpointArg = Annotated[str, typer.Argument(help="Endpoint id (ep_…) or name.")]
ENDPOINT_COLUMNS = [
    ("ID", "id"), ("NAME", "name"), ("MODEL", "model"), ("CLUSTER", "cluster_id"), ("STATE", "state"),
]  # fmt: skip


def _endpoint_id(client: AtelierClient, ref: str) -> str:
    return resolve_ref(ref, "ep", client.endpoints.list, "endpoint")


@endpoint_app.command("create")
def create_endpoint(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique among your endpoints.")],
    cluster: Annotated[str, typer.Option("--cluster", help="Hosting cluster id (dac_…) or name.")],
    model: Annotated[str, typer.Option("--model", "-m", help="The cluster's base model, or a custom model id.")],
    compartment: CompartmentOpt = None,
    description: DescriptionOpt = None,
    raw: JsonOpt = False,
) -> None:
    """Serve a base or custom model; chat with it using the endpoint's id as the model."""
    client = client_for(ctx)
    created = client.endpoints.create(name, cluster_id(client, cluster), model, compartment=compartment,
                                      description=description)
    show(created, ENDPOINT_COLUMNS, raw)


@endpoint_app.command("list")
def list_endpoints(
    ctx: typer.Context,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Only this cluster's endpoints.")] = None,
    all_: AllOpt = False,
    raw: JsonOpt = False,
) -> None:
    """Your endpoints, oldest first."""
    client = client_for(ctx)
    show(client.endpoints.list(cluster_id(client, cluster) if cluster else None, all_), ENDPOINT_COLUMNS, raw)


@endpoint_app.command("get")
def get_endpoint(ctx: typer.Context, endpoint: EndpointArg, raw: JsonOpt = False) -> None:
    """One endpoint."""
    client = client_for(ctx)
    show(client.endpoints.get(_endpoint_id(client, endpoint)), ENDPOINT_COLUMNS, raw)


@endpoint_app.command("update")
def update_endpoint(
    ctx: typer.Context,
    endpoint: EndpointArg,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    description: DescriptionOpt = None,
    raw: JsonOpt = False,
) -> None:
    """Rename or describe an endpoint."""
    if name is None and description is None:
        fail("give at least one of --name, --description")
    client = client_for(ctx)
    show(client.endpoints.update(_endpoint_id(client, endpoint), name=name, description=description),
         ENDPOINT_COLUMNS, raw)


@endpoint_app.command("delete")
def delete_endpoint(ctx: typer.Context, endpoint: EndpointArg) -> None:
    """Stop serving an endpoint (the last one of a custom model frees its adapter)."""
    client = client_for(ctx)
    deleted = client.endpoints.delete(_endpoint_id(client, endpoint))
    typer.echo(f"deleted {deleted.get('id', endpoint)}")
