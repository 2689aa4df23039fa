"""``full`` fine-tuning in the recipe on a tiny random Llama: every weight trained on a copy, a whole model saved."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from atelier.errors import InvalidInput
from atelier.tuning import config as config_module
from atelier.tuning.config import TuneConfig
from atelier.tuning.recipe import run


def full(**kw) -> TuneConfig:
    """9 steps over the 10 training examples (as ``test_recipe.resumable``), every weight trained."""
    base = dict(type="full", total_training_epochs=3, training_batch_size=2, gradient_accumulation_steps=2,
                log_model_metrics_interval_in_steps=2, checkpoint_interval_in_steps=3, learning_rate=3e-3,
                warmup_ratio=0.2, lr_scheduler="cosine")
    return TuneConfig(**{**base, **kw})


def model_tensors(workdir) -> dict[str, torch.Tensor]:
    return load_file(workdir / "model" / "model.safetensors")


def test_full_trains_every_weight_of_a_copy_and_saves_a_whole_model(loaded, split, tmp_path):
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    result = run(full(total_training_epochs=8, learning_rate=1e-2), loaded, *split, tmp_path)
    first, last = result.curve[0], result.curve[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"], (first, last)
    assert result.method == "full" and result.trainable_params == result.total_params
    assert result.trainable_params == sum(p.numel() for p in loaded.model.parameters())
    assert result.adapter_dir == tmp_path / "model"
    assert {"config.json", "model.safetensors"} <= {p.name for p in result.adapter_dir.iterdir()}
    # the base the run borrowed is untouched: same tensors, eval mode, frozen
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    # the saved model loads with transformers, every linear weight moved, and it scores the task better
    tuned = AutoModelForCausalLM.from_pretrained(result.adapter_dir).eval()
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])}
    assert {k for k in before if k.endswith("proj.weight")} <= changed
    ids = torch.tensor([split[0][0].input_ids])
    with torch.no_grad():
        assert not torch.allclose(tuned(ids).logits, loaded.model(ids).logits, atol=1e-3)


def test_full_resumes_to_the_same_weights(loaded, split, tmp_path):
    run(full(), loaded, *split, tmp_path / "ref")
    steps = []

    def stop_after_four():
        return len(steps) >= 4

    cut = run(full(), loaded, *split, tmp_path / "cut",
              lambda e: steps.append(e["step"]) if e["type"] == "metrics" else None, stop_after_four)
    assert cut.interrupted and 0 < cut.steps < cut.total_steps
    again = run(full(), loaded, *split, tmp_path / "cut")
    assert again.resumed_from_step == cut.steps
    a, b = model_tensors(tmp_path / "ref"), model_tensors(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_with_gradient_checkpointing_trains_the_same_weights(loaded, split, tmp_path):
    run(full(), loaded, *split, tmp_path / "plain")
    run(full(gradient_checkpointing=True), loaded, *split, tmp_path / "checkpointed")
    a, b = model_tensors(tmp_path / "plain"), model_tensors(tmp_path / "checkpointed")
    for name in a:  # the same math recomputed, up to float rounding
        assert float((a[name] - b[name]).norm()) <= 1e-4 * max(float(a[name].norm()), 1e-6), name


def test_full_refuses_models_over_the_limit(loaded, split, tmp_path, monkeypatch):
    monkeypatch.setattr("atelier.tuning.recipe.FULL_MAX_PARAMS", 1000)
    with pytest.raises(InvalidInput) as err:
        run(full(), loaded, *split, tmp_path)
    assert err.value.param == "training_config.type" and "LoRA" in err.value.message
    assert config_module.FULL_MAX_PARAMS == 1_000_000_000
