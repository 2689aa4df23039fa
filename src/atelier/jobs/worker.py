"""The worker: a process that takes jobs from the queue and runs their handlers.

Loop: claim a job of a kind it has a handler for → run the handler in this process with a
``JobContext`` while a thread renews the lease every ``lease_seconds / 3`` and checks for a
cancel every ``poll_seconds`` → record what happened: the handler's return value is the
result (``succeeded``), an exception fails the job with a one-line reason, a cancel marks it
``cancelled`` (a handler that returns its result before noticing the cancel still
succeeds), a clean shutdown (SIGTERM, Ctrl+C) gives it back to the queue. A worker that
dies (``kill -9``) stops renewing its lease, and the next worker to claim the job runs the
handler again in the same ``workdir`` (``<data_dir>/jobs/<job id>/``), where the handler
finds its checkpoints and resumes.

Handlers know nothing about leases: they see a ``jobs.context.JobContext``. This module
knows nothing about HTTP.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.exc import SQLAlchemyError

from atelier.errors import InvalidInput
from atelier.jobs.context import Handler, JobContext, JobStopped, one_line
from atelier.store.jobs import PRESENCE_SECONDS, JobQueue
from atelier.store.db import Database

if TYPE_CHECKING:
    from atelier.settings import Settings

log = logging.getLogger(__name__)

def default_worker_id() -> str:
    """``<host>-<pid>-<random>``: unique per worker process."""
    return f"{socket.gethostname()[:60]}-{os.getpid()}-{secrets.token_hex(3)}"


class Worker:
    """Takes jobs of the kinds it has handlers for and runs them one at a time.

    Args:
        db: The metadata database (migrated).
        handlers: Handler of each job kind this worker runs.
        worker_id: Lease owner name, unique per process; default ``default_worker_id()``.
        lease_seconds: How long a lease lasts without a heartbeat (renewed every third of it).
        poll_seconds: Sleep between claims when the queue is empty; also how often a running
            job is checked for a cancel request.
        data_dir: The service's data dir; work directories go in ``<data_dir>/jobs/``.
        queue: The queue to use; default ``JobQueue(db)``.
    """

    def __init__(
        self,
        db: Database,
        handlers: dict[str, Handler],
        worker_id: str | None = None,
        lease_seconds: float = 30.0,
        poll_seconds: float = 1.0,
        *,
        data_dir: Path,
        queue: JobQueue | None = None,
    ):
        if lease_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("lease_seconds and poll_seconds must be positive")
        self.queue = queue or JobQueue(db)
        self.handlers = dict(handlers)
        self.worker_id = worker_id or default_worker_id()
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.jobs_dir = Path(data_dir) / "jobs"
        self._stopping = threading.Event()
        self._current: JobContext | None = None
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Shut down cleanly: the running handler is asked to stop (its job goes back to the
        queue), and ``run`` returns once it has. Safe to call from a signal handler or thread."""
        self._stopping.set()
        with self._lock:
            if self._current is not None:
                self._current.request_stop("shutdown")

    def workdir(self, job_id: str) -> Path:
        """Where the handler of job ``job_id`` keeps its checkpoints."""
        return self.jobs_dir / job_id

    def run(self, *, max_jobs: int | None = None) -> int:
        """Claim and run jobs until ``stop()`` (or ``max_jobs`` jobs have run).

        A database error is logged and retried after ``poll_seconds``.

        Returns:
            How many jobs were run.
        """
        done = 0
        presence = threading.Thread(target=self._announce, name=f"presence-{self.worker_id}", daemon=True)
        presence.start()
        try:
            done = self._loop(max_jobs)
        finally:
            self._stopping.set()
            presence.join(timeout=5)
            try:
                self.queue.worker_gone(self.worker_id)
            except SQLAlchemyError:
                log.exception("worker %s: could not record its stop", self.worker_id)
        return done

    def _announce(self) -> None:
        """Say this worker is alive every few seconds, even while a long job runs (``/health``)."""
        while not self._stopping.is_set():
            try:
                self.queue.worker_seen(self.worker_id, self.handlers)
            except SQLAlchemyError:
                log.exception("worker %s: could not record its presence", self.worker_id)
            self._stopping.wait(PRESENCE_SECONDS)

    def _loop(self, max_jobs: int | None) -> int:
        done = 0
        while not self._stopping.is_set() and (max_jobs is None or done < max_jobs):
            try:
                ran = self.run_once()
            except SQLAlchemyError:
                log.exception("worker %s: database error; retrying", self.worker_id)
                ran = False
            if ran:
                done += 1
            else:
                self._stopping.wait(self.poll_seconds)
        return done

    def run_once(self) -> bool:
        """Claim one job and run it to its end (or until stopped).

        Returns:
            Whether there was a job to run.
        """
        if not self.handlers:
            return False
        job = self.queue.claim(self.worker_id, self.handlers, self.lease_seconds)
        if job is None:
            return False
        log.info("worker %s: running %s job %s (attempt %d)", self.worker_id, job.kind, job.id, job.attempts)
        workdir = self.workdir(job.id)
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ctx = JobContext(job, workdir, self.queue)
        with self._lock:
            self._current = ctx
            if self._stopping.is_set():
                ctx.request_stop("shutdown")
        handler_done = threading.Event()
        keeper = threading.Thread(
            target=self._keep_lease, args=(ctx, handler_done), name=f"lease-{job.id}", daemon=True
        )
        keeper.start()
        outcome: Literal["returned", "stopped", "raised"]
        value: Any = None
        try:
            value = self.handlers[job.kind](ctx)
            outcome = "returned"
        except JobStopped:
            outcome = "stopped"
        except Exception as exc:
            log.exception("worker %s: job %s raised", self.worker_id, job.id)
            outcome, value = "raised", one_line(exc)
        finally:
            handler_done.set()
            keeper.join()
            with self._lock:
                self._current = None
        self._record(ctx, outcome, value)
        return True

    def _keep_lease(self, ctx: JobContext, handler_done: threading.Event) -> None:
        """Renew the lease every third of it and look for a cancel every poll, until the handler ends."""
        job_id = ctx.job.id
        renew_every = self.lease_seconds / 3
        last_renewal = time.monotonic()
        while not handler_done.wait(min(self.poll_seconds, renew_every)):
            try:
                if time.monotonic() - last_renewal >= renew_every:
                    last_renewal = time.monotonic()
                    if self.queue.heartbeat(job_id, self.worker_id, self.lease_seconds):
                        continue
                status = self.queue.lease_status(job_id, self.worker_id)
            except SQLAlchemyError:
                log.warning("worker %s: heartbeat of job %s failed; retrying", self.worker_id, job_id, exc_info=True)
                continue
            if status != "held":
                log.info("worker %s: job %s: %s", self.worker_id, job_id, status.replace("_", " "))
                ctx.request_stop(status)

    def _record(self, ctx: JobContext, outcome: str, value: Any) -> None:
        """Write how the handler ended, unless another worker holds the job now."""
        job_id, me = ctx.job.id, self.worker_id
        status = self.queue.lease_status(job_id, me)
        if status == "lost":
            log.warning("worker %s: lost the lease of job %s; leaving it to its new worker", me, job_id)
        elif outcome == "returned":
            if value is not None and not isinstance(value, dict):
                self.queue.fail(job_id, me, f"the handler returned a {type(value).__name__}, not a JSON object")
                return
            try:
                self.queue.finish(job_id, me, value)
            except InvalidInput as exc:
                self.queue.fail(job_id, me, exc.message)
        elif status == "cancel_requested":
            self.queue.mark_cancelled(job_id, me)
        elif outcome == "raised":
            self.queue.fail(job_id, me, value)
        elif ctx.stop_reason == "shutdown":
            self.queue.release(job_id, me)
        else:
            self.queue.fail(job_id, me, "the handler stopped without being asked to")


# --- the worker process -----------------------------------------------------------------


def run_worker_process(
    settings: Settings,
    *,
    worker_id: str | None = None,
    lease_seconds: float = 30.0,
    poll_seconds: float = 1.0,
    parent_pid: int | None = None,
    handlers: Callable[[Settings, Database], dict[str, Handler]],
) -> int:
    """What ``atelier worker`` runs: migrate, then run the handlers until a signal.

    SIGTERM or Ctrl+C stops cleanly (the running job goes back to the queue); a second one
    quits at once (the job's lease then expires and another worker resumes it). With
    ``parent_pid``, the worker also stops when that process is gone. ``handlers(settings, db)``
    builds the kinds it runs (the service's: ``jobs.handlers.build_handlers``).

    Returns:
        The exit status: 0 after a clean stop, 130 after a second signal.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = Database.from_settings(settings)
    try:
        db.migrate()
        worker = Worker(db, handlers(settings, db), worker_id, lease_seconds, poll_seconds,
                        data_dir=settings.data_path)

        def on_signal(signum: int, _frame: Any) -> None:
            if worker.stopping:
                raise KeyboardInterrupt
            log.info("worker %s: %s received; stopping cleanly", worker.worker_id, signal.Signals(signum).name)
            worker.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if parent_pid is not None:
            threading.Thread(target=_stop_when_orphaned, args=(worker, parent_pid), daemon=True).start()
        log.info("worker %s ready (kinds: %s)", worker.worker_id, ", ".join(sorted(worker.handlers)))
        worker.run()
        log.info("worker %s stopped", worker.worker_id)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        db.dispose()


def _stop_when_orphaned(worker: Worker, parent_pid: int) -> None:
    while not worker.stopping:
        if os.getppid() != parent_pid:
            log.info("worker %s: parent %d is gone; stopping", worker.worker_id, parent_pid)
            worker.stop()
            return
        time.sleep(1.0)


def start_worker_processes(settings: Settings, count: int,
                           command: list[str] | None = None) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` ``atelier worker`` processes for the service (``jobs.supervisor`` keeps them up).

    The database is migrated first, so the workers and the HTTP service do not race to
    create it. The workers inherit the environment (``ATELIER_*``) and get the data dir as
    a flag; they stop by themselves if this process dies, and are out of the terminal's
    process group (Ctrl+C reaches the service, which stops them). ``command`` replaces
    ``python -m atelier worker`` (tests run workers of their own job kinds).

    Returns:
        The processes, for ``stop_worker_processes``.
    """
    if count <= 0:
        return []
    migrate_before_workers(settings)
    return [spawn_worker(settings, command) for _ in range(count)]


def migrate_before_workers(settings: Settings) -> None:
    """Create the data dir and migrate the database, so workers and the HTTP service do not race to."""
    settings.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = Database.from_settings(settings)
    try:
        db.migrate()
    finally:
        db.dispose()


def spawn_worker(settings: Settings, command: list[str] | None = None) -> subprocess.Popen[bytes]:
    """One worker process of the service (its database already migrated); see ``start_worker_processes``."""
    argv = [*(command or [sys.executable, "-m", "atelier", "worker"]), "--data-dir", str(settings.data_path),
            "--parent-pid", str(os.getpid())]
    return subprocess.Popen(argv, start_new_session=True)


def stop_worker_processes(processes: list[subprocess.Popen[bytes]], grace_seconds: float = 15.0) -> None:
    """SIGTERM each worker, wait up to ``grace_seconds`` for them to stop cleanly, then kill
    the rest (their jobs resume elsewhere once their leases expire). A worker still starting
    up holds no job and simply exits on the signal."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
