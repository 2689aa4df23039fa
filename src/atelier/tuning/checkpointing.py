"""Atomic directories on disk and the random-number state, for resumable training.

A directory is written under a temporary name, every file and the directory are fsynced,
and it is renamed into place: a reader sees either the whole directory or none of it,
even after ``kill -9`` or a power cut. This module knows files and RNGs, not models.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from atelier.durable import fsync_dir, write_atomically

_STEP_DIR = re.compile(r"^step-(\d+)$")


def write_dir_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Create (or replace) directory ``target`` with the files ``write(tmp_dir)`` puts in a temp dir.

    Args:
        target: the final directory; its parent is created if needed.
        write: fills the temporary directory it is given (flat files only).

    Returns:
        ``target``.
    """
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        for path in tmp.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        trash = None
        if target.exists():
            trash = parent / f".trash-{target.name}-{uuid.uuid4().hex[:8]}"
            os.rename(target, trash)
        os.rename(tmp, target)
        fsync_dir(parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_json_atomically(path: Path, data: dict) -> None:
    """Write a JSON file under a temporary name, fsync it and rename it into place."""
    write_atomically(path, json.dumps(data).encode(), mode=0o644)


def remove_leftovers(parent: Path) -> None:
    """Delete temporary and trash directories a killed writer left in ``parent``."""
    if parent.is_dir():
        for path in parent.iterdir():
            if path.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(path, ignore_errors=True)


def step_dirs(parent: Path, marker: str) -> list[tuple[int, Path]]:
    """Complete ``step-N`` directories in ``parent`` (those holding ``marker``), oldest first."""
    found = []
    if parent.is_dir():
        for path in parent.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / marker).is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def prune(parent: Path, marker: str, keep: int) -> None:
    """Delete all but the newest ``keep`` complete step directories."""
    for _, path in step_dirs(parent, marker)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- random-number state


def capture_rng(device: torch.device) -> dict:
    """The torch (CPU and, on CUDA, device) and Python ``random`` states."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    """Put back what ``capture_rng`` (or ``load_rng``) returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_rng(state: dict, path: Path) -> None:
    """Write an RNG state: tensors with torch's format, Python's state as plain lists."""
    version, internal, gauss = state["python"]
    payload = {k: v for k, v in state.items() if k != "python"}
    payload["python"] = {"version": version, "internal": list(internal), "gauss": gauss}
    torch.save(payload, path)


def load_rng(path: Path) -> dict:
    """Read what ``save_rng`` wrote (tensors and plain data only: ``weights_only``)."""
    payload = torch.load(path, weights_only=True)
    py = payload.pop("python")
    payload["python"] = (py["version"], tuple(py["internal"]), py["gauss"])
    return payload
