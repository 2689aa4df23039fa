"""A base model and its adapter as an ONNX Runtime GenAI model (fp32, CPU) with a multi-LoRA adapter file.

``export_onnx`` runs ONNX Runtime GenAI's own model builder (``python -m
onnxruntime_genai.models.builder -p fp32 -e cpu``) on the base's Hugging Face directory with
its ``adapter_path`` option, which writes each adapted projection as ``x·W + (x·A)·(α/r)B``
with the LoRA pair as separate initializers (``….lora_A.MatMul.weight`` (in, r),
``….lora_B.MatMul.weight`` (r, out), scale folded into B). ``extract_lora_adapter`` then does
what Olive's ``extract-adapters`` does: every LoRA initializer becomes a graph input whose
default is zeros (so ``model.onnx`` alone is the base model) and its trained values go to
``adapter.onnx_adapter`` (ONNX Runtime's ``AdapterFormat``), which ``og.Adapters`` loads and
``Generator.set_active_adapter`` switches on. The rank is a symbolic dimension, so any LoRA
of the same base and target modules loads on the same ``model.onnx``.

ORT GenAI's adapters are LoRA only: an IA3 (T-Few) adapter is merged first (``merge.py``)
and the ONNX model is of the merged weights, with no adapter file; a full fine-tune is built
from its own weights (``merge.complete_model``), with no adapter file either.
This module knows directories, ONNX and PEFT files; nothing of the catalog or the service.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from atelier.errors import InvalidInput, Unavailable
from atelier.tuning.export import CONFIG_FILE, weights_kind
from atelier.tuning.merge import (
    Progress,
    adapter_type,
    complete_model,
    merge_adapter,
    publish_directory,
    quiet,
    staging_directory,
)

ADAPTER_FILE = "adapter.onnx_adapter"
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
NOTE_FILE = "README.md"
INSTALL_HINT = "pip install 'atelier[export]'"
LORA_MARKERS = (".lora_A.", ".lora_B.")
"""Substrings of the builder's names for LoRA weights (``model.layers.0.attn.q_proj.lora_A.MatMul.weight``)."""
UNSUPPORTED_LORA = {"use_dora": "DoRA", "lora_bias": "LoRA bias", "modules_to_save": "fully trained extra modules"}
BUILDER_TIMEOUT_S = 3600


@dataclass(frozen=True)
class OnnxExport:
    """What ``export_onnx`` wrote."""

    directory: Path
    adapter_file: Path | None
    """``adapter.onnx_adapter`` (LoRA), or None when the adapter was merged into the weights (IA3)."""


def require_onnx_tools() -> None:
    """Check that the ONNX export's optional dependencies import.

    Raises:
        Unavailable: one is missing; the message names the pip command that installs them.
    """
    missing = []
    for module in ("onnx", "onnx_ir", "onnxruntime", "onnxruntime_genai"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module.replace("_", "-"))
    if missing:
        raise Unavailable(f"the ONNX export needs {', '.join(missing)}: {INSTALL_HINT}")


def _check_lora(adapter_dir: Path) -> None:
    config = json.loads((Path(adapter_dir) / CONFIG_FILE).read_text())
    used = [name for key, name in UNSUPPORTED_LORA.items() if config.get(key)]
    if used:
        raise InvalidInput(f"the ONNX export does not support {', '.join(used)} adapters", param="format")


def run_model_builder(source_dir: Path, output_dir: Path, work_dir: Path, adapter_dir: Path | None = None) -> None:
    """Run ONNX Runtime GenAI's model builder (fp32, CPU) in a child process; its output goes to a log.

    Raises:
        InvalidInput: the builder failed (e.g. an architecture it does not know); the message
            ends with the last lines of its log.
    """
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source_dir), "-o", str(output_dir),
           "-p", "fp32", "-e", "cpu", "-c", str(work_dir / "builder-cache")]  # fmt: skip
    if adapter_dir is not None:
        cmd += ["--extra_options", f"adapter_path={adapter_dir}"]
    log = work_dir / "builder.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("wb") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=BUILDER_TIMEOUT_S,
                              check=False)
    if done.returncode != 0 or not (output_dir / MODEL_FILE).is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
        raise InvalidInput("the ONNX Runtime GenAI model builder failed:\n" + "\n".join(tail), param="format")


def extract_lora_adapter(model_dir: Path, adapter_file: Path) -> int:
    """Move the LoRA weights of a built ``model.onnx`` out into an ``.onnx_adapter`` file.

    For each initializer named like ``….lora_A.…`` or ``….lora_B.…``: its values go to the
    adapter file, the initializer becomes zeros of the same shape and the graph gains an input
    of the same name (an overridable initializer) whose rank dimension is ``lora_rank``.
    ``model.onnx`` and its external data are rewritten in place.

    Returns:
        How many tensors the adapter file holds.

    Raises:
        InvalidInput: the model has no LoRA weights.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    path = Path(model_dir) / MODEL_FILE
    model = onnx.load(str(path))  # external data loaded: the old data file may be replaced
    params: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if not any(marker in init.name for marker in LORA_MARKERS):
            continue
        weight = numpy_helper.to_array(init)  # lora_A (in, r) or lora_B (r, out)
        params[init.name] = weight
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(weight), init.name))
        rank_axis = 1 if ".lora_A." in init.name else 0
        shape = [("lora_rank" if axis == rank_axis else size) for axis, size in enumerate(weight.shape)]
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, shape))
    if not params:
        raise InvalidInput("the built ONNX model has no LoRA weights to extract", param="format")
    (Path(model_dir) / DATA_FILE).unlink(missing_ok=True)  # onnx.save appends to an existing data file
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE)
    adapter = ort.AdapterFormat()
    adapter.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(w) for name, w in params.items()})
    adapter.export_adapter(str(adapter_file))
    return len(params)


def _note(title: str, lora: bool, whole: bool = False) -> str:
    """The README written beside the model: what it is and how to run it (greedy, the model's chat template)."""
    about = (
        f"`{ADAPTER_FILE}` holds the adapter (ONNX Runtime multi-LoRA). `{MODEL_FILE}` alone is the *base* model:\n"
        "its LoRA inputs default to zeros, so activate the adapter as below. Adapters of other LoRA exports of\n"
        "the same base and target modules (any rank) load on this model too.\n"
        if lora
        else "A full fine-tune: every weight of the model is the fine-tuned one (no adapter).\n"
        if whole
        else "The adapter (IA3 / T-Few) is merged into the weights: ORT GenAI's adapters are LoRA only.\n"
    )
    load = f'adapters = og.Adapters(model)\nadapters.load("{ADAPTER_FILE}", "custom")\n' if lora else ""
    activate = '\ngenerator.set_active_adapter(adapters, "custom")' if lora else ""
    return f"""# {title}

ONNX model for ONNX Runtime GenAI (float32, CPU), built by `onnxruntime_genai.models.builder`.
{about}
```python
import json

import onnxruntime_genai as og   # pip install onnxruntime-genai

model = og.Model(".")            # this directory
tokenizer = og.Tokenizer(model)
{load}messages = [{{"role": "user", "content": "What is the capital of Japan?"}}]
prompt = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length=256)   # greedy
generator = og.Generator(model, params){activate}
generator.append_tokens(tokenizer.encode(prompt))
while not generator.is_done():
    generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)))
```
"""


def export_onnx(
    base_dir: Path,
    adapter_dir: Path,
    directory: Path,
    *,
    title: str = "Exported model",
    overwrite: bool = False,
    progress: Progress = quiet,
) -> OnnxExport:
    """Write base + adapter as an ONNX Runtime GenAI model directory (fp32, CPU).

    Args:
        base_dir: the base model's Hugging Face directory.
        adapter_dir: a PEFT LoRA or IA3 adapter of that base.
        directory: where to write (created if missing; may hold other files).
        title: first line of the README written beside the model.
        overwrite: replace files already there (otherwise refuse).
        progress: told about each slow step.

    Returns:
        The directory and the adapter file (None for IA3, merged into the weights).

    Raises:
        Unavailable: ``onnxruntime-genai``, ``onnx`` or ``onnx-ir`` is not installed.
        InvalidInput: the adapter is not supported, the builder failed, or ``directory``
            already holds these files and ``overwrite`` is False.
    """
    require_onnx_tools()
    whole = weights_kind(adapter_dir) == "model"
    lora = not whole and adapter_type(adapter_dir) == "LORA"
    if lora:
        _check_lora(adapter_dir)
    with staging_directory(directory) as work:
        built = work / "model"
        source, adapter_path = base_dir, adapter_dir
        if whole:
            source, adapter_path = complete_model(base_dir, adapter_dir, work / "merged", progress=progress), None
        elif not lora:
            source, adapter_path = merge_adapter(base_dir, adapter_dir, work / "merged", progress=progress), None
        progress("building the ONNX model with ONNX Runtime GenAI's model builder (fp32, CPU)")
        run_model_builder(Path(source), built, work, adapter_path)
        if lora:
            progress(f"extracting the LoRA weights into {ADAPTER_FILE}")
            extract_lora_adapter(built, built / ADAPTER_FILE)
        (built / NOTE_FILE).write_text(_note(title, lora, whole))
        publish_directory(built, directory, overwrite=overwrite)
    return OnnxExport(Path(directory), Path(directory) / ADAPTER_FILE if lora else None)


def onnx_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int, *, adapter: bool = True) -> list[int]:
    """Greedy tokens of an exported model under ONNX Runtime GenAI (stops at its end-of-sequence ids).

    Args:
        model_dir: a directory ``export_onnx`` wrote.
        prompt_ids: the prompt's token ids.
        max_new_tokens: most tokens to generate.
        adapter: activate ``adapter.onnx_adapter`` when the directory has one (False: the base).

    Returns:
        The generated token ids (without the prompt).
    """
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + max_new_tokens)
    generator = og.Generator(model, params)
    adapter_file = Path(model_dir) / ADAPTER_FILE
    if adapter and adapter_file.is_file():
        adapters = og.Adapters(model)
        adapters.load(str(adapter_file), "custom")
        generator.set_active_adapter(adapters, "custom")
    generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)[len(prompt_ids) :]]
