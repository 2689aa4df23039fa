"""A real ``atelier serve --workers 1`` with ``ATELIER_JOBS=ray`` and ``ATELIER_RAY_ADDRESS=local``:
it starts a Ray of its own and runs its job worker as a Ray actor (no ``atelier worker``
process), ``/health`` reports it, a knowledge-base document is ingested by it, and stopping
the service stops the actor cleanly, then Ray."""

from __future__ import annotations

import httpx
import psutil
import pytest
from test_finetune_kill9 import wait_for

from atelier.store.db import Database
from atelier.store.jobs import JobQueue

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_serve_runs_its_job_workers_as_ray_actors(make_server, admin_key):
    server = make_server({"ATELIER_JOBS": "ray", "ATELIER_RAY_ADDRESS": "local"}, extra_args=["--workers", "1"])
    health = wait_for(lambda: (h := server.health())["workers"]["alive"] == 1 and h["workers"]["running"] == 1 and h,
                      120, "the Ray worker did not come up", interval=0.25)  # fmt: skip
    assert health["status"] == "ok" and health["workers"]["expected"] == 1
    family = psutil.Process(server.proc.pid).children(recursive=True)
    assert not [p for p in family if "worker" in p.cmdline()]  # no `atelier worker` process
    actors = [p for p in family if "ray::WorkerActor" in " ".join(p.cmdline())]
    assert len(actors) == 1, [p.cmdline() for p in family]

    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=120.0) as http:
        kb = http.post("/v1/knowledge-bases", json={"name": "notes", "chunk_size": 64, "chunk_overlap": 0}).json()
        text = b"The pump seal of unit 7 is replaced every 400 hours by the night shift."
        doc = http.post(f"/v1/knowledge-bases/{kb['id']}/documents", files={"file": ("pump.txt", text)})
        assert doc.status_code == 201, doc.text
        state = wait_for(lambda: (d := http.get(f"/v1/knowledge-bases/{kb['id']}/documents/{doc.json()['id']}")
                               .json())["state"] in ("ready", "failed") and d, 180, "the document was not ingested",
                      interval=1.0)  # fmt: skip
    assert state["state"] == "ready", state
    assert "ready in a Ray actor" in server.stderr(200_000)

    server.stop()  # SIGTERM: the actor stops cleanly (its presence row goes), then Ray
    db = Database(f"sqlite:///{server.data_dir / 'atelier.db'}")
    try:
        assert JobQueue(db).live_workers(within=3600) == {}, server.stderr()
    finally:
        db.dispose()
    wait_for(lambda: not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 60,
             "Ray's processes did not stop with the service", interval=0.25)  # fmt: skip
