"""Job workers as Ray actors (``jobs="ray"``): the same ``Worker`` loop, on any node of a Ray cluster.

With ``ATELIER_JOBS=ray``, ``atelier serve`` starts no local worker process: it connects to
the Ray cluster at ``ray_address`` (``"local"`` starts a Ray of its own on this machine;
unset: Ray's default, ``RAY_ADDRESS`` or a local one) and creates ``count`` actors. Each actor runs ``jobs.worker.Worker`` in
a thread started by its constructor: the same claims, leases, heartbeats, cancel checks and
events in the metadata database as a local worker, nothing duplicated. Actors are created
with ``max_restarts=-1``: when an actor's process dies (``kill -9``, out of memory, a lost
node), Ray starts it again, its constructor starts a new loop, and the job the dead one held
is claimed again once its lease expires; the handler resumes from its checkpoint, restored
from the object store when the node's work directory lacks it (``jobs.checkpoints``).

What the nodes must share: the metadata database (PostgreSQL; SQLite only on one machine),
the object store (S3, or one directory every node mounts), the root key and the models. The
settings travel to the actors, secrets excepted (``SecretStr`` fields): a node reads
``ATELIER_ROOT_KEY`` (or its root key file) from its own environment. ``ray`` is imported
only when a pool starts (the ``ray`` extra). This module knows nothing about HTTP.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from atelier.jobs.context import Handler
from atelier.jobs.worker import Worker, migrate_before_workers
from atelier.store.db import Database

if TYPE_CHECKING:
    from atelier.settings import Settings

log = logging.getLogger(__name__)

HandlerFactory = Callable[["Settings", Database], dict[str, Handler]]
"""``handlers(settings, db)`` → the kinds an actor runs (the service's: ``jobs.handlers.build_handlers``)."""


def portable_settings(settings: Settings) -> dict[str, Any]:
    """The settings an actor is created with: those set explicitly here, secrets left out."""
    values = settings.model_dump(exclude_unset=True)
    return {name: value for name, value in values.items() if not isinstance(value, SecretStr)}


class WorkerActor:
    """One job worker in a Ray actor: the ``Worker`` loop in a thread, started with the actor.

    Created by ``RayWorkerPool`` (``ray.remote(WorkerActor)``); Ray runs the constructor
    again in a new process when the actor's process dies.

    Args:
        settings: ``portable_settings`` of the service; the node's environment fills the rest.
        handlers: Builds the kinds this actor runs.
        lease_seconds: The worker's lease (see ``Worker``).
        poll_seconds: The worker's polling and cancel-check interval.
    """

    def __init__(self, settings: dict[str, Any], handlers: HandlerFactory, lease_seconds: float,
                 poll_seconds: float):
        import ray

        from atelier.settings import Settings

        self._restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        node_settings = Settings(**settings)
        self._db = Database.from_settings(node_settings)
        self._worker = Worker(self._db, handlers(node_settings, self._db), None, lease_seconds, poll_seconds,
                              data_dir=node_settings.data_path)
        self._thread = threading.Thread(target=self._run, name="job-worker", daemon=True)
        self._thread.start()
        log.info("worker %s ready in a Ray actor (kinds: %s)", self._worker.worker_id,
                 ", ".join(sorted(self._worker.handlers)))

    def _run(self) -> None:
        try:
            self._worker.run()
        except Exception:
            log.exception("worker %s: its loop ended", self._worker.worker_id)

    def status(self) -> tuple[int, str, bool, bool]:
        """``(pid, worker id, whether the loop runs, whether Ray restarted this actor)``: the pool's
        health check (and a test's kill target)."""
        return os.getpid(), self._worker.worker_id, self._thread.is_alive(), self._restarted

    def stop(self, grace_seconds: float) -> bool:
        """Stop the loop cleanly (a running job goes back to the queue).

        Returns:
            Whether the loop ended within ``grace_seconds``.
        """
        self._worker.stop()
        self._thread.join(grace_seconds)
        return not self._thread.is_alive()


@dataclass
class _Slot:
    actor: Any
    pending: Any = None
    """The ObjectRef of a status call not answered yet."""
    pid: int | None = None
    up: bool = False


class RayWorkerPool:
    """``count`` worker actors on a Ray cluster, watched for ``/health`` (see the module docstring).

    Same face as ``jobs.supervisor.WorkerSupervisor``: ``start``, ``expected``, ``running``,
    ``restarts``, ``pids``, ``stop``; Ray itself restarts actors that die.

    Args:
        settings: The service's settings (``ray_address``; sent to the actors).
        count: Worker actors to run.
        handlers: Builds the kinds the actors run; default the service's (``jobs.handlers.build_handlers``).
        lease_seconds: The workers' lease: how soon a dead actor's job is taken again.
        poll_seconds: The workers' polling and cancel-check interval.
        num_cpus: CPUs Ray reserves for each actor.
        num_gpus: GPUs Ray gives each actor; default 1 when ``settings.device`` is CUDA (Ray hides
            the GPUs from an actor that reserved none), else 0.
        max_restarts: Restarts Ray allows an actor (-1: without limit; 0: a killed actor stays dead).
        check_seconds: How often the actors are asked how they are.
    """

    def __init__(self, settings: Settings, count: int, *, handlers: HandlerFactory | None = None,
                 lease_seconds: float = 30.0, poll_seconds: float = 1.0, num_cpus: float = 1.0,
                 num_gpus: float | None = None, max_restarts: int = -1, check_seconds: float = 1.0):
        self._settings = settings
        self.expected = max(0, count)
        self._handlers = handlers
        self._lease, self._poll = lease_seconds, poll_seconds
        if num_gpus is None:
            num_gpus = 1.0 if settings.device.startswith("cuda") else 0.0
        self._options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": max_restarts,
                         "max_task_retries": -1 if max_restarts != 0 else 0}
        self._check = check_seconds
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._owns_ray = False
        self.restarts = 0

    def start(self) -> RayWorkerPool:
        """Connect to Ray (or start it), migrate the database, create the actors and watch them."""
        if self.expected == 0:
            return self
        migrate_before_workers(self._settings)
        ray = _connect(self._settings.ray_address)
        self._owns_ray = ray.owns
        handlers = self._handlers
        if handlers is None:
            from atelier.jobs.handlers import build_handlers

            handlers = build_handlers
        remote = ray.module.remote(WorkerActor).options(**self._options)
        settings = portable_settings(self._settings)
        self._slots = [_Slot(remote.remote(settings, handlers, self._lease, self._poll))
                       for _ in range(self.expected)]  # fmt: skip
        self._thread = threading.Thread(target=self._watch, name="ray-worker-pool", daemon=True)
        self._thread.start()
        return self

    @property
    def actors(self) -> list[Any]:
        """The actor handles (tests ask them for their pid)."""
        return [slot.actor for slot in self._slots]

    @property
    def running(self) -> int:
        """Actors whose worker loop answered the last check."""
        with self._lock:
            return sum(1 for slot in self._slots if slot.up)

    def pids(self) -> list[int]:
        """Process ids of the actors that answered the last check."""
        with self._lock:
            return [slot.pid for slot in self._slots if slot.up and slot.pid is not None]

    def _watch(self) -> None:
        import ray

        while not self._stopping.is_set():
            try:
                self._check_actors(ray)
            except Exception:  # noqa: BLE001 - the watch must outlive a Ray hiccup
                log.warning("checking the Ray worker actors failed", exc_info=True)
                self._stopping.wait(self._check)

    def _check_actors(self, ray: Any) -> None:
        """Ask every actor for its status (one call in flight each); count the restarts Ray made."""
        for slot in self._slots:
            if slot.pending is None:
                slot.pending = slot.actor.status.remote()
        refs = [slot.pending for slot in self._slots]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=self._check)[0])
        for slot in self._slots:
            if slot.pending not in ready:  # starting, restarting, or its node is busy
                with self._lock:
                    slot.up = False
                continue
            ref, slot.pending = slot.pending, None
            try:
                pid, worker_id, looping, restarted = ray.get(ref)
            except ray.exceptions.RayError as exc:
                if slot.up:
                    log.warning("Ray worker actor unavailable: %s", exc)
                with self._lock:
                    slot.up = False
                continue
            with self._lock:
                if pid != slot.pid and (slot.pid is not None or restarted):  # or restarted before its first check
                    self.restarts += 1
                    log.warning("job worker actor restarted by Ray (its process ended): pid %s → %d", slot.pid, pid)
                slot.pid, slot.up = pid, looping
            if not looping and not self._stopping.is_set():
                log.error("worker %s: its loop ended; restarting its actor", worker_id)
                ray.kill(slot.actor, no_restart=False)
        self._stopping.wait(self._check)

    def stop(self, grace_seconds: float = 15.0) -> None:
        """Stop the workers cleanly (running jobs go back to the queue), then the actors (and a Ray started here)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self._check * 2 + 5)
        if not self._slots:
            return
        import ray

        stops = [slot.actor.stop.remote(grace_seconds) for slot in self._slots]
        ray.wait(stops, num_returns=len(stops), timeout=grace_seconds + 5)
        for slot in self._slots:
            ray.kill(slot.actor, no_restart=True)
        self._slots = []
        if self._owns_ray:
            ray.shutdown()


@dataclass
class _Ray:
    module: Any
    owns: bool
    """Whether this process started (and so shuts down) the Ray it uses."""


def _connect(address: str | None) -> _Ray:
    """The ``ray`` module, initialized: as it is, or on ``address`` (``"local"``: a new one), no dashboard."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage statistics leave the machine
    try:
        import ray
    except ModuleNotFoundError:
        raise RuntimeError("jobs=ray needs Ray: pip install 'atelier[ray]'") from None
    if ray.is_initialized():
        return _Ray(ray, owns=False)
    context = ray.init(address=address, include_dashboard=False)
    log.info("jobs run on Ray at %s", getattr(context, "address_info", {}).get("address", address))
    return _Ray(ray, owns=True)
