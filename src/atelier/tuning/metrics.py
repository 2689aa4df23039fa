"""Completion-token metrics: loss, token accuracy and perplexity over labelled positions.

Pure functions over logits and labels (the Hugging Face convention: ``labels[b, t]`` is the
token at position ``t``, ``-100`` where no loss is wanted; the logits at ``t - 1`` predict
it). They know nothing about models, PEFT or files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from atelier.tuning.data import IGNORE_INDEX


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align predictions with targets: logits at ``t`` against labels at ``t + 1``.

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)``, ``-100`` where ignored.

    Returns:
        ``(B·(T-1), V)`` logits and ``(B·(T-1),)`` targets.
    """
    pred = logits[:, :-1, :].reshape(-1, logits.shape[-1])  # (B·(T-1), V)
    target = labels[:, 1:].reshape(-1)  # (B·(T-1),)
    return pred, target


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over labelled positions, and their count (differentiable).

    ``Σ_{t: labels[t] ≠ -100} −log softmax(logits[t−1])[labels[t]]``; dividing by the count
    of the whole (accumulated) batch gives the mean completion-token loss.

    Args:
        logits: ``(B, T, V)`` float logits.
        labels: ``(B, T)`` long labels.

    Returns:
        A 0-dim tensor (the sum, in the logits' dtype promoted to fp32) and the count.
    """
    pred, target = shift(logits, labels)
    total = F.cross_entropy(pred.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")  # ()
    return total, int((target != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class TokenStats:
    """Sums over completion tokens, to be added across batches and then read as means."""

    loss_sum: float = 0.0
    """Summed cross-entropy (nats)."""
    correct: int = 0
    """Positions whose argmax prediction equals the reference token."""
    count: int = 0
    """Labelled positions."""

    def __add__(self, other: "TokenStats") -> "TokenStats":
        return TokenStats(self.loss_sum + other.loss_sum, self.correct + other.correct, self.count + other.count)

    @property
    def loss(self) -> float:
        """Mean cross-entropy per completion token (nan without tokens)."""
        return self.loss_sum / self.count if self.count else math.nan

    @property
    def accuracy(self) -> float:
        """Share of completion tokens predicted exactly (greedy), in [0, 1]."""
        return self.correct / self.count if self.count else math.nan

    @property
    def perplexity(self) -> float:
        """``exp(loss)``; inf when that overflows."""
        loss = self.loss
        try:
            return math.exp(loss)
        except OverflowError:
            return math.inf


@torch.no_grad()
def token_stats(logits: torch.Tensor, labels: torch.Tensor) -> TokenStats:
    """Loss sum, greedy-correct count and count over the labelled positions of a batch.

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)``, ``-100`` where ignored.

    Returns:
        The batch's ``TokenStats``.
    """
    pred, target = shift(logits, labels)
    keep = target != IGNORE_INDEX  # (N,)
    total = F.cross_entropy(pred.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = (pred.argmax(dim=-1)[keep] == target[keep]).sum()  # ()
    return TokenStats(float(total), int(correct), int(keep.sum()))
