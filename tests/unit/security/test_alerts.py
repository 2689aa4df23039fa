"""security/alerts.py: each detector fires once per burst, never for normal traffic; webhook."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from atelier.security.alerts import ALERT_ACTION, Monitor, Thresholds, list_alerts, post_webhook
from atelier.security.audit import AuditEvent, AuditLog
from atelier.store.db import Database

THRESHOLDS = Thresholds(
    window=60.0, unauthenticated_burst=5, not_found_burst=5, spike_factor=10.0, spike_floor=1000, baseline_minutes=10
)


class Clock:
    def __init__(self) -> None:
        self.now = 100_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'a.db'}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def audit(db) -> AuditLog:
    return AuditLog(db, b"k" * 32)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monitor(db, audit, clock) -> Monitor:
    m = Monitor(db, audit, THRESHOLDS, clock=clock)
    audit.subscribe(m.observe)
    return m


def event(**fields) -> AuditEvent:
    values = {"request_id": f"req_{uuid.uuid4().hex}", "action": "GET /v1/users/{user_id}", **fields}
    return AuditEvent(**values)


def refused(source: str) -> AuditEvent:
    return event(status=401, source=source, outcome="error")


def missing(key_id: str, resource_id: str | None = "usr_x", tenancy_id: str = "ten_a") -> AuditEvent:
    return event(status=404, key_id=key_id, tenancy_id=tenancy_id, source="10.0.0.1", resource_id=resource_id)


def kinds(db, tenancy_id=None) -> list[str]:
    return [a.kind for a in list_alerts(db, tenancy_id, every_tenancy=tenancy_id is None)]


def test_a_burst_of_401s_from_one_address_raises_one_alert(db, audit, monitor, clock):
    for _ in range(30):
        audit.append(refused("203.0.113.9"))
        clock.now += 0.5
    alerts = list_alerts(db, None, every_tenancy=True)
    assert [(a.kind, a.source, a.tenancy_id) for a in alerts] == [("unauthenticated_burst", "203.0.113.9", None)]
    assert "5 requests refused" in alerts[0].detail
    raised = audit.query(None, action=ALERT_ACTION)
    assert len(raised) == 1 and raised[0].resource_id == alerts[0].id and raised[0].outcome == "unauthenticated_burst"
    clock.now += 61  # the burst goes on after the window: a new alert
    for _ in range(5):
        audit.append(refused("203.0.113.9"))
    assert kinds(db) == ["unauthenticated_burst", "unauthenticated_burst"]
    assert audit.verify().ok


def test_401s_below_the_threshold_or_spread_out_raise_nothing(db, audit, monitor, clock):
    for source in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        for _ in range(4):  # 4 each from three addresses: 12 in all, 4 per address
            audit.append(refused(source))
    for _ in range(10):  # one every 20 s: never 5 within 60 s
        audit.append(refused("198.51.100.4"))
        clock.now += 20
    assert kinds(db) == []


def test_enumeration_of_object_ids_by_one_key_raises_one_alert(db, audit, monitor, clock):
    for i in range(25):
        audit.append(missing("key_probe", resource_id=f"usr_{i}"))
    for i in range(4):
        audit.append(missing("key_honest", resource_id=f"usr_{i}"))
    for _ in range(10):  # 404s on routes without an object id are not enumeration
        audit.append(missing("key_other", resource_id=None))
    alerts = list_alerts(db, "ten_a")
    assert [(a.kind, a.key_id) for a in alerts] == [("enumeration", "key_probe")]
    assert list_alerts(db, "ten_b") == []  # the alert belongs to the key's tenancy


def test_a_key_used_from_a_new_address_raises_one_alert(db, audit, monitor):
    def used(key: str, source: str) -> None:
        audit.append(event(key_id=key, tenancy_id="ten_a", source=source, decision="allow"))

    used("key_1", "10.0.0.1")  # the first address is learnt silently
    used("key_1", "10.0.0.1")
    used("key_2", "10.0.0.7")  # another key's first address
    assert kinds(db) == []
    used("key_1", "192.0.2.44")
    used("key_1", "192.0.2.44")  # known from now on
    used("key_1", "10.0.0.1")
    alerts = list_alerts(db, "ten_a")
    assert [(a.kind, a.key_id, a.source) for a in alerts] == [("new_address", "key_1", "192.0.2.44")]
    assert "10.0.0.1" in alerts[0].detail


def test_known_addresses_are_read_from_the_log_at_start(db, audit, clock):
    audit.append(event(key_id="key_1", tenancy_id="ten_a", source="10.0.0.1"))
    audit.append(event(key_id="key_1", tenancy_id="ten_a", source="10.0.0.2"))
    fresh = Monitor(db, audit, THRESHOLDS, clock=clock)
    assert fresh.load_known_addresses() == 2
    audit.subscribe(fresh.observe)
    audit.append(event(key_id="key_1", tenancy_id="ten_a", source="10.0.0.2"))
    assert kinds(db) == []
    audit.append(event(key_id="key_1", tenancy_id="ten_a", source="10.0.0.3"))
    assert kinds(db) == ["new_address"]


def test_a_token_spike_raises_one_alert(db, monitor, clock):
    for _ in range(10):  # ten minutes of steady use: 200 tokens a minute
        for _ in range(4):
            assert monitor.observe_tokens("ten_a", 50) == []
            clock.now += 15
    raised = []
    for _ in range(20):  # then 3,000 tokens within 20 s: 15x the average, above the floor
        raised += monitor.observe_tokens("ten_a", 150)
        clock.now += 1
    assert [a.kind for a in raised] == ["token_spike"]
    assert raised[0].tenancy_id == "ten_a" and "tokens in the last minute" in raised[0].detail
    assert kinds(db, "ten_a") == ["token_spike"]


def test_steady_or_small_usage_raises_no_spike(db, monitor, clock):
    for _ in range(30 * 6):  # 30 minutes at 2,400 tokens a minute: high but steady
        assert monitor.observe_tokens("ten_busy", 400) == []
        clock.now += 10
    for _ in range(3):  # a tenancy just seen (or seen since a restart) is not judged yet
        assert monitor.observe_tokens("ten_new", 5000) == []
    for _ in range(5 * 6):  # 5 minutes at 60 tokens a minute, then 900 at once: 15x, but under the floor
        monitor.observe_tokens("ten_small", 10)
        clock.now += 10
    assert monitor.observe_tokens("ten_small", 900) == []
    assert kinds(db) == []


class Receiver(BaseHTTPRequestHandler):
    bodies: list[dict] = []
    got = threading.Event()

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()
        type(self).got.set()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    Receiver.bodies, Receiver.got = [], threading.Event()
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()


def test_alerts_are_posted_to_the_webhook(db, audit, clock, receiver):
    m = Monitor(db, audit, THRESHOLDS, webhook_url=receiver, clock=clock)
    audit.subscribe(m.observe)
    for _ in range(8):
        audit.append(refused("203.0.113.7"))
    m.wait_for_webhooks()
    assert Receiver.got.wait(5)
    assert len(Receiver.bodies) == 1
    body = Receiver.bodies[0]
    assert body["object"] == "alert" and body["kind"] == "unauthenticated_burst"
    assert body["source"] == "203.0.113.7" and body["id"] == list_alerts(db, None, every_tenancy=True)[0].id


def test_a_failing_webhook_is_logged_and_the_alert_kept(db, audit, clock, caplog):
    closed = HTTPServer(("127.0.0.1", 0), Receiver)
    url = f"http://127.0.0.1:{closed.server_port}/hook"
    closed.server_close()  # nobody listens there
    m = Monitor(db, audit, THRESHOLDS, webhook_url=url, clock=clock)
    audit.subscribe(m.observe)
    with caplog.at_level(logging.ERROR, logger="atelier.security.alerts"):
        for _ in range(5):
            audit.append(refused("203.0.113.8"))
        m.wait_for_webhooks()
    assert kinds(db) == ["unauthenticated_burst"]
    assert any("alert webhook" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
    assert post_webhook(url, {"x": 1}, timeout=1.0) is False
