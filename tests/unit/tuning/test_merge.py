"""Merged export: base + adapter folded into plain weights give PEFT's logits, as a directory transformers loads."""

from __future__ import annotations

import json

import pytest
import torch

from atelier.errors import InvalidInput
from atelier.tuning.merge import adapter_type, merge_adapter
from tests.unit.tuning.export_checks import save_random_adapter, save_tiny_base

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture
def base(tmp_path):
    return save_tiny_base(tmp_path / "base")


@pytest.mark.parametrize("kind", ["lora", "ia3"])
def test_merged_weights_give_the_adapted_models_logits(base, tmp_path, kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from atelier.engine.loading import tiny_tokenizer

    adapted = save_random_adapter(base, tmp_path / "adapter", kind, seed=3)
    lines = []
    out = merge_adapter(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged", progress=lines.append)

    assert out == tmp_path / "merged" and lines and kind.upper() in lines[0]
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names and not any(n.startswith("adapter") for n in names)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k or "ia3" in k for k in merged.state_dict())
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (3, 12))  # (B, T)
    with torch.no_grad():
        want = adapted(input_ids=ids).logits  # (B, T, V)
        got = merged(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # fp32 sums in another order: not bit-exact
    assert (plain - want).abs().max() > 0.1, "the adapter changes the model"
    assert AutoTokenizer.from_pretrained(out)("hé")["input_ids"] == tiny_tokenizer()("hé")["input_ids"]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 257


def test_files_already_there_are_kept_unless_forced(base, tmp_path):
    save_random_adapter(base, tmp_path / "adapter", seed=1)
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text("{}")
    (tmp_path / "merged" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="already holds config.json") as caught:
        merge_adapter(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged")
    assert caught.value.param == "directory" and (tmp_path / "merged" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "merged"]  # no staging left behind
    merge_adapter(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged", overwrite=True)
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"] == "llama"
    assert (tmp_path / "merged" / "notes.txt").read_text() == "mine"


def test_adapters_that_are_not_lora_or_ia3_or_do_not_fit_are_refused(base, tmp_path):
    (tmp_path / "prefix").mkdir()
    (tmp_path / "prefix" / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(InvalidInput, match="LORA or IA3"):
        adapter_type(tmp_path / "prefix")
    with pytest.raises(InvalidInput, match="no readable adapter_config.json"):
        merge_adapter(tmp_path / "base", tmp_path / "missing", tmp_path / "out")
    from atelier.engine.loading import tiny_model

    save_random_adapter(tiny_model(vocab_size=259, hidden_size=32), tmp_path / "other", seed=1)  # another width
    with pytest.raises(InvalidInput, match="does not fit the base model"):
        merge_adapter(tmp_path / "base", tmp_path / "other", tmp_path / "out")
    assert not (tmp_path / "out").exists()
