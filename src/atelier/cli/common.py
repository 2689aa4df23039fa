"""What every ``atelier`` command shares: its client, its tables, its errors.

``State`` is what the root options hand down (``--url``; tests add an ``httpx`` transport);
``client_for`` builds the API client from it and the settings. ``format_table`` is the one
aligned plain table; ``show`` prints rows as that table or as the API's JSON (``--json``).
``fail`` prints ``error: <message>`` and exits 1. ``ErrorHandlingGroup`` is the root group's
class: an ``ApiError`` or an unreachable server anywhere in a command becomes one line on
stderr (``render_error``) and exit status 1, without a traceback. This module imports
neither the commands nor the assembled app.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn

import httpx
import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from atelier.client import ApiError, AtelierClient, ServerUnreachable
from atelier.settings import Settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]
DescriptionOpt = Annotated[str | None, typer.Option("--description", "-d", help="Free text (up to 400 characters).")]
CompartmentOpt = Annotated[
    str | None, typer.Option("--compartment", "-c", help="Compartment id or path (eng:ml); default the root.")
]
Column = tuple[str, str | Callable[[dict[str, Any]], Any]]
"""A table column: its header, and the row's field or a function of the row."""


@dataclass
class State:
    """What the top-level options hand to the commands (``ctx.obj``)."""

    url: str | None = None
    transport: httpx.BaseTransport | None = None  # tests pass an httpx.MockTransport


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment and ``overrides``; invalid ones end the command.

    Raises:
        typer.Exit: A setting is invalid (``error: invalid settings: ...``, status 1).
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"error: invalid settings: {problems}", err=True)
        raise typer.Exit(1) from None


def client_for(ctx: typer.Context, settings: Settings | None = None) -> AtelierClient:
    """The API client of this invocation: ``--url`` (or ``ATELIER_URL``) and the settings' key.

    Args:
        ctx: The command's context (its ``obj`` is the ``State``).
        settings: Settings already loaded; default loaded here.
    """
    state = ctx.ensure_object(State)
    return AtelierClient.from_env(settings or load_settings(), url=state.url, transport=state.transport)


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` to stderr and exit with status 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def align(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells as left-aligned columns two spaces apart (no trailing spaces)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A plain aligned table: one column per ``(header, field or function)``.

    Lists are joined with commas, ISO times are cut to the second, and empty cells show "-".
    """

    def cell(row: dict[str, Any], pick: str | Callable[[dict[str, Any]], Any]) -> str:
        value = pick(row) if callable(pick) else row.get(pick)
        if isinstance(value, list):
            value = ",".join(map(str, value))
        if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":  # ISO time: to the second
            value = value[:19].replace("T", " ")
        return "-" if value in (None, "", []) else str(value)

    return align([[h for h, _ in columns], *([cell(row, pick) for _, pick in columns] for row in rows)])


def print_json(data: Any, indent: int | None = 2) -> None:
    """Print ``data`` as JSON (the API's own answer, for ``--json``)."""
    typer.echo(json.dumps(data, indent=indent))


def show(data: Any, columns: Sequence[Column], raw: bool) -> None:
    """Print an object or a list of them: as the API's JSON with ``raw``, else as a table."""
    if raw:
        print_json(data)
    else:
        typer.echo(format_table(data if isinstance(data, list) else [data], columns))


def resolve_ref(ref: str, prefix: str, candidates: Callable[[], list[dict[str, Any]]], noun: str,
                field: str = "name") -> str:
    """The id of the object named by ``ref``: an id (``<prefix>_…``) as is, else the one whose ``field`` is ``ref``.

    Args:
        ref: An id or a name (or another unique ``field``, such as a compartment's path).
        prefix: The ids' prefix, without its ``_`` (``usr``, ``dac``...).
        candidates: Lists the objects to search (called only for a name).
        noun: What the object is, for the error.
        field: The field ``ref`` names.

    Raises:
        typer.Exit: No object of that name that the caller may see.
    """
    if ref.startswith(prefix + "_"):
        return ref
    matches = [o["id"] for o in candidates() if o.get(field) == ref]
    if not matches:
        fail(f"no {noun} {ref!r} that you may see (name it by id or {field})")
    return matches[0]


def read_stdin_arg(value: str) -> str:
    """An argument's text: ``-`` reads it from stdin."""
    return sys.stdin.read() if value == "-" else value


def render_error(exc: ApiError) -> str:
    """``error: <message> (param: x)``, plus a hint for a missing key or a busy server."""
    line = f"error: {exc.message}"
    if exc.param:
        line += f" (param: {exc.param})"
    if exc.retry_after is not None:
        line += f" (retry after {exc.retry_after:g}s)"
    if exc.status == 401:
        line += "\nhint: set ATELIER_API_KEY (the administrator key is in <data_dir>/admin.key on the server)"
    return line


@contextmanager
def api_errors() -> Iterator[None]:
    """API errors and an unreachable server become one line on stderr and exit status 1; Ctrl-C exits 130."""
    try:
        yield
    except ApiError as exc:
        typer.echo(render_error(exc), err=True)
        raise typer.Exit(1) from None
    except ServerUnreachable as exc:
        typer.echo(
            f"error: {exc}\nhint: start it with `atelier serve`, or set ATELIER_URL (or --url) to where it runs",
            err=True,
        )
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


class ErrorHandlingGroup(TyperGroup):
    """The root command group: every subcommand runs inside ``api_errors``."""

    def invoke(self, ctx: typer.Context) -> Any:
        """Run the invoked subcommand, rendering the API's errors (see ``api_errors``)."""
        with api_errors():
            return super().invoke(ctx)
