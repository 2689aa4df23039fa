"""``atelier audit verify`` on a real data dir; ``audit list`` and ``keys ...`` over a mock API."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from atelier.cli import State, app
from atelier.security.audit import AuditEvent, AuditLog
from atelier.security.crypto import RootKey
from atelier.settings import Settings
from atelier.store.db import Database


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("ATELIER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATELIER_API_KEY", "sk-test-key")


# --- audit verify: local -----------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir as the service leaves it: database, root key file, 120 entries, head file."""
    settings = Settings(data_dir=tmp_path / "data")
    settings.data_path.mkdir(mode=0o700)
    db = Database(settings.db_url)
    db.migrate()
    log = AuditLog.for_service(db, RootKey.from_settings(settings), settings.data_path)
    for i in range(120):
        log.append(AuditEvent(request_id=f"req_{i}", action="GET /v1/models", decision="allow", outcome="ok"))
    db.dispose()
    return settings.data_path


def test_verify_an_intact_log_exits_0(data_dir):
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "audit log ok: 120 entries, 1 signed checkpoints\n"
    result = CliRunner().invoke(app, ["audit", "verify", "--json", "--data-dir", str(data_dir)])
    assert json.loads(result.stdout) == {"ok": True, "entries": 120, "checkpoints": 1, "problems": []}


def test_verify_a_tampered_log_exits_1_listing_problems(data_dir):
    db = Database(f"sqlite:///{data_dir / 'atelier.db'}")
    with db.engine.begin() as connection:
        connection.execute(text("UPDATE audit_entries SET decision = 'deny' WHERE seq = 7"))
        connection.execute(text("DELETE FROM audit_entries WHERE seq > 100"))
        connection.execute(text("DELETE FROM audit_checkpoints"))
    db.dispose()
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 1
    assert result.stderr.startswith("audit log TAMPERED: ")
    assert "  seq 7: hash does not match the entry's fields (entry altered)\n" in result.stderr
    assert "  seq 100: the head file points past the last entry (seq 100)" not in result.stderr
    assert "  seq 100: the head file's checkpoint is missing from the database\n" in result.stderr


def test_verify_without_a_data_dir_creates_nothing(tmp_path):
    result = CliRunner().invoke(app, ["audit", "verify", "--data-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and result.stderr.startswith("error: no database at ")
    assert not (tmp_path / "nowhere").exists()


def test_verify_refuses_another_root_key(data_dir):
    (data_dir / "root.key").unlink()
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 1 and "no root key" in result.stderr
    RootKey.from_settings(Settings(data_dir=data_dir))  # a new key file: the old signatures no longer verify
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 1 and "seq 100: checkpoint signature is not valid" in result.stderr


# --- audit list and keys: over the API -------------------------------------------------------


class Server:
    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]):
        self.respond = respond
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)


def run(server: Server, *args: str):
    return CliRunner().invoke(app, list(args), obj=State(transport=server.transport))


ENTRY = {
    "seq": 7, "time": "2025-01-02T03:04:05.000006Z", "request_id": "req_1", "tenancy_id": "ten_a",
    "principal_id": "usr_a", "key_id": "key_a", "action": "POST /v1/key-ring/rotate", "resource_type": "keys",
    "resource_id": None, "decision": "none", "statement": None, "outcome": "ok", "status": 200,
    "source": "10.0.0.1", "prev_hash": "0" * 64, "hash": "1" * 64,
}  # fmt: skip
RING = {
    "object": "key_ring", "tenancy_id": "ten_a", "current_version": 2, "min_decrypt_version": 1,
    "versions": [{"version": 1, "state": "enabled", "created_at": "2025-01-01T00:00:00Z"},
                 {"version": 2, "state": "enabled", "created_at": "2025-01-02T00:00:00Z"}],
}  # fmt: skip


def test_audit_list_sends_filters_and_prints_a_table():
    server = Server(lambda r: httpx.Response(200, json={"object": "list", "data": [ENTRY], "next_after_seq": 7}))
    result = run(server, "audit", "list", "--decision", "deny", "--status", "403", "--since", "2025-01-01",
                 "--resource-type", "keys", "--all", "--limit", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    request = server.requests[0]
    assert (request.method, request.url.path) == ("GET", "/v1/audit")
    assert dict(request.url.params) == {
        "decision": "deny", "status": "403", "since": "2025-01-01T00:00:00", "resource_type": "keys",
        "all": "true", "limit": "1",
    }  # fmt: skip
    header, row = result.stdout.splitlines()
    assert header.split() == ["SEQ", "TIME", "TENANCY", "PRINCIPAL", "ACTION", "RESOURCE", "DECISION", "STATUS",
                              "OUTCOME", "SOURCE"]  # fmt: skip
    assert row.split() == ["7", "2025-01-02T03:04:05", "ten_a", "usr_a", "POST", "/v1/key-ring/rotate", "keys",
                           "none", "200", "ok", "10.0.0.1"]  # fmt: skip
    assert result.stderr == "(more: --after-seq 7)\n"


def test_keys_commands_call_the_key_ring_routes():
    def respond(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/rewrap"):
            return httpx.Response(200, json={"rewrapped": 3, "current_version": 2})
        return httpx.Response(200, json=RING)

    server = Server(respond)
    shown = run(server, "keys", "show")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[0] == "tenancy ten_a: current version 2, minimum decryption version 1"
    assert run(server, "keys", "rotate").exit_code == 0
    assert run(server, "keys", "rewrap").stdout == "rewrapped 3 object(s) to key version 2\n"
    assert json.loads(run(server, "keys", "retire", "2", "--json").stdout) == RING
    calls = [(r.method, r.url.path, r.content) for r in server.requests]
    assert calls == [
        ("GET", "/v1/key-ring", b""),
        ("POST", "/v1/key-ring/rotate", b""),
        ("POST", "/v1/key-ring/rewrap", b""),
        ("POST", "/v1/key-ring/retire", b'{"below":2}'),
    ]


def test_keys_error_is_one_line():
    err = {"error": {"message": "not authorized", "type": "permission_error", "param": None, "code": "forbidden"}}
    result = run(Server(lambda r: httpx.Response(403, json=err)), "keys", "rotate")
    assert (result.exit_code, result.stderr) == (1, "error: not authorized\n")
