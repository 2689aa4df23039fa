"""A test-only job kind, ``sleep-count``, and a worker process that runs it.

``sleep_count`` counts to ``n`` one step at a time with a checkpoint in its work directory,
so that restarts, cancels and resumes can be exercised end to end without a model. Tests
register it themselves (it is not a kind of the service): in-process with
``Worker(db, HANDLERS)``, in a real worker process with :data:`WORKER_COMMAND` (this file
run as a script: the service's ``atelier worker`` options, with these handlers).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from atelier.errors import InvalidInput
from atelier.jobs.context import JobContext, JobStopped, write_atomically

SLEEP_COUNT = "sleep-count"
CHECKPOINT_FILE = "count.json"
WORKER_COMMAND = [sys.executable, str(Path(__file__).resolve())]
"""Start a worker process that runs ``sleep-count`` jobs (append ``atelier worker``'s options)."""


class SleepCountPayload(BaseModel):
    """Parameters of a ``sleep-count`` job."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=1, le=100_000, description="Count from 1 to n, one step each.")
    step_seconds: float = Field(0.0, ge=0.0, le=60.0, description="Pause before each step.")


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
    try:
        params = SleepCountPayload.model_validate(ctx.job.payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(map(str, error["loc"])) or "payload"
        raise InvalidInput(f"{param}: {error['msg']}", param=param) from None
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


HANDLERS = {SLEEP_COUNT: sleep_count}


def main() -> int:
    """``atelier worker`` with the ``sleep-count`` handler instead of the service's."""
    import typer

    from atelier.jobs.worker import run_worker_process
    from atelier.settings import Settings

    def worker(
        worker_id: str = typer.Option(None, "--worker-id"),
        lease_seconds: float = typer.Option(30.0, "--lease-seconds"),
        poll_seconds: float = typer.Option(1.0, "--poll-seconds"),
        parent_pid: int = typer.Option(None, "--parent-pid"),
        data_dir: str = typer.Option(None, "--data-dir"),
    ) -> None:
        settings = Settings(data_dir=data_dir) if data_dir else Settings()
        raise typer.Exit(run_worker_process(settings, worker_id=worker_id, lease_seconds=lease_seconds,
                                            poll_seconds=poll_seconds, parent_pid=parent_pid,
                                            handlers=lambda settings, db: HANDLERS))

    return typer.run(worker)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))
    main()
