"""What a job handler sees: its job, a persistent work directory, events, and when to stop.

Handlers (``jobs/fine_tune.py``, ``jobs/kb_ingest.py``) know nothing about leases or the
worker loop (``jobs/worker.py``): they call ``ctx.should_stop()`` (or ``ctx.wait``,
``ctx.raise_if_stopped``) between steps and write checkpoints with ``write_atomically``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal, Protocol

from atelier.durable import write_atomically
from atelier.errors import AtelierError

__all__ = ["Handler", "JobContext", "JobStopped", "one_line", "write_atomically"]
from atelier.store.jobs import JobQueue
from atelier.store.tables import Job

StopReason = Literal["lost", "cancel_requested", "shutdown"]
"""Why a handler should stop: its lease went to another worker, the job is being
cancelled, or this worker is shutting down (the job goes back to the queue)."""
_PRIORITY: dict[str, int] = {"shutdown": 0, "cancel_requested": 1, "lost": 2}
REASON_LENGTH = 500


class JobStopped(Exception):
    """Raised by a handler (``ctx.raise_if_stopped()``) that stops early because it was asked to."""


class JobContext:
    """What a handler gets: the job, a persistent work directory, events and a stop signal.

    Attributes:
        job: The job (id, kind, payload, attempts…), as claimed.
        workdir: ``<data_dir>/jobs/<job id>/``: kept across restarts and workers, for checkpoints.
    """

    def __init__(self, job: Job, workdir: Path, queue: JobQueue):
        self.job = job
        self.workdir = workdir
        self._queue = queue
        self._stop = threading.Event()
        self._reason: StopReason | None = None
        self._lock = threading.Lock()

    def emit(self, message: str, data: dict[str, Any] | None = None, *, level: str = "info") -> None:
        """Record a progress event (shown by ``events``; ``data`` must be JSON)."""
        self._queue.add_event(self.job.id, message, data, level)

    def should_stop(self) -> bool:
        """Whether the handler should stop now: cancel requested, lease lost or shutdown."""
        return self._stop.is_set()

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the handler should stop; None while it should go on."""
        return self._reason

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early when asked to stop.

        Returns:
            Whether the handler should stop.
        """
        return self._stop.wait(seconds)

    def raise_if_stopped(self) -> None:
        """Raise ``JobStopped`` when the handler should stop (call it between steps)."""
        if self._stop.is_set():
            raise JobStopped(self._reason or "stopped")

    def request_stop(self, reason: StopReason) -> None:
        """Ask the handler to stop (the worker calls this); a stronger reason overrides a weaker one."""
        with self._lock:
            if self._reason is None or _PRIORITY[reason] > _PRIORITY[self._reason]:
                self._reason = reason
        self._stop.set()


class Handler(Protocol):
    """Runs one job: ``handler(ctx) -> result``.

    The result is a JSON object (or None) stored as the job's result. Raising fails the job
    with the exception's first line; raising ``JobStopped`` after ``ctx.should_stop()`` lets
    the worker cancel or requeue it. A handler may be run again for the same job after a
    worker died: it must resume from what it wrote in ``ctx.workdir``.
    """

    def __call__(self, ctx: JobContext) -> dict[str, Any] | None: ...


def one_line(exc: BaseException) -> str:
    """A failure reason for users: a domain error's message, else ``Type: message``, on one line."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, AtelierError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    elif getattr(exc, "line", None) is not None:
        text = f"line {exc.line}: {text}"  # type: ignore[attr-defined]
    return text[:REASON_LENGTH]
