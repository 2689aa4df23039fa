"""``atelier admin …``: tenancies, compartments, users, groups, API keys and policies.

Every command is a client of the HTTP API (``atelier.client``), so the caller's key and
the tenancy's policies apply: the operator key creates tenancies, a tenancy administrator's
key manages the rest. Output is an aligned table; ``--json`` prints the API's JSON. Users,
groups and policies may be named by id or by name, compartments by id or path (``eng:ml``).
A raw API key is printed once, when it is created or rotated.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

admin_app = typer.Typer(
    name="admin",
    help="Administer tenancies, compartments, users, groups, API keys and policies.",
    no_args_is_help=True,
)
tenancy_app = typer.Typer(help="Tenancies (operator key).", no_args_is_help=True)
compartment_app = typer.Typer(help="Compartments of your tenancy.", no_args_is_help=True)
user_app = typer.Typer(help="Users of your tenancy.", no_args_is_help=True)
group_app = typer.Typer(help="Groups of your tenancy and their members.", no_args_is_help=True)
key_app = typer.Typer(help="API keys: yours, or (administrators) any user's.", no_args_is_help=True)
policy_app = typer.Typer(help="Policies of your tenancy.", no_args_is_help=True)
for _sub, _name in (
    (tenancy_app, "tenancy"), (compartment_app, "compartment"), (user_app, "user"),
    (group_app, "group"), (key_app, "key"), (policy_app, "policy"),
):
    admin_app.add_typer(_sub, name=_name)

RawOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]
DescriptionOpt = Annotated[str | None, typer.Option("--description", "-d", help="Free text (up to 400 characters).")]
Column = tuple[str, str | Callable[[dict[str, Any]], Any]]
NOUNS = {"cmp": "compartment", "usr": "user", "grp": "group", "pol": "policy"}


def _cli():  # noqa: ANN202 - atelier.cli imports this module
    from atelier import cli

    return cli


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _call(ctx: typer.Context, method: str, *args: Any, **kwargs: Any) -> Any:
    """``client.<method>(*args, **kwargs)`` with the CLI's error handling (one line, exit 1)."""
    cli = _cli()
    client, _ = cli._client(ctx)
    with cli._api_errors():
        return getattr(client, method)(*args, **kwargs)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A plain aligned table: one column per ``(header, field or function)``; "-" for empty cells."""

    def cell(row: dict[str, Any], pick: str | Callable[[dict[str, Any]], Any]) -> str:
        value = pick(row) if callable(pick) else row.get(pick)
        if isinstance(value, list):
            value = ",".join(map(str, value))
        if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":  # ISO time: to the second
            value = value[:19].replace("T", " ")
        return "-" if value in (None, "", []) else str(value)

    header = [h for h, _ in columns]
    body = [[cell(row, pick) for _, pick in columns] for row in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *body])


def _show(data: Any, columns: Sequence[Column], raw: bool) -> None:
    if raw:
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(format_table(data if isinstance(data, list) else [data], columns))


def _resolve(ctx: typer.Context, ref: str, prefix: str, lister: str, field: str = "name") -> str:
    """The id of an object named by ``ref``: an id (``<prefix>_…``) as is, else the one whose
    ``field`` equals ``ref`` among ``client.<lister>()``."""
    if ref.startswith(prefix + "_"):
        return ref
    matches = [o["id"] for o in _call(ctx, lister) if o.get(field) == ref]
    if not matches:
        _fail(f"no {NOUNS[prefix]} {ref!r} that you may see (name it by id or {field})")
    return matches[0]


def read_text_arg(value: str) -> str:
    """``-``: stdin; an existing file's path: its text; anything else: the text itself."""
    if value == "-":
        return sys.stdin.read()
    path = Path(value)
    try:
        if len(value) < 4096 and "\n" not in value and path.is_file():
            return path.read_text(encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot read {value}: {exc.strerror}")
    return value


# --- tenancies ----------------------------------------------------------------------------

TENANCY_COLUMNS: list[Column] = [("ID", "id"), ("NAME", "name"), ("CREATED", "created_at")]


@tenancy_app.command("create")
def tenancy_create(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Unique tenancy name.")], raw: RawOpt = False
) -> None:
    """Create a tenancy; prints its first administrator key, once."""
    created = _call(ctx, "create_tenancy", name)
    if raw:
        typer.echo(json.dumps(created, indent=2))
        return
    typer.echo(f"tenancy {created['name']} ({created['id']})")
    typer.echo(f"admin user: {created['admin_user_id']}")
    typer.echo(f"admin key:  {created['admin_key']}")
    typer.echo("Store the admin key now: it is never shown again.", err=True)


@tenancy_app.command("list")
def tenancy_list(ctx: typer.Context, raw: RawOpt = False) -> None:
    """List every tenancy."""
    _show(_call(ctx, "tenancies"), TENANCY_COLUMNS, raw)


# --- compartments ------------------------------------------------------------------------

COMPARTMENT_COLUMNS: list[Column] = [("ID", "id"), ("PATH", "path"), ("DESCRIPTION", "description")]


@compartment_app.command("create")
def compartment_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name (letters, digits, _ . -).")],
    parent: Annotated[str | None, typer.Option("--parent", "-p", help="Parent: id or path (eng:ml).")] = None,
    description: DescriptionOpt = None,
    raw: RawOpt = False,
) -> None:
    """Create a compartment (at the root, or under --parent)."""
    _show(_call(ctx, "create_compartment", name, parent=parent, description=description), COMPARTMENT_COLUMNS, raw)


@compartment_app.command("list")
def compartment_list(ctx: typer.Context, raw: RawOpt = False) -> None:
    """List compartments with their paths."""
    _show(_call(ctx, "compartments"), COMPARTMENT_COLUMNS, raw)


@compartment_app.command("delete")
def compartment_delete(
    ctx: typer.Context, compartment: Annotated[str, typer.Argument(help="Id or path (eng:ml).")]
) -> None:
    """Delete an empty compartment."""
    compartment_id = _resolve(ctx, compartment, "cmp", "compartments", field="path")
    _call(ctx, "delete_compartment", compartment_id)
    typer.echo(f"deleted compartment {compartment_id}")


# --- users -------------------------------------------------------------------------------

USER_COLUMNS: list[Column] = [("ID", "id"), ("NAME", "name"), ("GROUPS", "groups"), ("DESCRIPTION", "description")]


@user_app.command("create")
def user_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique name (an e-mail address fits).")],
    description: DescriptionOpt = None,
    raw: RawOpt = False,
) -> None:
    """Create a user (then a key for it: atelier admin key create NAME --user USER)."""
    _show(_call(ctx, "create_user", name, description=description), USER_COLUMNS, raw)


@user_app.command("list")
def user_list(ctx: typer.Context, raw: RawOpt = False) -> None:
    """List users with their groups."""
    _show(_call(ctx, "users"), USER_COLUMNS, raw)


@user_app.command("delete")
def user_delete(ctx: typer.Context, user: Annotated[str, typer.Argument(help="Id or name.")]) -> None:
    """Delete a user; its API keys are revoked."""
    deleted = _call(ctx, "delete_user", _resolve(ctx, user, "usr", "users"))
    revoked = deleted.get("revoked_keys") or []
    typer.echo(f"deleted user {deleted['id']}" + (f"; revoked keys: {', '.join(revoked)}" if revoked else ""))


# --- groups ------------------------------------------------------------------------------

GROUP_COLUMNS: list[Column] = [
    ("ID", "id"), ("NAME", "name"), ("MEMBERS", lambda g: [m["name"] for m in g.get("members") or []]),
    ("DESCRIPTION", "description"),
]


@group_app.command("create")
def group_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique name, as policies name it.")],
    description: DescriptionOpt = None,
    raw: RawOpt = False,
) -> None:
    """Create a group."""
    _show(_call(ctx, "create_group", name, description=description), GROUP_COLUMNS, raw)


@group_app.command("list")
def group_list(ctx: typer.Context, raw: RawOpt = False) -> None:
    """List groups with their members."""
    _show(_call(ctx, "groups"), GROUP_COLUMNS, raw)


@group_app.command("add-member")
def group_add_member(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="Group id or name.")],
    user: Annotated[str, typer.Argument(help="User id or name.")],
    raw: RawOpt = False,
) -> None:
    """Put a user in a group."""
    group_id, user_id = _resolve(ctx, group, "grp", "groups"), _resolve(ctx, user, "usr", "users")
    _show(_call(ctx, "add_group_member", group_id, user_id), GROUP_COLUMNS, raw)


@group_app.command("remove-member")
def group_remove_member(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="Group id or name.")],
    user: Annotated[str, typer.Argument(help="User id or name.")],
    raw: RawOpt = False,
) -> None:
    """Take a user out of a group."""
    group_id, user_id = _resolve(ctx, group, "grp", "groups"), _resolve(ctx, user, "usr", "users")
    _show(_call(ctx, "remove_group_member", group_id, user_id), GROUP_COLUMNS, raw)


# --- API keys ----------------------------------------------------------------------------

KEY_COLUMNS: list[Column] = [
    ("ID", "id"), ("NAME", "name"), ("USER", "user_id"), ("EXPIRES", "expires_at"),
    ("LAST USED", "last_used_at"), ("REVOKED", "revoked_at"),
]


def _print_new_key(created: dict[str, Any], raw: bool) -> None:
    if raw:
        typer.echo(json.dumps(created, indent=2))
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
    raw: RawOpt = False,
) -> None:
    """Create an API key; prints the key once."""
    user_id = _resolve(ctx, user, "usr", "users") if user is not None else None
    _print_new_key(_call(ctx, "create_api_key", name, user_id=user_id, expires_in_days=expires_in_days), raw)


@key_app.command("list")
def key_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's keys (id or name).")] = None,
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    raw: RawOpt = False,
) -> None:
    """List the API keys you may manage (never their secrets)."""
    user_id = _resolve(ctx, user, "usr", "users") if user is not None else None
    _show(_call(ctx, "api_keys", user_id=user_id, include_revoked=include_revoked), KEY_COLUMNS, raw)


@key_app.command("rotate")
def key_rotate(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="Key id (key_…).")],
    grace_seconds: Annotated[
        int | None, typer.Option("--grace-seconds", help="How long the old secret keeps working (default 86400).")
    ] = None,
    raw: RawOpt = False,
) -> None:
    """Give a key a new secret (printed once); the old one works for the grace period."""
    _print_new_key(_call(ctx, "rotate_api_key", key_id, grace_seconds=grace_seconds), raw)


@key_app.command("revoke")
def key_revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="Key id (key_…).")]) -> None:
    """Revoke a key for good."""
    revoked = _call(ctx, "revoke_api_key", key_id)
    typer.echo(f"revoked key {revoked['id']} at {revoked['revoked_at']}")


# --- policies ----------------------------------------------------------------------------

POLICY_COLUMNS: list[Column] = [
    ("ID", "id"), ("NAME", "name"), ("PROTECTED", lambda p: "yes" if p.get("protected") else "no"),
    ("STATEMENTS", lambda p: sum(1 for ln in p["statements"].splitlines() if ln.strip() and ln.lstrip()[0] != "#")),
    ("DESCRIPTION", "description"),
]


@policy_app.command("create")
def policy_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique policy name.")],
    statements: Annotated[
        str, typer.Option("--statements", "-s", help="A file of statements, '-' for stdin, or the text itself.")
    ],
    description: DescriptionOpt = None,
    raw: RawOpt = False,
) -> None:
    """Create a policy; a syntax error names its line and column."""
    _show(_call(ctx, "create_policy", name, read_text_arg(statements), description=description), POLICY_COLUMNS, raw)


@policy_app.command("list")
def policy_list(ctx: typer.Context, raw: RawOpt = False) -> None:
    """List the policies you may see."""
    _show(_call(ctx, "policies"), POLICY_COLUMNS, raw)


@policy_app.command("get")
def policy_get(
    ctx: typer.Context, policy: Annotated[str, typer.Argument(help="Id or name.")], raw: RawOpt = False
) -> None:
    """Show a policy with its statements."""
    found = _call(ctx, "policy", _resolve(ctx, policy, "pol", "policies"))
    if raw:
        typer.echo(json.dumps(found, indent=2))
        return
    typer.echo(format_table([found], POLICY_COLUMNS))
    typer.echo()
    typer.echo(found["statements"].rstrip("\n"))


@policy_app.command("delete")
def policy_delete(ctx: typer.Context, policy: Annotated[str, typer.Argument(help="Id or name.")]) -> None:
    """Delete a policy."""
    deleted = _call(ctx, "delete_policy", _resolve(ctx, policy, "pol", "policies"))
    typer.echo(f"deleted policy {deleted['id']}")
