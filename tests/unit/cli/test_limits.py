"""``atelier admin limits get|set`` over ``httpx.MockTransport``: requests sent, output printed."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from typer.testing import CliRunner

from atelier.cli import State, app

TENANCIES = {"object": "list", "data": [{"object": "tenancy", "id": "ten_1", "name": "beta", "created_at": "x"}]}


def limits(rpm=None, concurrent=None, tpm=None) -> dict:
    return {
        "object": "tenancy.limits", "tenancy_id": "ten_1", "requests_per_minute": rpm,
        "concurrent_generations": concurrent, "tokens_per_minute": tpm, "updated_at": None,
        "effective": {"requests_per_minute": rpm or 600, "concurrent_generations": concurrent or 8,
                      "tokens_per_minute": tpm or 200_000},
    }  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("ATELIER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATELIER_API_KEY", "sk-test-key")


class Server:
    """Stores the limits PUT to it and answers them on GET."""

    def __init__(self, stored: dict):
        self.stored = stored
        self.puts: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/tenancies":
            return httpx.Response(200, json=TENANCIES)
        if path != "/v1/tenancies/ten_1/limits":
            error = {"message": "tenancy not found", "type": "not_found_error", "param": "tenancy_id", "code": None}
            return httpx.Response(404, json={"error": error})
        if request.method == "PUT":
            body = json.loads(request.content)
            self.puts.append(body)
            self.stored = limits(body["requests_per_minute"], body["concurrent_generations"], body["tokens_per_minute"])
        return httpx.Response(200, json=self.stored)


def run(server: Server, *args: str):
    transport = httpx.MockTransport(server)
    return CliRunner().invoke(app, ["admin", "limits", *args], obj=State(transport=transport))


def test_get_shows_set_and_effective_limits():
    result = run(Server(limits(rpm=100)), "get", "beta")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "tenancy ten_1"
    assert lines[2].split() == ["requests_per_minute", "100", "100"]
    assert lines[3].split() == ["concurrent_generations", "default", "8"]
    assert json.loads(run(Server(limits(rpm=100)), "get", "ten_1", "--json").stdout)["requests_per_minute"] == 100


def test_set_changes_only_the_given_limits():
    server = Server(limits(rpm=100, tpm=5000))
    result = run(server, "set", "beta", "--concurrent", "2", "--default", "tpm")
    assert result.exit_code == 0, result.output
    assert server.puts == [{"requests_per_minute": 100, "concurrent_generations": 2, "tokens_per_minute": None}]
    assert "concurrent_generations  2" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "beta"], "give at least one"),
        (["set", "beta", "--rpm", "5", "--default", "rpm"], "--rpm given with --default"),
        (["get", "nobody"], "no tenancy 'nobody'"),
        (["get", "ten_9"], "tenancy not found"),
    ],
)
def test_errors_are_one_line(args, message):
    server = Server(limits())
    result = run(server, *args)
    assert result.exit_code == 1 and message in result.stderr
    assert server.puts == []
