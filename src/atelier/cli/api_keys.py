"""``atelier admin key create|list|rotate|revoke``: API keys, yours or (administrators) any user's.

A client of ``/v1/api-keys``. A raw key is printed once, when it is created or rotated, with
a reminder on stderr to store it; listings never show secrets. A user is named by id or name.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from atelier.cli.common import Column, JsonOpt, client_for, format_table, print_json, resolve_ref, show

key_app = typer.Typer(help="API keys: yours, or (administrators) any user's.", no_args_is_help=True)

KeyIdArg = Annotated[str, typer.Argument(help="Key id (key_…).")]
KEY_COLUMNS: list[Column] = [
    ("ID", "id"), ("NAME", "name"), ("USER", "user_id"), ("EXPIRES", "expires_at"),
    ("LAST USED", "last_used_at"), ("REVOKED", "revoked_at"),
]


def _print_new_key(created: dict[str, Any], raw: bool) -> None:
    if raw:
        print_json(created)
        return
    typer.echo(format_table([created], KEY_COLUMNS))
    typer.echo(f"key: {created['key']}")
    grace = created.get("previous_secret_expires_at")
    if grace:
        typer.echo(f"the previous secret works until {grace}", err=True)
    typer.echo("Store the key now: it is never shown again.", err=True)


@key_app.command("create")
def key_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Label shown in listings.")],
    user: Annotated[str | None, typer.Option("--user", "-u", help="User id or name (default: yourself).")] = None,
    expires_in_days: Annotated[
        int | None, typer.Option("--expires-in-days", help="Lifetime in days, 1 to 3650 (default 90).")
    ] = None,
    raw: JsonOpt = False,
) -> None:
    """Create an API key; prints the key once."""
    client = client_for(ctx)
    user_id = resolve_ref(user, "usr", client.users.list, "user") if user is not None else None
    _print_new_key(client.api_keys.create(name, user_id=user_id, expires_in_days=expires_in_days), raw)


@key_app.command("list")
def key_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's keys (id or name).")] = None,
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    raw: JsonOpt = False,
) -> None:
    """List the API keys you may manage (never their secrets)."""
    client = client_for(ctx)
    user_id = resolve_ref(user, "usr", client.users.list, "user") if user is not None else None
    show(client.api_keys.list(user_id=user_id, include_revoked=include_revoked), KEY_COLUMNS, raw)


@key_app.command("rotate")
def key_rotate(
    ctx: typer.Context,
    key_id: KeyIdArg,
    grace_seconds: Annotated[
        int | None, typer.Option("--grace-seconds", help="How long the old secret keeps working (default 86400).")
    ] = None,
    raw: JsonOpt = False,
) -> None:
    """Give a key a new secret (printed once); the old one works for the grace period."""
    _print_new_key(client_for(ctx).api_keys.rotate(key_id, grace_seconds=grace_seconds), raw)


@key_app.command("revoke")
def key_revoke(ctx: typer.Context, key_id: KeyIdArg) -> None:
    """Revoke a key for good."""
    revoked = client_for(ctx).api_keys.revoke(key_id)
    typer.echo(f"revoked key {revoked['id']} at {revoked['revoked_at']}")
