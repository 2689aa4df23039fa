"""Weight-only quantization of a loaded model for serving: int8 per channel, int4 per group of 32.

Decoding one token reads every weight once, so on a CPU its speed follows the bytes of
weights (538 MB in fp32 for SmolLM2-135M). ``quantize_model`` replaces the model's linear
layers in place, the weights kept as:

- ``int8``: symmetric per output channel, ``w[o, i] ≈ q[o, i] · s[o]``, ``q ∈ [-127, 127]``;
- ``int4``: asymmetric per group of 32 input columns (GGUF's Q4_1 block),
  ``w[o, i] ≈ q[o, i] · s[o, g] + m[o, g]``, ``q ∈ [0, 15]``, ``g = i // 32``.

The embedding table is kept int8 per row, and an output head tied to it shares that table
(int8 in both modes, as llama.cpp keeps the output layer above Q4). Activations, norms,
attention, adapters and logits stay in float.

Kernels: ``torch.ops.aten._weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu``
(PyTorch's own weight-only CPU kernels; underscore ops, hence ``torch`` pinned in
pyproject). Their fp32-activation paths are 4-20x slower than an fp32 GEMM on this CPU
while their bf16 paths are fast, so a layer rounds its input to bf16, and the kernel
accumulates in fp32 and rounds its output to bf16 (relative error of the product about
0.3 % beside the weights' own ~0.8 % in int8). Over ``GEMM_ROWS`` rows (a prefill) an
int8 layer instead de-quantizes its weights and runs the fp32 GEMM, which is faster there.
Knows nothing about adapters (``AdapterBank`` wraps these layers like ``nn.Linear``) or
about requests.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Quantization = Literal["none", "int8", "int4"]
GROUP = 32
"""Input columns per int4 group (GGUF Q4_0/Q4_1 blocks hold 32 weights)."""
GEMM_ROWS = 48
"""Rows above which an int8 layer de-quantizes and uses the fp32 GEMM. Measured on SmolLM2-135M,
whole forward: 64 tokens 119 ms against 129 ms through the kernel, 107 tokens 147 against 200,
512 tokens 530 against 908."""
KERNEL_DTYPE = torch.bfloat16


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``(q, s)`` with ``w ≈ q * s[:, None]``; ``w`` (N, K) → (N, K) int8, (N,)."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (N,)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (N, K)
    return q.contiguous(), scale


def quantize_int4(w: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per ``group`` columns: ``(q, s, m)``, ``w[o, i] ≈ q[o, i]·s[o, i//group] + m[o, i//group]``.

    Shapes: ``w`` (N, K) → ``q`` (N, K) int32 in [0, 15], ``s`` and ``m`` (N, K // group).
    """
    n, k = w.shape
    if k % group:
        raise ValueError(f"int4 needs input features divisible by {group}, got {k}")
    g = w.detach().float().reshape(n, k // group, group)  # (N, G, group)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)  # (N, G)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)  # (N, G)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)  # (N, G, group)
    return q.reshape(n, k), scale, lo


def fake_quantize(w: torch.Tensor, mode: str) -> torch.Tensor:
    """The float weights that ``mode`` represents ``w`` by (the reference the kernels are tested against)."""
    if mode == "int8":
        q, scale = quantize_int8(w)
        return q.float() * scale[:, None]  # (N, K)
    if mode == "int4":
        q, scale, lo = quantize_int4(w)
        n, k = w.shape
        g = q.reshape(n, k // GROUP, GROUP).float() * scale[..., None] + lo[..., None]  # (N, G, group)
        return g.reshape(n, k)
    raise ValueError(f"unknown quantization {mode!r}")


class QuantizedLinear(torch.nn.Module):
    """``y = x Wᵀ + b`` with ``W`` held as int8 or int4 (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, mode: str):
        super().__init__()
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.bias = bias
        self.q: torch.Tensor  # int8 (N, K), or the int4 kernel's packed layout
        self.scale: torch.Tensor  # int8: (N,) fp32
        self.kernel_scale: torch.Tensor  # int8: (N,) bf16; int4: (K/32, N, 2) bf16 scales and zeros

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, mode: str) -> "QuantizedLinear":
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        layer = cls(linear.in_features, linear.out_features, bias, mode)
        if mode == "int8":
            layer.set_int8(*quantize_int8(linear.weight))
        elif mode == "int4":
            q, scale, lo = quantize_int4(linear.weight)
            layer.q = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)  # (N, K/2) uint8
            # the kernel de-quantizes (q - 8)·s + z per group: z = m + 8·s
            layer.kernel_scale = torch.stack([scale.t(), (lo + 8 * scale).t()], dim=-1).to(KERNEL_DTYPE).contiguous()
        else:
            raise ValueError(f"unknown quantization {mode!r}")
        return layer

    def set_int8(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        self.q, self.scale = q, scale
        self.kernel_scale = scale.to(KERNEL_DTYPE)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of what goes in and out (what an adapter's stacks use)."""
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.q.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])  # (M, K)
        if self.mode == "int8" and rows.shape[0] > GEMM_ROWS:
            w = self.q.to(torch.float32) * self.scale[:, None]  # (N, K)
            y = F.linear(rows.float(), w)  # (M, N)
        elif self.mode == "int8":
            y = torch.ops.aten._weight_int8pack_mm(rows.to(KERNEL_DTYPE), self.q, self.kernel_scale).float()  # (M, N)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(KERNEL_DTYPE), self.q, GROUP, self.kernel_scale)
            y = y.float()  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


class QuantizedEmbedding(torch.nn.Module):
    """An embedding table held as int8 per row: ``E[t] ≈ q[t] · s[t]``."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.q, self.scale, self.padding_idx = q, scale, padding_idx  # (V, D) int8, (V,) fp32
        self.num_embeddings, self.embedding_dim = q.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.q).float() * self.scale[ids].unsqueeze(-1)  # (..., D)


def quantize_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Quantize ``model``'s linear layers and input embedding in place (``mode`` "none" leaves it).

    A layer whose input size is not a multiple of 32 stays int8 under ``int4``.

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "none":
        return model
    if mode not in ("int8", "int4"):
        raise ValueError(f"unknown quantization {mode!r}: none, int8 or int4")
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    q, scale = quantize_int8(embed.weight)
    model.set_input_embeddings(QuantizedEmbedding(q, scale, embed.padding_idx))
    if head is not None:
        new_head = QuantizedLinear(head.in_features, head.out_features, None if head.bias is None else head.bias.detach(),
                                   "int8")
        new_head.set_int8(q, scale) if tied else new_head.set_int8(*quantize_int8(head.weight))
        model.set_output_embeddings(new_head)
        if hasattr(model.config, "tie_word_embeddings"):
            model.config.tie_word_embeddings = False  # nothing may re-tie a float table to the head
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                layer_mode = mode if mode == "int8" or child.in_features % GROUP == 0 else "int8"
                setattr(module, child_name, QuantizedLinear.from_linear(child, layer_mode))
    with torch.no_grad():  # own copies of what stays float (norms): they may be views of the whole mapped file
        for p in model.parameters():
            p.data = p.data.clone()
        for b in model.buffers():
            b.data = b.data.clone()
    _release_freed_memory()
    return model


def _release_freed_memory() -> None:
    """Give the float weights' freed memory back to the system (glibc keeps it otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps it, nothing breaks
        pass


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights the model holds: parameters, buffers and quantized tables, shared ones once."""
    tensors = [*model.parameters(), *model.buffers()]
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            tensors += [t for t in (m.q, m.kernel_scale, m.bias, getattr(m, "scale", None)) if t is not None]
        elif isinstance(m, QuantizedEmbedding):
            tensors += [m.q, m.scale]
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}
    return sum(unique.values())
