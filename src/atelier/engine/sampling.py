"""Pick the next token of every sequence in a batch from its logits.

Pure functions over ``(B, V)`` float32 logits with one row of parameters per sequence,
held as ``(B,)`` tensors so that the math is batched, never a Python loop over rows.
This module knows nothing about models, tokenizers or HTTP: the engine hands it logits,
token counts and generators, and gets token ids back.

Order inside :func:`sample`: :func:`process_logits` (logit bias → repetition penalty →
frequency/presence penalties → allowed-token mask → temperature), then :func:`draw` (top-k →
top-p → draw). The processed logits are what ``logprobs_mode="processed"`` reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from atelier.engine.types import SamplingParams

_CANDIDATES = 256
"""How many likeliest tokens top-k/top-p look at first; undecided rows retry with 8× as many."""


@dataclass
class SamplingTensors:
    """Per-row sampling parameters of one decode step, built once per step."""

    temperature: torch.Tensor
    """(B,) float32; 0 means greedy (argmax of the penalised logits)."""
    top_k: torch.Tensor
    """(B,) int64; 0 disables."""
    top_p: torch.Tensor
    """(B,) float32; 1.0 disables."""
    frequency_penalty: torch.Tensor
    """(B,) float32; subtracted once per earlier occurrence of a token."""
    presence_penalty: torch.Tensor
    """(B,) float32; subtracted once from every token that occurred at all."""
    repetition_penalty: torch.Tensor | None = None
    """(B,) float32; a seen token's positive logit is divided by it, a negative one multiplied;
    1.0 disables. None when no row uses it."""
    bias_rows: torch.Tensor | None = None
    """(N,) int64 row of each logit-bias entry; None when no row has a logit bias."""
    bias_ids: torch.Tensor | None = None
    """(N,) int64 token id of each logit-bias entry."""
    bias_values: torch.Tensor | None = None
    """(N,) float32 value added to that row's logit of that token."""

    @classmethod
    def from_params(
        cls, params: Sequence[SamplingParams], device: torch.device | str = "cpu"
    ) -> SamplingTensors:
        """Stack the parameters of the sequences in a batch, one row each.

        Args:
            params: One ``SamplingParams`` per row, in batch order.
            device: Where the tensors live (the logits' device).

        Returns:
            The per-row tensors.
        """

        def col(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(p, name) for p in params], dtype=dtype, device=device)  # (B,)

        st = cls(
            temperature=col("temperature", torch.float32),
            top_k=col("top_k", torch.int64),
            top_p=col("top_p", torch.float32),
            frequency_penalty=col("frequency_penalty", torch.float32),
            presence_penalty=col("presence_penalty", torch.float32),
        )
        if any(p.repetition_penalty != 1.0 for p in params):
            st.repetition_penalty = col("repetition_penalty", torch.float32)
        entries = [(b, token, bias) for b, p in enumerate(params) for token, bias in p.logit_bias]
        if entries:
            rows, ids, values = zip(*entries)
            st.bias_rows = torch.tensor(rows, dtype=torch.int64, device=device)  # (N,)
            st.bias_ids = torch.tensor(ids, dtype=torch.int64, device=device)  # (N,)
            st.bias_values = torch.tensor(values, dtype=torch.float32, device=device)  # (N,)
        return st


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row; ties go to the lowest index.

    Args:
        logits: (B, V) logits.

    Returns:
        (B,) int64 token ids, ``argmax_j logits[b, j]``.
    """
    return logits.argmax(dim=-1)  # (B,)


def apply_logit_bias(
    logits: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Add each row's logit bias, as a scatter over the entries (no loop over the vocabulary).

    Semantics as a loop::

        out = logits.clone()
        for n in range(N):
            out[rows[n], ids[n]] += values[n]

    Args:
        logits: (B, V) logits.
        rows: (N,) int64 row of each entry.
        ids: (N,) int64 token id of each entry, ``< V``.
        values: (N,) bias of each entry.

    Returns:
        (B, V) biased logits (a new tensor).
    """
    return logits.index_put((rows, ids), values.to(logits.dtype), accumulate=True)  # (B, V)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """vLLM's (CTRL's) repetition penalty over the tokens a row has seen (prompt and output).

    Semantics as a loop::

        for b in range(B):
            for j in range(V):
                if seen[b, j]:
                    out[b, j] = logits[b, j] / p[b] if logits[b, j] > 0 else logits[b, j] * p[b]
                else:
                    out[b, j] = logits[b, j]

    Args:
        logits: (B, V) logits.
        seen: (B, V) bool, ``True`` where the token occurs in the row's prompt or output.
        penalty: (B,) ``p``, ``> 0``; 1 leaves the row unchanged.

    Returns:
        (B, V) penalised logits (a new tensor).
    """
    p = penalty.to(logits.dtype).unsqueeze(1)  # (B, 1)
    penalised = torch.where(logits > 0, logits / p, logits * p)  # (B, V)
    return torch.where(seen, penalised, logits)  # (B, V)


def apply_allowed(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Forbid the tokens a row's grammar does not allow: ``out[b, j] = -inf`` where ``not allowed[b, j]``.

    Args:
        logits: (B, V) logits.
        allowed: (B, V) bool; rows without a constraint are all ``True`` (left unchanged).

    Returns:
        (B, V) masked logits (a new tensor).
    """
    return logits.masked_fill(~allowed, float("-inf"))  # (B, V)


def apply_penalties(
    logits: torch.Tensor,
    counts: torch.Tensor,
    frequency_penalty: torch.Tensor,
    presence_penalty: torch.Tensor,
) -> torch.Tensor:
    """Penalise tokens already generated, with OpenAI's formula.

    ``out[b, j] = logits[b, j] - counts[b, j]·fp[b] - 1[counts[b, j] > 0]·pp[b]``

    Args:
        logits: (B, V) logits.
        counts: (B, V) occurrences of each token among the tokens generated so far
            in that row (not the prompt).
        frequency_penalty: (B,) ``fp``.
        presence_penalty: (B,) ``pp``.

    Returns:
        (B, V) penalised logits (a new tensor).
    """
    counts = counts.to(logits.dtype)  # (B, V)
    freq = counts * frequency_penalty.unsqueeze(1)  # (B, V)
    pres = (counts > 0).to(logits.dtype) * presence_penalty.unsqueeze(1)  # (B, V)
    return logits - freq - pres  # (B, V)


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature: ``out[b] = logits[b] / t[b]``.

    Rows with ``t[b] == 0`` are greedy and are returned unchanged.

    Args:
        logits: (B, V) logits.
        temperature: (B,) temperatures, ``>= 0``.

    Returns:
        (B, V) scaled logits (a new tensor).
    """
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))  # (B,)
    return logits / t.unsqueeze(1)  # (B, V)


def _ranks_below(limit: torch.Tensor, width: int) -> torch.Tensor:
    """``keep[b, r] = r < limit[b]`` over ``width`` sorted positions."""
    ranks = torch.arange(width, device=limit.device)  # (W,)
    return ranks.unsqueeze(0) < limit.unsqueeze(1)  # (B, W)


def _effective_k(top_k: torch.Tensor, vocab: int) -> torch.Tensor:
    """``k`` where it filters, ``V`` where it is disabled (0) or keeps the whole row (k >= V)."""
    return torch.where((top_k > 0) & (top_k < vocab), top_k, torch.full_like(top_k, vocab))  # (B,)


def _keep_top_p_sorted(sorted_logits: torch.Tensor, lse: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Which sorted positions top-p keeps: those whose preceding mass is still below p.

    ``keep[b, r] = Σ_{s<r} exp(sorted[b, s] - lse[b]) < p[b]``, plus rank 0 always and
    every rank when ``p[b] >= 1``. ``sorted_logits`` may be a sorted prefix of the row
    (width W <= V) as long as ``lse`` is the log-sum-exp of the whole row.
    """
    probs = (sorted_logits - lse.unsqueeze(1)).exp().double()  # (B, W)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, W)
    keep = mass_before < top_p.double().unsqueeze(1)  # (B, W)
    keep[:, 0] = True
    return keep | (top_p >= 1).unsqueeze(1)  # (B, W)


def top_k_mask(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep the ``k[b]`` largest logits of each row and set the rest to ``-inf``.

    Exactly ``k[b]`` candidates are kept: among equal logits the lower index wins
    (a stable descending sort). ``k[b] == 0`` or ``k[b] >= V`` keeps the whole row.
    This is the plain reference; :func:`sample` uses a faster path tested equal to it.

    Args:
        logits: (B, V) logits.
        top_k: (B,) int64 ``k``.

    Returns:
        (B, V) masked logits (a new tensor).
    """
    vocab = logits.shape[-1]
    _, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # (B, V)
    keep_sorted = _ranks_below(_effective_k(top_k, vocab), vocab)  # (B, V)
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)  # (B, V) vocabulary order
    return logits.masked_fill(~keep, float("-inf"))  # (B, V)


def top_p_mask(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Nucleus filter: keep the smallest most-likely prefix whose mass reaches ``p[b]``.

    With ``q = softmax(logits[b])`` sorted descending (ties by index), rank ``r`` is
    kept iff ``Σ_{s<r} q[s] < p[b]``; rank 0 is always kept and ``p[b] >= 1`` keeps
    the whole row. Everything else becomes ``-inf``. This is the plain reference;
    :func:`sample` uses a faster path tested equal to it.

    Args:
        logits: (B, V) logits.
        top_p: (B,) float32 ``p``.

    Returns:
        (B, V) masked logits (a new tensor).
    """
    lse = logits.logsumexp(dim=-1)  # (B,)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)  # (B, V)
    keep_sorted = _keep_top_p_sorted(sorted_logits, lse, top_p)  # (B, V)
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)  # (B, V) vocabulary order
    return logits.masked_fill(~keep, float("-inf"))  # (B, V)


def _filter(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, candidates: int | None = None
) -> torch.Tensor:
    """``top_p_mask(top_k_mask(logits, top_k), top_p)`` without sorting the vocabulary.

    Each row's candidates are its W likeliest tokens from ``torch.topk`` (W = the largest
    k, at least ``candidates``), put in the reference order (value descending, index
    ascending). Ranks before the tie group of the last candidate match the full sort,
    and so does that group when it lies wholly inside. A row whose kept prefix is not
    decided by exact ranks (a nucleus not reached within the candidates, or a cut inside
    a group of equal logits that straddles the last candidate) is done again with 8× as
    many candidates; once W reaches V that is the reference itself.
    """
    vocab = logits.shape[-1]
    k = _effective_k(top_k, vocab)  # (B,)
    has_k, has_p = k < vocab, top_p < 1  # (B,), (B,)
    active = has_k | has_p  # (B,)
    if not bool(active.any()):
        return logits
    candidates = candidates or _CANDIDATES
    width = max(int(k[has_k].max()) if bool(has_k.any()) else 0, candidates)
    if width >= vocab:
        return top_p_mask(top_k_mask(logits, top_k), top_p)

    vals, idx = logits.topk(width, dim=-1)  # (B, W) likeliest first, ties in no set order
    idx, perm = idx.sort(dim=-1)  # (B, W)
    vals = vals.gather(1, perm)  # (B, W)
    vals, perm = vals.sort(dim=-1, descending=True, stable=True)  # (B, W) value desc, index asc
    idx = idx.gather(1, perm)  # (B, W)
    last = vals[:, -1:]  # (B, 1)
    n_last = (vals == last).sum(dim=-1)  # (B,)
    whole = (logits == last).sum(dim=-1) == n_last  # (B,)
    exact = torch.where(whole, width, width - n_last)  # (B,) leading ranks equal to the full sort's

    keep = _ranks_below(k, width)  # (B, W)
    vals = vals.masked_fill(~keep, float("-inf"))  # (B, W)
    if bool(has_p.any()):
        masked = torch.full_like(logits, float("-inf")).scatter(1, idx, vals)  # (B, V) top-k applied
        masked = torch.where(has_k.unsqueeze(1), masked, logits)  # (B, V)
        keep = keep & _keep_top_p_sorted(vals, masked.logsumexp(dim=-1), top_p)  # (B, W)
    n_kept = keep.sum(dim=-1)  # (B,)
    decided = torch.where(has_k, k <= exact, (n_kept < width) & (n_kept <= exact))  # (B,)

    vals = vals.masked_fill(~keep, float("-inf"))  # (B, W)
    out = torch.full_like(logits, float("-inf")).scatter(1, idx, vals)  # (B, V)
    out = torch.where(active.unsqueeze(1), out, logits)  # (B, V)
    redo = (active & ~decided).nonzero().flatten()  # (R,)
    if redo.numel():
        out[redo] = _filter(logits[redo], top_k[redo], top_p[redo], width * 8)  # (R, V)
    return out


def process_logits(
    logits: torch.Tensor,
    st: SamplingTensors,
    counts: torch.Tensor | None = None,
    seen: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The logits each row samples from, before top-k/top-p.

    Logit bias, then the repetition penalty, then frequency/presence penalties, then the
    allowed-token mask, then temperature (rows with ``t == 0`` are not scaled: greedy takes
    the argmax of what this returns). Each step is skipped when no row uses it.

    Args:
        logits: (B, V) raw logits of the last position.
        st: Per-row parameters.
        counts: (B, V) occurrences of each token among the tokens generated so far, or None
            to skip frequency/presence penalties.
        seen: (B, V) bool, tokens of each row's prompt and output, or None to skip the
            repetition penalty (also skipped when ``st.repetition_penalty`` is None).
        allowed: (B, V) bool allowed tokens (grammar-constrained rows), or None.

    Returns:
        (B, V) float32 processed logits (the input itself when no step applies: never
        modify it in place).
    """
    logits = logits.float()  # (B, V)
    if st.bias_rows is not None:
        logits = apply_logit_bias(logits, st.bias_rows, st.bias_ids, st.bias_values)  # type: ignore[arg-type]  # (B, V)
    if seen is not None and st.repetition_penalty is not None:
        logits = apply_repetition_penalty(logits, seen, st.repetition_penalty)  # (B, V)
    if counts is not None:
        logits = apply_penalties(logits, counts, st.frequency_penalty, st.presence_penalty)  # (B, V)
    if allowed is not None:
        logits = apply_allowed(logits, allowed)  # (B, V)
    if bool((st.temperature > 0).any()):
        logits = apply_temperature(logits, st.temperature)  # (B, V)
    return logits


def draw(
    processed: torch.Tensor, st: SamplingTensors, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Top-k, then top-p, then a Gumbel-max draw from logits already processed (:func:`process_logits`).

    ``next[b] = argmax_j (log_softmax(l[b])[j] - log E[b, j])`` with ``E = -log U ~ Exp(1)``
    and ``U ~ U[0, 1)``, which picks ``j`` with probability ``softmax(l[b])[j]`` (the
    log-sum-exp shift is the same for every ``j``, so it is left out; ``U`` is drawn
    rather than ``E`` because ``uniform_`` is several times faster than ``exponential_``
    on CPU). Semantics as a loop::

        for b in range(B):
            if t[b] == 0:
                next[b] = argmax(processed[b])
            else:
                next[b] = draw(softmax(top_p(top_k(processed[b]))), generators[b])

    Each row's noise comes from its own generator, so a row's token depends only on
    its logits, parameters and generator state, never on its batch neighbours. Rows
    with ``t == 0`` consume no randomness. Top-k and top-p look only at each row's
    likeliest tokens (``torch.topk``), not a sort of the vocabulary, and are skipped
    entirely when no sampling row uses them.

    Args:
        processed: (B, V) processed logits.
        st: Per-row parameters.
        generators: One per row; None uses torch's global generator.

    Returns:
        (B,) int64 next token ids.
    """
    logits = processed
    vocab = logits.shape[-1]
    greedy_tokens = greedy(logits)  # (B,)
    sampling_rows = st.temperature > 0  # (B,)
    if not bool(sampling_rows.any()):
        return greedy_tokens

    top_k = torch.where(sampling_rows, st.top_k, torch.zeros_like(st.top_k))  # (B,) greedy rows: off
    top_p = torch.where(sampling_rows, st.top_p, torch.ones_like(st.top_p))  # (B,)
    if bool((((top_k > 0) & (top_k < vocab)) | (top_p < 1)).any()):
        logits = _filter(logits, top_k, top_p)  # (B, V)

    uniform = torch.empty_like(logits)  # (B, V)
    for b in sampling_rows.nonzero().flatten().tolist():
        uniform[b].uniform_(generator=generators[b])  # (V,) U ~ U[0, 1)
    uniform[~sampling_rows] = 0.5  # greedy rows: any value, the draw is discarded
    log_e = (-uniform.log()).log()  # (B, V) log E with E = -log U ~ Exp(1)
    drawn = (logits - log_e).argmax(dim=-1)  # (B,)
    return torch.where(sampling_rows, drawn, greedy_tokens)  # (B,)


def sample(
    logits: torch.Tensor,
    st: SamplingTensors,
    counts: torch.Tensor | None,
    generators: Sequence[torch.Generator | None],
    seen: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw the next token of every row: ``draw(process_logits(logits, ...), st, generators)``.

    Semantics as a loop::

        for b in range(B):
            l = bias(logits[b]); l = repetition(l, seen[b]); l = penalties(l, counts[b]); l = mask(l, allowed[b])
            if t[b] == 0:
                next[b] = argmax(l)
            else:
                next[b] = draw(softmax(top_p(top_k(l / t[b]))), generators[b])

    Args:
        logits: (B, V) logits of the last position.
        st: Per-row parameters.
        counts: (B, V) occurrences of each token among the tokens generated so far,
            or None to skip frequency/presence penalties.
        generators: One per row; None uses torch's global generator.
        seen: (B, V) bool tokens of each row's prompt and output (repetition penalty), or None.
        allowed: (B, V) bool tokens each row's grammar allows, or None.

    Returns:
        (B,) int64 next token ids.
    """
    return draw(process_logits(logits, st, counts, seen, allowed), st, generators)  # (B,)


def logprobs(logits: torch.Tensor, tokens: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log probabilities of chosen tokens and the ``k`` most likely tokens, per row.

    Semantics as a loop::

        for b in range(B):
            lp = log_softmax(logits[b])
            chosen[b] = lp[tokens[b]]
            top_values[b], top_ids[b] = the k largest of lp, largest first

    Args:
        logits: (B, V) logits (raw or processed).
        tokens: (B,) int64 chosen token of each row.
        k: How many most likely tokens, ``0 <= k``; clipped to ``V``.

    Returns:
        ``chosen`` (B,) float32, ``top_values`` (B, k) float32 and ``top_ids`` (B, k) int64.
    """
    lp = logits.float().log_softmax(dim=-1)  # (B, V)
    chosen = lp.gather(1, tokens.unsqueeze(1)).squeeze(1)  # (B,)
    top_values, top_ids = lp.topk(min(k, lp.shape[-1]), dim=-1)  # (B, k), (B, k)
    return chosen, top_values, top_ids
