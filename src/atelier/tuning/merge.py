"""A base model and its PEFT adapter merged into plain weights: a Hugging Face directory for any tool.

``merge_adapter`` loads the base in float32, applies the adapter with PEFT and folds it in with
PEFT's own ``merge_and_unload`` (LoRA: ``W ← W + (α/r)·B·A``; IA3: ``W ← W·diag(l)`` for a
feed-forward module, ``W ← diag(l)·W`` otherwise), then writes ``model.safetensors``,
``config.json``, ``generation_config.json`` and the base's tokenizer files, which
``transformers.AutoModelForCausalLM.from_pretrained`` loads like any model. A full fine-tune has
nothing to merge: ``complete_model`` writes its weights and config with the base's tokenizer.
``publish_directory`` moves a finished export into place without clobbering files by surprise.
This module knows directories and PEFT; nothing of the catalog, the service or its tenants.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from atelier.durable import fsync_dir
from atelier.errors import InvalidInput
from atelier.tuning.export import CONFIG_FILE, PEFT_TYPES

Progress = Callable[[str], None]
"""Where a slow step says what it is doing (the CLI prints it)."""


def quiet(_message: str) -> None:
    """The default progress sink: says nothing."""


def adapter_type(adapter_dir: Path) -> str:
    """The ``peft_type`` of a PEFT adapter directory: ``"LORA"`` or ``"IA3"``.

    Raises:
        InvalidInput: no readable ``adapter_config.json``, or an adapter of another kind.
    """
    try:
        config = json.loads((Path(adapter_dir) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        raise InvalidInput(f"{adapter_dir} holds no readable {CONFIG_FILE}", param="adapter") from None
    peft_type = config.get("peft_type") if isinstance(config, dict) else None
    if peft_type not in PEFT_TYPES:
        raise InvalidInput(f"{CONFIG_FILE} must describe a {' or '.join(PEFT_TYPES)} adapter", param="adapter")
    return peft_type


@contextmanager
def staging_directory(directory: Path) -> Iterator[Path]:
    """A new empty directory beside ``directory`` (same file system, so its files move by rename), removed after."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_directory(staging: Path, directory: Path, *, overwrite: bool = False) -> Path:
    """Move every file of ``staging`` into ``directory`` (created if missing; other files stay).

    Raises:
        InvalidInput: ``directory`` already holds a file of the same name and ``overwrite`` is
            False (nothing is moved then).
    """
    directory = Path(directory)
    names = sorted(p.name for p in Path(staging).iterdir())
    directory.mkdir(parents=True, exist_ok=True)
    present = [name for name in names if (directory / name).exists()]
    if present and not overwrite:
        raise InvalidInput(f"{directory} already holds {', '.join(present)}", param="directory")
    for name in names:
        target = directory / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(Path(staging) / name, target)
    fsync_dir(directory)
    return directory


def merged_model(base_dir: Path, adapter_dir: Path):
    """The base of ``base_dir`` (float32, eval mode) with the adapter of ``adapter_dir`` merged in.

    Raises:
        InvalidInput: the adapter is not a LoRA or IA3 adapter, or does not fit the base.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_type(adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    try:
        adapted = PeftModel.from_pretrained(base, adapter_dir)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise InvalidInput(f"the adapter does not fit the base model: {exc}", param="adapter") from None
    merged = adapted.merge_and_unload()
    merged.eval()
    merged.requires_grad_(False)
    return merged


def merge_adapter(
    base_dir: Path, adapter_dir: Path, directory: Path, *, overwrite: bool = False, progress: Progress = quiet
) -> Path:
    """Write base + adapter as one plain Hugging Face model directory.

    Args:
        base_dir: the base model's Hugging Face directory (config, safetensors, tokenizer).
        adapter_dir: a PEFT LoRA or IA3 adapter of that base.
        directory: where to write (created if missing; may hold other files).
        overwrite: replace model files already there (otherwise refuse).
        progress: told about each slow step.

    Returns:
        ``directory``, holding ``model.safetensors``, ``config.json``,
        ``generation_config.json`` and the tokenizer files.

    Raises:
        InvalidInput: the adapter is not a LoRA/IA3 adapter of this base, or ``directory``
            already holds model files and ``overwrite`` is False.
    """
    from transformers import AutoTokenizer

    progress(f"merging the {adapter_type(adapter_dir)} adapter into the base weights (float32)")
    model = merged_model(base_dir, adapter_dir)
    with staging_directory(directory) as staging:
        progress(f"writing the merged model to {directory}")
        model.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(staging)
        return publish_directory(staging, directory, overwrite=overwrite)


def complete_model(
    base_dir: Path, model_dir: Path, directory: Path, *, overwrite: bool = False, progress: Progress = quiet
) -> Path:
    """Write a full fine-tune (``config.json`` + ``model.safetensors``) as a complete Hugging Face model directory.

    Its weights and config are copied as they are; the base's ``generation_config.json`` and
    tokenizer files are added (a full fine-tune keeps its base's tokenizer).

    Args:
        base_dir: the base model's Hugging Face directory.
        model_dir: the full fine-tune's files (``tuning.export.unpack_weights`` of a ``model`` blob).
        directory: where to write (created if missing; may hold other files).
        overwrite: replace model files already there (otherwise refuse).
        progress: told about each slow step.

    Returns:
        ``directory``, holding the same files as ``merge_adapter`` writes.

    Raises:
        InvalidInput: ``model_dir`` is not a full fine-tune, or ``directory`` already holds
            model files and ``overwrite`` is False.
    """
    from transformers import AutoTokenizer

    from atelier.tuning.export import MODEL_FILES

    missing = [name for name in MODEL_FILES if not (Path(model_dir) / name).is_file()]
    if missing:
        raise InvalidInput(f"{model_dir} holds no {', '.join(missing)} (not a full fine-tune)", param="adapter")
    with staging_directory(directory) as staging:
        progress(f"writing the fine-tuned model with its base's tokenizer to {directory}")
        for name in MODEL_FILES:
            shutil.copyfile(Path(model_dir) / name, staging / name)
        if (Path(base_dir) / "generation_config.json").is_file():
            shutil.copyfile(Path(base_dir) / "generation_config.json", staging / "generation_config.json")
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(staging)
        return publish_directory(staging, directory, overwrite=overwrite)
