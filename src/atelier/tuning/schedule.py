"""What a training run visits when: the data order of each epoch, micro-batches as tensors, the learning rate of
each step. Pure functions of the config, the seed and the step, which is what makes a resumed run exact
(``tuning.recipe``). Knows tensors and examples; nothing of models or storage.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from atelier.tuning.config import TuneConfig
from atelier.tuning.data import IGNORE_INDEX, Example


def learning_rate_at(config: TuneConfig, index: int, total_steps: int) -> float:
    """Learning rate of optimizer step ``index`` (from 0) out of ``total_steps``.

    Warmup over ``w = ceil(warmup_ratio · total)`` steps: ``peak · (i+1)/(w+1)``; then, with
    ``p = (i − w)/(total − w)``: linear ``peak · (1 − p)``, cosine ``peak · (1 + cos πp)/2``,
    or constant ``peak``. No step has a zero rate.
    """
    peak = config.learning_rate
    warmup = math.ceil(config.warmup_ratio * total_steps)
    if index < warmup:
        return peak * (index + 1) / (warmup + 1)
    if config.lr_scheduler == "constant":
        return peak
    progress = (index - warmup) / max(1, total_steps - warmup)
    if config.lr_scheduler == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The order examples are visited in during ``epoch``: a pure function of (seed, epoch)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Right-padded ``(input_ids, attention_mask, labels)``, each ``(B, T)``."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        attention[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels)
    return ids.to(device), attention.to(device), labels.to(device)
