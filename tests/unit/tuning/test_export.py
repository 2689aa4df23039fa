"""Adapter export: a trained adapter packed, unpacked and loaded by PEFT gives the trained model's logits."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch

from atelier.engine.loading import tiny_loaded
from atelier.errors import InvalidInput
from atelier.tuning.config import TuneConfig
from atelier.tuning.export import adapter_config, pack_adapter, read_adapter, unpack_adapter
from atelier.tuning.recipe import Recipe


def train_and_probe(loaded, split, workdir, method):
    """Train briefly; the result and the trained model's logits on a probe, taken before teardown."""
    config = TuneConfig(
        type=method, total_training_epochs=2, training_batch_size=4, learning_rate=5e-2, warmup_ratio=0.0,
        log_model_metrics_interval_in_steps=2,
    )
    probe = torch.tensor([split[1][0].input_ids])  # (1, T)
    recipe = Recipe(config, loaded, *split, workdir)
    recipe.setup()
    try:
        result = recipe.train()
        recipe.model.eval()
        with torch.no_grad():
            logits = recipe.model(input_ids=probe).logits  # (1, T, V)
    finally:
        recipe.teardown()
    return result, probe, logits


@pytest.fixture(params=["lora", "tfew"])
def trained(request, loaded, split, tmp_path):
    return (request.param, *train_and_probe(loaded, split, tmp_path / "work", request.param))


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_exported_directory_loads_in_peft_with_the_trained_logits(trained, tmp_path):
    from peft import PeftModel

    method, result, probe, trained_logits = trained
    blob = pack_adapter(result.adapter_dir)
    out = unpack_adapter(blob, tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    fresh = tiny_loaded()  # the same base, built again elsewhere
    with torch.no_grad():
        base_logits = fresh.model(input_ids=probe).logits
        peft_model = PeftModel.from_pretrained(fresh.model, out).eval()
        loaded_logits = peft_model(input_ids=probe).logits
    assert (trained_logits - base_logits).abs().max() > 1e-3  # training changed something
    torch.testing.assert_close(loaded_logits, trained_logits, rtol=0, atol=1e-6)

    config = adapter_config(blob)
    assert config["peft_type"] == ("LORA" if method == "lora" else "IA3")
    assert config["base_model_name_or_path"] == "tiny"


def test_packing_is_deterministic_and_round_trips(trained, tmp_path):
    _, result, _, _ = trained
    blob = pack_adapter(result.adapter_dir)
    assert pack_adapter(result.adapter_dir) == blob
    out = unpack_adapter(blob, tmp_path / "x")
    assert pack_adapter(out) == blob
    files = read_adapter(blob)
    assert files["adapter_model.safetensors"] == (result.adapter_dir / "adapter_model.safetensors").read_bytes()


def test_unpack_refuses_to_overwrite_unless_asked(trained, tmp_path):
    _, result, _, _ = trained
    blob = pack_adapter(result.adapter_dir)
    unpack_adapter(blob, tmp_path / "d")
    with pytest.raises(InvalidInput):
        unpack_adapter(blob, tmp_path / "d")
    unpack_adapter(blob, tmp_path / "d", overwrite=True)


def tar_of(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


CONFIG = json.dumps({"peft_type": "LORA", "r": 8}).encode()
WEIGHTS = (2).to_bytes(8, "little") + b"{}"


@pytest.mark.parametrize(
    "blob",
    [
        b"not a tar at all" * 40,
        tar_of({"adapter_config.json": CONFIG}),
        tar_of({"adapter_config.json": CONFIG, "adapter_model.safetensors": WEIGHTS, "../evil": b"x"}),
        tar_of({"adapter_config.json": CONFIG, "adapter_model.safetensors": WEIGHTS, "adapter_model.safetensors ": b""}),
        tar_of({"adapter_config.json": CONFIG}, symlink="adapter_model.safetensors"),
        tar_of({"adapter_config.json": b"{not json", "adapter_model.safetensors": WEIGHTS}),
        tar_of({"adapter_config.json": json.dumps({"peft_type": "PROMPT_TUNING"}).encode(), "adapter_model.safetensors": WEIGHTS}),
        tar_of({"adapter_config.json": CONFIG, "adapter_model.safetensors": b"\xff" * 8 + b"{}"}),
    ],
)
def test_anything_but_a_plain_adapter_is_refused(blob, tmp_path):
    with pytest.raises(InvalidInput) as err:
        unpack_adapter(blob, tmp_path / "d")
    assert err.value.param == "adapter"
    assert not (tmp_path / "d").exists()


def test_a_minimal_valid_archive_unpacks(tmp_path):
    out = unpack_adapter(tar_of({"adapter_config.json": CONFIG, "adapter_model.safetensors": WEIGHTS}), tmp_path / "d")
    assert (out / "adapter_config.json").read_bytes() == CONFIG


def test_pack_needs_both_files(tmp_path):
    (tmp_path / "adapter_config.json").write_bytes(CONFIG)
    with pytest.raises(InvalidInput, match="adapter_model.safetensors"):
        pack_adapter(tmp_path)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_two_identical_runs_pack_identical_bytes(loaded, split, tmp_path):
    """The adapter config's module lists are sorted: equal runs give byte-equal packed adapters."""
    import json

    packed = []
    for i in range(2):
        result, _, _ = train_and_probe(loaded, split, tmp_path / f"run{i}", "tfew")
        config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
        assert config["target_modules"] == sorted(config["target_modules"])
        packed.append(pack_adapter(result.adapter_dir))
    assert packed[0] == packed[1]


MODEL_CONFIG = json.dumps({"model_type": "llama", "vocab_size": 259}).encode()


def test_a_full_fine_tune_packs_and_unpacks_as_a_model(tmp_path):
    from transformers import AutoModelForCausalLM

    from atelier.tuning.export import pack_model, read_weights, unpack_weights

    model = tiny_loaded().model
    model.save_pretrained(str(tmp_path / "src"))
    blob = pack_model(tmp_path / "src")
    assert blob == pack_model(tmp_path / "src")  # deterministic
    kind, files = read_weights(blob)
    assert kind == "model" and sorted(files) == ["config.json", "model.safetensors"]
    assert unpack_weights(blob, tmp_path / "out") == "model"
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    with pytest.raises(InvalidInput, match="full fine-tune"):  # the adapter-only readers refuse it
        unpack_adapter(blob, tmp_path / "adapter")
    with pytest.raises(InvalidInput, match="has no config.json"):
        pack_model(tmp_path / "adapter")


@pytest.mark.parametrize("members", [
    {"config.json": MODEL_CONFIG},  # half a model
    {"config.json": MODEL_CONFIG, "model.safetensors": WEIGHTS, "adapter_config.json": CONFIG},  # kinds mixed
    {"config.json": json.dumps({"no": "model_type"}).encode(), "model.safetensors": WEIGHTS},
    {"config.json": MODEL_CONFIG, "model.safetensors": b"\xff" * 8 + b"{}"},
])
def test_anything_but_a_plain_model_is_refused(members, tmp_path):
    from atelier.tuning.export import unpack_weights

    with pytest.raises(InvalidInput) as err:
        unpack_weights(tar_of(members), tmp_path / "d")
    assert err.value.param == "adapter" and not (tmp_path / "d").exists()
