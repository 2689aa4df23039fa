"""The training loss where the labels are: the output head applied to completion positions only, in chunks.

A causal LM's forward computes ``(B, T, V)`` logits, then the loss keeps only the labelled
positions: with a 49k-token vocabulary that tensor (and its gradient, and the softmax's)
dominates training memory although the answers are a few tokens of each example. Here the
decoder's hidden states are computed, the positions whose next token is labelled gathered
(``N`` of them), and the output head applied to at most ``chunk_rows`` of them at a time,
each chunk under activation checkpointing (its logits are recomputed in the backward pass
instead of kept): training memory follows the answers, not the prompts, and a long answer
costs one chunk's logits at a time. The numbers are those of the full computation (the same
rows of the same head), up to float summation order.

Used only where it is exact: :class:`CompletionLoss` checks once, on the model itself, that
``head(decoder(x))`` equals the model's own logits (models that scale or soft-cap their logits
would not); otherwise it computes the full logits as before. Uses only public transformers
and PEFT API (``get_base_model``, ``get_decoder``, ``get_output_embeddings``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from atelier.tuning.data import IGNORE_INDEX
from atelier.tuning.metrics import TokenStats, loss_sum, token_stats

CHUNK_ROWS = 1024
"""Labelled positions whose logits exist at once (1024 x 49k vocabulary x 4 bytes = 190 MiB)."""


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), target, reduction="sum")  # ()


class CompletionLoss:
    """Loss and token statistics of a (PEFT-wrapped) causal LM over labelled positions only.

    Args:
        model: The model being trained (a ``PeftModel`` or a plain causal LM).
        chunk_rows: Labelled positions per output-head chunk.
    """

    def __init__(self, model: torch.nn.Module, chunk_rows: int = CHUNK_ROWS):
        self.model = model
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = causal.get_decoder()
        self.head = causal.get_output_embeddings()
        self.chunk_rows = chunk_rows
        self.exact = self.head is not None and self._head_is_the_output()

    @torch.no_grad()
    def _head_is_the_output(self) -> bool:
        """Whether the model's logits are exactly its head applied to its decoder's last hidden states."""
        training = self.model.training
        self.model.eval()  # no dropout in the comparison
        try:
            vocab = self.head.weight.shape[0]
            ids = (torch.arange(8, device=self.head.weight.device) * 7919 % vocab).unsqueeze(0)  # (1, 8)
            full = self.model(input_ids=ids, use_cache=False).logits.float()  # (1, 8, V)
            ours = self.head(self.decoder(input_ids=ids, use_cache=False).last_hidden_state).float()
            return full.shape == ours.shape and torch.allclose(full, ours, rtol=1e-4, atol=1e-4)
        finally:
            self.model.train(training)

    def _labelled(self, ids: torch.Tensor, attention: torch.Tensor,
                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The hidden states that predict a labelled token ``(N, H)`` and those tokens ``(N,)``."""
        hidden = self.decoder(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state  # (B, T, H)
        target = labels[:, 1:]  # (B, T-1): the token each position predicts
        keep = target != IGNORE_INDEX
        return hidden[:, :-1][keep], target[keep]

    def loss_sum(self, ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over the labelled positions and their count (differentiable), as ``metrics.loss_sum``."""
        if not self.exact:
            return loss_sum(self.model(input_ids=ids, attention_mask=attention, use_cache=False).logits, labels)
        hidden, target = self._labelled(ids, attention, labels)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, len(target), self.chunk_rows):
            rows = slice(start, start + self.chunk_rows)
            if hidden.requires_grad:
                total = total + checkpoint(_chunk_loss, self.head, hidden[rows], target[rows], use_reentrant=False)
            else:
                total = total + _chunk_loss(self.head, hidden[rows], target[rows])
        return total, len(target)

    @torch.no_grad()
    def token_stats(self, ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor) -> TokenStats:
        """Loss sum, greedy-correct count and count over the labelled positions, as ``metrics.token_stats``."""
        if not self.exact:
            return token_stats(self.model(input_ids=ids, attention_mask=attention, use_cache=False).logits, labels)
        hidden, target = self._labelled(ids, attention, labels)
        stats = TokenStats()
        for start in range(0, len(target), self.chunk_rows):
            logits = self.head(hidden[start:start + self.chunk_rows]).float()  # (n, V)
            part = target[start:start + self.chunk_rows]
            stats = stats + TokenStats(float(F.cross_entropy(logits, part, reduction="sum")),
                                       int((logits.argmax(dim=-1) == part).sum()), len(part))
        return stats
