"""QLoRA: LoRA trained over an int8 (torchao) frozen base; the adapter serves on the float and the quantized base."""

from __future__ import annotations

import asyncio

import pytest
import torch

from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.engine.client import LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.engine.quantize import quantize_model
from atelier.engine.types import GenerationRequest, SamplingParams
from atelier.errors import InvalidInput
from atelier.settings import Settings
from atelier.tuning.config import TuneConfig
from atelier.tuning.qlora import quantize_frozen_base
from atelier.tuning.recipe import run

TINY = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=256,
                 max_output_tokens=16)


def test_the_decoder_is_quantized_in_place_and_stays_close(split):
    float_model, model = tiny_loaded().model, tiny_loaded().model
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    count = quantize_frozen_base(model, "int8")
    assert count == sum(isinstance(m, torch.nn.Linear) for m in float_model.get_decoder().modules()) > 0
    weight = model.get_decoder().layers[0].self_attn.q_proj.weight
    assert type(weight).__module__.startswith("torchao")
    assert model.lm_head.weight.dtype == torch.float32  # the head (tied embedding) stays float
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, float_model(input_ids=ids).logits
    assert float((ours - theirs).norm() / theirs.norm()) < 0.05
    with pytest.raises(InvalidInput) as refused:
        quantize_frozen_base(tiny_loaded().model, "int4")
    assert refused.value.param == "training_config.quantize_base"
    with pytest.raises(InvalidInput):
        TuneConfig.from_request({"quantize_base": "int4"})


def test_an_adapter_trained_on_the_int8_base_serves_on_float_and_quantized_bases(split, tmp_path):
    train, val = split
    loaded = tiny_loaded()
    quantize_frozen_base(loaded.model, "int8")
    config = TuneConfig(type="lora", total_training_epochs=4, training_batch_size=2, learning_rate=1e-2,
                        log_model_metrics_interval_in_steps=1, quantize_base="int8", early_stopping_patience=0)
    result = run(config, loaded, train, val, tmp_path / "run")
    losses = [m["train_loss"] for m in result.curve]
    assert losses[-1] < losses[0]
    settings = Settings(data_dir=tmp_path / "data", threads=1)
    ids = list(range(10, 30))
    for base in ("float", "int4"):
        served = tiny_loaded()
        if base == "int4":
            quantize_model(served.model, "int4")
        engine = LocalEngine(Catalog([*BUILTIN, TINY]), settings, preloaded={"tiny": served})
        try:
            slot = engine.add_adapter("tiny", "qlora", result.adapter_dir)

            async def greedy(adapter_slot):
                request = GenerationRequest(f"q-{adapter_slot}", ids, SamplingParams(max_tokens=8, temperature=0,
                                                                                    logprobs=0),
                                            adapter_slot=adapter_slot)
                return [lp.logprob for e in [x async for x in engine.generate("tiny", request)] for lp in e.logprobs]

            with_adapter, without = asyncio.run(greedy(slot)), asyncio.run(greedy(None))
            assert with_adapter and with_adapter != without, base  # the adapter changes what the base answers
        finally:
            engine.close()
