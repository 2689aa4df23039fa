"""``atelier finetune``, ``atelier jobs list|show|events|cancel`` and ``atelier models export``.

In the spirit of Olive's ``finetune``: one command uploads a JSONL file, starts a LoRA or
T-Few job with the given hyperparameters (OCI's names, sent as ``training_config``) and,
with ``--wait``, follows it with a progress bar showing the live loss and token accuracy
from the job's metric events. ``--text-template "<prompt>{question}</prompt>{answer}"``
lets a file with other field names train as prompt/completion (the server applies it).
``models export`` writes a custom model's adapter as a plain PEFT directory
(``adapter_config.json`` + ``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained``
loads anywhere. A client of the HTTP API like the rest of the CLI.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from atelier.cli_admin import _call, _fail, _show

jobs_app = typer.Typer(name="jobs", help="Fine-tuning jobs: list, show, events, cancel.", no_args_is_help=True)

RawOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON.")]
JobArg = Annotated[str, typer.Argument(help="Job id (job_…).")]
FINAL = ("succeeded", "failed", "cancelled")
BAR_WIDTH = 30


def _method(row: dict[str, Any]) -> Any:
    return (row.get("training_config") or {}).get("type")


JOB_COLUMNS = [
    ("ID", "id"), ("STATUS", "status"), ("MODEL", "model"), ("METHOD", _method),
    ("FINE_TUNED_MODEL", "fine_tuned_model"), ("TRAINED_TOKENS", "trained_tokens"),
]  # fmt: skip
EVENT_COLUMNS = [("ID", "id"), ("LEVEL", "level"), ("TYPE", "type"), ("MESSAGE", "message")]


def training_config(method: str, **values: Any) -> dict[str, Any]:
    """The ``training_config`` of a job from the command's options (unset ones left to the server)."""
    if method not in ("lora", "tfew"):
        raise typer.BadParameter("--method must be lora or tfew")
    return {"type": method, **{k: v for k, v in values.items() if v is not None}}


def progress_line(metrics: dict[str, Any]) -> str:
    """``[#####.....] step 3/10  loss 1.2345  valid 1.3000  acc 0.4500`` from a metrics event's data."""
    step, total = metrics.get("step") or 0, metrics.get("total_steps") or 0
    done = int(BAR_WIDTH * step / total) if total else 0
    parts = [f"[{'#' * done}{'.' * (BAR_WIDTH - done)}] step {step}/{total}"]
    for label, key in (("loss", "train_loss"), ("valid", "valid_loss"), ("acc", "valid_token_accuracy")):
        if isinstance(metrics.get(key), (int, float)):
            parts.append(f"{label} {metrics[key]:.4f}")
    return "  ".join(parts)


def follow(ctx: typer.Context, job_id: str, poll_seconds: float = 2.0) -> dict[str, Any]:
    """Poll the job until it ends, drawing the progress bar on stderr; returns the final job."""
    shown = None
    while True:
        job = _call(ctx, "get_fine_tuning_job", job_id)
        events = _call(ctx, "fine_tuning_events", job_id, 50)
        latest = next((e["data"] for e in events if e.get("type") == "metrics" and e.get("data")), None)
        line = progress_line(latest) if latest else f"{job['status']}..."
        if line != shown:
            sys.stderr.write("\r" + line.ljust(100))
            sys.stderr.flush()
            shown = line
        if job["status"] in FINAL:
            sys.stderr.write("\n")
            return job
        time.sleep(poll_seconds)


def finetune(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Base chat model to fine-tune.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Training JSONL.", exists=True, dir_okay=False)],
    method: Annotated[str, typer.Option("--method", help="lora or tfew (T-Few, IA3).")] = "lora",
    text_template: Annotated[
        str | None, typer.Option("--text-template", help="e.g. '<prompt>{question}</prompt>{answer}'.")
    ] = None,
    validation_data: Annotated[
        Path | None, typer.Option("--validation-data", help="Held-out JSONL.", exists=True, dir_okay=False)
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="total_training_epochs (default 3).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="training_batch_size (default 8).")] = None,
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", help="Peak learning rate.")] = None,
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA rank (1-64, default 8).")] = None,
    lora_alpha: Annotated[int | None, typer.Option("--lora-alpha", help="LoRA alpha (default 2r).")] = None,
    lora_dropout: Annotated[float | None, typer.Option("--lora-dropout", help="LoRA dropout.")] = None,
    validation_split: Annotated[float | None, typer.Option("--validation-split", help="Held-out share.")] = None,
    early_stopping_patience: Annotated[int | None, typer.Option("--early-stopping-patience")] = None,
    log_interval: Annotated[int | None, typer.Option("--log-interval", help="Steps between metric events.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Cap on optimizer steps.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    suffix: Annotated[str | None, typer.Option("--suffix", help="Added to the custom model's name.")] = None,
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="Fine-tuning cluster (dac_…); default any with free units.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends.")] = False,
    raw: RawOpt = False,
) -> None:
    """Upload a JSONL file and fine-tune a base model on it (LoRA or T-Few)."""
    config = training_config(
        method, text_template=text_template, total_training_epochs=epochs, training_batch_size=batch_size,
        learning_rate=learning_rate, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        validation_split=validation_split, early_stopping_patience=early_stopping_patience,
        log_model_metrics_interval_in_steps=log_interval, max_steps=max_steps, seed=seed,
    )  # fmt: skip
    training_file = _call(ctx, "upload_file", data, "fine-tune")["id"]
    validation_file = _call(ctx, "upload_file", validation_data, "fine-tune")["id"] if validation_data else None
    job = _call(ctx, "create_fine_tuning_job", model, training_file, validation_file=validation_file,
                suffix=suffix, training_config=config, cluster_id=cluster)
    if job["status"] == "failed":
        _fail(f"job {job['id']} failed: {(job.get('error') or {}).get('message')}")
    if wait:
        job = follow(ctx, job["id"])
    _show(job, JOB_COLUMNS, raw)
    if job["status"] in ("failed", "cancelled"):
        _fail(f"job {job['id']} {job['status']}: {(job.get('error') or {}).get('message') or ''}".rstrip(": "))


@jobs_app.command("list")
def list_jobs(ctx: typer.Context, limit: Annotated[int, typer.Option(help="Most jobs.")] = 20,
              raw: RawOpt = False) -> None:
    """Your fine-tuning jobs, newest first."""
    _show(_call(ctx, "list_fine_tuning_jobs", limit), JOB_COLUMNS, raw)


@jobs_app.command("show")
def show_job(ctx: typer.Context, job_id: JobArg, raw: RawOpt = False) -> None:
    """One job (its error, if it failed)."""
    job = _call(ctx, "get_fine_tuning_job", job_id)
    _show(job, JOB_COLUMNS, raw)
    if not raw and job.get("error"):
        typer.echo(f"error: {job['error']['message']}")


@jobs_app.command("events")
def job_events(ctx: typer.Context, job_id: JobArg, raw: RawOpt = False) -> None:
    """The job's events, oldest first (metrics, checkpoints, state changes)."""
    events = list(reversed(_call(ctx, "fine_tuning_events", job_id)))
    _show(events, EVENT_COLUMNS, raw)


@jobs_app.command("cancel")
def cancel_job(ctx: typer.Context, job_id: JobArg, raw: RawOpt = False) -> None:
    """Cancel a job (at once when waiting, within seconds when running)."""
    _show(_call(ctx, "cancel_fine_tuning_job", job_id), JOB_COLUMNS, raw)


def export_model(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(help="Custom model id (cm_…).")],
    directory: Annotated[Path, typer.Argument(help="Directory to write the PEFT files into.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite adapter files already there.")] = False,
) -> None:
    """Write a custom model's adapter as a plain PEFT directory."""
    from atelier.errors import InvalidInput
    from atelier.tuning.export import unpack_adapter

    packed = _call(ctx, "custom_model_adapter", model_id)
    try:
        unpack_adapter(packed, directory, overwrite=force)
    except InvalidInput as exc:
        _fail(exc.message + ("" if force else " (pass --force to overwrite)"))
    typer.echo(f"wrote adapter_config.json and adapter_model.safetensors to {directory}")
