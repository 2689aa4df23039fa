"""``atelier serve --tls-cert --tls-key`` serves HTTPS, checked with a self-signed CA from ``trustme``.

One server is started (``make_server``) with a certificate for 127.0.0.1 issued by a fresh
CA: a client trusting that CA reaches ``/health`` and an authenticated route over HTTPS; a
client that does not trust it is refused; plain HTTP to the same port gets no answer.
"""

from __future__ import annotations

import ssl

import httpx
import pytest
import trustme

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_KEY = "atelier-integration-test-admin-key"
"""The administrator key every test server installs (see conftest)."""


def test_serve_https_with_a_self_signed_certificate(make_server, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    key_file.chmod(0o600)
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)

    server = make_server(
        extra_args=["--tls-cert", str(cert_file), "--tls-key", str(key_file)], scheme="https", verify=trusted
    )

    # HTTPS with the CA trusted: the health probe and an authenticated route answer.
    assert server.base_url.startswith("https://")
    assert server.health()["status"] == "ok"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=server.base_url, verify=trusted, headers=headers, timeout=30.0) as client:
        models = client.get("/v1/models")
        assert models.status_code == 200, models.text
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401

    # A client that does not trust the CA (the system's CAs only) is refused.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.base_url}/health", timeout=10.0)

    # Plain HTTP to the HTTPS port gets no HTTP answer.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base_url.replace('https://', 'http://')}/health", timeout=10.0)
