"""``atelier admin …``: tenancies, compartments, users, groups and policies; API keys and limits below.

Every command is a client of the HTTP API, so the caller's key and the tenancy's policies
apply: the operator key creates tenancies, a tenancy administrator's key manages the rest.
Output is an aligned table; ``--json`` prints the API's JSON. Users, groups and policies may
be named by id or by name, compartments by id or path (``eng:ml``). This module assembles
``admin_app`` with ``admin key …`` (``atelier.cli.api_keys``) and ``admin limits …``
(``atelier.cli.limits``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from atelier.cli.api_keys import key_app
from atelier.cli.common import (
    Column,
    DescriptionOpt,
    JsonOpt,
    client_for,
    fail,
    format_table,
    print_json,
    resolve_ref,
    show,
)
from atelier.cli.limits import limits_app
from atelier.client import AtelierClient

admin_app = typer.Typer(
    name="admin",
    help="Administer tenancies, compartments, users, groups, API keys and policies.",
    no_args_is_help=True,
)
tenancy_app = typer.Typer(help="Tenancies (operator key).", no_args_is_help=True)
compartment_app = typer.Typer(help="Compartments of your tenancy.", no_args_is_help=True)
user_app = typer.Typer(help="Users of your tenancy.", no_args_is_help=True)
group_app = typer.Typer(help="Groups of your tenancy and their members.", no_args_is_help=True)
policy_app = typer.Typer(help="Policies of your tenancy.", no_args_is_help=True)
for _sub, _name in (
    (tenancy_app, "tenancy"), (compartment_app, "compartment"), (user_app, "user"),
    (group_app, "group"), (key_app, "key"), (policy_app, "policy"), (limits_app, "limits"),
):
    admin_app.add_typer(_sub, name=_name)

UserArg = Annotated[str, typer.Argument(help="User id or name.")]
GroupArg = Annotated[str, typer.Argument(help="Group id or name.")]
PolicyArg = Annotated[str, typer.Argument(help="Id or name.")]


def read_text_arg(value: str) -> str:
    """``-``: stdin; an existing file's path: its text; anything else: the text itself."""
    if value == "-":
        return sys.stdin.read()
    path = Path(value)
    try:
        if len(value) < 4096 and "\n" not in value and path.is_file():
            return path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {value}: {exc.strerror}")
    return value


# --- tenancies ----------------------------------------------------------------------------

TENANCY_COLUMNS: list[Column] = [("ID", "id"), ("NAME", "name"), ("CREATED", "created_at")]


@tenancy_app.command("create")
def tenancy_create(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Unique tenancy name.")], raw: JsonOpt = False
) -> None:
    """Create a tenancy; prints its first administrator key, once."""
    created = client_for(ctx).tenancies.create(name)
    if raw:
        print_json(created)
        return
    typer.echo(f"tenancy {created['name']} ({created['id']})")
    typer.echo(f"admin user: {created['admin_user_id']}")
    typer.echo(f"admin key:  {created['admin_key']}")
    typer.echo("Store the admin key now: it is never shown again.", err=True)


@tenancy_app.command("list")
def tenancy_list(ctx: typer.Context, raw: JsonOpt = False) -> None:
    """List every tenancy."""
    show(client_for(ctx).tenancies.list(), TENANCY_COLUMNS, raw)


# --- compartments ------------------------------------------------------------------------

COMPARTMENT_COLUMNS: list[Column] = [("ID", "id"), ("PATH", "path"), ("DESCRIPTION", "description")]


@compartment_app.command("create")
def compartment_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name (letters, digits, _ . -).")],
    parent: Annotated[str | None, typer.Option("--parent", "-p", help="Parent: id or path (eng:ml).")] = None,
    description: DescriptionOpt = None,
    raw: JsonOpt = False,
) -> None:
    """Create a compartment (at the root, or under --parent)."""
    show(client_for(ctx).compartments.create(name, description, parent=parent), COMPARTMENT_COLUMNS, raw)


@compartment_app.command("list")
def compartment_list(ctx: typer.Context, raw: JsonOpt = False) -> None:
    """List compartments with their paths."""
    show(client_for(ctx).compartments.list(), COMPARTMENT_COLUMNS, raw)


@compartment_app.command("delete")
def compartment_delete(
    ctx: typer.Context, compartment: Annotated[str, typer.Argument(help="Id or path (eng:ml).")]
) -> None:
    """Delete an empty compartment."""
    client = client_for(ctx)
    compartment_id = resolve_ref(compartment, "cmp", client.compartments.list, "compartment", field="path")
    client.compartments.delete(compartment_id)
    typer.echo(f"deleted compartment {compartment_id}")


# --- users -------------------------------------------------------------------------------

USER_COLUMNS: list[Column] = [("ID", "id"), ("NAME", "name"), ("GROUPS", "groups"), ("DESCRIPTION", "description")]


@user_app.command("create")
def user_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Unique name (an e-mail address fits).")],
    description: DescriptionOpt = None,
    raw: JsonOpt = False,
) -> None:
    """Create a user (then a key for it: atelier admin key create NAME --user USER)."""
    show(client_for(ctx).users.create(name, description), USER_COLUMNS, raw)


@user_app.command("list")
def user_list(ctx: typer.Context, raw: JsonOpt = False) -> None:
    """List users with their groups."""
    show(client_for(ctx).users.list(), USER_COLUMNS, raw)


@user_app.command("delete")
def user_delete(ctx: typer.Context, user: Annotated[str, typer.Argument(help="Id or name.")]) -> None:
    """Delete a user; its API keys are revoked."""
    client = client_for(ctx)
    deleted = client.users.delete(resolve_ref(user, "usr", client.users.list, "user"))
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
    raw: JsonOpt = False,
) -> None:
    """Create a group."""
    show(client_for(ctx).groups.create(name, description), GROUP_COLUMNS, raw)


@group_app.command("list")
def group_list(ctx: typer.Context, raw: JsonOpt = False) -> None:
    """List groups with their members."""
    show(client_for(ctx).groups.list(), GROUP_COLUMNS, raw)


def _group_and_user(client: AtelierClient, group: str, user: str) -> tuple[str, str]:
    return resolve_ref(group, "grp", client.groups.list, "group"), resolve_ref(user, "usr", client.users.list, "user")


@group_app.command("add-member")
def group_add_member(ctx: typer.Context, group: GroupArg, user: UserArg, raw: JsonOpt = False) -> None:
    """Put a user in a group."""
    client = client_for(ctx)
    show(client.groups.add_member(*_group_and_user(client, group, user)), GROUP_COLUMNS, raw)


@group_app.command("remove-member")
def group_remove_member(ctx: typer.Context, group: GroupArg, user: UserArg, raw: JsonOpt = False) -> None:
    """Take a user out of a group."""
    client = client_for(ctx)
    show(client.groups.remove_member(*_group_and_user(client, group, user)), GROUP_COLUMNS, raw)


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
    raw: JsonOpt = False,
) -> None:
    """Create a policy; a syntax error names its line and column."""
    created = client_for(ctx).policies.create(name, read_text_arg(statements), description=description)
    show(created, POLICY_COLUMNS, raw)


@policy_app.command("list")
def policy_list(ctx: typer.Context, raw: JsonOpt = False) -> None:
    """List the policies you may see."""
    show(client_for(ctx).policies.list(), POLICY_COLUMNS, raw)


@policy_app.command("get")
def policy_get(ctx: typer.Context, policy: PolicyArg, raw: JsonOpt = False) -> None:
    """Show a policy with its statements."""
    client = client_for(ctx)
    found = client.policies.get(resolve_ref(policy, "pol", client.policies.list, "policy"))
    if raw:
        print_json(found)
        return
    typer.echo(format_table([found], POLICY_COLUMNS))
    typer.echo()
    typer.echo(found["statements"].rstrip("\n"))


@policy_app.command("delete")
def policy_delete(ctx: typer.Context, policy: PolicyArg) -> None:
    """Delete a policy."""
    client = client_for(ctx)
    deleted = client.policies.delete(resolve_ref(policy, "pol", client.policies.list, "policy"))
    typer.echo(f"deleted policy {deleted['id']}")
