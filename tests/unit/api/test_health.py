"""``/health`` tells when jobs would wait in vain: degraded while queued jobs have no live worker of
their kind, ok again once one is alive; ``/metrics`` exports the same counts."""

from __future__ import annotations

from fastapi.testclient import TestClient

from atelier.principal import Principal
from atelier.store import repos
from atelier.store.jobs import JobQueue


def test_health_is_degraded_while_jobs_wait_with_no_live_worker(make_app, engine):
    app = make_app(engine=engine)
    with TestClient(app) as anon:
        healthy = anon.get("/health").json()
        assert healthy["status"] == "ok" and healthy["problems"] == []
        assert healthy["workers"] == {"alive": 0, "expected": None, "running": None, "restarts": 0, "queued_jobs": 0,
                                      "oldest_queued_seconds": None, "unserved_kinds": []}
        services = app.state.services
        queue = JobQueue(services.db)
        with services.db.session() as s:
            principal = Principal(repos.get_tenancy_by_name(s, "default").id, "key_x", "admin")
        queue.submit(principal, "fine-tune", {"model": "tiny"})

        waiting = anon.get("/health").json()
        assert waiting["status"] == "degraded"
        assert waiting["workers"]["queued_jobs"] == 1 and waiting["workers"]["unserved_kinds"] == ["fine-tune"]
        assert waiting["workers"]["oldest_queued_seconds"] >= 0
        assert "no live worker runs kind 'fine-tune'" in waiting["problems"][0]

        queue.worker_seen("worker-a", ["kb-ingest"])  # alive, but not for that kind
        assert anon.get("/health").json()["status"] == "degraded"
        queue.worker_seen("worker-b", ["fine-tune", "kb-ingest"])
        served = anon.get("/health").json()
        assert served["status"] == "ok" and served["workers"]["alive"] == 2

        queue.worker_gone("worker-b")  # stopped cleanly: its row goes
        assert anon.get("/health").json()["status"] == "degraded"
        metrics = anon.get("/metrics", headers={"Authorization": "Bearer test-admin-key-123456"}).text
        assert "atelier_jobs_queued 1.0" in metrics and 'atelier_job_workers{state="alive"} 1.0' in metrics
        assert "atelier_jobs_unserved_kinds 1.0" in metrics
