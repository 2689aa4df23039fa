"""``atelier admin limits get|set``: a tenancy's request and unit limits (operator key).

A client of ``/v1/tenancies/{id}/limits`` like the rest of the CLI. ``set`` changes only the
limits it is given and keeps the others (it reads them first); ``--default`` puts one back
to the service default; ``--units small=8`` sets how many units of a type the tenancy's
dedicated clusters may hold (0 until the operator raises it). A tenancy is named by id
(``ten_…``) or by name.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Any

import typer

from atelier.cli_admin import _call, _fail

limits_app = typer.Typer(
    name="limits", help="A tenancy's limits: requests and tokens per minute, concurrent generations, cluster units.",
    no_args_is_help=True,
)  # fmt: skip


class LimitName(str, Enum):
    rpm = "rpm"
    concurrent = "concurrent"
    tpm = "tpm"


FIELDS = {
    LimitName.rpm: "requests_per_minute",
    LimitName.concurrent: "concurrent_generations",
    LimitName.tpm: "tokens_per_minute",
}

TenancyArg = Annotated[str, typer.Argument(help="Tenancy id (ten_…) or name.")]
RawOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]


def _tenancy_id(ctx: typer.Context, ref: str) -> str:
    if ref.startswith("ten_"):
        return ref
    matches = [t["id"] for t in _call(ctx, "tenancies") if t.get("name") == ref]
    if not matches:
        _fail(f"no tenancy {ref!r} (name it by id or name)")
    return matches[0]


def _print(limits: dict[str, Any], raw: bool) -> None:
    if raw:
        typer.echo(json.dumps(limits, indent=2))
        return
    typer.echo(f"tenancy {limits['tenancy_id']}")
    rows = [("LIMIT", "SET", "EFFECTIVE")]
    for field in FIELDS.values():
        stored = limits.get(field)
        rows.append((field, "default" if stored is None else str(stored), str(limits["effective"][field])))
    used = limits.get("units_used") or {}
    for name, limit in (limits.get("units") or {}).items():
        rows.append((f"units.{name}", str(limit), f"{used.get(name, 0)} in use"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def parse_units(values: list[str] | None) -> dict[str, int]:
    """``["small=8", "large=2,embed=1"]`` → ``{"small": 8, "large": 2, "embed": 1}``."""
    units: dict[str, int] = {}
    for part in (p.strip() for value in values or [] for p in value.split(",")):
        name, sep, count = (s.strip() for s in part.partition("="))
        if not part or not sep or not name or not count.isdigit():
            _fail(f"--units takes <unit type>=<count>, e.g. small=8 (got {part!r})")
        units[name] = int(count)
    return units


@limits_app.command("get")
def get(ctx: typer.Context, tenancy: TenancyArg, raw: RawOpt = False) -> None:
    """Show a tenancy's limits: those set (or default) and those in force."""
    _print(_call(ctx, "tenancy_limits", _tenancy_id(ctx, tenancy)), raw)


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
    raw: RawOpt = False,
) -> None:
    """Set some of a tenancy's limits; the others keep their values."""
    given = {LimitName.rpm: rpm, LimitName.concurrent: concurrent, LimitName.tpm: tpm}
    reset = set(default or [])
    unit_limits = parse_units(units)
    clash = [f"--{name.value}" for name in reset if given[name] is not None]
    if clash:
        _fail(f"{', '.join(clash)} given with --default for the same limit")
    if not reset and not unit_limits and all(v is None for v in given.values()):
        _fail("give at least one of --rpm, --concurrent, --tpm, --units or --default")
    tenancy_id = _tenancy_id(ctx, tenancy)
    current = _call(ctx, "tenancy_limits", tenancy_id)
    values = {field: current.get(field) for field in FIELDS.values()}
    for name, field in FIELDS.items():
        if name in reset:
            values[field] = None
        elif given[name] is not None:
            values[field] = given[name]
    _print(_call(ctx, "set_tenancy_limits", tenancy_id, **values, units=unit_limits or None), raw)
