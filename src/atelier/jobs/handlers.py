"""The job kinds a worker runs, and their handlers.

``build_handlers`` is the registry: kind → handler, built once per worker process (a
handler that needs services, such as the object store, gets them there). Built in:
``sleep-count``, a small real job that counts to ``n`` one step at a time with a checkpoint
in its work directory, so that restarts, cancels and resumes can be exercised end to end.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from atelier.errors import InvalidInput
from atelier.jobs.worker import Handler, JobContext, JobStopped, write_atomically

if TYPE_CHECKING:
    from atelier.settings import Settings
    from atelier.store.db import Database

SLEEP_COUNT = "sleep-count"
CHECKPOINT_FILE = "count.json"


class SleepCountPayload(BaseModel):
    """Parameters of a ``sleep-count`` job."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=1, le=100_000, description="Count from 1 to n, one step each.")
    step_seconds: float = Field(0.0, ge=0.0, le=60.0, description="Pause before each step.")


def _payload(model: type[BaseModel], payload: dict[str, Any]) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(map(str, error["loc"])) or "payload"
        raise InvalidInput(f"{param}: {error['msg']}", param=param) from None


def _chain(digest: str, step: int) -> str:
    """One link of the hash chain over the steps: it changes if any step is skipped or repeated."""
    return hashlib.sha256(f"{digest}:{step}".encode()).hexdigest()


def sleep_count(ctx: JobContext) -> dict[str, Any]:
    """Count to ``n``: each step pauses ``step_seconds``, adds the step to a running total,
    extends a hash chain, saves the checkpoint atomically and emits an event.

    Loop semantics::

        step, total, digest = checkpoint or (0, 0, "")
        while step < n: step += 1; total += step; digest = sha256(f"{digest}:{step}")

    A run resumed from any checkpoint returns what an uninterrupted run returns.

    Returns:
        ``{"count": n, "total": n(n+1)/2, "digest": <hash chain of 1..n>}``.

    Raises:
        InvalidInput: Bad payload.
        JobStopped: Asked to stop between two steps (the checkpoint is kept).
    """
    params: SleepCountPayload = _payload(SleepCountPayload, ctx.job.payload)
    checkpoint = ctx.workdir / CHECKPOINT_FILE
    state = {"step": 0, "total": 0, "digest": ""}
    if checkpoint.exists():
        state = json.loads(checkpoint.read_bytes())
        ctx.emit(f"resuming from checkpoint at step {state['step']}", {"step": state["step"]})
    while state["step"] < params.n:
        if ctx.wait(params.step_seconds):
            raise JobStopped(ctx.stop_reason)
        step = state["step"] + 1
        state = {"step": step, "total": state["total"] + step, "digest": _chain(state["digest"], step)}
        write_atomically(checkpoint, json.dumps(state).encode())
        ctx.emit(f"step {step}/{params.n}", {"step": step})
    return {"count": state["step"], "total": state["total"], "digest": state["digest"]}


def build_handlers(settings: Settings, db: Database) -> dict[str, Handler]:
    """The handler of every job kind, for a worker of this service.

    Args:
        settings: Service settings (data dir, model paths…), for handlers that need them.
        db: The metadata database, for handlers that write results beyond the job row.

    Returns:
        Kind → handler; ``fine-tune`` (``jobs/fine_tune.py``) and ``kb-ingest``
        (``jobs/kb_ingest.py``, which repairs the vector store when built) only given settings
        (they need the service's root key, object store, catalog and model cache).
    """
    handlers: dict[str, Handler] = {SLEEP_COUNT: sleep_count}
    if settings is not None:
        from atelier.jobs.fine_tune import KIND as FINE_TUNE, build_fine_tune

        handlers[FINE_TUNE] = build_fine_tune(settings, db)
        from atelier.jobs.kb_ingest import KIND as KB_INGEST, build_kb_ingest

        handlers[KB_INGEST] = build_kb_ingest(settings, db)
    return handlers
