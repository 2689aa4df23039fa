"""Keeping ``atelier serve``'s job workers alive: restart with backoff, reap, say why.

A worker process may exit for many reasons: a signal sent by someone else, an out-of-memory
kill, a crash of a native library. The supervisor checks its processes every second; one
that exited is reaped, its exit is logged (code or signal), and it is started again after a
delay that doubles from 1 s up to a minute while workers keep dying, and falls back to 1 s
once a worker has stayed up for a minute. Jobs it held resume from their checkpoints once
their leases expire (``jobs.worker``). ``running`` and ``expected`` feed ``/health`` and
``/metrics``. Knows nothing about HTTP.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from atelier.jobs.worker import spawn_worker, start_worker_processes, stop_worker_processes

if TYPE_CHECKING:
    from atelier.jobs.ray_pool import RayWorkerPool
    from atelier.settings import Settings

log = logging.getLogger(__name__)


def describe_exit(code: int) -> str:
    """How a process ended, for a log line: ``exit code 1`` or ``signal SIGKILL``."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass
class _Slot:
    process: subprocess.Popen[bytes] | None
    started: float
    delay: float
    restart_at: float | None = None


class WorkerSupervisor:
    """Runs ``count`` worker processes and restarts the ones that exit (see the module docstring).

    Args:
        settings: The service's settings (data dir; workers inherit the environment).
        count: Worker processes to keep running.
        command: Replaces ``python -m atelier worker`` (tests run workers of their own job kinds).
        check_seconds: How often processes are checked.
        min_delay: First restart delay; doubled at each quick death up to ``max_delay``
            (default ``settings.worker_restart_seconds``).
        max_delay: Longest restart delay.
        stable_seconds: A worker up this long resets the delay to ``min_delay``.
    """

    def __init__(self, settings: Settings, count: int, command: list[str] | None = None, *,
                 check_seconds: float = 1.0, min_delay: float | None = None, max_delay: float = 60.0,
                 stable_seconds: float = 60.0):
        self._settings = settings
        self._command = command
        self.expected = max(0, count)
        self._check = check_seconds
        self._min = min_delay if min_delay is not None else settings.worker_restart_seconds
        self._max, self._stable = max(max_delay, self._min), stable_seconds
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> WorkerSupervisor:
        """Start the workers and the watch (nothing to do for ``count`` 0)."""
        now = time.monotonic()
        self._slots = [_Slot(p, now, self._min) for p in start_worker_processes(self._settings, self.expected,
                                                                               self._command)]
        if self._slots:
            self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> int:
        """Worker processes running now."""
        with self._lock:
            return sum(1 for s in self._slots if s.process is not None and s.process.poll() is None)

    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        with self._lock:
            return [s.process.pid for s in self._slots if s.process is not None and s.process.poll() is None]

    def _watch(self) -> None:
        while not self._stopping.wait(self._check):
            with self._lock:
                for slot in self._slots:
                    self._tend(slot, time.monotonic())

    def _tend(self, slot: _Slot, now: float) -> None:
        if slot.process is not None:
            code = slot.process.poll()  # reaps it: no zombie stays behind
            if code is None:
                if now - slot.started >= self._stable:
                    slot.delay = self._min
                return
            log.warning("job worker pid %d ended (%s); restarting it in %.0f s", slot.process.pid,
                        describe_exit(code), slot.delay)
            slot.process, slot.restart_at = None, now + slot.delay
            slot.delay = min(slot.delay * 2, self._max)
        if slot.restart_at is not None and now >= slot.restart_at and not self._stopping.is_set():
            slot.process, slot.started, slot.restart_at = spawn_worker(self._settings, self._command), now, None
            self.restarts += 1
            log.info("job worker restarted (pid %d)", slot.process.pid)

    def stop(self, grace_seconds: float = 15.0) -> None:
        """Stop watching, then stop the workers cleanly (their running jobs go back to the queue)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self._check + 5)
        with self._lock:
            processes = [s.process for s in self._slots if s.process is not None]
        stop_worker_processes(processes, grace_seconds)


def start_job_workers(settings: Settings, count: int) -> WorkerSupervisor | RayWorkerPool:
    """``atelier serve``'s job workers: local processes kept alive here, or Ray actors (``jobs="ray"``,
    ``jobs.ray_pool``); both answer ``expected``, ``running``, ``restarts`` and ``stop``."""
    if settings.jobs == "ray":
        from atelier.jobs.ray_pool import RayWorkerPool  # ray: imported only when jobs run on it

        return RayWorkerPool(settings, count).start()
    return WorkerSupervisor(settings, count).start()
