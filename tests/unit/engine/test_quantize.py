"""Weight-only quantization: the kernels against the math, whole tiny models, adapters on top (vs PEFT).

Tolerances: the kernels round activations and outputs to bf16 (8 significant bits), so a
product is compared with the fp32 product of the same de-quantized weights to 1.5 % of its
norm (measured 0.3 %), a whole tiny model's logits to 3 % (measured 1.8 %; 5 % with adapters,
measured at most 2.3 %), never
bit for bit (AVX2 and AVX-512 round differently).
"""

from __future__ import annotations

import copy

import pytest
import torch

from atelier.engine.adapters import AdapterBank, read_peft_adapter
from atelier.engine.loading import tiny_loaded
from atelier.engine.quantize import (
    GEMM_ROWS,
    GROUP,
    QuantizedEmbedding,
    QuantizedLinear,
    fake_quantize,
    quantize_int4,
    quantize_int8,
    quantize_model,
    weight_bytes,
)
from atelier.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
MODES = ["int8", "int4"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm()) if not a.requires_grad else float(((a - b).norm() / b.norm()).detach())


def test_int8_rounds_each_weight_to_its_nearest_step():
    torch.manual_seed(0)
    w = torch.randn(48, 96) * torch.logspace(-2, 1, 48)[:, None]  # rows of very different ranges
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    err = (fake_quantize(w, "int8") - w).abs()  # (N, K)
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-5)).all())


def test_int4_rounds_each_group_to_its_16_levels():
    torch.manual_seed(0)
    w = torch.randn(16, 4 * GROUP)
    q, scale, lo = quantize_int4(w)
    assert int(q.min()) >= 0 and int(q.max()) <= 15 and scale.shape == (16, 4)
    err = (fake_quantize(w, "int4") - w).abs().reshape(16, 4, GROUP)  # (N, G, group)
    assert bool((err <= scale[..., None] / 2 * (1 + 1e-4) + 1e-7).all())
    exact = torch.arange(16.0).repeat(16, 2 * GROUP // 16)[:, : 2 * GROUP] * 0.25 - 1  # already on a Q4_1 grid
    torch.testing.assert_close(fake_quantize(exact, "int4"), exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rows", [1, 5, GEMM_ROWS + 16])  # decode (kernel) and prefill (int8: fp32 GEMM)
@pytest.mark.parametrize("bias", [False, True])
def test_quantized_linear_equals_the_float_product_of_its_weights(mode, rows, bias):
    torch.manual_seed(1)
    linear = torch.nn.Linear(64, 96, bias=bias)
    layer = QuantizedLinear.from_linear(linear, mode)
    x = torch.randn(2, rows, 64)  # (B, T, K)
    expected = torch.nn.functional.linear(x, fake_quantize(linear.weight, mode), linear.bias)  # (B, T, N)
    out = layer(x)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert rel(out, expected) < 0.015


def test_an_int4_model_keeps_layers_whose_inputs_do_not_split_in_groups_in_int8():
    model = tiny_loaded().model
    model.model.layers[0].mlp.down_proj = torch.nn.Linear(48, 64, bias=False)  # 48 is not a multiple of 32
    quantize_model(model, "int4")
    assert model.model.layers[0].mlp.down_proj.mode == "int8"
    assert model.model.layers[0].mlp.up_proj.mode == "int4"
    with pytest.raises(ValueError, match="int3"):
        quantize_model(tiny_loaded().model, "int3")


def reference(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """A float copy whose weights are what ``quantize_model(model, mode)`` represents them by."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        table = fake_quantize(ref.get_input_embeddings().weight, "int8")
        ref.get_input_embeddings().weight.copy_(table)  # the tied head reads the same int8 table
        for name, m in ref.named_modules():
            if isinstance(m, torch.nn.Linear) and m is not ref.get_output_embeddings():
                m.weight.copy_(fake_quantize(m.weight, mode))
    return ref


@pytest.mark.parametrize("mode", MODES)
def test_a_quantized_model_computes_what_its_weights_say_in_a_fraction_of_the_memory(mode):
    float_model = tiny_loaded(seed=3).model
    ref = reference(float_model, mode)
    model = quantize_model(copy.deepcopy(float_model), mode)
    assert isinstance(model.get_input_embeddings(), QuantizedEmbedding)
    assert model.get_output_embeddings().q is model.get_input_embeddings().q  # tied: one int8 table
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (3, 9))
    with torch.no_grad():
        out = model(input_ids=ids).logits  # (B, T, V)
        assert rel(out, ref(input_ids=ids).logits) < 0.03  # measured 0.014 (int8), 0.018 (int4) on AVX2 and AVX-512
        off = rel(out, float_model(input_ids=ids).logits)  # random weights: 16 levels per group move a lot
        assert 0 < off < {"int8": 0.1, "int4": 0.6}[mode]
    float_bytes = weight_bytes(float_model)
    assert weight_bytes(model) < float_bytes / 3
    if mode == "int4":
        assert weight_bytes(model) < weight_bytes(quantize_model(copy.deepcopy(float_model), "int8"))


@pytest.mark.parametrize("mode", MODES)
def test_adapters_on_a_quantized_base_equal_peft_on_its_weights(tmp_path, mode):
    from tests.unit.engine.test_adapter_serving import save_adapter

    float_model = tiny_loaded(seed=1).model.eval()
    ref = reference(float_model, mode)
    served = quantize_model(copy.deepcopy(float_model), mode)
    bank = AdapterBank(served)
    peft = {}
    for i, kind in enumerate(["lora-all", "ia3", "lora-qv"], start=1):
        peft[i] = save_adapter(ref, tmp_path / kind, kind, seed=40 + i)
        bank.install(i, read_peft_adapter(tmp_path / kind, bank.linears))
    rows = [0, 1, 2, 3, 1]
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (len(rows), 6))
    with torch.no_grad():
        bank.set_rows(rows)
        mixed = served(input_ids=ids).logits  # (N, T, V): one forward pass, every row its adapter
        for n, index in enumerate(rows):
            alone = (ref if index == 0 else peft[index])(input_ids=ids[n : n + 1]).logits[0]
            assert rel(mixed[n], alone) < 0.05, (n, index)  # measured <= 0.023: bf16 rounding, 2 random layers
            if index:  # each adapter moves its row 10x more than that (measured 0.4-0.9)
                assert rel(alone, ref(input_ids=ids[n : n + 1]).logits[0]) > 0.2


def test_the_setting_overrides_the_catalog_for_all_models_or_per_model():
    assert Settings(quantization=None).quantization_of("m", "int4") == "int4"
    assert Settings(quantization="none").quantization_of("m", "int4") == "none"
    per_model = Settings(quantization="m=int8,other=none")
    assert per_model.quantization_of("m", "int4") == "int8"
    assert per_model.quantization_of("third", "int4") == "int4"
    with pytest.raises(ValueError):
        Settings(quantization="int3")
