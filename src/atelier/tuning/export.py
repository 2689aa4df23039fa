"""A custom model's weights to and from one blob, for sealing in the object store and export.

The blob is an uncompressed POSIX tar holding exactly the two files of PEFT's interchange
format, ``adapter_config.json`` and ``adapter_model.safetensors``, in that order, or, for a
full fine-tune, the two files of a Hugging Face model, ``config.json`` and
``model.safetensors`` (its tokenizer is its base model's), with fixed metadata (mtime 0,
mode 0644, no owner), so the same weights always pack to the same bytes. Unpacking accepts
nothing else: no other names, paths, links or oversized members. The directory written back
loads with ``peft.PeftModel.from_pretrained(base, directory)``, or for a whole model with
``AutoModelForCausalLM.from_pretrained(directory)``. This module knows files and bytes;
nothing of tenants, keys or storage.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from atelier.durable import write_atomically
from atelier.errors import InvalidInput

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
PEFT_TYPES = ("LORA", "IA3")
"""Adapter kinds Atelier trains and serves."""
MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_FILES = (MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE)
"""A full fine-tune's files (``tuning.recipe`` saves them with ``save_pretrained``)."""
MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 4 << 30
MAX_MODEL_WEIGHTS_BYTES = 8 << 30
"""A whole model in float32 up to ``tuning.config.FULL_MAX_PARAMS`` (4 GB), with room for float64 buffers."""


def _check_config(raw: bytes) -> dict:
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes", param="adapter")
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput(f"{CONFIG_FILE} is not valid JSON", param="adapter") from None
    if not isinstance(config, dict) or config.get("peft_type") not in PEFT_TYPES:
        raise InvalidInput(f"{CONFIG_FILE} must describe a {' or '.join(PEFT_TYPES)} adapter", param="adapter")
    return config


def _check_model_config(raw: bytes) -> dict:
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidInput(f"{MODEL_CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes", param="adapter")
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput(f"{MODEL_CONFIG_FILE} is not valid JSON", param="adapter") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise InvalidInput(f"{MODEL_CONFIG_FILE} must describe a Hugging Face model (model_type)", param="adapter")
    return config


def _check_weights(raw: bytes, name: str = WEIGHTS_FILE) -> None:
    """A safetensors file: 8-byte little-endian header length, then a JSON header that fits."""
    if len(raw) < 8:
        raise InvalidInput(f"{name} is truncated", param="adapter")
    size = int.from_bytes(raw[:8], "little")
    try:
        if 8 + size > len(raw):
            raise ValueError
        header = json.loads(raw[8 : 8 + size])
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"{name} is not a safetensors file", param="adapter") from None


KINDS = {"adapter": ADAPTER_FILES, "model": MODEL_FILES}
"""What a blob holds, by its files."""
_LIMITS = {CONFIG_FILE: MAX_CONFIG_BYTES, WEIGHTS_FILE: MAX_WEIGHTS_BYTES, MODEL_CONFIG_FILE: MAX_CONFIG_BYTES,
           MODEL_WEIGHTS_FILE: MAX_MODEL_WEIGHTS_BYTES}


def _check(files: dict[str, bytes]) -> str:
    """The kind of a complete set of files ("adapter" or "model"), each file checked."""
    if WEIGHTS_FILE in files:
        _check_config(files[CONFIG_FILE])
        _check_weights(files[WEIGHTS_FILE])
        return "adapter"
    _check_model_config(files[MODEL_CONFIG_FILE])
    _check_weights(files[MODEL_WEIGHTS_FILE], MODEL_WEIGHTS_FILE)
    return "model"


def _tar(contents: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _read_files(directory: Path, names: tuple[str, ...], what: str) -> dict[str, bytes]:
    contents = {}
    for name in names:
        path = Path(directory) / name
        if not path.is_file():
            raise InvalidInput(f"the {what} directory has no {name}", param="adapter")
        contents[name] = path.read_bytes()
    return contents


def pack_model(directory: Path) -> bytes:
    """A full fine-tune's ``config.json`` and ``model.safetensors`` as one deterministic tar.

    Raises:
        InvalidInput: a file is missing, or not a model config or safetensors file.
    """
    contents = _read_files(directory, MODEL_FILES, "model")
    _check(contents)
    return _tar(contents)


def pack_adapter(directory: Path) -> bytes:
    """The PEFT files of ``directory`` as one deterministic tar.

    Args:
        directory: holds ``adapter_config.json`` and ``adapter_model.safetensors`` (other
            files, such as a README, are left out).

    Returns:
        The tar's bytes.

    Raises:
        InvalidInput: a file is missing or not a LoRA/IA3 adapter in safetensors form.
    """
    contents = _read_files(directory, ADAPTER_FILES, "adapter")
    _check(contents)
    return _tar(contents)


def read_weights(data: bytes) -> tuple[str, dict[str, bytes]]:
    """The kind ("adapter" or "model") and the two files of packed weights, checked.

    Returns:
        ``("adapter", {"adapter_config.json": ..., "adapter_model.safetensors": ...})`` or
        ``("model", {"config.json": ..., "model.safetensors": ...})``.

    Raises:
        InvalidInput: not a tar, other, repeated or mixed members, a member that is not a regular
            file or is too large, or contents that are not a LoRA/IA3 adapter or a model.
    """
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.name not in _LIMITS or member.name in files:
                    raise InvalidInput(f"unexpected entry {member.name!r} in the adapter archive", param="adapter")
                if not member.isreg() or member.size > _LIMITS[member.name]:
                    raise InvalidInput(f"{member.name} in the adapter archive is not a regular file", param="adapter")
                fh = tar.extractfile(member)
                files[member.name] = fh.read() if fh is not None else b""
    except tarfile.TarError:
        raise InvalidInput("the adapter archive is not a tar file", param="adapter") from None
    kind = "model" if MODEL_WEIGHTS_FILE in files or MODEL_CONFIG_FILE in files else "adapter"
    missing = [name for name in KINDS[kind] if name not in files]
    if missing or len(files) != len(KINDS[kind]):
        raise InvalidInput(f"the adapter archive lacks {', '.join(missing) or 'nothing but mixes kinds'}",
                           param="adapter")
    return _check(files), files


def read_adapter(data: bytes) -> dict[str, bytes]:
    """The two files of a packed adapter (``read_weights``), refusing a whole model."""
    kind, files = read_weights(data)
    if kind != "adapter":
        raise InvalidInput("these are a full fine-tune's weights, not an adapter", param="adapter")
    return files


def adapter_config(data: bytes) -> dict:
    """The parsed ``adapter_config.json`` of a packed adapter (e.g. its ``peft_type``, ``r``)."""
    return json.loads(read_adapter(data)[CONFIG_FILE])


def unpack_weights(data: bytes, directory: Path, *, overwrite: bool = False) -> str:
    """Write packed weights back as a plain PEFT directory, or a model directory for a full fine-tune.

    Each file is written under a temporary name, fsynced and renamed, so a reader never
    sees half a file.

    Args:
        data: bytes from ``pack_adapter`` or ``pack_model``.
        directory: created if missing; may hold other files.
        overwrite: replace files of the same names already there (otherwise refuse).

    Returns:
        The kind written: "adapter" or "model".

    Raises:
        InvalidInput: the archive is not valid, or the directory already holds such files and
            ``overwrite`` is False.
    """
    kind, files = read_weights(data)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        present = [name for name in files if (directory / name).exists()]
        if present:
            raise InvalidInput(f"{directory} already holds {', '.join(present)}", param="directory")
    for name, content in files.items():
        write_atomically(directory / name, content, mode=0o600)
    return kind


def unpack_adapter(data: bytes, directory: Path, *, overwrite: bool = False) -> Path:
    """Write a packed adapter back as a plain PEFT directory (``unpack_weights``, refusing a whole model).

    Returns:
        ``directory``.
    """
    read_adapter(data)
    unpack_weights(data, directory, overwrite=overwrite)
    return Path(directory)


def weights_kind(directory: Path) -> str:
    """What a directory of a custom model's weights holds: "model" (a full fine-tune) or "adapter"."""
    directory = Path(directory)
    return "model" if (directory / MODEL_CONFIG_FILE).is_file() and not (directory / CONFIG_FILE).exists() else "adapter"


def sort_module_lists(config_path: Path) -> None:
    """Sort the module-name lists of a PEFT ``adapter_config.json`` so identical runs write identical bytes."""
    config = json.loads(config_path.read_text())
    for key in ("target_modules", "feedforward_modules", "modules_to_save"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
