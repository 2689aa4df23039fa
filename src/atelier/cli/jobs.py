"""``atelier jobs list|show|events|logs|cancel``: fine-tuning jobs, through ``/v1/fine_tuning/jobs``.

Also the jobs' table columns and the progress line drawn from a metrics event, which
``atelier finetune --wait`` uses to follow the job it started.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Annotated, Any

import typer

from atelier.cli.common import JsonOpt, client_for, show

jobs_app = typer.Typer(name="jobs", help="Fine-tuning jobs: list, show, events, logs, cancel.", no_args_is_help=True)

JobArg = Annotated[str, typer.Argument(help="Job id (job_…).")]
BAR_WIDTH = 30


def _method(row: dict[str, Any]) -> Any:
    return (row.get("training_config") or {}).get("type")


JOB_COLUMNS = [
    ("ID", "id"), ("STATUS", "status"), ("MODEL", "model"), ("METHOD", _method),
    ("FINE_TUNED_MODEL", "fine_tuned_model"), ("TRAINED_TOKENS", "trained_tokens"), ("WAITING", "waiting_reason"),
]  # fmt: skip
EVENT_COLUMNS = [("ID", "id"), ("LEVEL", "level"), ("TYPE", "type"), ("MESSAGE", "message")]


def progress_line(metrics: dict[str, Any]) -> str:
    """``[#####.....] step 3/10  loss 1.2345  valid 1.3000  acc 0.4500`` from a metrics event's data."""
    step, total = metrics.get("step") or 0, metrics.get("total_steps") or 0
    done = int(BAR_WIDTH * step / total) if total else 0
    parts = [f"[{'#' * done}{'.' * (BAR_WIDTH - done)}] step {step}/{total}"]
    for label, key in (("loss", "train_loss"), ("valid", "valid_loss"), ("acc", "valid_token_accuracy")):
        if isinstance(metrics.get(key), (int, float)):
            parts.append(f"{label} {metrics[key]:.4f}")
    return "  ".join(parts)


@jobs_app.command("list")
def list_jobs(ctx: typer.Context, limit: Annotated[int, typer.Option(help="Most jobs.")] = 20,
              raw: JsonOpt = False) -> None:
    """Your fine-tuning jobs, newest first."""
    show(client_for(ctx).fine_tuning.jobs.list(limit), JOB_COLUMNS, raw)


@jobs_app.command("show")
def show_job(ctx: typer.Context, job_id: JobArg, raw: JsonOpt = False) -> None:
    """One job (its error, if it failed)."""
    job = client_for(ctx).fine_tuning.jobs.get(job_id)
    show(job, JOB_COLUMNS, raw)
    if not raw and job.get("error"):
        typer.echo(f"error: {job['error']['message']}")


@jobs_app.command("events")
def job_events(ctx: typer.Context, job_id: JobArg, raw: JsonOpt = False) -> None:
    """The job's events, oldest first (metrics, checkpoints, state changes)."""
    show(list(reversed(client_for(ctx).fine_tuning.jobs.events(job_id))), EVENT_COLUMNS, raw)


@jobs_app.command("logs")
def job_logs(
    ctx: typer.Context, job_id: JobArg,
    tensorboard: Annotated[Path, typer.Option("--tensorboard", help="Write the run's TensorBoard event files here.",
                                              file_okay=False)],
) -> None:
    """Fetch the job's metrics as TensorBoard event files (``tensorboard --logdir DIR`` shows them)."""
    archive = client_for(ctx).fine_tuning.jobs.tensorboard(job_id)
    tensorboard.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(tensorboard, filter="data")  # members are checked: nothing lands outside DIR
    typer.echo(f"{tensorboard / job_id}: run `tensorboard --logdir {tensorboard}`")


@jobs_app.command("cancel")
def cancel_job(ctx: typer.Context, job_id: JobArg, raw: JsonOpt = False) -> None:
    """Cancel a job (at once when waiting, within seconds when running)."""
    show(client_for(ctx).fine_tuning.jobs.cancel(job_id), JOB_COLUMNS, raw)
