"""``atelier audit verify|list``: the tamper-evident audit log.

``list`` reads entries through the API (administrators; the operator may name another
tenancy or all of them). ``verify`` checks the log locally and lives in ``atelier.cli.serve``
with the other commands that open the service's own data; it is registered here.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

import typer

from atelier.cli.common import align, client_for
from atelier.cli.serve import verify_audit_log

audit_app = typer.Typer(
    name="audit", help="The tamper-evident audit log: verify it, list entries.", no_args_is_help=True
)
audit_app.command("verify")(verify_audit_log)


class DecisionChoice(str, Enum):
    """``--decision``: what authorization decided for the request."""

    allow = "allow"
    deny = "deny"
    none = "none"


@audit_app.command("list")
def list_entries(
    ctx: typer.Context,
    since: Annotated[datetime | None, typer.Option(help="Entries at or after this time (UTC if no zone).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Entries before this time.")] = None,
    action: Annotated[str | None, typer.Option(help='Exact action, e.g. "POST /v1/key-ring/rotate".')] = None,
    decision: Annotated[DecisionChoice | None, typer.Option(help="Authorization decision.")] = None,
    principal: Annotated[str | None, typer.Option("--principal", help="Acting user or key id.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="API key id.")] = None,
    resource_type: Annotated[str | None, typer.Option(help="Resource type (keys, files...).")] = None,
    resource_id: Annotated[str | None, typer.Option(help="Target object id.")] = None,
    status: Annotated[int | None, typer.Option(help="HTTP status.")] = None,
    request_id: Annotated[str | None, typer.Option(help="One request's entries (its X-Request-Id).")] = None,
    after_seq: Annotated[int | None, typer.Option(help="Only entries after this sequence number.")] = None,
    limit: Annotated[int, typer.Option(help="Most entries (up to 1000).")] = 100,
    tenancy: Annotated[str | None, typer.Option("--tenancy", help="Operator: another tenancy's entries.")] = None,
    all_tenancies: Annotated[bool, typer.Option("--all", help="Operator: every tenancy's entries.")] = False,
    raw: Annotated[bool, typer.Option("--json", help="Print the API's JSON page.")] = False,
) -> None:
    """List audit entries of your tenancy (administrators), oldest first, through the API."""
    page = client_for(ctx).audit.entries(
        since=since.isoformat() if since else None,
        until=until.isoformat() if until else None,
        action=action,
        decision=decision.value if decision else None,
        principal_id=principal,
        key_id=key,
        resource_type=resource_type,
        resource_id=resource_id,
        status=status,
        request_id=request_id,
        after_seq=after_seq,
        limit=limit,
        tenancy_id=tenancy,
        all=all_tenancies,
    )
    if raw:
        typer.echo(json.dumps(page))
        return
    typer.echo(format_audit_table(page.get("data") or []))
    if page.get("next_after_seq") is not None:
        typer.echo(f"(more: --after-seq {page['next_after_seq']})", err=True)


def format_audit_table(entries: list[dict[str, Any]]) -> str:
    """A plain aligned table of entries ("-" for empty cells; times to the second, as sent)."""
    header = ["SEQ", "TIME", "TENANCY", "PRINCIPAL", "ACTION", "RESOURCE", "DECISION", "STATUS", "OUTCOME", "SOURCE"]

    def row(e: dict[str, Any]) -> list[str]:
        resource = "/".join(str(e[k]) for k in ("resource_type", "resource_id") if e.get(k))
        cells = [
            e.get("seq"), str(e.get("time", ""))[:19], e.get("tenancy_id"), e.get("principal_id"), e.get("action"),
            resource, e.get("decision"), e.get("status"), e.get("outcome"), e.get("source"),
        ]  # fmt: skip
        return ["-" if c in (None, "") else str(c) for c in cells]

    return align([header, *(row(e) for e in entries)])
