"""A fine-tuning job's metrics as TensorBoard event files, made from the events the job recorded.

Every metric event of a job (training loss, validation loss and token accuracy, learning
rate... at their step) becomes scalars of one TensorBoard run named by the job's id
(``train_loss`` → ``train/loss``, ``valid_token_accuracy`` → ``valid/token_accuracy``), at the
event's wall time, written by ``tensorboardX`` and handed out as a ``.tar.gz`` of the run's
directory. Made on request from the job's events, which are complete and without
duplicates across resumed attempts (a job resumed on another node included), and readable
while the job runs. Knows nothing about HTTP.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

SKIPPED = frozenset({"type", "step", "total_steps", "epoch"})
"""Fields of a metrics event that are not scalars to plot."""


def tag_of(key: str) -> str:
    """The scalar's TensorBoard tag: ``train_loss`` → ``train/loss``; other names under ``train/``."""
    for prefix in ("train_", "valid_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"train/{key}"


def tensorboard_archive(run: str, events: Iterable[tuple[datetime, dict[str, Any]]]) -> bytes:
    """A ``.tar.gz`` holding ``<run>/events.out.tfevents.*`` with the scalars of the metrics events.

    Args:
        run: The run's name (the job id).
        events: ``(created_at, data)`` of the job's events; those whose data is not ``type: metrics`` are skipped.
    """
    from tensorboardX import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(logdir=str(Path(tmp) / run), flush_secs=3600)
        try:
            for created_at, data in events:
                if not isinstance(data, dict) or data.get("type") != "metrics" or not isinstance(data.get("step"), int):
                    continue
                for key, value in data.items():
                    if key not in SKIPPED and isinstance(value, (int, float)) and not isinstance(value, bool):
                        writer.add_scalar(tag_of(key), float(value), global_step=data["step"],
                                          walltime=created_at.timestamp())
        finally:
            writer.close()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            archive.add(Path(tmp) / run, arcname=run)
        return buffer.getvalue()
