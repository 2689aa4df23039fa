"""Durable file writes: a crash leaves the old file or the new one, never half of either.

One place for the pattern every store of the service needs (sealed objects, key files,
the audit head, job checkpoints, exported adapters): write a temporary file beside the
target, created exclusively with the file's final mode (0600 by default: secrets never
exist anywhere in a wider mode, whatever the umask), fsync it, rename it over the target,
fsync the directory. Knows nothing about what the bytes are.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or an unlink in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temporary(path: Path, data: bytes, mode: int = 0o600) -> Path:
    """Write ``data`` to a new temporary file beside ``path`` (mode ``mode``), fsynced; return its path.

    The caller renames (or links) it into place; on failure the temporary file is removed.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: a temporary file (mode ``mode``), fsynced, renamed over it,
    the directory fsynced."""
    path = Path(path)
    tmp = write_temporary(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
