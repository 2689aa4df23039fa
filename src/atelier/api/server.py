"""Run the HTTP service with uvicorn: what ``atelier serve`` calls (HTTPS with a certificate)."""

from __future__ import annotations

import ssl
from pathlib import Path

import uvicorn

from atelier.api.app import create_app
from atelier.jobs.supervisor import start_job_workers
from atelier.settings import Settings


def check_tls_files(tls_cert: Path | str | None, tls_key: Path | str | None) -> None:
    """Check, before anything starts, that HTTPS can be served with these files.

    Raises:
        ValueError: Only one of the two is given; one cannot be read; or they are not a PEM
            certificate (chain) and its private key. The message names the option at fault.
    """
    if tls_cert is None and tls_key is None:
        return
    if tls_cert is None or tls_key is None:
        raise ValueError("give both --tls-cert and --tls-key, or neither")
    for option, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"{option} {path}: cannot be read ({exc.strerror})") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(tls_cert), str(tls_key))
    except ssl.SSLError as exc:
        raise ValueError(
            f"--tls-cert {tls_cert} / --tls-key {tls_key}: not a PEM certificate and its private key "
            f"({exc.reason or exc})"
        ) from None


def run(
    settings: Settings, tls_cert: Path | str | None = None, tls_key: Path | str | None = None, workers: int = 0
) -> None:
    """Serve Atelier on ``settings.host:settings.port`` until interrupted (HTTPS when given a certificate).

    Args:
        settings: Service settings (host, port, data dir...).
        tls_cert: PEM certificate file (chain), to serve HTTPS; needs ``tls_key``.
        tls_key: PEM private key of ``tls_cert``.
        workers: Job worker processes to run beside the service (``atelier worker``), kept
            running (restarted with backoff when one ends) and stopped when it stops; with
            ``settings.jobs == "ray"``, worker actors on the Ray cluster instead (``jobs.ray_pool``).

    Raises:
        ValueError: The TLS files are incomplete, unreadable or do not match (see ``check_tls_files``).
    """
    check_tls_files(tls_cert, tls_key)
    supervisor = start_job_workers(settings, workers)
    try:
        uvicorn.run(
            create_app(settings, workers=supervisor),
            host=settings.host,
            port=settings.port,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
            log_level="info",
        )
    finally:
        supervisor.stop()
