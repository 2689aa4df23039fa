"""``atelier models export --format merged|onnx``: the adapter through the API, the base from the local catalog.

The API is a stub behind ``httpx.MockTransport`` answering the two routes the export reads
(the custom model, its packed adapter); the base is a tiny random Llama registered through
``ATELIER_CATALOG_FILE``, as on a machine that has it.
"""

from __future__ import annotations

import json
import os
import sys

import httpx
import pytest
import torch
from typer.testing import CliRunner

from atelier.cli import State, app
from atelier.tuning.export import pack_adapter
from tests.unit.tuning.export_checks import save_random_adapter, save_tiny_base

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

MODEL_ID = "cm_" + "a" * 24


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A tiny base in the local catalog and a stub API serving a LoRA custom model of it."""
    for name in list(os.environ):
        if name.startswith("ATELIER_"):
            monkeypatch.delenv(name)
    base = save_tiny_base(tmp_path / "base")
    adapted = save_random_adapter(base, tmp_path / "adapter", "lora", seed=2)
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps([{"name": "tiny-base", "kind": "chat", "source": {"path": str(tmp_path / "base")}}]))
    monkeypatch.setenv("ATELIER_CATALOG_FILE", str(catalog))
    monkeypatch.setenv("ATELIER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ATELIER_API_KEY", "test-key")
    packed = pack_adapter(tmp_path / "adapter")
    custom = {"id": MODEL_ID, "object": "custom_model", "base_model": "tiny-base", "method": "lora"}

    def api(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/custom-models/{MODEL_ID}":
            return httpx.Response(200, json=custom)
        if request.url.path == f"/v1/custom-models/{MODEL_ID}/adapter":
            return httpx.Response(200, content=packed, headers={"content-type": "application/x-tar"})
        return httpx.Response(404, json={"error": {"message": "The custom model does not exist", "type": "not_found"}})

    return {"adapted": adapted, "custom": custom, "transport": httpx.MockTransport(api), "catalog": catalog}


def export(setup, *args: str):
    return CliRunner().invoke(app, ["models", "export", *args], obj=State(transport=setup["transport"]))


def test_merged_export_writes_a_model_transformers_loads(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    done = export(setup, MODEL_ID, str(tmp_path / "merged"), "--format", "merged")
    assert done.exit_code == 0, done.output
    assert f"wrote the merged model (tiny-base + {MODEL_ID}) to {tmp_path / 'merged'}" in done.stdout
    assert "downloading the adapter" in done.stderr and "merging the LORA adapter" in done.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([list(range(40, 60))])  # (1, T)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, setup["adapted"](input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
    again = export(setup, MODEL_ID, str(tmp_path / "merged"), "--format", "merged")
    assert again.exit_code == 1 and "already holds" in again.stderr and "--force" in again.stderr
    assert export(setup, MODEL_ID, str(tmp_path / "merged"), "--format", "MERGED", "--force").exit_code == 0


def test_peft_stays_the_default(setup, tmp_path):
    done = export(setup, MODEL_ID, str(tmp_path / "peft"))
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_clear_errors(setup, tmp_path, monkeypatch):
    bad = export(setup, MODEL_ID, str(tmp_path / "x"), "--format", "gguf")
    assert bad.exit_code == 2 and "'gguf' is not one of" in bad.output and "peft" in bad.output

    setup["custom"]["base_model"] = "not-here-7b"
    missing = export(setup, MODEL_ID, str(tmp_path / "x"), "--format", "merged")
    assert missing.exit_code == 1
    assert "the base model 'not-here-7b' is not in this machine's catalog" in missing.stderr
    assert "ATELIER_CATALOG_FILE" in missing.stderr and not (tmp_path / "x").exists()

    setup["custom"]["base_model"] = "gone"
    entry = {"name": "gone", "kind": "chat", "source": {"path": str(tmp_path / "deleted")}}
    setup["catalog"].write_text(json.dumps([entry]))
    away = export(setup, MODEL_ID, str(tmp_path / "x"), "--format", "merged")
    assert away.exit_code == 1 and "the base model 'gone' is not available on this machine" in away.stderr

    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # as if the extra were not installed
    no_ort = export(setup, MODEL_ID, str(tmp_path / "x"), "--format", "onnx")
    assert no_ort.exit_code == 1 and "pip install 'atelier[export]'" in no_ort.stderr

    unknown = export(setup, "cm_" + "0" * 24, str(tmp_path / "x"), "--format", "merged")
    assert unknown.exit_code == 1 and "does not exist" in unknown.stderr


@pytest.mark.slow
def test_onnx_export_through_the_cli(setup, tmp_path):
    pytest.importorskip("onnxruntime_genai", reason="pip install 'atelier[export]'")
    from atelier.tuning.onnx_export import onnx_greedy
    from tests.unit.tuning.export_checks import assert_same_greedy, greedy

    done = export(setup, MODEL_ID, str(tmp_path / "onnx"), "--format", "onnx")
    assert done.exit_code == 0, done.output
    assert "with adapter.onnx_adapter" in done.stdout and "building the ONNX model" in done.stderr
    assert f"{MODEL_ID} on tiny-base" in (tmp_path / "onnx" / "README.md").read_text()
    prompt = list(b"Hello there")
    got = onnx_greedy(tmp_path / "onnx", prompt, 10)
    assert_same_greedy(setup["adapted"], prompt, got, greedy(setup["adapted"], prompt, 10, frozenset({257})),
                       frozenset({257}), tie=1e-3)
