"""Adapter slots on one shared base model: PEFT adapters (LoRA, IA3) served side by side.

``read_peft_adapter`` turns a PEFT directory (``adapter_config.json`` +
``adapter_model.safetensors``) into per-module tensors, on any thread, checking every name
and shape against the base model. ``AdapterBank`` wraps the base model's targeted
``nn.Linear`` modules in ``AdapterLinear`` (the base weights stay shared and untouched:
nothing is merged or copied) and keeps each module's adapters stacked, one stack index per
adapter; the scheduler tells the bank which index each row of the next forward pass uses
(``set_rows``) and every wrapped layer applies ``lora_ops.adapted_linear``. Stack index 0
is the base model. The bank is touched by the engine thread only (``Scheduler.call``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from atelier.engine.lora_ops import Index, adapted_linear
from atelier.engine.quantize import QuantizedLinear
from atelier.errors import InvalidInput

PEFT_PREFIX = "base_model.model."
UNSUPPORTED = {
    "use_dora": "DoRA",
    "rank_pattern": "per-module ranks",
    "alpha_pattern": "per-module alphas",
    "modules_to_save": "fully trained extra modules",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable tokens",
    "fan_in_fan_out": "fan_in_fan_out weights",
    "lora_bias": "LoRA bias",
}


@dataclass
class ModuleWeights:
    """One module's part of an adapter: LoRA ``a`` (in, r) and ``b`` (r, out, scaled), or IA3 scales."""

    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    scale_in: torch.Tensor | None = None
    scale_out: torch.Tensor | None = None


@dataclass
class AdapterWeights:
    """A parsed adapter: its method, its modules' weights and their size in bytes."""

    method: str  # "lora" | "ia3"
    modules: dict[str, ModuleWeights] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for m in self.modules.values()
            for t in (m.a, m.b, m.scale_in, m.scale_out)
            if t is not None
        )


Linear = torch.nn.Linear | QuantizedLinear
"""A base layer an adapter may target: float, or weight-only quantized (``quantize.py``)."""


def linear_modules(model: torch.nn.Module) -> dict[str, Linear]:
    """The model's linear modules by qualified name (the ones an adapter may target)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, QuantizedLinear))}


def read_peft_adapter(directory: Path, linears: dict[str, Linear]) -> AdapterWeights:
    """Parse a PEFT LoRA or IA3 adapter directory against the base model's linear modules.

    Raises:
        InvalidInput: The directory is not a PEFT adapter, uses a feature this engine does
            not serve (DoRA, per-module ranks, ...), or does not fit the base model.
    """
    directory = Path(directory)
    try:
        config = json.loads((directory / "adapter_config.json").read_text())
        tensors = load_file(str(directory / "adapter_model.safetensors"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"not a PEFT adapter directory: {exc}") from None
    kind = config.get("peft_type")
    if kind not in ("LORA", "IA3"):
        raise InvalidInput(f"adapter type {kind!r} is not served (LoRA and IA3 are)")
    for key, what in UNSUPPORTED.items():
        if config.get(key) not in (None, False, {}, [], ""):
            raise InvalidInput(f"adapters with {what} ({key}) are not served")
    if config.get("bias", "none") != "none":
        raise InvalidInput("adapters that train biases are not served")
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            raise InvalidInput(f"unexpected tensor {key!r} in the adapter")
        module, _, part = key[len(PEFT_PREFIX):].rpartition(".lora_") if ".lora_" in key else (
            key[len(PEFT_PREFIX):].rpartition(".")
        )
        by_module.setdefault(module, {})[part] = value.to(torch.float32)
    weights = AdapterWeights("lora" if kind == "LORA" else "ia3")
    for module, parts in by_module.items():
        base = linears.get(module)
        if base is None:
            raise InvalidInput(f"the adapter targets {module!r}, which the base model has no linear layer for")
        out_f, in_f = base.out_features, base.in_features
        weights.modules[module] = (
            _lora_module(module, parts, config, in_f, out_f) if kind == "LORA" else _ia3_module(module, parts, in_f, out_f)
        )
    if not weights.modules:
        raise InvalidInput("the adapter has no weights")
    return weights


def _lora_module(module: str, parts: dict[str, torch.Tensor], config: dict, in_f: int, out_f: int) -> ModuleWeights:
    a, b = parts.get("A.weight"), parts.get("B.weight")
    if a is None or b is None or set(parts) != {"A.weight", "B.weight"}:
        raise InvalidInput(f"LoRA weights of {module!r} are incomplete or unexpected: {sorted(parts)}")
    r = a.shape[0]
    if a.shape != (r, in_f) or b.shape != (out_f, r):
        raise InvalidInput(f"LoRA weights of {module!r} have shapes {tuple(a.shape)}, {tuple(b.shape)}; "
                           f"the base layer is {in_f} → {out_f}")
    alpha = float(config.get("lora_alpha", r))
    scaling = alpha / (r ** 0.5) if config.get("use_rslora") else alpha / r
    return ModuleWeights(a=a.t().contiguous(), b=(b * scaling).t().contiguous())  # (in, r), (r, out)


def _ia3_module(module: str, parts: dict[str, torch.Tensor], in_f: int, out_f: int) -> ModuleWeights:
    vec = parts.get("ia3_l")
    if vec is None or len(parts) != 1:
        raise InvalidInput(f"IA3 weights of {module!r} are incomplete or unexpected: {sorted(parts)}")
    if tuple(vec.shape) == (1, in_f):  # feed-forward: the input is scaled
        return ModuleWeights(scale_in=vec.reshape(in_f).contiguous())
    if tuple(vec.shape) == (out_f, 1):
        return ModuleWeights(scale_out=vec.reshape(out_f).contiguous())
    raise InvalidInput(f"IA3 vector of {module!r} has shape {tuple(vec.shape)}; the base layer is {in_f} → {out_f}")


class AdapterLinear(torch.nn.Module):
    """A base linear layer (shared, unchanged) plus the stacked adapters of every slot."""

    def __init__(self, base: Linear, bank: "AdapterBank"):
        super().__init__()
        self.base = base
        self.bank = bank
        self.a: torch.Tensor | None = None  # (S, in, r)
        self.b: torch.Tensor | None = None  # (S, r, out)
        self.scale_in: torch.Tensor | None = None  # (S, in)
        self.scale_out: torch.Tensor | None = None  # (S, out)
        self.present: dict[str, set[int]] = {"lora": set(), "scale_in": set(), "scale_out": set()}
        """Stack indices that have weights here, per kind: terms no row of a batch uses are skipped."""

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self.bank.rows
        if idx is None:
            return self.base(x)
        used = self.bank.row_set
        lora = self.present["lora"] & used
        return adapted_linear(
            x, self.base, idx,
            self.a if lora else None, self.b if lora else None,
            self.scale_in if self.present["scale_in"] & used else None,
            self.scale_out if self.present["scale_out"] & used else None,
        )  # fmt: skip

    def stacked_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.a, self.b, self.scale_in, self.scale_out) if t is not None)


class AdapterBank:
    """The adapters served over one base model, stacked per module (see the module docstring)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.rows: Index | None = None
        """Stack index per row of the forward pass under way; None = every row is the base model."""
        self.row_set: set[int] = set()
        """The distinct stack indices of ``rows``."""
        self._linears = linear_modules(model)
        self._wrapped: dict[str, AdapterLinear] = {}
        self._capacity = 1  # stack rows, index 0 = the base model
        self._used: set[int] = set()
        self.versions: dict[int, int] = {}
        """Stack index → how many times it was installed or cleared (what was cached for it is stale after)."""
        self._device = next(model.parameters()).device  # the norms' weights stay float parameters

    # ---------------------------------------------------------------- any thread

    @property
    def linears(self) -> dict[str, Linear]:
        """The base model's linear layers, for ``read_peft_adapter``."""
        return self._linears

    def free_index(self, taken: set[int]) -> int:
        """The lowest stack index neither installed (until ``clear`` ran) nor in ``taken``."""
        index = 1
        while index in self._used or index in taken:
            index += 1
        return index

    def stacked_bytes(self) -> int:
        """Memory held by all stacks (including padding and free rows)."""
        return sum(m.stacked_bytes() for m in self._wrapped.values())

    # ---------------------------------------------------------------- engine thread

    def set_rows(self, indices: list[int]) -> None:
        """Declare the stack index of each row of the next forward pass."""
        self.row_set = set(indices)
        if not any(indices):
            self.rows = None
        elif all(i == indices[0] for i in indices):
            self.rows = indices[0]
        else:
            self.rows = torch.tensor(indices, dtype=torch.long, device=self._device)

    def install(self, index: int, weights: AdapterWeights) -> None:
        """Put ``weights`` at stack ``index`` (wrapping newly targeted layers, growing stacks)."""
        if index < 1:
            raise ValueError("stack index 0 is the base model")
        if index >= self._capacity:
            self._grow(max(index + 1, 2 * self._capacity))
        for name in weights.modules:
            if name not in self._wrapped:
                self._wrap(name)
        for name, layer in self._wrapped.items():
            self._write(layer, index, weights.modules.get(name))
        self._used.add(index)
        self.versions[index] = self.versions.get(index, 0) + 1

    def clear(self, index: int) -> None:
        """Reset stack ``index`` to the identity (no adapter) and free it."""
        for layer in self._wrapped.values():
            self._write(layer, index, None)
        self._used.discard(index)
        self.versions[index] = self.versions.get(index, 0) + 1

    def _wrap(self, name: str) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        layer = AdapterLinear(self._linears[name], self)
        setattr(parent, child, layer)
        self._wrapped[name] = layer

    def _grow(self, capacity: int) -> None:
        for layer in self._wrapped.values():
            for attr, fill in (("a", 0.0), ("b", 0.0), ("scale_in", 1.0), ("scale_out", 1.0)):
                old = getattr(layer, attr)
                if old is not None:
                    new = torch.full((capacity, *old.shape[1:]), fill, dtype=old.dtype, device=old.device)
                    new[: old.shape[0]] = old
                    setattr(layer, attr, new)
        self._capacity = capacity

    def _write(self, layer: AdapterLinear, index: int, w: ModuleWeights | None) -> None:
        out_f, in_f = layer.out_features, layer.in_features
        base = layer.base
        dtype, dev = (base.dtype, base.device) if isinstance(base, QuantizedLinear) else (base.weight.dtype,
                                                                                         base.weight.device)
        if w is not None and w.a is not None and w.b is not None:
            r = w.a.shape[1]
            if layer.a is None:
                layer.a = torch.zeros((self._capacity, in_f, r), dtype=dtype, device=dev)
                layer.b = torch.zeros((self._capacity, r, out_f), dtype=dtype, device=dev)
            elif layer.a.shape[2] < r:  # pad every adapter's rank up to the largest one
                layer.a = torch.nn.functional.pad(layer.a, (0, r - layer.a.shape[2]))
                layer.b = torch.nn.functional.pad(layer.b, (0, 0, 0, r - layer.b.shape[1]))
        for attr, dim in (("scale_in", in_f), ("scale_out", out_f)):
            vec = getattr(w, attr) if w is not None else None
            if vec is not None and getattr(layer, attr) is None:
                setattr(layer, attr, torch.ones((self._capacity, dim), dtype=dtype, device=dev))
        for kind, present in (("lora", w is not None and w.a is not None), ("scale_in", w is not None and
                              w.scale_in is not None), ("scale_out", w is not None and w.scale_out is not None)):
            (layer.present[kind].add if present else layer.present[kind].discard)(index)
        if layer.a is not None and layer.b is not None:
            layer.a[index].zero_()
            layer.b[index].zero_()
            if w is not None and w.a is not None and w.b is not None:
                r = w.a.shape[1]
                layer.a[index, :, :r] = w.a.to(dtype=dtype, device=dev)
                layer.b[index, :r, :] = w.b.to(dtype=dtype, device=dev)
        for attr in ("scale_in", "scale_out"):
            stack = getattr(layer, attr)
            if stack is not None:
                vec = getattr(w, attr) if w is not None else None
                stack[index] = vec.to(dtype=dtype, device=dev) if vec is not None else 1.0
