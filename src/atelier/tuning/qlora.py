"""QLoRA on a CPU: the frozen base's decoder linear layers quantized to int8 before the adapter is trained.

torchao's weight-only int8 (``Int8WeightOnlyConfig``, per output channel) replaces the weights of
the decoder's ``nn.Linear`` layers in place with int8 tensor subclasses; PEFT wraps such layers
with its torchao LoRA layer (``TorchaoLoraLinear``), the adapter trains in float on top, and the
gradients flow through the quantized layers to the earlier adapters. The embedding table and
the output head stay float. The adapter is an ordinary PEFT adapter: it serves on the float or
the quantized base alike. The model is changed for good: callers pass a model loaded for this
run (a fine-tuning job loads one per job). Public torchao and transformers API only.
"""

from __future__ import annotations

import gc

import torch

from atelier.errors import InvalidInput


def quantize_frozen_base(model: torch.nn.Module, mode: str) -> int:
    """Quantize the decoder's linear layers of a causal LM in place; returns how many were quantized.

    Raises:
        InvalidInput: An unknown mode (param ``training_config.quantize_base``), or torchao missing.
    """
    if mode == "none":
        return 0
    if mode != "int8":
        raise InvalidInput(f"quantize_base {mode!r} is not supported (none, int8)",
                           param="training_config.quantize_base")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise InvalidInput(f"quantize_base needs torchao ({exc}): pip install torchao",
                           param="training_config.quantize_base") from None
    decoder = model.get_decoder()
    count = sum(isinstance(m, torch.nn.Linear) for m in decoder.modules())
    quantize_(decoder, Int8WeightOnlyConfig())
    gc.collect()
    return count
