"""``atelier eval``: score a model on a JSONL test file, with a k-shot baseline of its base model.

Uploads the test file (and the file k-shot examples are drawn from), starts an evaluation
job and, with ``--wait`` (the default), follows its progress and prints the report: one row
per metric, the model's value next to the baseline's. A client of the HTTP API like the rest
of the CLI.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from atelier.cli.common import JsonOpt, client_for, fail, print_json
from atelier.client.evaluations import report_rows

FINAL = ("succeeded", "failed", "cancelled")


def _value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def report_table(report: dict[str, Any]) -> str:
    """The report as text: metric, the model's value, the baseline's."""
    head = f"{report.get('model')} on {report.get('n_examples')} examples"
    if report.get("baseline"):
        head += f" | baseline: {report['baseline']['model']} {report['baseline']['k']}-shot"
    lines = [head, f"{'metric':<16}{'model':>12}{'baseline':>12}"]
    lines += [f"{r['metric']:<16}{_value(r['model']):>12}{_value(r['baseline']):>12}" for r in report_rows(report)]
    return "\n".join(lines)


def evaluate(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Base model, custom model (cm_…) or endpoint (ep_…).")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Test JSONL (training formats).", exists=True,
                                       dir_okay=False)],
    metric: Annotated[list[str] | None, typer.Option("--metric", help="A metric (repeat); default the server's.")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="A label of the label set (repeat).")] = None,
    k_shot: Annotated[int, typer.Option("--k-shot", min=0, max=32, help="Baseline: the base with k examples.")] = 0,
    examples: Annotated[Path | None, typer.Option("--examples", help="JSONL the k-shot examples are drawn from.",
                                                  exists=True, dir_okay=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the k-shot draw.")] = 0,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Longest generated answer.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the evaluation until it ends.")] = True,
    raw: JsonOpt = False,
) -> None:
    """Score a model on a test file, with a k-shot baseline of its base model in the same report."""
    if k_shot and examples is None:
        raise typer.BadParameter("--k-shot needs --examples (the file the examples are drawn from)")
    client = client_for(ctx)
    test_file = client.files.upload(data, "fine-tune")["id"]
    shots = {"k": k_shot, "file": client.files.upload(examples, "fine-tune")["id"], "seed": seed} if k_shot else None
    job = client.evaluations.create(model, test_file, metrics=metric or None, labels=label or None,
                                    max_tokens=max_tokens, k_shot=shots)
    shown = None
    while wait and job["status"] not in FINAL:
        time.sleep(1.0)
        job = client.evaluations.get(job["id"])
        progress = [e for e in client.evaluations.events(job["id"]) if (e.get("data") or {}).get("total")]
        line = progress[-1]["message"] if progress else f"{job['status']}..."
        if line != shown:
            sys.stderr.write("\r" + line.ljust(60))
            sys.stderr.flush()
            shown = line
    if shown is not None:
        sys.stderr.write("\n")
    if raw or job["status"] != "succeeded":
        print_json(job)
    else:
        typer.echo(report_table(job["report"]))
    if job["status"] in ("failed", "cancelled"):
        fail(f"evaluation {job['id']} {job['status']}: {job.get('error') or ''}".rstrip(": "))
