"""PEFT adapter directories to and from one blob, for sealing in the object store and export.

The blob is an uncompressed POSIX tar holding exactly the two files of PEFT's interchange
format, ``adapter_config.json`` and ``adapter_model.safetensors``, in that order, with
fixed metadata (mtime 0, mode 0644, no owner), so the same adapter always packs to the same
bytes. Unpacking accepts nothing else: no other names, paths, links or oversized members.
The directory written back loads with ``peft.PeftModel.from_pretrained(base, directory)``.
This module knows files and bytes; nothing of tenants, keys or storage.
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
MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 4 << 30


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


def _check_weights(raw: bytes) -> None:
    """A safetensors file: 8-byte little-endian header length, then a JSON header that fits."""
    if len(raw) < 8:
        raise InvalidInput(f"{WEIGHTS_FILE} is truncated", param="adapter")
    size = int.from_bytes(raw[:8], "little")
    try:
        if 8 + size > len(raw):
            raise ValueError
        header = json.loads(raw[8 : 8 + size])
        if not isinstance(header, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput(f"{WEIGHTS_FILE} is not a safetensors file", param="adapter") from None


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
    directory = Path(directory)
    contents = {}
    for name in ADAPTER_FILES:
        path = directory / name
        if not path.is_file():
            raise InvalidInput(f"the adapter directory has no {name}", param="adapter")
        contents[name] = path.read_bytes()
    _check_config(contents[CONFIG_FILE])
    _check_weights(contents[WEIGHTS_FILE])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ADAPTER_FILES:
            info = tarfile.TarInfo(name)
            info.size = len(contents[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(contents[name]))
    return buf.getvalue()


def read_adapter(data: bytes) -> dict[str, bytes]:
    """The two files of a packed adapter, checked.

    Returns:
        ``{"adapter_config.json": ..., "adapter_model.safetensors": ...}``.

    Raises:
        InvalidInput: not a tar, other or repeated members, a member that is not a regular
            file or is too large, or contents that are not a LoRA/IA3 adapter.
    """
    limits = {CONFIG_FILE: MAX_CONFIG_BYTES, WEIGHTS_FILE: MAX_WEIGHTS_BYTES}
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.name not in limits or member.name in files:
                    raise InvalidInput(f"unexpected entry {member.name!r} in the adapter archive", param="adapter")
                if not member.isreg() or member.size > limits[member.name]:
                    raise InvalidInput(f"{member.name} in the adapter archive is not a regular file", param="adapter")
                fh = tar.extractfile(member)
                files[member.name] = fh.read() if fh is not None else b""
    except tarfile.TarError:
        raise InvalidInput("the adapter archive is not a tar file", param="adapter") from None
    missing = [name for name in ADAPTER_FILES if name not in files]
    if missing:
        raise InvalidInput(f"the adapter archive lacks {', '.join(missing)}", param="adapter")
    _check_config(files[CONFIG_FILE])
    _check_weights(files[WEIGHTS_FILE])
    return files


def adapter_config(data: bytes) -> dict:
    """The parsed ``adapter_config.json`` of a packed adapter (e.g. its ``peft_type``, ``r``)."""
    return json.loads(read_adapter(data)[CONFIG_FILE])


def unpack_adapter(data: bytes, directory: Path, *, overwrite: bool = False) -> Path:
    """Write a packed adapter back as a plain PEFT directory.

    Each file is written under a temporary name, fsynced and renamed, so a reader never
    sees half a file.

    Args:
        data: bytes from ``pack_adapter``.
        directory: created if missing; may hold other files.
        overwrite: replace adapter files already there (otherwise refuse).

    Returns:
        ``directory``.

    Raises:
        InvalidInput: the archive is not a valid adapter, or the directory already holds
            adapter files and ``overwrite`` is False.
    """
    files = read_adapter(data)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        present = [name for name in ADAPTER_FILES if (directory / name).exists()]
        if present:
            raise InvalidInput(f"{directory} already holds {', '.join(present)}", param="directory")
    for name in ADAPTER_FILES:
        write_atomically(directory / name, files[name], mode=0o600)
    return directory


def sort_module_lists(config_path: Path) -> None:
    """Sort the module-name lists of a PEFT ``adapter_config.json`` so identical runs write identical bytes."""
    config = json.loads(config_path.read_text())
    for key in ("target_modules", "feedforward_modules", "modules_to_save"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
