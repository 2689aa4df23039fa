"""``atelier files upload|list|show|delete|download``: files in your tenancy (``/v1/files``).

A client of the HTTP API like the rest of the CLI, so the caller's key and the tenancy's
policies on ``files`` apply. Output is an aligned table; ``--json`` prints the API's JSON.
``download`` writes the bytes to ``--output`` (``-`` for stdout), by default to the file's
own name in the current directory, and never overwrites a file unless ``--force``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from atelier.cli.common import CompartmentOpt, JsonOpt, client_for, fail, show

files_app = typer.Typer(
    name="files", help="Files in your tenancy: training data and documents, stored encrypted.", no_args_is_help=True
)

FileIdArg = Annotated[str, typer.Argument(help="File id (file_…).")]
PURPOSES = ("fine-tune", "knowledge-base")


def _created(row: dict[str, Any]) -> str | None:
    stamp = row.get("created_at")
    if not isinstance(stamp, int):
        return None
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


COLUMNS = [
    ("ID", "id"), ("FILENAME", "filename"), ("PURPOSE", "purpose"), ("BYTES", "bytes"),
    ("COMPARTMENT", "compartment_id"), ("CREATED", _created),
]  # fmt: skip


def _purpose(value: str | None) -> str | None:
    if value is not None and value not in PURPOSES:
        fail(f"--purpose must be one of: {', '.join(PURPOSES)}")
    return value


@files_app.command("upload")
def upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="The local file to upload.", exists=True, dir_okay=False)],
    purpose: Annotated[str, typer.Option("--purpose", "-p", help="fine-tune or knowledge-base.")] = "fine-tune",
    compartment: CompartmentOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Name to store; default the file's own.")] = None,
    raw: JsonOpt = False,
) -> None:
    """Upload a file; prints its id."""
    _purpose(purpose)
    show(client_for(ctx).files.upload(path, purpose, compartment=compartment, filename=name), COLUMNS, raw)


@files_app.command("list")
def list_(
    ctx: typer.Context,
    purpose: Annotated[str | None, typer.Option("--purpose", "-p", help="Only files of this purpose.")] = None,
    raw: JsonOpt = False,
) -> None:
    """List the files you may see, newest first."""
    show(client_for(ctx).files.list(_purpose(purpose)), COLUMNS, raw)


@files_app.command("show")
def show_file(ctx: typer.Context, file_id: FileIdArg, raw: JsonOpt = False) -> None:
    """Show one file's metadata."""
    show(client_for(ctx).files.get(file_id), COLUMNS, raw)


@files_app.command("delete")
def delete(ctx: typer.Context, file_id: FileIdArg) -> None:
    """Delete a file and its stored bytes."""
    deleted = client_for(ctx).files.delete(file_id)
    typer.echo(f"deleted {deleted.get('id', file_id)}")


@files_app.command("download")
def download(
    ctx: typer.Context,
    file_id: FileIdArg,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Where to write; '-' for stdout; default the file's name.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a file's bytes to disk (or stdout)."""
    client = client_for(ctx)
    if output is None:
        name = Path(str(client.files.get(file_id).get("filename") or "")).name  # never a path from the server
        output = name if name not in ("", ".", "..") else file_id
    if output != "-" and Path(output).exists() and not force:
        fail(f"{output} exists; pass --force to overwrite it")
    data = client.files.content(file_id)
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror}")
    typer.echo(f"wrote {len(data)} bytes to {output}")
