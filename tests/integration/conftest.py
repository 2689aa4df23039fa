"""Fixtures that run the real Atelier server, as a subprocess, on the bundled real models.

``atelier serve`` is started exactly as a user starts it (``python -m atelier serve``) on a
free port, with a fresh data directory and a fixed administrator key. The converted chat
model is shared between runs through ``ATELIER_CACHE_DIR`` (the first GGUF conversion
takes about a minute; later starts reload it in seconds). Nothing here imports the server:
the tests see it only through HTTP, like any client.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

ADMIN_KEY = "atelier-integration-test-admin-key"
"""The administrator key the test servers install (``ATELIER_ADMIN_KEY``)."""
CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"
STARTUP_TIMEOUT = 300.0
"""Seconds to wait for ``GET /health`` (covers a first GGUF conversion on a slow CPU)."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """One ``atelier serve`` subprocess, its URL and its captured output."""

    def __init__(
        self,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        scheme: str = "http",
        verify: Any = True,
    ):
        """
        Args:
            workdir: Where the data dir and the captured output go.
            extra_env: Environment variables added to the test settings.
            extra_args: Options added to ``atelier serve`` (e.g. ``--tls-cert``).
            scheme: ``https`` for a server given a certificate.
            verify: What ``httpx`` checks the server's certificate against (an ``ssl.SSLContext``).
        """
        self.port = free_port()
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args or [])
        self.verify = verify
        self.data_dir = workdir / "data"
        self.stdout_path = workdir / "server.stdout"
        self.stderr_path = workdir / "server.stderr"
        self.env = server_env(extra_env)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LiveServer":
        """Start the server and wait until ``/health`` answers.

        Fails the test session with the server's stderr if it exits or does not answer in time.
        """
        cmd = [sys.executable, "-m", "atelier", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        cmd += self.extra_args
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"atelier serve exited with {self.proc.returncode} before answering:\n{self.stderr()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0, verify=self.verify).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"atelier serve did not answer /health within {STARTUP_TIMEOUT:.0f} s:\n{self.stderr()}")

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 20 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stderr(self, tail: int = 8000) -> str:
        """The last ``tail`` characters the server wrote to stderr."""
        try:
            return self.stderr_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "<no stderr captured>"

    def health(self) -> dict:
        response = httpx.get(f"{self.base_url}/health", timeout=10.0, verify=self.verify)
        response.raise_for_status()
        return response.json()

    def client(self, **kwargs) -> openai.OpenAI:
        """The official client, pointed at this server's ``/v1`` with the administrator key."""
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120.0, **kwargs)


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test server: this one's, minus other ``ATELIER_*``, plus test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(
        ATELIER_ADMIN_KEY=ADMIN_KEY,
        ATELIER_CACHE_DIR=os.environ.get("ATELIER_CACHE_DIR", os.path.expanduser("~/.cache/atelier")),
        ATELIER_THREADS=os.environ.get("ATELIER_THREADS", "1"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real server, shared by every integration test of the session."""
    server = LiveServer(tmp_path_factory.mktemp("atelier-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def base_url(live_server: LiveServer) -> str:
    """``http://127.0.0.1:<port>`` of the shared server (no ``/v1``)."""
    return live_server.base_url


@pytest.fixture(scope="session")
def admin_key() -> str:
    return ADMIN_KEY


@pytest.fixture(scope="session")
def openai_client(live_server: LiveServer) -> Iterator[openai.OpenAI]:
    """``openai.OpenAI`` on the shared server, without retries (a 429 must surface)."""
    client = live_server.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def http(base_url: str) -> Iterator[httpx.Client]:
    """A raw httpx client on the shared server, sending the administrator key."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120.0) as client:
        yield client


@pytest.fixture(scope="session")
def anonymous_http(base_url: str) -> Iterator[httpx.Client]:
    """A raw httpx client on the shared server, without any key (tests add headers)."""
    with httpx.Client(base_url=base_url, timeout=120.0) as client:
        yield client


@pytest.fixture
def make_server(tmp_path_factory: pytest.TempPathFactory):
    """A factory of extra servers (e.g. with other queue sizes), all stopped after the test.

    ``make_server({"ATELIER_MAX_BATCH": "1"})`` starts one and returns its ``LiveServer``;
    ``workdir=`` reuses another server's directory (its data dir: a restart with other
    settings); keyword options go to ``LiveServer`` (``extra_args``, ``scheme``, ``verify``).
    """
    started: list[LiveServer] = []

    def make(extra_env: dict[str, str] | None = None, workdir: Path | None = None, **options: Any) -> LiveServer:
        server = LiveServer(workdir or tmp_path_factory.mktemp("atelier-extra-server"), extra_env, **options)
        started.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator["PostgresServer"]:
    """A real PostgreSQL server with pgvector for the session (see ``postgres_server.py``).

    Skips where PostgreSQL or pgvector is not installed, and fails instead when
    ``ATELIER_REQUIRE_POSTGRES=1`` (``.ci/run`` sets it after ``scripts/install_postgres.sh``).
    """
    from postgres_server import PostgresServer, PostgresUnavailable, find_bindir, has_pgvector, postgres_required

    def missing(reason: str) -> None:
        if postgres_required():
            pytest.fail(f"{reason} (ATELIER_REQUIRE_POSTGRES=1; run scripts/install_postgres.sh)", pytrace=False)
        pytest.skip(reason)

    try:
        bindir = find_bindir()
    except PostgresUnavailable as exc:
        missing(str(exc))
    if not has_pgvector(bindir):
        missing(f"the PostgreSQL of {bindir} has no pgvector extension")
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()
