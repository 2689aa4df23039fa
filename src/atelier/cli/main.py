"""The ``atelier`` root command: its options (``--url``, ``--version``) and every command group.

``serve``, ``worker`` and ``audit verify`` start or read the service here (``atelier.cli.serve``);
every other command is a client of its HTTP API (through ``atelier.client``), so keys,
policies and audit apply. Configuration: ``ATELIER_URL`` (or ``--url``) and
``ATELIER_API_KEY``; without a key, the administrator key in ``<data_dir>/admin.key`` is used
when it exists. API errors print ``error: <message> (param: <field>)`` to stderr and exit 1,
without a traceback (``atelier.cli.common.ErrorHandlingGroup``).

This is the only module that assembles the command modules; none of them imports it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from atelier import __version__
from atelier.cli.admin import admin_app
from atelier.cli.audit import audit_app
from atelier.cli.clusters import cluster_app
from atelier.cli.common import ErrorHandlingGroup, State
from atelier.cli.console import console
from atelier.cli.costs import cost_app
from atelier.cli.endpoints import endpoint_app
from atelier.cli.files import files_app
from atelier.cli.evaluate import evaluate
from atelier.cli.finetune import finetune
from atelier.cli.inference import chat, complete, embed, health, tokenize
from atelier.cli.jobs import jobs_app
from atelier.cli.kb import kb_app
from atelier.cli.keys import keys_app
from atelier.cli.models import models_app
from atelier.cli.serve import serve, worker

app = typer.Typer(
    name="atelier",
    cls=ErrorHandlingGroup,
    help="Atelier: a self-hosted generative-AI service (chat, embeddings, RAG, fine-tuning).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals would print the API key
)


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="Server URL (default: ATELIER_URL or http://127.0.0.1:8000).")
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Atelier: chat, embeddings, RAG and fine-tuning on your own machine."""
    if version:
        typer.echo(f"atelier {__version__}")
        raise typer.Exit()
    state = ctx.ensure_object(State)
    if url:
        state.url = url


app.command("console")(console)  # atelier console [--host --port]: the research assistant (Streamlit)
app.command("finetune")(finetune)  # atelier finetune --model --data --method [--wait]
app.command("eval")(evaluate)  # atelier eval --model --data [--k-shot K --examples FILE]
for _command in (serve, worker, chat, complete, embed, tokenize, health):
    app.command()(_command)
for _group in (
    audit_app,  # atelier audit verify|list
    keys_app,  # atelier keys show|rotate|rewrap|retire
    admin_app,  # atelier admin tenancy|compartment|user|group|key|policy|limits …
    files_app,  # atelier files upload|list|show|delete|download
    kb_app,  # atelier kb create|add|list|query|ask|delete
    jobs_app,  # atelier jobs list|show|events|cancel
    models_app,  # atelier models [export ID DIR]
    cluster_app,  # atelier cluster create|list|get|update|delete
    endpoint_app,  # atelier endpoint create|list|get|update|delete
    cost_app,  # atelier cost estimate|metered
):
    app.add_typer(_group)
