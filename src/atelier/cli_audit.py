"""``atelier audit verify|list`` and ``atelier keys show|rotate|rewrap|retire``.

``audit verify`` runs locally: it opens the database and the root key named by the
settings (``ATELIER_DATA_DIR``...) directly, so it works with the service stopped, and
exits 1 listing the problems when the log was tampered with. Every other command here is
a client of the HTTP API, like the rest of the CLI (keys, policies and audit apply).
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

audit_app = typer.Typer(
    name="audit", help="The tamper-evident audit log: verify it, list entries.", no_args_is_help=True
)
keys_app = typer.Typer(
    name="keys",
    help="Your tenancy's key ring (encryption of stored objects): show, rotate, rewrap, retire.",
    no_args_is_help=True,
)


class DecisionChoice(str, Enum):
    allow = "allow"
    deny = "deny"
    none = "none"


def _cli():  # noqa: ANN202 - atelier.cli imports this module at its end
    from atelier import cli

    return cli


# --- audit -----------------------------------------------------------------------------


@audit_app.command("verify")
def verify(
    data_dir: Annotated[Path | None, typer.Option(help="Data dir of the service (default: ATELIER_DATA_DIR).")] = None,
    raw: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the hash chain, signed checkpoints and head file (locally; the service may be stopped).

    Exit status 0 when the log is intact, 1 with the problems listed when it is not.
    """
    from atelier.errors import AtelierError
    from atelier.security.audit import AuditLog
    from atelier.security.crypto import RootKey
    from atelier.store.db import Database

    settings = _cli()._settings(**({"data_dir": data_dir} if data_dir is not None else {}))
    database = settings.db_url.removeprefix("sqlite:///") if settings.db_url.startswith("sqlite:///") else None
    if database is not None and not Path(database).exists():
        _fail(f"no database at {database} (set ATELIER_DATA_DIR or --data-dir to the service's data dir)")
    if settings.root_key is None and not settings.root_key_path.exists():
        _fail(f"no root key at {settings.root_key_path} (set ATELIER_ROOT_KEY or ATELIER_ROOT_KEY_FILE)")
    db = Database(settings.db_url)
    try:
        log = AuditLog.for_service(db, RootKey.from_settings(settings), settings.data_path)
        report = log.verify()
    except AtelierError as exc:
        _fail(exc.message)
    except Exception as exc:  # noqa: BLE001 - e.g. a database without the audit tables
        _fail(f"cannot read the audit log: {type(exc).__name__}: {exc}")
    finally:
        db.dispose()
    if raw:
        typer.echo(json.dumps({"ok": report.ok, "entries": report.entries, "checkpoints": report.checkpoints,
                               "problems": report.problems}))  # fmt: skip
    elif report.ok:
        typer.echo(f"audit log ok: {report.entries} entries, {report.checkpoints} signed checkpoints")
    else:
        typer.echo(f"audit log TAMPERED: {len(report.problems)} problem(s) in {report.entries} entries", err=True)
        for problem in report.problems:
            typer.echo(f"  {problem}", err=True)
    if not report.ok:
        raise typer.Exit(1)


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
    cli = _cli()
    client, _ = cli._client(ctx)
    filters = {
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "action": action,
        "decision": decision.value if decision else None,
        "principal_id": principal,
        "key_id": key,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "status": status,
        "request_id": request_id,
        "after_seq": after_seq,
        "limit": limit,
        "tenancy_id": tenancy,
        "all": all_tenancies,
    }
    with cli._api_errors():
        page = client.audit_entries(**filters)
    if raw:
        typer.echo(json.dumps(page))
        return
    typer.echo(format_audit_table(page.get("data") or []))
    if page.get("next_after_seq") is not None:
        typer.echo(f"(more: --after-seq {page['next_after_seq']})", err=True)


def format_audit_table(entries: list[dict[str, Any]]) -> str:
    """A plain aligned table of entries ("-" for empty cells)."""
    header = ["SEQ", "TIME", "TENANCY", "PRINCIPAL", "ACTION", "RESOURCE", "DECISION", "STATUS", "OUTCOME", "SOURCE"]

    def row(e: dict[str, Any]) -> list[str]:
        resource = "/".join(str(e[k]) for k in ("resource_type", "resource_id") if e.get(k))
        cells = [
            e.get("seq"), str(e.get("time", ""))[:19], e.get("tenancy_id"), e.get("principal_id"), e.get("action"),
            resource, e.get("decision"), e.get("status"), e.get("outcome"), e.get("source"),
        ]  # fmt: skip
        return ["-" if c in (None, "") else str(c) for c in cells]

    rows = [row(e) for e in entries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


# --- keys ------------------------------------------------------------------------------


def format_ring(ring: dict[str, Any]) -> str:
    """The key ring as text: current and minimum versions, then one line per version."""
    if ring.get("current_version") is None:
        return f"tenancy {ring.get('tenancy_id')}: no key ring yet (created with the first stored object or rotation)"
    lines = [
        f"tenancy {ring['tenancy_id']}: current version {ring['current_version']}, "
        f"minimum decryption version {ring['min_decrypt_version']}"
    ]
    lines += [f"  v{v['version']}  {v['state']:<8}  created {v['created_at']}" for v in ring.get("versions") or []]
    return "\n".join(lines)


def _ring_command(ctx: typer.Context, call: str, *args: Any, raw: bool) -> None:
    cli = _cli()
    client, _ = cli._client(ctx)
    with cli._api_errors():
        result = getattr(client, call)(*args)
    if raw:
        typer.echo(json.dumps(result))
    elif "rewrapped" in result:
        typer.echo(f"rewrapped {result['rewrapped']} object(s) to key version {result['current_version']}")
    else:
        typer.echo(format_ring(result))


RawOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]


@keys_app.command("show")
def show(ctx: typer.Context, raw: RawOpt = False) -> None:
    """Show the key ring: versions and their states (never key material)."""
    _ring_command(ctx, "key_ring", raw=raw)


@keys_app.command("rotate")
def rotate(ctx: typer.Context, raw: RawOpt = False) -> None:
    """Add a key version; new objects use it, old ones still open."""
    _ring_command(ctx, "rotate_key_ring", raw=raw)


@keys_app.command("rewrap")
def rewrap(ctx: typer.Context, raw: RawOpt = False) -> None:
    """Re-wrap every stored object's data key under the current version (payloads untouched)."""
    _ring_command(ctx, "rewrap_objects", raw=raw)


@keys_app.command("retire")
def retire(
    ctx: typer.Context,
    below: Annotated[int, typer.Argument(help="Retire every version below this one (rewrap first).")],
    raw: RawOpt = False,
) -> None:
    """Stop versions below BELOW from opening anything; cannot be undone."""
    _ring_command(ctx, "retire_key_versions", below, raw=raw)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
