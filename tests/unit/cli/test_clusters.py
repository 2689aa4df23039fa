"""``atelier cluster|endpoint|cost`` and ``atelier admin limits set --units`` against the real app.

The CLI's requests reach a ``TestClient`` through ``httpx.MockTransport``, as in the other CLI tests.
"""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from atelier.api.app import create_app
from atelier.catalog import BUILTIN, Catalog, ModelSource, ModelSpec
from atelier.cli import State, app
from atelier.cli.costs import fine_tuning_line, hosting_line, money
from atelier.engine.client import LocalEngine
from atelier.engine.loading import tiny_loaded
from atelier.settings import Settings

ADMIN_KEY = "cli-clusters-admin-key-0123456789"
HOP_HEADERS = ("host", "content-length", "transfer-encoding", "content-encoding")
TINY = ModelSpec(name="tiny", kind="chat", source=ModelSource(path="/nonexistent"), context_length=256,
                 max_output_tokens=32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("cli-clusters")
    settings = Settings(data_dir=data, cache_dir=data / "cache", admin_key=ADMIN_KEY, threads=1)
    catalog = Catalog(list(BUILTIN) + [TINY])
    engine = LocalEngine(catalog, settings, preloaded={"tiny": tiny_loaded("tiny")})
    with TestClient(create_app(settings, engine=engine, catalog=catalog)) as http:
        yield http
    engine.close()


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("ATELIER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "client-data"))
    monkeypatch.setenv("ATELIER_API_KEY", ADMIN_KEY)


def run(server: TestClient, *args: str):
    def forward(request: httpx.Request) -> httpx.Response:
        answer = server.request(
            request.method, request.url.path, params=str(request.url.params), content=request.read(),
            headers={k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS},
        )  # fmt: skip
        headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)

    return CliRunner().invoke(app, list(args), obj=State(transport=httpx.MockTransport(forward)))


def test_cost_estimate_prints_the_worked_example(server):
    done = run(server, "cost", "estimate", "--fine-tuning", "small:8:5:4", "--hosting", "small:1")
    assert done.exit_code == 0, done.output
    assert "total: 904 unit-hours, $5,876.00" in done.output
    assert "$1,040.00" in done.output and "$4,836.00" in done.output
    raw = json.loads(run(server, "cost", "estimate", "--hosting", "small:2:3", "--json").output)
    assert raw["total_unit_hours"] == 2 * 744 * 3 and raw["total_cost"] == "29016.00"
    bad = run(server, "cost", "estimate", "--fine-tuning", "small:8")
    assert bad.exit_code == 1 and "small:8:5:4" in bad.output
    unknown = run(server, "cost", "estimate", "--hosting", "gpu:1")
    assert unknown.exit_code == 1 and "unknown unit type 'gpu'" in unknown.output
    assert run(server, "cost", "estimate").exit_code == 1


def test_clusters_endpoints_limits_and_metered_cost(server):
    tenancy = json.loads(run(server, "admin", "tenancy", "create", "cli-team", "--json").output)
    limits = run(server, "admin", "limits", "set", "cli-team", "--units", "small=3", "--units", "large=1")
    assert limits.exit_code == 0, limits.output
    assert re.search(r"units\.small +3 +0 in use", limits.output) and re.search(r"units\.large +1 ", limits.output)
    assert re.search(r"units\.embed +0 ", limits.output)

    created = run(server, "cluster", "create", "host", "--model", "tiny", "--units", "1")
    assert created.exit_code == 0 and "hosting" in created.output and "0/50 endpoints" in created.output
    ft = run(server, "cluster", "create", "ft", "--type", "fine-tuning", "--model", "tiny", "--units", "2", "--json")
    ft_id = json.loads(ft.output)["id"]
    listed = run(server, "cluster", "list")
    assert "host" in listed.output and ft_id in listed.output and "0/2 units busy" in listed.output
    grown = run(server, "cluster", "update", "ft", "--units", "3", "--name", "ft-big")
    assert grown.exit_code == 0 and "ft-big" in grown.output and "3 small" in grown.output
    assert "ft-big" in run(server, "cluster", "get", ft_id).output

    ep = run(server, "endpoint", "create", "base", "--cluster", "host", "--model", "tiny", "--json")
    assert ep.exit_code == 0, ep.output
    ep_id = json.loads(ep.output)["id"]
    assert ep_id in run(server, "endpoint", "list", "--cluster", "host").output
    assert "1/50 endpoints" in run(server, "cluster", "get", "host").output
    renamed = run(server, "endpoint", "update", ep_id, "--name", "base-2")
    assert renamed.exit_code == 0 and "base-2" in renamed.output
    assert "active" in run(server, "endpoint", "get", "base-2").output
    refused = run(server, "cluster", "delete", "host")
    assert refused.exit_code == 1 and "delete them first" in refused.output
    assert run(server, "endpoint", "delete", "base-2").output.strip() == f"deleted {ep_id}"
    assert ep_id not in run(server, "endpoint", "list").output
    assert ep_id in run(server, "endpoint", "list", "--all").output

    metered = run(server, "cost", "metered")
    assert metered.exit_code == 0 and "hosting" in metered.output and "$4,836.00" in metered.output
    assert run(server, "cluster", "delete", "host").exit_code == 0
    assert run(server, "cluster", "get", "nope").exit_code == 1
    shown = json.loads(run(server, "admin", "limits", "get", tenancy["id"], "--json").output)
    assert shown["units"]["small"] == 3


def test_cost_helpers():
    assert money("5876.00") == "$5,876.00" and money("0.5", "CHF") == "0.50 CHF"
    assert fine_tuning_line("small:8:5:4") == {"unit_type": "small", "units": 8, "hours_per_job": "5",
                                               "jobs_per_month": 4}
    assert fine_tuning_line("large:2:0.5")["jobs_per_month"] == 1
    assert hosting_line("small:1") == {"unit_type": "small", "units": 1, "months": 1}
