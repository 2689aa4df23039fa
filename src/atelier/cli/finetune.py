"""``atelier finetune``: upload a JSONL file, start a LoRA or T-Few job, and (``--wait``) follow it.

In the spirit of Olive's ``finetune``: one command uploads the data, starts a job with the
given hyperparameters (OCI's names, sent as ``training_config``) and, with ``--wait``,
follows it with a progress bar showing the live loss and token accuracy from the job's
metric events. ``--text-template "<prompt>{question}</prompt>{answer}"`` lets a file with
other field names train as prompt/completion (the server applies it). A client of the
HTTP API like the rest of the CLI.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from atelier.cli.common import JsonOpt, client_for, fail, show
from atelier.cli.jobs import JOB_COLUMNS, progress_line
from atelier.client import AtelierClient

FINAL = ("succeeded", "failed", "cancelled")


def training_config(method: str, **values: Any) -> dict[str, Any]:
    """The ``training_config`` of a job from the command's options (unset ones left to the server)."""
    if method not in ("lora", "tfew"):
        raise typer.BadParameter("--method must be lora or tfew")
    return {"type": method, **{k: v for k, v in values.items() if v is not None}}


def follow(client: AtelierClient, job_id: str, poll_seconds: float = 2.0) -> dict[str, Any]:
    """Poll the job until it ends, drawing the progress bar on stderr.

    Returns:
        The job in its final state.
    """
    shown = None
    while True:
        job = client.fine_tuning.jobs.get(job_id)
        events = client.fine_tuning.jobs.events(job_id, 50)
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
    raw: JsonOpt = False,
) -> None:
    """Upload a JSONL file and fine-tune a base model on it (LoRA or T-Few)."""
    config = training_config(
        method, text_template=text_template, total_training_epochs=epochs, training_batch_size=batch_size,
        learning_rate=learning_rate, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        validation_split=validation_split, early_stopping_patience=early_stopping_patience,
        log_model_metrics_interval_in_steps=log_interval, max_steps=max_steps, seed=seed,
    )  # fmt: skip
    client = client_for(ctx)
    training_file = client.files.upload(data, "fine-tune")["id"]
    validation_file = client.files.upload(validation_data, "fine-tune")["id"] if validation_data else None
    job = client.fine_tuning.jobs.create(model, training_file, validation_file=validation_file, suffix=suffix,
                                         training_config=config, cluster_id=cluster)
    if job["status"] == "failed":
        fail(f"job {job['id']} failed: {(job.get('error') or {}).get('message')}")
    if wait:
        job = follow(client, job["id"])
    show(job, JOB_COLUMNS, raw)
    if job["status"] in ("failed", "cancelled"):
        fail(f"job {job['id']} {job['status']}: {(job.get('error') or {}).get('message') or ''}".rstrip(": "))
