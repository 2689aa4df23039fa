"""``atelier cost estimate|metered``: what dedicated capacity costs (``/v1/cost-estimate``, ``/v1/costs``).

``estimate`` takes lines as compact specs: ``--fine-tuning small:8:5:4`` is 8 small units,
5 hours a job, 4 jobs a month; ``--hosting small:1`` is 1 small unit for a month
(``small:1:12`` for twelve). ``metered`` shows the cost so far of your hosting clusters and
fine-tuning jobs. The server does the arithmetic (``Decimal``); this prints it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer

from atelier.cli.common import JsonOpt, client_for, fail, format_table, print_json

cost_app = typer.Typer(name="cost", help="Cost of dedicated clusters: estimates and the metered cost so far.",
                       no_args_is_help=True)

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}


def money(amount: str | Decimal, currency: str = "USD") -> str:
    """``"5876.00"`` → ``$5,876.00`` (another currency: ``5,876.00 CHF``)."""
    text = f"{Decimal(str(amount)):,.2f}"
    symbol = SYMBOLS.get(currency)
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


def fine_tuning_line(spec: str) -> dict[str, Any]:
    """``small:8:5:4`` → unit type, units, hours per job, jobs per month (jobs default 1).

    Raises:
        typer.Exit: ``spec`` is not ``<unit type>:<units>:<hours per job>[:<jobs a month>]``.
    """
    parts = spec.split(":")
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        line = {"unit_type": parts[0], "units": int(parts[1]), "hours_per_job": str(Decimal(parts[2])),
                "jobs_per_month": int(parts[3]) if len(parts) == 4 else 1}
    except (ValueError, InvalidOperation):
        fail(f"--fine-tuning takes <unit type>:<units>:<hours per job>[:<jobs a month>], e.g. small:8:5:4 "
             f"(got {spec!r})")
    return line


def hosting_line(spec: str) -> dict[str, Any]:
    """``small:1`` or ``small:1:12`` → unit type, units, months (default 1).

    Raises:
        typer.Exit: ``spec`` is not ``<unit type>:<units>[:<months>]``.
    """
    parts = spec.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        line = {"unit_type": parts[0], "units": int(parts[1]), "months": int(parts[2]) if len(parts) == 3 else 1}
    except ValueError:
        fail(f"--hosting takes <unit type>:<units>[:<months>], e.g. small:1 (got {spec!r})")
    return line


def _print(cost: dict[str, Any], raw: bool) -> None:
    if raw:
        print_json(cost)
        return
    currency = cost.get("currency", "USD")
    columns = [
        ("KIND", "kind"), ("FOR", "resource_id"), ("UNITS", lambda r: f"{r['units']} {r['unit_type']}"),
        ("HOURS", "billed_hours"), ("UNIT-HOURS", "unit_hours"),
        ("PRICE/UNIT-HOUR", lambda r: money(r["price_per_unit_hour"], currency)),
        ("COST", lambda r: money(r["cost"], currency)), ("HOW", "detail"),
    ]  # fmt: skip
    if not any(line.get("resource_id") for line in cost["lines"]):
        columns.pop(1)
    if cost["lines"]:
        typer.echo(format_table(cost["lines"], columns))
    typer.echo(f"total: {cost['total_unit_hours']} unit-hours, {money(cost['total_cost'], currency)}")


@cost_app.command("estimate")
def estimate(
    ctx: typer.Context,
    fine_tuning: Annotated[
        list[str] | None,
        typer.Option("--fine-tuning", "-f", help="<unit type>:<units>:<hours per job>[:<jobs a month>] (repeatable)."),
    ] = None,
    hosting: Annotated[
        list[str] | None, typer.Option("--hosting", help="<unit type>:<units>[:<months>] (repeatable).")
    ] = None,
    raw: JsonOpt = False,
) -> None:
    """Estimate a month: fine-tuning by the hour (1 h minimum per job), hosting by 744-hour months."""
    if not fine_tuning and not hosting:
        fail("give at least one --fine-tuning or --hosting line")
    lines_ft = [fine_tuning_line(spec) for spec in fine_tuning or []]
    lines_host = [hosting_line(spec) for spec in hosting or []]
    _print(client_for(ctx).costs.estimate(lines_ft, lines_host), raw)


@cost_app.command("metered")
def metered(ctx: typer.Context, raw: JsonOpt = False) -> None:
    """The cost so far of your hosting clusters and fine-tuning jobs."""
    _print(client_for(ctx).costs.metered(), raw)
