"""Job checkpoints that travel through the sealed object store, so a job can resume on any node.

A handler writes its checkpoints in ``ctx.workdir`` (local, fast) and hands each one to
``JobCheckpoints.save``: the directory is archived (tar) and sealed under the job's tenancy
as an object of kind ``checkpoint``. When a job starts on a node whose work directory lacks
that checkpoint (another node ran the job before, or this node lost its disk), ``restore``
puts it back first, and the handler resumes from it as if it had written it there. Once
the job has ended for good, ``discard`` removes it (``kept_while_resumable`` does both ends).

Each job has two slots whose ids derive from the job's (``ckpa_…``, ``ckpb_…``): a save
fills the free slot, then deletes the other, so a crash at any point leaves a complete
checkpoint (two after a crash between the two steps: the higher step wins). Only the newest
checkpoint is kept here. This module knows nothing about what the files are, nor about Ray.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from atelier.durable import fsync_dir
from atelier.errors import NotFound
from atelier.jobs.context import JobContext, JobStopped
from atelier.store.objects import ObjectStore
from atelier.store.tables import Job

__all__ = ["KIND", "JobCheckpoints", "Stored", "slot_ids"]

log = logging.getLogger(__name__)

KIND = "checkpoint"
"""The object kind of a stored checkpoint (``store.tables.OBJECT_KINDS``)."""
MANIFEST = "manifest.json"
DATA = "data"
"""Archive layout: ``manifest.json`` (``{"path", "step"}``) and the directory's files under ``data/``."""


def slot_ids(job_id: str) -> tuple[str, str]:
    """The two object ids a job's checkpoint can have: derived from the job's, opaque, at most 29 characters."""
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:24]
    return f"ckpa_{digest}", f"ckpb_{digest}"


@dataclass(frozen=True)
class Stored:
    """A stored checkpoint, opened: where it goes in the work directory, its step, its archive."""

    object_id: str
    path: PurePosixPath
    """Relative to the work directory (``checkpoints/step-12``)."""
    step: int
    archive: bytes


def pack(directory: Path, path: PurePosixPath, step: int) -> bytes:
    """A tar (uncompressed: weights do not compress) of ``directory`` with the manifest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        manifest = json.dumps({"path": str(path), "step": step}).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        tar.add(directory, arcname=DATA)
    return buffer.getvalue()


def manifest_of(archive: bytes) -> tuple[PurePosixPath, int]:
    """The ``(path, step)`` an archive was saved with.

    Raises:
        ValueError: Not an archive of this module, or a path that leaves the work directory.
    """
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        member = tar.extractfile(MANIFEST)
        if member is None:
            raise ValueError("checkpoint archive without a manifest")
        manifest = json.loads(member.read())
    path = PurePosixPath(manifest["path"])
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"checkpoint path {str(path)!r} is not inside the work directory")
    return path, int(manifest["step"])


def unpack(archive: bytes, target: Path) -> None:
    """Extract the archive's directory as ``target``: into a temporary sibling, fsynced, renamed into place."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-restore-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o700)
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            members = [m for m in tar.getmembers() if m.name == DATA or m.name.startswith(f"{DATA}/")]
            tar.extractall(tmp, members=members, filter="data")  # no links, no paths outside tmp
        for root, _dirs, files in os.walk(tmp / DATA):
            for name in files:
                with open(Path(root) / name, "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(Path(root))
        os.rename(tmp / DATA, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class JobCheckpoints:
    """The newest checkpoint of each job, sealed in the object store (see the module docstring).

    Args:
        objects: The sealed object store the service's workers share.
    """

    def __init__(self, objects: ObjectStore):
        self._objects = objects

    def save(self, ctx: JobContext, directory: Path, step: int) -> bool:
        """Store ``directory`` (inside ``ctx.workdir``) as the job's checkpoint of ``step``.

        Best effort: a store that fails is logged and reported as a ``warn`` event, and the
        job goes on (its local checkpoint is intact; a resume elsewhere starts earlier).

        Returns:
            Whether the checkpoint was stored.
        """
        job = ctx.job
        path = PurePosixPath(directory.resolve().relative_to(ctx.workdir.resolve()).as_posix())
        try:
            archive = pack(directory, path, step)
            present = self._present(job)
            if len(present) == 2:  # a save was interrupted between its put and its delete
                newest = self._newest(job, present)
                for object_id in present:
                    if newest is None or object_id != newest.object_id:
                        self._delete(job, object_id)
                present = [newest.object_id] if newest is not None else []
            free = next(i for i in slot_ids(job.id) if i not in present)
            self._objects.put(job.tenancy_id, KIND, archive, object_id=free)
            for object_id in present:
                self._delete(job, object_id)
        except Exception as exc:  # noqa: BLE001 - a mirror: the local checkpoint is what training needs
            log.warning("job %s: checkpoint of step %d not stored", job.id, step, exc_info=True)
            ctx.emit(f"checkpoint of step {step} could not be stored in the object store ({type(exc).__name__}); "
                     "a resume on another node would start from an earlier one", {"type": "message"}, level="warn")
            return False
        return True

    def restore(self, ctx: JobContext) -> int | None:
        """Put the job's stored checkpoint back in ``ctx.workdir`` when it is not there.

        Returns:
            The step restored, or None (no stored checkpoint, or the work directory has it).
        """
        try:
            stored = self._newest(ctx.job, self._present(ctx.job))
            if stored is None:
                return None
            target = ctx.workdir.joinpath(*stored.path.parts)
            if target.exists():
                return None
            unpack(stored.archive, target)
        except Exception as exc:  # noqa: BLE001 - the job can still resume from what this node has
            log.warning("job %s: stored checkpoint not restored", ctx.job.id, exc_info=True)
            ctx.emit(f"the stored checkpoint could not be restored ({type(exc).__name__}); training resumes "
                     "from what this node has", {"type": "message"}, level="warn")
            return None
        ctx.emit(f"checkpoint of step {stored.step} restored from the object store",
                 {"type": "checkpoint_restored", "step": stored.step})
        return stored.step

    def discard(self, job: Job) -> None:
        """Delete the job's stored checkpoint, if any."""
        for object_id in slot_ids(job.id):
            self._delete(job, object_id)

    @contextmanager
    def kept_while_resumable(self, ctx: JobContext) -> Iterator[None]:
        """Run a handler's body, then discard the stored checkpoint and the work directory unless the job will run
        again.

        Kept when the handler stops for a shutdown or a lost lease (the job resumes); discarded
        when it returns, fails, or stops on a cancel (the job has ended for good). The work
        directory goes too: its checkpoints and trained weights are plaintext, and what the job
        produced is kept sealed elsewhere (weights at rest exist only encrypted).
        """
        try:
            yield
        except JobStopped:
            if ctx.stop_reason == "cancel_requested":
                self._discard_quietly(ctx)
            raise
        except Exception:  # not BaseException: a worker quitting at once (second Ctrl+C) leaves it
            self._discard_quietly(ctx)
            raise
        self._discard_quietly(ctx)

    # --- slots ---------------------------------------------------------------------------

    def _present(self, job: Job) -> list[str]:
        return [i for i in slot_ids(job.id) if self._objects.exists(job.tenancy_id, i)]

    def _newest(self, job: Job, present: list[str]) -> Stored | None:
        found = []
        for object_id in present:
            try:
                archive = self._objects.get(job.tenancy_id, object_id)
            except NotFound:  # deleted meanwhile by a save of the job's other worker
                continue
            try:
                path, step = manifest_of(archive)
            except (ValueError, KeyError, tarfile.TarError):
                log.warning("job %s: stored checkpoint %s is unreadable; ignored", job.id, object_id, exc_info=True)
                continue
            found.append(Stored(object_id, path, step, archive))
        return max(found, key=lambda s: s.step, default=None)

    def _discard_quietly(self, ctx: JobContext) -> None:
        try:
            self.discard(ctx.job)
        except Exception:  # noqa: BLE001 - never hides how the handler ended; at worst an object stays
            log.warning("job %s: stored checkpoint not discarded", ctx.job.id, exc_info=True)
        for entry in list(ctx.workdir.iterdir()) if ctx.workdir.is_dir() else ():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _delete(self, job: Job, object_id: str) -> None:
        try:
            self._objects.delete(job.tenancy_id, object_id)
        except NotFound:
            pass
