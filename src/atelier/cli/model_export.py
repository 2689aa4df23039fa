"""``atelier models export --format merged|onnx``: a custom model as plain weights or as ONNX, made here.

The adapter comes through the API (``GET /v1/custom-models/{id}`` for its base, ``…/adapter``
for the packed PEFT files); the base model comes from this machine's catalog (built-ins plus
``ATELIER_CATALOG_FILE``) through ``engine.loading.model_directory``, the same files the
service serves (a GGUF base is converted once into the cache). The merging and building are
``tuning.merge``'s and ``tuning.onnx_export``'s. Reading the base model's local files is the one
thing here that is not a client of the API (like ``audit verify`` reading the audit files).
"""

from __future__ import annotations

import tempfile
from enum import Enum
from pathlib import Path

import typer

from atelier.catalog import Catalog
from atelier.client import AtelierClient
from atelier.errors import AtelierError, NotFound
from atelier.settings import Settings
from atelier.tuning.export import unpack_weights


class ExportFormat(str, Enum):
    """What ``atelier models export`` writes."""

    peft = "peft"
    merged = "merged"
    onnx = "onnx"


class ExportError(Exception):
    """An export that cannot be done; its message is for the user."""


def say(message: str) -> None:
    """A progress line on stderr (stdout keeps the result)."""
    typer.echo(f"{message}...", err=True)


def local_base_directory(base_model: str, settings: Settings) -> Path:
    """The Hugging Face directory of the catalog chat model ``base_model`` on this machine.

    Raises:
        ExportError: the local catalog has no such chat model, or its files are not here.
    """
    from atelier.engine.loading import model_directory

    try:
        spec = Catalog.load(settings.catalog_file).get(base_model, kind="chat")
    except NotFound:
        raise ExportError(
            f"the base model {base_model!r} is not in this machine's catalog (the built-in models and "
            "ATELIER_CATALOG_FILE): add it there to export with it"
        ) from None
    except AtelierError as exc:
        raise ExportError(exc.message) from None
    if spec.source.gguf_file is not None:
        say(f"preparing the base model {base_model} (the first time, its GGUF is converted: about a minute)")
    try:
        return model_directory(spec, settings.cache_path)
    except NotFound as exc:
        raise ExportError(f"the base model {base_model!r} is not available on this machine: {exc.message}") from None


def export_built(
    client: AtelierClient, model_id: str, directory: Path, fmt: ExportFormat, *, settings: Settings, force: bool
) -> str:
    """Export custom model ``model_id`` as merged weights or ONNX into ``directory``.

    Returns:
        The line to print once done.

    Raises:
        ExportError: the base is not here, an optional dependency is missing, the adapter is
            not supported, or ``directory`` holds the files already (without ``force``).
    """
    from atelier.tuning.merge import complete_model, merge_adapter
    from atelier.tuning.onnx_export import export_onnx, require_onnx_tools

    try:
        if fmt is ExportFormat.onnx:
            require_onnx_tools()
        base = client.custom_models.get(model_id)["base_model"]
        say(f"downloading the adapter of {model_id}")
        packed = client.custom_models.adapter(model_id)
        base_dir = local_base_directory(base, settings)
        with tempfile.TemporaryDirectory(prefix="atelier-export-") as work:
            adapter_dir = Path(work) / "adapter"
            kind = unpack_weights(packed, adapter_dir)
            if fmt is ExportFormat.merged and kind == "model":
                complete_model(base_dir, adapter_dir, directory, overwrite=force, progress=say)
                return f"wrote the fully fine-tuned model {model_id} (with {base}'s tokenizer) to {directory}"
            if fmt is ExportFormat.merged:
                merge_adapter(base_dir, adapter_dir, directory, overwrite=force, progress=say)
                return f"wrote the merged model ({base} + {model_id}) to {directory}"
            done = export_onnx(base_dir, adapter_dir, directory, title=f"{model_id} on {base}", overwrite=force,
                               progress=say)  # fmt: skip
    except AtelierError as exc:
        hint = " (pass --force to overwrite)" if exc.param == "directory" and not force else ""
        raise ExportError(exc.message + hint) from None
    with_adapter = (f" with {done.adapter_file.name}" if done.adapter_file else
                    " (a full fine-tune: no adapter)" if kind == "model" else " (adapter merged into the weights)")
    return f"wrote the ONNX Runtime GenAI model ({base} + {model_id}){with_adapter} to {directory}; see README.md"
