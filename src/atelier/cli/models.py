"""``atelier models`` and ``atelier models export``: the models offered, and a custom model exported.

``models`` lists what the server offers (with your served custom models). ``export`` writes
a custom model's adapter as a plain PEFT directory (``adapter_config.json`` +
``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained`` loads anywhere; the
unpacking is ``atelier.tuning.export``'s, which checks every member of the archive. With
``--format merged`` or ``--format onnx`` it builds, on this machine, a merged Hugging Face
directory or an ONNX Runtime GenAI model (``cli/model_export.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from atelier.cli.common import client_for, fail, format_table, load_settings
from atelier.cli.model_export import ExportError, ExportFormat, export_built
from atelier.errors import InvalidInput
from atelier.tuning.export import unpack_adapter

models_app = typer.Typer(name="models", help="Models: list them; export a custom model's adapter.",
                         invoke_without_command=True)


def _positive(field: str) -> Any:
    """A column of ``field`` that shows "-" for 0 (a limit that does not apply)."""
    return lambda row: row.get(field) or None


MODEL_COLUMNS = [
    ("ID", "id"), ("CAPABILITIES", "capabilities"), ("CONTEXT", _positive("context_length")),
    ("MAX OUTPUT", _positive("max_output_tokens")), ("DIMS", _positive("dimensions")),
]  # fmt: skip


def format_models_table(listed: list[dict[str, Any]]) -> str:
    """A plain aligned table: id, capabilities, context, max output, dims ("-" when not applicable)."""
    return format_table(listed, MODEL_COLUMNS)


@models_app.callback()
def models(ctx: typer.Context) -> None:
    """List the models the server offers, with their limits (and your custom models)."""
    if ctx.invoked_subcommand is not None:
        return
    typer.echo(format_models_table(client_for(ctx).models.list()))


@models_app.command("export")
def export_model(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(help="Custom model id (cm_…).")],
    directory: Annotated[Path, typer.Argument(help="Directory to write the files into.")],
    fmt: Annotated[ExportFormat, typer.Option(
        "--format", "-f", case_sensitive=False,
        help="peft: the adapter as a PEFT directory; merged: base + adapter as one Hugging Face model (a full "
        "fine-tune: its weights with the base's tokenizer); "
        "onnx: an ONNX Runtime GenAI model (fp32, CPU) with its adapter (needs the export extra: "
        "pip install 'atelier\\[export]'). merged and onnx are built here, from this machine's copy of the base model.",
    )] = ExportFormat.peft,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files already there.")] = False,
) -> None:
    """Export a custom model: its PEFT adapter, merged weights, or an ONNX model."""
    if fmt is not ExportFormat.peft:
        settings = load_settings()
        try:
            done = export_built(client_for(ctx, settings), model_id, directory, fmt, settings=settings, force=force)
        except ExportError as exc:
            fail(str(exc))
        typer.echo(done)
        return
    packed = client_for(ctx).custom_models.adapter(model_id)
    try:
        unpack_adapter(packed, directory, overwrite=force)
    except InvalidInput as exc:
        if exc.param != "directory":  # a full fine-tune has no adapter
            fail(f"{model_id} has no PEFT adapter ({exc.message}): export it with --format merged or onnx")
        fail(exc.message + ("" if force else " (pass --force to overwrite)"))
    typer.echo(f"wrote adapter_config.json and adapter_model.safetensors to {directory}")
