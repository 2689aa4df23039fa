"""``atelier admin limits get|set``: a tenancy's request and unit limits (operator key).

A client of ``/v1/tenancies/{id}/limits`` like the rest of the CLI. ``set`` changes only the
limits it is given and keeps the others (it reads them first); ``--default`` puts one back
to the service default; ``--units small=8`` sets how many units of a type the tenancy's
dedicated clusters may hold (0 until the operator raises it). A tenancy is named by id
(``ten_…``) or by name.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from atelier.cli.common import JsonOpt, align, client_for, fail, print_json, resolve_ref
from atelier.client import AtelierClient

limits_app = typer.Typer(
    name="limits", help="A tenancy's limits: requests and tokens per minute, concurrent generations, cluster units.",
    no_args_is_help=True,
)  # fmt: skip


class LimitName(str, Enum):
    """A request limit as the command line names it (``FIELDS`` maps it to the API's field)."""

    rpm = "rpm"
    concurrent = "concurrent"
    tpm = "tpm"


FIELDS = {
    LimitName.rpm: "requests_per_minute",
    LimitName.concurrent: "concurrent_generations",
    LimitName.tpm: "tokens_per_minute",
}

TenancyArg = Annotated[str, typer.Argument(help="Tenancy id (ten_…) or name.")]


def _tenancy_id(client: AtelierClient, ref: str) -> str:
    return resolve_ref(ref, "ten", client.tenancies.list, "tenancy")


def _print(limits: dict[str, Any], raw: bool) -> None:
    if raw:
        print_json(limits)
        return
    typer.echo(f"tenancy {limits['tenancy_id']}")
    rows = [("LIMIT", "SET", "EFFECTIVE")]
    for field in FIELDS.values():
        stored = limits.get(field)
        rows.append((field, "default" if stored is None else str(stored), str(limits["effective"][field])))
    used = limits.get("units_used") or {}
    for name, limit in (limits.get("units") or {}).items():
        rows.append((f"units.{name}", str(limit), f"{used.get(name, 0)} in use"))
    typer.echo(align(rows))


def parse_units(values: list[str] | None) -> dict[str, int]:
    """``["small=8", "large=2,embed=1"]`` → ``{"small": 8, "large": 2, "embed": 1}``.

    Raises:
        typer.Exit: A part is not ``<unit type>=<count>``.
    """
    units: dict[str, int] = {}
    for part in (p.strip() for value in values or [] for p in value.split(",")):
        name, sep, count = (s.strip() for s in part.partition("="))
        if not part or not sep or not name or not count.isdigit():
            fail(f"--units takes <unit type>=<count>, e.g. small=8 (got {part!r})")
        units[name] = int(count)
    return units


@limits_app.command("get")
def get(ctx: typer.Context, tenancy: TenancyArg, raw: JsonOpt = False) -> None:
    """Show a tenancy's limits: those set (or default) and those in force."""
    client = client_for(ctx)
    _print(client.tenancies.limits(_tenancy_id(client, tenancy)), raw)


@limits_app.command("set")
def set_(
    ctx: typer.Context,
    tenancy: TenancyArg,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute.")] = None,
    concurrent: Annotated[int | None, typer.Option("--concurrent", min=1, help="Generations at once.")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute.")] = None,
    default: Annotated[
        list[LimitName] | None,
        typer.Option("--default", help="Put this limit back to the service default (repeatable)."),
    ] = None,
    units: Annotated[
        list[str] | None,
        typer.Option("--units", help="Cluster units the tenancy may hold, e.g. small=8 (repeatable, or a,b)."),
    ] = None,
    raw: JsonOpt = False,
) -> None:
    """Set some of a tenancy's limits; the others keep their values."""
    given = {LimitName.rpm: rpm, LimitName.concurrent: concurrent, LimitName.tpm: tpm}
    reset = set(default or [])
    unit_limits = parse_units(units)
    clash = [f"--{name.value}" for name in reset if given[name] is not None]
    if clash:
        fail(f"{', '.join(clash)} given with --default for the same limit")
    if not reset and not unit_limits and all(v is None for v in given.values()):
        fail("give at least one of --rpm, --concurrent, --tpm, --units or --default")
    client = client_for(ctx)
    tenancy_id = _tenancy_id(client, tenancy)
    current = client.tenancies.limits(tenancy_id)
    values = {field: current.get(field) for field in FIELDS.values()}
    for name, field in FIELDS.items():
        if name in reset:
            values[field] = None
        elif given[name] is not None:
            values[field] = given[name]
    _print(client.tenancies.set_limits(tenancy_id, **values, units=unit_limits or None), raw)
