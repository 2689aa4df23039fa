"""A real ``atelier serve --workers 1``: its worker, killed (SIGTERM, then SIGKILL), is noticed by
``/health`` (degraded), restarted by ``serve`` (ok again), and the next job still runs."""

from __future__ import annotations

import signal
import time

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _worker_pids(server) -> set[int]:
    children = psutil.Process(server.proc.pid).children()
    return {p.pid for p in children if "worker" in p.cmdline()}


def _wait(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what} within {timeout:.0f} s")


def test_a_killed_worker_is_noticed_restarted_and_jobs_still_run(make_server, admin_key):
    server = make_server({"ATELIER_WORKER_RESTART_SECONDS": "4"}, extra_args=["--workers", "1"])
    _wait(lambda: server.health()["workers"]["alive"] == 1, 120, "the worker did not say it is alive")
    assert server.health()["status"] == "ok"
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300.0) as http:
        kb = http.post("/v1/knowledge-bases", json={"name": "notes", "chunk_size": 64, "chunk_overlap": 0}).json()
        for round_, sig in enumerate((signal.SIGTERM, signal.SIGKILL), start=1):
            [pid] = _worker_pids(server)
            psutil.Process(pid).send_signal(sig)
            degraded = _wait(lambda: (h := server.health())["status"] == "degraded" and h, 30, "health stayed ok")
            assert "job workers are running" in " ".join(degraded["problems"])
            healed = _wait(lambda: (h := server.health())["status"] == "ok" and h["workers"]["restarts"] >= round_
                           and h, 60, "the worker was not restarted")
            assert healed["workers"]["running"] == 1
            new_pid = _wait(lambda: _worker_pids(server) - {pid}, 30, "no new worker process")
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            text = f"Round {round_}: the pump seal is replaced every {round_ * 100} hours.".encode()
            doc = http.post(f"/v1/knowledge-bases/{kb['id']}/documents", files={"file": (f"r{round_}.txt", text)})
            assert doc.status_code == 201, doc.text
            state = _wait(lambda: (d := http.get(f"/v1/knowledge-bases/{kb['id']}/documents/{doc.json()['id']}")
                                   .json())["state"] in ("ready", "failed") and d, 300, "the document was not ingested",
                          interval=1.0)
            assert state["state"] == "ready", state
            assert new_pid
    assert "ended (signal SIGKILL); restarting it" in server.stderr(200_000)
