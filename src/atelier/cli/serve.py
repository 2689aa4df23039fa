"""``atelier serve``, ``atelier worker`` and ``atelier audit verify``: the commands that run the server side here.

Every other command is a client of the HTTP API. These three run server code in this
process: the API server with its job workers, one job worker, and the audit log's local
verification (it opens the database and the root key named by the settings directly, so
it works with the service stopped). They import ``atelier.api``, ``atelier.jobs``,
``atelier.security`` and ``atelier.store`` inside their bodies only, so the client commands
load no server stack; no other module of ``atelier.cli`` imports the server side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from atelier.cli.common import fail, load_settings


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port to bind (default: 8000).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Database, objects and keys (default: ~/.atelier).")] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="PEM certificate: serve HTTPS.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, readable=True, help="PEM private key of --tls-cert.")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=0, max=64, help="Job workers to run beside the API: processes, or Ray actors with "
                          "ATELIER_JOBS=ray (0: none).")
    ] = 1,
) -> None:
    """Start the HTTP service (OpenAI-compatible API under /v1) on embedded defaults, with job workers."""
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither", param_hint="--tls-cert/--tls-key")
    overrides = {"host": host, "port": port, "data_dir": data_dir}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    try:
        from atelier.api.server import run  # imported here: the client commands need no server stack
    except ModuleNotFoundError as exc:
        typer.echo(f"error: cannot start the server: module {exc.name!r} is missing (reinstall atelier)", err=True)
        raise typer.Exit(1) from None
    try:
        run(settings, tls_cert=tls_cert, tls_key=tls_key, workers=workers)
    except ValueError as exc:  # the TLS files, checked before anything starts
        raise typer.BadParameter(str(exc), param_hint="--tls-cert/--tls-key") from None


def worker(
    data_dir: Annotated[Path | None, typer.Option(help="Data dir of the service (default: ~/.atelier).")] = None,
    worker_id: Annotated[str | None, typer.Option(help="Lease owner name (default: host-pid-random).")] = None,
    lease_seconds: Annotated[
        float, typer.Option(min=0.5, max=3600, help="A job whose worker is silent this long is resumed elsewhere.")
    ] = 30.0,
    poll_seconds: Annotated[
        float, typer.Option(min=0.05, max=60, help="Queue polling and cancel-check interval.")
    ] = 1.0,
    parent_pid: Annotated[int | None, typer.Option(hidden=True, help="Stop when this process is gone.")] = None,
) -> None:
    """Run queued jobs (fine-tuning...) until SIGTERM or Ctrl+C; `serve` starts one by default."""
    settings = load_settings(**({"data_dir": data_dir} if data_dir is not None else {}))
    from atelier.jobs.handlers import build_handlers  # imported here: the client commands need no database
    from atelier.jobs.worker import run_worker_process

    raise typer.Exit(run_worker_process(settings, worker_id=worker_id, lease_seconds=lease_seconds,
                                        poll_seconds=poll_seconds, parent_pid=parent_pid, handlers=build_handlers))


def verify_audit_log(
    data_dir: Annotated[Path | None, typer.Option(help="Data dir of the service (default: ATELIER_DATA_DIR).")] = None,
    raw: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the hash chain, signed checkpoints and head file (locally; the service may be stopped).

    Exit status 0 when the log is intact, 1 with the problems listed when it is not.
    """
    from atelier.errors import AtelierError
    from atelier.security.audit import AuditLog  # imported here: the client commands need no database
    from atelier.security.crypto import RootKey
    from atelier.store.db import Database

    settings = load_settings(**({"data_dir": data_dir} if data_dir is not None else {}))
    database = settings.db_url.removeprefix("sqlite:///") if settings.db_url.startswith("sqlite:///") else None
    if database is not None and not Path(database).exists():
        fail(f"no database at {database} (set ATELIER_DATA_DIR or --data-dir to the service's data dir)")
    if settings.root_key is None and not settings.root_key_path.exists():
        fail(f"no root key at {settings.root_key_path} (set ATELIER_ROOT_KEY or ATELIER_ROOT_KEY_FILE)")
    db = Database(settings.db_url)
    try:
        log = AuditLog.for_service(db, RootKey.from_settings(settings), settings.data_path)
        report = log.verify()
    except AtelierError as exc:
        fail(exc.message)
    except Exception as exc:  # noqa: BLE001 - e.g. a database without the audit tables
        fail(f"cannot read the audit log: {type(exc).__name__}: {exc}")
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
