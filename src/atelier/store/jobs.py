"""The job queue: jobs and their events in the metadata database, taken by workers under leases.

A worker *claims* a job by writing its id into ``lease_owner`` and a deadline into
``lease_expires_at``, and renews the deadline with heartbeats while it works. A worker that
dies stops renewing; once the deadline passes, any worker may claim the job again and the
handler resumes from its checkpoints. Every claim is one conditional UPDATE whose row count
says who won, inside ``BEGIN IMMEDIATE`` on SQLite (one writer at a time) and after
``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of worker processes can
share one database. Transactions are short: nothing here is held while a job runs.

States: ``validating_files`` → ``queued`` → ``running`` → ``succeeded`` | ``failed`` |
``cancelled`` (``queued`` again when a worker shuts down cleanly). Every change of state
also writes an event whose ``data["state"]`` is the new state.

Methods the API calls take the caller's ``Principal`` first: another tenancy's job is
``NotFound`` exactly like a missing one. Methods a worker calls take the job id and the
worker's id, and do nothing (returning False) once the worker no longer holds the lease.
This module knows nothing about HTTP or what a job of a given kind does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from atelier.errors import Conflict, InvalidInput, NotFound
from atelier.principal import Principal
from atelier.store.db import Database
from atelier.store.scoping import scoped_get
from atelier.store.tables import Job, JobEvent, WorkerPresence, utcnow

STATES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
LEVELS = ("info", "warn", "error")
"""Event levels, as OpenAI's fine-tuning events name them."""
KIND_LENGTH = 32
IDEMPOTENCY_KEY_LENGTH = 200
WORKER_ID_LENGTH = 100
ERROR_LENGTH = 2000
MAX_LIST_LIMIT = 100
MAX_EVENTS_LIMIT = 1000
DEFAULT_MAX_ATTEMPTS = 5
"""Starts after which a job whose worker died again is failed instead of resumed."""

LeaseStatus = Literal["held", "cancel_requested", "lost"]
PRESENCE_SECONDS = 5.0
"""How often a worker refreshes its presence row."""
ALIVE_SECONDS = 20.0
"""A worker not seen for this long is not alive (it was killed, or its machine is gone)."""


@dataclass(frozen=True)
class Waiting:
    """Jobs waiting in the queue: how many, the oldest one's age, and the kinds no live worker runs."""

    queued: int
    oldest_seconds: float | None
    unserved_kinds: tuple[str, ...]


def _check_limit(limit: int, most: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise InvalidInput(f"limit must be an integer from 1 to {most}", param="limit")
    return limit


def _lease_seconds(seconds: float) -> timedelta:
    if not 0 < seconds <= 86_400:
        raise InvalidInput("lease_seconds must be in (0, 86400]", param="lease_seconds")
    return timedelta(seconds=seconds)


def _event(session: Session, job: Job, message: str, data: dict[str, Any] | None = None, level: str = "info") -> None:
    session.add(JobEvent(job_id=job.id, tenancy_id=job.tenancy_id, created_at=utcnow(), level=level,
                         message=message, data=data))


class JobQueue:
    """Submit, claim, renew, finish and cancel jobs stored in ``db``.

    Args:
        db: The metadata database (migrated).
        max_attempts: A job whose worker was lost while it was on its ``max_attempts``-th
            start is failed rather than started again (a job that kills its worker must not
            loop forever). Clean shutdowns do not count.
    """

    def __init__(self, db: Database, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.db = db
        self.max_attempts = max_attempts
        self._sqlite = db.engine.dialect.name == "sqlite"

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """A short write transaction; on SQLite it takes the database's write lock first
        (``BEGIN IMMEDIATE``), so what it reads cannot change before it writes."""
        with self.db.session() as session:
            if self._sqlite:
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session

    # --- the API's side (scoped to the caller's tenancy) ---------------------------------

    def submit(
        self,
        principal: Principal,
        kind: str,
        payload: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        state: Literal["queued", "validating_files"] = "queued",
        compartment_id: str | None = None,
        cluster_id: str | None = None,
    ) -> Job:
        """Queue a job, or return the one already submitted with the same idempotency key.

        Two submits with one key in one tenancy give one job, even when they race: the
        database's unique constraint decides, and the loser reads the winner's row.

        Args:
            principal: The caller; the job belongs to its tenancy.
            kind: What the job does (a worker runs the handler registered for it).
            payload: The job's parameters, JSON (never secrets).
            idempotency_key: The client's key (``Idempotency-Key`` header); None for none.
            state: ``queued``, or ``validating_files`` for a job that ``enqueue`` or
                ``reject`` will move on once its inputs are checked.
            compartment_id: The compartment the job belongs to; None for the tenancy root.
            cluster_id: The cluster the job runs on (and holds units of), if any.

        Returns:
            The new job, or the existing one with this key.

        Raises:
            InvalidInput: Empty or too long kind or key, bad state, payload not JSON.
            Conflict: The key was already used for a job of another kind or payload.
        """
        if not isinstance(kind, str) or not 1 <= len(kind) <= KIND_LENGTH:
            raise InvalidInput(f"kind must be 1 to {KIND_LENGTH} characters", param="kind")
        if state not in ("queued", "validating_files"):
            raise InvalidInput("a job is submitted as queued or validating_files", param="state")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= IDEMPOTENCY_KEY_LENGTH:
            raise InvalidInput(f"idempotency key must be 1 to {IDEMPOTENCY_KEY_LENGTH} characters",
                               param="idempotency_key")
        try:
            payload = json.loads(json.dumps(payload))
        except (TypeError, ValueError):
            raise InvalidInput("payload must be JSON", param="payload") from None
        if not isinstance(payload, dict):
            raise InvalidInput("payload must be a JSON object", param="payload")
        if idempotency_key is not None:
            existing = self.by_key(principal, idempotency_key)
            if existing is not None:
                return self._same_request(existing, kind, payload)
        try:
            with self._write() as session:
                job = Job(tenancy_id=principal.tenancy_id, compartment_id=compartment_id, cluster_id=cluster_id,
                          kind=kind, state=state, payload=payload, idempotency_key=idempotency_key,
                          cancel_requested=False, attempts=0, created_at=utcnow())
                session.add(job)
                session.flush()
                _event(session, job, "created" if state == "queued" else "created; validating files",
                       {"state": state})
            return job
        except IntegrityError:
            existing = self.by_key(principal, idempotency_key) if idempotency_key is not None else None
            if existing is None:
                raise
            return self._same_request(existing, kind, payload)

    def by_key(self, principal: Principal, key: str) -> Job | None:
        """The caller's job submitted with this idempotency key, if any."""
        with self.db.session() as session:
            query = select(Job).where(Job.tenancy_id == principal.tenancy_id, Job.idempotency_key == key)
            return session.scalar(query)

    @staticmethod
    def _same_request(job: Job, kind: str, payload: dict[str, Any]) -> Job:
        if job.kind != kind or job.payload != payload:
            raise Conflict("this idempotency key was already used for a different request", param="idempotency_key")
        return job

    def get(self, principal: Principal, job_id: str) -> Job:
        """The caller's job ``job_id``.

        Raises:
            NotFound: No such job in the caller's tenancy.
        """
        with self.db.session() as session:
            return self._scoped(session, principal, job_id)

    @staticmethod
    def _scoped(session: Session, principal: Principal, job_id: str, *, param: str | None = None) -> Job:
        return scoped_get(session, principal, Job, job_id, "job", param=param)

    def events(
        self,
        principal: Principal,
        job_id: str,
        *,
        after: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[JobEvent]:
        """A page of the caller's job's events.

        Args:
            principal: The caller.
            job_id: The job.
            after: The last event id of the previous page: events past it in the listing
                order (higher ids oldest-first, lower ids newest-first). None for the start.
            limit: Most events to return, 1 to 1000.
            newest_first: List newest first (as OpenAI's event lists do).

        Raises:
            NotFound: No such job in the caller's tenancy.
            InvalidInput: Bad limit.
        """
        _check_limit(limit, MAX_EVENTS_LIMIT)
        with self.db.session() as session:
            self._scoped(session, principal, job_id)
            query = select(JobEvent).where(JobEvent.job_id == job_id)
            if after is not None:
                query = query.where(JobEvent.id < after if newest_first else JobEvent.id > after)
            order = JobEvent.id.desc() if newest_first else JobEvent.id
            return list(session.scalars(query.order_by(order).limit(limit)))

    def history(self, owner: Principal | str, job_id: str, *, newest_first: bool = False,
                limit: int | None = None) -> list[JobEvent]:
        """Every event of a job of the owner's tenancy (the caller, or a worker's job tenancy), in order.

        Raises:
            NotFound: No such job in the owner's tenancy.
        """
        with self.db.session() as session:
            scoped_get(session, owner, Job, job_id, "job")
            order = JobEvent.id.desc() if newest_first else JobEvent.id
            return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(order).limit(limit)))

    def request_cancel(self, principal: Principal, job_id: str) -> Job:
        """Cancel the caller's job: at once if it waits, at its worker's next check if it runs.

        A queued (or validating) job becomes ``cancelled``; a running one gets
        ``cancel_requested`` and its worker marks it ``cancelled`` when it stops (within
        seconds). Cancelling a cancelled job changes nothing.

        Returns:
            The job as it is now.

        Raises:
            NotFound: No such job in the caller's tenancy.
            Conflict: The job already succeeded or failed.
        """
        with self._write() as session:
            job = self._scoped(session, principal, job_id)
            if job.state in ("succeeded", "failed"):
                raise Conflict(f"job {job_id!r} already {job.state}; it cannot be cancelled")
            if job.state in ("queued", "validating_files"):
                job.state, job.finished_at = "cancelled", utcnow()
                _event(session, job, "cancelled", {"state": "cancelled"})
            elif job.state == "running" and not job.cancel_requested:
                job.cancel_requested = True
                _event(session, job, "cancel requested; the worker stops at its next check", {"state": "running"})
            session.flush()
            return job

    def enqueue(self, principal: Principal, job_id: str) -> Job:
        """Queue a job whose files were found valid (``validating_files`` → ``queued``).

        Raises:
            NotFound: No such job in the caller's tenancy.
            Conflict: The job is not validating files (e.g. it was cancelled meanwhile).
        """
        return self._settle(principal, job_id, "queued", None, "files validated; queued")

    def reject(self, principal: Principal, job_id: str, error: str) -> Job:
        """Fail a job whose files are invalid (``validating_files`` → ``failed``), with the reason.

        Raises:
            NotFound: No such job in the caller's tenancy.
            Conflict: The job is not validating files.
        """
        return self._settle(principal, job_id, "failed", error[:ERROR_LENGTH], f"failed: {error[:ERROR_LENGTH]}")

    def _settle(self, principal: Principal, job_id: str, state: str, error: str | None, message: str) -> Job:
        with self._write() as session:
            job = self._scoped(session, principal, job_id)
            if job.state != "validating_files":
                raise Conflict(f"job {job_id!r} is {job.state}, not validating_files")
            job.state, job.error = state, error
            if state == "failed":
                job.finished_at = utcnow()
            _event(session, job, message, {"state": state}, "error" if state == "failed" else "info")
            session.flush()
            return job

    # --- the worker's side (by job id, under a lease) -------------------------------------

    def claim(self, worker_id: str, kinds: Iterable[str], lease_seconds: float) -> Job | None:
        """Take the oldest job a worker of these kinds can run, under a fresh lease.

        Candidates are ``queued`` jobs and ``running`` jobs whose lease expired (their
        worker died). Taking one is a conditional UPDATE that only one worker can win. A
        first start or a resume after worker loss counts one attempt (``attempts`` + 1;
        the event says "resumed after worker loss"); restarting a job released by a clean
        shutdown does not. An expired job that was being cancelled becomes ``cancelled``,
        and one lost on its ``max_attempts``-th start becomes ``failed``; the search goes on.

        Args:
            worker_id: Who takes the lease (unique per worker process).
            kinds: Kinds this worker has handlers for.
            lease_seconds: How long the lease lasts without a heartbeat.

        Returns:
            The job, now ``running`` under this worker's lease; None when there is none.
        """
        kinds = sorted({kinds} if isinstance(kinds, str) else set(kinds))
        lease = _lease_seconds(lease_seconds)
        if not kinds:
            return None
        if not 1 <= len(worker_id) <= WORKER_ID_LENGTH:
            raise InvalidInput(f"worker id must be 1 to {WORKER_ID_LENGTH} characters", param="worker_id")
        while True:
            with self._write() as session:
                now = utcnow()
                claimable = or_(
                    Job.state == "queued", and_(Job.state == "running", Job.lease_expires_at < now)
                )
                query = (
                    select(Job)
                    .where(Job.kind.in_(kinds), claimable)
                    .order_by(Job.created_at, Job.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                job = session.scalar(query)
                if job is None:
                    return None
                lost = job.state == "running"
                if lost and job.cancel_requested:
                    self._close(session, job, "cancelled", None, "cancelled (its worker was lost while stopping)")
                    continue
                if lost and job.attempts >= self.max_attempts:
                    reason = f"its worker was lost {job.attempts} times; giving up"
                    self._close(session, job, "failed", reason, f"failed: {reason}", level="error")
                    continue
                first = job.started_at is None
                values = dict(
                    state="running",
                    lease_owner=worker_id,
                    lease_expires_at=now + lease,
                    heartbeat_at=now,
                    attempts=job.attempts + (1 if first or lost else 0),
                    started_at=job.started_at or now,
                )
                won = session.execute(
                    update(Job).where(Job.id == job.id, claimable).values(**values),
                    execution_options={"synchronize_session": False},
                ).rowcount
                if won != 1:  # another worker took it between our read and our write
                    continue
                session.refresh(job)
                if lost:
                    message = f"resumed after worker loss by worker {worker_id} (attempt {job.attempts})"
                elif first:
                    message = f"started by worker {worker_id}"
                else:
                    message = f"resumed by worker {worker_id} after a clean shutdown"
                _event(session, job, message, {"state": "running", "worker": worker_id, "attempt": job.attempts})
                return job

    def _close(self, session: Session, job: Job, state: str, error: str | None, message: str,
               *, level: str = "info", result: dict[str, Any] | None = None) -> None:
        job.state, job.error, job.finished_at = state, error, utcnow()
        job.lease_owner = job.lease_expires_at = None
        if result is not None:
            job.result = result
        _event(session, job, message, {"state": state}, level)
        session.flush()

    def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float) -> bool:
        """Renew a lease this worker holds.

        Returns:
            True when the lease was renewed and the job should go on; False when the lease
            was lost (another worker took the job, or it was closed) or a cancel was
            requested: the worker should then stop. A lease held while cancelling is still
            renewed, so the worker can stop cleanly.
        """
        lease = _lease_seconds(lease_seconds)
        with self._write() as session:
            now = utcnow()
            renewed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == worker_id, Job.state == "running")
                .values(lease_expires_at=now + lease, heartbeat_at=now),
                execution_options={"synchronize_session": False},
            ).rowcount
            if renewed != 1:
                return False
            return not session.scalar(select(Job.cancel_requested).where(Job.id == job_id))

    def lease_status(self, job_id: str, worker_id: str) -> LeaseStatus:
        """Whether this worker still holds the job's lease and should go on (a read, no write).

        Returns:
            ``held``; ``cancel_requested`` (held, but the job should stop and be marked
            cancelled); or ``lost`` (another worker has it, or it is no longer running).
        """
        with self.db.session() as session:
            row = session.execute(
                select(Job.state, Job.lease_owner, Job.cancel_requested).where(Job.id == job_id)
            ).first()
        if row is None or row.state != "running" or row.lease_owner != worker_id:
            return "lost"
        return "cancel_requested" if row.cancel_requested else "held"

    def add_event(self, job_id: str, message: str, data: dict[str, Any] | None = None, level: str = "info") -> None:
        """Record a progress event of a job (metrics, a checkpoint, a message).

        Raises:
            NotFound: No such job.
            InvalidInput: Unknown level, or data not JSON.
        """
        if level not in LEVELS:
            raise InvalidInput(f"level must be one of {', '.join(LEVELS)}", param="level")
        if data is not None:
            try:
                data = json.loads(json.dumps(data))
            except (TypeError, ValueError):
                raise InvalidInput("event data must be JSON", param="data") from None
        with self.db.session() as session:
            tenancy_id = session.scalar(select(Job.tenancy_id).where(Job.id == job_id))
            if tenancy_id is None:
                raise NotFound(f"job {job_id!r} not found")
            session.add(JobEvent(job_id=job_id, tenancy_id=tenancy_id, created_at=utcnow(), level=level,
                                 message=message, data=data))

    def finish(self, job_id: str, worker_id: str, result: dict[str, Any] | None) -> bool:
        """Mark a job this worker holds ``succeeded`` with its result.

        Returns:
            False (and nothing changes) when the worker no longer holds the lease.

        Raises:
            InvalidInput: The result is not JSON.
        """
        try:
            result = json.loads(json.dumps(result))
        except (TypeError, ValueError):
            raise InvalidInput("a job's result must be JSON", param="result") from None
        return self._end(job_id, worker_id, "succeeded", None, "succeeded", result=result)

    def fail(self, job_id: str, worker_id: str, error: str) -> bool:
        """Mark a job this worker holds ``failed``, with a one-line reason.

        Returns:
            False (and nothing changes) when the worker no longer holds the lease.
        """
        error = (error or "failed").strip()[:ERROR_LENGTH]
        return self._end(job_id, worker_id, "failed", error, f"failed: {error}", level="error")

    def mark_cancelled(self, job_id: str, worker_id: str) -> bool:
        """Mark a job this worker holds ``cancelled`` (after it stopped on a cancel request).

        Returns:
            False (and nothing changes) when the worker no longer holds the lease.
        """
        return self._end(job_id, worker_id, "cancelled", None, "cancelled")

    def release(self, job_id: str, worker_id: str) -> bool:
        """Give a job back to the queue (its worker is shutting down cleanly): ``running`` →
        ``queued`` with no lease, to resume from its checkpoints on the next claim. A job
        whose cancel was requested is marked ``cancelled`` instead.

        Returns:
            False (and nothing changes) when the worker no longer holds the lease.
        """
        with self._write() as session:
            job = self._held(session, job_id, worker_id)
            if job is None:
                return False
            if job.cancel_requested:
                self._close(session, job, "cancelled", None, "cancelled")
                return True
            job.state, job.lease_owner, job.lease_expires_at = "queued", None, None
            _event(session, job, f"released by worker {worker_id} (shutting down); queued to resume",
                   {"state": "queued"})
            return True

    def _held(self, session: Session, job_id: str, worker_id: str) -> Job | None:
        job = session.get(Job, job_id)
        if job is None or job.state != "running" or job.lease_owner != worker_id:
            return None
        return job

    def _end(self, job_id: str, worker_id: str, state: str, error: str | None, message: str,
             *, level: str = "info", result: dict[str, Any] | None = None) -> bool:
        with self._write() as session:
            job = self._held(session, job_id, worker_id)
            if job is None:
                return False
            self._close(session, job, state, error, message, level=level, result=result)
            return True

    def list(self, principal: Principal, *, kind: str | None = None, after: str | None = None,
             limit: int = 20) -> list[Job]:
        """The caller's jobs, newest first.

        Args:
            principal: The caller.
            kind: Only jobs of this kind; None for all.
            after: The last job id of the previous page; None for the first page.
            limit: Most jobs to return, 1 to 100.

        Raises:
            InvalidInput: Bad limit.
            NotFound: ``after`` is not a job of the caller's tenancy.
        """
        _check_limit(limit, MAX_LIST_LIMIT)
        with self.db.session() as session:
            query = select(Job).where(Job.tenancy_id == principal.tenancy_id)
            if kind is not None:
                query = query.where(Job.kind == kind)
            if after is not None:
                cursor = self._scoped(session, principal, after, param="after")
                query = query.where(or_(Job.created_at < cursor.created_at,
                                        and_(Job.created_at == cursor.created_at, Job.id < cursor.id)))
            query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
            return list(session.scalars(query))

    # --- workers' presence --------------------------------------------------------------------

    def worker_seen(self, worker_id: str, kinds: Iterable[str]) -> None:
        """Record that worker ``worker_id``, running ``kinds``, is alive now."""
        now = utcnow()
        with self._write() as session:
            row = session.get(WorkerPresence, worker_id)
            if row is None:
                session.add(WorkerPresence(id=worker_id, kinds=sorted(kinds), started_at=now, seen_at=now))
            else:
                row.kinds, row.seen_at = sorted(kinds), now

    def worker_gone(self, worker_id: str) -> None:
        """Forget a worker that stopped cleanly."""
        with self._write() as session:
            row = session.get(WorkerPresence, worker_id)
            if row is not None:
                session.delete(row)

    def live_workers(self, within: float = ALIVE_SECONDS) -> dict[str, tuple[str, ...]]:
        """The workers seen within the last ``within`` seconds: id → the kinds they run."""
        since = utcnow() - timedelta(seconds=within)
        with self.db.session() as session:
            rows = session.scalars(select(WorkerPresence).where(WorkerPresence.seen_at >= since))
            return {row.id: tuple(row.kinds) for row in rows}

    def waiting(self, within: float = ALIVE_SECONDS) -> Waiting:
        """Queued jobs of every tenancy (operator view): how many, the oldest's age, and the kinds
        of queued jobs that no live worker runs (those wait in vain until one starts)."""
        served = {kind for kinds in self.live_workers(within).values() for kind in kinds}
        with self.db.session() as session:
            rows = session.execute(select(Job.kind, Job.created_at).where(Job.state == "queued")).all()
        if not rows:
            return Waiting(0, None, ())
        now = utcnow()
        oldest = min(created if created.tzinfo else created.replace(tzinfo=now.tzinfo) for _, created in rows)
        unserved = tuple(sorted({kind for kind, _ in rows} - served))
        return Waiting(len(rows), max(0.0, (now - oldest).total_seconds()), unserved)

