"""``atelier keys show|rotate|rewrap|retire``: your tenancy's key ring, through the API.

The key ring holds the versions of the key that wraps every stored object's data key;
these commands show its versions and states (never key material), add a version, rewrap
stored objects under the current one, and retire old ones.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from atelier.cli.common import JsonOpt, client_for

keys_app = typer.Typer(
    name="keys",
    help="Your tenancy's key ring (encryption of stored objects): show, rotate, rewrap, retire.",
    no_args_is_help=True,
)


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


def _print(result: dict[str, Any], raw: bool) -> None:
    if raw:
        typer.echo(json.dumps(result))
    elif "rewrapped" in result:
        typer.echo(f"rewrapped {result['rewrapped']} object(s) to key version {result['current_version']}")
    else:
        typer.echo(format_ring(result))


@keys_app.command("show")
def show(ctx: typer.Context, raw: JsonOpt = False) -> None:
    """Show the key ring: versions and their states (never key material)."""
    _print(client_for(ctx).key_ring.get(), raw)


@keys_app.command("rotate")
def rotate(ctx: typer.Context, raw: JsonOpt = False) -> None:
    """Add a key version; new objects use it, old ones still open."""
    _print(client_for(ctx).key_ring.rotate(), raw)


@keys_app.command("rewrap")
def rewrap(ctx: typer.Context, raw: JsonOpt = False) -> None:
    """Re-wrap every stored object's data key under the current version (payloads untouched)."""
    _print(client_for(ctx).key_ring.rewrap(), raw)


@keys_app.command("retire")
def retire(
    ctx: typer.Context,
    below: Annotated[int, typer.Argument(help="Retire every version below this one (rewrap first).")],
    raw: JsonOpt = False,
) -> None:
    """Stop versions below BELOW from opening anything; cannot be undone."""
    _print(client_for(ctx).key_ring.retire(below), raw)
