"""ONNX export of a tiny model: ONNX Runtime GenAI generates what PEFT does, with the adapter file and without it,
and with another export's adapter of another rank.

Each export runs ONNX Runtime GenAI's real model builder in a child process (a few seconds).
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from atelier.errors import InvalidInput, Unavailable
from atelier.tuning.onnx_export import (
    ADAPTER_FILE,
    export_onnx,
    onnx_greedy,
    require_onnx_tools,
)
from tests.unit.tuning.export_checks import (
    assert_same_greedy,
    greedy,
    save_random_adapter,
    save_tiny_base,
)

pytest.importorskip("onnxruntime_genai", reason="pip install 'atelier[export]'")
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]

EOS = frozenset({257})
PROMPTS = [list(b"Hello there"), list("Été à Montréal".encode()), [256, 10, 20, 30]]
TIE = 1e-3  # logits ~±10; measured PyTorch vs ONNX Runtime differences ~1e-5 on this model


@pytest.fixture
def base(tmp_path):
    return save_tiny_base(tmp_path / "base")


def test_lora_export_runs_under_onnxruntime_genai_with_its_adapter_file(base, tmp_path):
    adapted = save_random_adapter(base, tmp_path / "adapter", "lora", seed=5, r=4)
    lines = []
    done = export_onnx(tmp_path / "base", tmp_path / "adapter", tmp_path / "onnx", title="cm_x on tiny",
                       progress=lines.append)  # fmt: skip

    assert done.adapter_file == tmp_path / "onnx" / ADAPTER_FILE and done.adapter_file.is_file()
    names = {p.name for p in (tmp_path / "onnx").iterdir()}
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "README.md"} <= names
    assert "builder" in " ".join(lines) and ADAPTER_FILE in (tmp_path / "onnx" / "README.md").read_text()
    assert "cm_x on tiny" in (tmp_path / "onnx" / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base", "onnx"]  # no work files left
    changed = 0
    for prompt in PROMPTS:
        want = greedy(adapted, prompt, 12, EOS)
        got = onnx_greedy(tmp_path / "onnx", prompt, 12)
        assert_same_greedy(adapted, prompt, got, want, EOS, TIE)
        plain = onnx_greedy(tmp_path / "onnx", prompt, 12, adapter=False)  # model.onnx alone: the base
        assert_same_greedy(base, prompt, plain, greedy(base, prompt, 12, EOS), EOS, TIE)
        changed += plain != got
    assert changed, "the adapter file changes what the model generates"

    other = save_random_adapter(base, tmp_path / "other", "lora", seed=7, r=2)  # same targets, another rank
    export_onnx(tmp_path / "base", tmp_path / "other", tmp_path / "onnx-other")
    shutil.copy(tmp_path / "onnx-other" / ADAPTER_FILE, tmp_path / "onnx" / ADAPTER_FILE)  # on the first model
    for prompt in PROMPTS:
        got = onnx_greedy(tmp_path / "onnx", prompt, 12)
        assert_same_greedy(other, prompt, got, greedy(other, prompt, 12, EOS), EOS, TIE)


def test_ia3_is_merged_into_the_onnx_weights(base, tmp_path):
    adapted = save_random_adapter(base, tmp_path / "adapter", "ia3", seed=6)
    done = export_onnx(tmp_path / "base", tmp_path / "adapter", tmp_path / "onnx")

    assert done.adapter_file is None and not (tmp_path / "onnx" / ADAPTER_FILE).exists()
    assert "merged into the weights" in (tmp_path / "onnx" / "README.md").read_text()
    for prompt in PROMPTS:
        got = onnx_greedy(tmp_path / "onnx", prompt, 12)
        assert_same_greedy(adapted, prompt, got, greedy(adapted, prompt, 12, EOS), EOS, TIE)


def test_unsupported_adapters_and_existing_files_are_refused(base, tmp_path):
    save_random_adapter(base, tmp_path / "adapter", "lora", seed=5)
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(InvalidInput, match="does not support DoRA"):
        export_onnx(tmp_path / "base", tmp_path / "adapter", tmp_path / "onnx")
    config_path.write_text(json.dumps(config))
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "genai_config.json").write_text("{}")
    with pytest.raises(InvalidInput, match="already holds") as caught:
        export_onnx(tmp_path / "base", tmp_path / "adapter", tmp_path / "onnx")
    assert caught.value.param == "directory" and (tmp_path / "onnx" / "genai_config.json").read_text() == "{}"


def test_a_builder_failure_is_reported_with_its_log(base, tmp_path):
    save_random_adapter(base, tmp_path / "adapter", "lora", seed=5)
    config = json.loads((tmp_path / "base" / "config.json").read_text())
    (tmp_path / "base" / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))
    with pytest.raises(InvalidInput, match="model builder failed"):
        export_onnx(tmp_path / "base", tmp_path / "adapter", tmp_path / "onnx")


def test_a_missing_optional_dependency_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # import fails as if not installed
    with pytest.raises(Unavailable, match=r"onnxruntime-genai: pip install 'atelier\[export\]'"):
        require_onnx_tools()
