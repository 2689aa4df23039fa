"""create_app's lifespan: data dir, migrations, the operator key printed once, engine ownership."""

from __future__ import annotations

import stat

import pytest
import trustme
from fastapi.testclient import TestClient

from atelier.api.app import create_app
from atelier.catalog import BUILTIN, Catalog


class FakeEngine:
    """Just enough of EngineClient for the lifespan and /health."""

    def __init__(self):
        self.closed = False

    def health(self):
        return {"fake": True}

    def close(self):
        self.closed = True


def test_first_start_prints_and_saves_a_generated_key(make_app, tmp_path, capsys):
    app = make_app(engine=FakeEngine(), admin_key=None)
    with TestClient(app) as client:
        assert client.get("/health").json()["engine"] == {"fake": True}
    out = capsys.readouterr().out
    key_file = tmp_path / "admin.key"
    key = key_file.read_text().strip()
    assert f"Administrator API key (saved to {key_file}): {key}" in out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        assert client.get("/v1/models").status_code == 200
    assert "Administrator API key" not in capsys.readouterr().out  # printed once only


def test_data_dir_is_created_private(tmp_path):
    from atelier.settings import Settings

    data = tmp_path / "fresh" / "data"
    settings = Settings(data_dir=data, cache_dir=tmp_path / "cache", admin_key="test-admin-key-123456", threads=1)
    with TestClient(create_app(settings, engine=FakeEngine(), catalog=Catalog(BUILTIN))):
        pass
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "atelier.db").exists()


def test_a_given_engine_stays_open_a_created_one_is_closed(make_app, monkeypatch):
    given = FakeEngine()
    with TestClient(make_app(engine=given)):
        pass
    assert not given.closed

    created: list[FakeEngine] = []

    def local_engine(catalog, settings):
        created.append(FakeEngine())
        return created[-1]

    monkeypatch.setattr("atelier.api.services.open_engine", local_engine)
    app = make_app()
    with TestClient(app):
        assert app.state.services.engine is created[0] and not created[0].closed
    assert created[0].closed


def test_server_run_passes_settings_and_tls_to_uvicorn(tmp_path, monkeypatch):
    from atelier.api import server
    from atelier.settings import Settings

    calls = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    settings = Settings(data_dir=tmp_path, host="0.0.0.0", port=8123)
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "c.pem")
    cert.private_key_pem.write_to_path(tmp_path / "k.pem")
    server.run(settings, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    (app, kw), = calls
    assert app.title == "Atelier"
    assert kw == {
        "host": "0.0.0.0",
        "port": 8123,
        "ssl_certfile": str(tmp_path / "c.pem"),
        "ssl_keyfile": str(tmp_path / "k.pem"),
        "log_level": "info",
    }


def test_server_run_refuses_bad_tls_files_before_starting(tmp_path, monkeypatch):
    from atelier.api import server
    from atelier.settings import Settings

    calls = []
    monkeypatch.setattr(server.uvicorn, "run", lambda app, **kw: calls.append(kw))
    settings = Settings(data_dir=tmp_path)
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "c.pem")
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(tmp_path / "other.key")
    (tmp_path / "text.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="--tls-key .*missing.key: cannot be read"):
        server.run(settings, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "missing.key")
    with pytest.raises(ValueError, match="not a PEM certificate and its private key"):
        server.run(settings, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "other.key")  # another cert's key
    with pytest.raises(ValueError, match="not a PEM certificate"):
        server.run(settings, tls_cert=tmp_path / "text.pem", tls_key=tmp_path / "other.key")
    with pytest.raises(ValueError, match="give both"):
        server.run(settings, tls_cert=tmp_path / "c.pem")
    assert calls == []
