"""Fixtures of the browser tests: a real Atelier server with its worker, the console, and Chromium.

The server is ``python -m atelier serve`` (one job worker beside the API, as a user starts
it) on a free port and a fresh data directory, on the bundled real models; the console is
``python -m atelier --url <server> console --port <free port>``, which runs Streamlit
headless. The browser is Debian's ``/usr/bin/chromium`` driven by Playwright (whose wheel
carries its driver; no browser is ever downloaded). Without Chromium or Playwright the tests
skip, or fail with the reason when ``ATELIER_REQUIRE_BROWSER=1`` (CI sets it);
``ATELIER_CHROMIUM`` names another Chromium binary.

Only process handling is copied from ``tests/integration/conftest.py`` (a conftest cannot be
imported from another folder): the tests see the server and the console only over HTTP.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ADMIN_KEY = "atelier-e2e-test-admin-key"
CHROMIUM = os.environ.get("ATELIER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
SERVER_STARTUP = 300.0
"""Seconds to wait for the server's ``/health`` (covers a first GGUF conversion)."""
CONSOLE_STARTUP = 60.0


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """This environment minus other ``ATELIER_*`` settings, plus the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    env.update(
        ATELIER_CACHE_DIR=os.environ.get("ATELIER_CACHE_DIR", os.path.expanduser("~/.cache/atelier")),
        ATELIER_THREADS=os.environ.get("ATELIER_THREADS", "1"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Process:
    """A child process whose output goes to files, waited on until a URL answers 200."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], workdir: Path):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.proc: subprocess.Popen | None = None

    def start(self, health_url: str, timeout: float) -> Process:
        """Start it and wait until ``health_url`` answers 200; fails the test with its stderr otherwise."""
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} before answering:\n{self.stderr()}")
            try:
                if httpx.get(health_url, timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"{self.name} did not answer {health_url} within {timeout:.0f} s:\n{self.stderr()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stderr(self, tail: int = 6000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "<no stderr captured>"


def _missing(reason: str) -> None:
    if os.environ.get("ATELIER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (ATELIER_REQUIRE_BROWSER=1: the browser test must run; "
                    "install it with `bash scripts/install_browser.sh`)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium, or a skip (a failure under ``ATELIER_REQUIRE_BROWSER=1``)."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _missing(f"Chromium is not installed at {CHROMIUM} (Debian package `chromium`)")
    try:
        import playwright.sync_api  # noqa: F401
    except ModuleNotFoundError:
        _missing("the Python package `playwright` is not installed (pip install -e '.[test]')")
    return CHROMIUM


@pytest.fixture(scope="session")
def e2e_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a real ``atelier serve`` with one job worker."""
    workdir = tmp_path_factory.mktemp("e2e-server")
    port = free_port()
    cmd = [sys.executable, "-m", "atelier", "serve", "--port", str(port), "--data-dir", str(workdir / "data"),
           "--workers", "1"]
    server = Process("server", cmd, child_env(ATELIER_ADMIN_KEY=ADMIN_KEY), workdir)
    url = f"http://127.0.0.1:{port}"
    server.start(f"{url}/health", SERVER_STARTUP)
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def console_url(e2e_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of ``atelier console`` pointed at the server, with the admin key."""
    if shutil.which("streamlit", path=os.path.dirname(sys.executable)) is None:
        _missing("streamlit is not installed in this environment")
    workdir = tmp_path_factory.mktemp("e2e-console")
    port = free_port()
    cmd = [sys.executable, "-m", "atelier", "--url", e2e_server, "console", "--port", str(port)]
    env = child_env(ATELIER_API_KEY=ADMIN_KEY, ATELIER_DATA_DIR=str(workdir / "client-data"), HOME=str(workdir))
    console = Process("console", cmd, env, workdir)
    url = f"http://127.0.0.1:{port}"
    console.start(f"{url}/_stcore/health", CONSOLE_STARTUP)
    try:
        yield url
    finally:
        console.stop()


@pytest.fixture
def admin_key() -> str:
    """The key the server's administrator has (the console sends it): a page must never show it."""
    return ADMIN_KEY


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """A folder in the test's tmp dir for the screenshots of its steps."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder


@pytest.fixture
def page(chromium_path: str, console_url: str):
    """A fresh Chromium page (1400×1600) on the console; the browser closes after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1600})
            tab = context.new_page()
            tab.set_default_timeout(60_000)
            tab.goto(console_url)
            yield tab
        finally:
            browser.close()
