"""``atelier console``: the research assistant (``atelier.console``, a Streamlit app) in a browser.

The command runs ``streamlit run`` on the console's script, headless (it opens no browser
and asks nothing), on ``--host``/``--port``. The console is a client of the HTTP API like
the rest of the CLI: it sends its requests to ``--url`` (or ``ATELIER_URL``) with the key
of ``ATELIER_API_KEY`` or one typed in its sidebar.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from atelier.cli.common import State
from atelier.console import APP_PATH
from atelier.settings import Settings


def streamlit_command(host: str, port: int, url: str | None = None) -> list[str]:
    """The ``streamlit run`` command line of the console (no telemetry, no file watcher, no browser)."""
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--global.developmentMode", "false",
    ]  # fmt: skip
    if url:
        cmd += ["--", "--url", url]
    return cmd


def console(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address the console listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port the console listens on.")] = 8501,
) -> None:
    """Start the research assistant (web console) on http://HOST:PORT; it talks to the API at --url."""
    try:
        import streamlit  # noqa: F401  (only checks that it is installed)
    except ModuleNotFoundError:
        typer.echo("error: the console needs streamlit (reinstall atelier: pip install -e .)", err=True)
        raise typer.Exit(1) from None
    url = ctx.ensure_object(State).url
    cmd = streamlit_command(host, port, url)
    typer.echo(f"Atelier console on http://{host}:{port} (API: {url or Settings().url})", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)  # Streamlit replaces this process: signals reach it directly
