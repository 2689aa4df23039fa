"""Multi-adapter math on one shared base layer: each row of a batch gets its own adapter.

A batch of ``N`` rows goes through a base linear layer once; row ``i`` then gets the delta
of the adapter at stack index ``idx[i]`` (index 0 is "no adapter": zero LoRA weights and
unit IA3 scales). The adapter weights are stacked along a first dimension and gathered
per row, as vLLM's and Punica's batched LoRA kernels do (``x @ A[idx] @ B[idx]``), in plain
torch. For a row whose adapter is LoRA (PEFT: ``y = W x + (α/r)·B A x``) the scale ``α/r``
is folded into the stacked ``B`` at load time; for IA3 (PEFT: ``y = (W x) ⊙ l`` on most
modules, ``y = W (x ⊙ l)`` on feed-forward ones) the vectors are gathered the same way.

Shapes: ``x`` (N, T, in); ``a`` (S, in, r); ``b`` (S, r, out); ``scale_in`` (S, in);
``scale_out`` (S, out); ``idx`` (N,) long, or an int when every row has the same adapter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Index = torch.Tensor | int


def lora_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, idx: Index) -> torch.Tensor:
    """Each row's LoRA update ``x @ A[idx] @ B[idx]`` (scale folded into B), shape (N, T, out)."""
    if isinstance(idx, int):  # one adapter for the whole batch: plain matmuls, no gather
        return (x @ a[idx]) @ b[idx]
    return torch.bmm(torch.bmm(x, a.index_select(0, idx)), b.index_select(0, idx))  # (N,T,r) → (N,T,out)


def gathered_scale(scale: torch.Tensor, idx: Index) -> torch.Tensor:
    """Each row's IA3 vector, shaped to broadcast over (N, T, d)."""
    if isinstance(idx, int):
        return scale[idx]  # (d,)
    return scale.index_select(0, idx).unsqueeze(1)  # (N, 1, d)


def adapted_linear(
    x: torch.Tensor,
    base: Callable[[torch.Tensor], torch.Tensor],
    idx: Index,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    scale_in: torch.Tensor | None = None,
    scale_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The base layer (``base(x) = x Wᵀ + b``, float or quantized) for the whole batch, plus each row's adapter.

    A row's adapter is either LoRA (its ``a``/``b`` rows non-zero, scales 1) or IA3 (its
    scales set, ``a``/``b`` rows zero), so applying all three terms gives each row exactly
    its own adapter's output.
    """
    base_in = x * gathered_scale(scale_in, idx) if scale_in is not None else x
    y = base(base_in)  # the shared base weights, once for the batch
    if a is not None and b is not None:
        y = y + lora_delta(x, a, b, idx)
    if scale_out is not None:
        y = y * gathered_scale(scale_out, idx)
    return y
