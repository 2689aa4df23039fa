"""Run the HTTP service with uvicorn: what ``atelier serve`` calls."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from atelier.api.app import create_app
from atelier.settings import Settings


def run(settings: Settings, tls_cert: Path | str | None = None, tls_key: Path | str | None = None) -> None:
    """Serve Atelier on ``settings.host:settings.port`` until interrupted.

    Args:
        settings: Service settings (host, port, data dir...).
        tls_cert: PEM certificate file, to serve HTTPS.
        tls_key: PEM private key of ``tls_cert``.
    """
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        log_level="info",
    )
