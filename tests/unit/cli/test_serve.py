"""``atelier serve``: its flags become the server's settings (the server itself is faked)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atelier.cli import app


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("ATELIER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))


def test_serve_builds_settings_from_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    calls = []
    fake = types.ModuleType("atelier.api.server")
    fake.run = lambda settings, **kw: calls.append((settings, kw))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "atelier.api.server", fake)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("cert")
    key.write_text("key")

    args = ["serve", "--port", "8123", "--data-dir", str(tmp_path / "d"), "--tls-cert", str(cert), "--tls-key", str(key)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    settings, kw = calls[0]
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 8123, tmp_path / "d")
    assert kw == {"tls_cert": cert, "tls_key": key, "workers": 1}  # one job worker by default

    result = CliRunner().invoke(app, ["serve", "--tls-cert", str(cert)])
    assert result.exit_code == 2 and len(calls) == 1

    result = CliRunner().invoke(app, ["serve", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert calls[1][1]["workers"] == 0
