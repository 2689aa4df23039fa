"""Completion-token metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from atelier.tuning.metrics import TokenStats, loss_sum, token_stats


def hand_batch():
    """One row, 4 positions, vocabulary of 3; labels on positions 1 and 2 only.

    Position 0 predicts position 1 (reference 2): argmax is 2, right.
    Position 1 predicts position 2 (reference 0): argmax is 1, wrong.
    Position 2 predicts position 3 (ignored); position 3 predicts nothing.
    """
    logits = torch.tensor(
        [
            [
                [0.0, 1.0, 3.0],
                [0.0, 2.0, 1.0],
                [9.0, 0.0, 0.0],
                [0.0, 0.0, 9.0],
            ]
        ]
    )  # (1, 4, 3)
    labels = torch.tensor([[-100, 2, 0, -100]])  # (1, 4)
    return logits, labels


def nll(row: list[float], target: int) -> float:
    return -(row[target] - math.log(sum(math.exp(v) for v in row)))


def test_token_accuracy_and_loss_by_hand():
    logits, labels = hand_batch()
    stats = token_stats(logits, labels)
    expected = nll([0.0, 1.0, 3.0], 2) + nll([0.0, 2.0, 1.0], 0)
    assert (stats.correct, stats.count) == (1, 2)
    assert stats.accuracy == 0.5
    assert stats.loss_sum == pytest.approx(expected, rel=1e-6)
    assert stats.loss == pytest.approx(expected / 2, rel=1e-6)
    assert stats.perplexity == pytest.approx(math.exp(expected / 2), rel=1e-6)


def test_loss_sum_is_differentiable_and_matches():
    logits, labels = hand_batch()
    logits.requires_grad_(True)
    total, count = loss_sum(logits, labels)
    total.backward()
    assert count == 2 and float(total.detach()) == pytest.approx(token_stats(logits, labels).loss_sum)
    # ignored positions get no gradient: position 2 predicts an ignored label, position 3 predicts nothing
    assert torch.count_nonzero(logits.grad[0, 2:]) == 0
    assert torch.count_nonzero(logits.grad[0, :2]) > 0


def test_stats_add_across_batches():
    a = TokenStats(2.0, 1, 2) + TokenStats(4.0, 3, 4)
    assert (a.loss, a.accuracy) == (1.0, 4 / 6)
    assert math.isnan(TokenStats().loss) and TokenStats(loss_sum=1e6, count=1).perplexity == math.inf
