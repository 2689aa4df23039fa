"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary directory.

The server listens on 127.0.0.1 at a free port with ``trust`` authentication and no fsync
(test data only). PostgreSQL refuses to run as root, so under root (CI) the cluster belongs
to the ``postgres`` system user (created by Debian's packages) and its commands run through
``runuser``; under any other user they run directly. Binaries come from
``ATELIER_PG_BINDIR`` or the newest ``/usr/lib/postgresql/*/bin`` (Debian's layout), else
``PATH``. ``scripts/install_postgres.sh`` installs PostgreSQL 15 with pgvector.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

REQUIRE_ENV = "ATELIER_REQUIRE_POSTGRES"
"""When ``1``, a missing PostgreSQL or pgvector fails the tests instead of skipping them (CI)."""
SUPERUSER = "atelier"
"""The superuser role ``initdb`` creates (trust authentication, no password)."""


class PostgresUnavailable(RuntimeError):
    """PostgreSQL (or pgvector) is not installed here."""


def postgres_required() -> bool:
    """Whether this run must have PostgreSQL (``ATELIER_REQUIRE_POSTGRES=1``, set by ``.ci/run``)."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def find_bindir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises:
        PostgresUnavailable: No PostgreSQL server binaries were found.
    """
    candidates: list[str] = []
    if os.environ.get("ATELIER_PG_BINDIR"):
        candidates.append(os.environ["ATELIER_PG_BINDIR"])
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    candidates += debian
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for folder in candidates:
        if all((Path(folder) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: run scripts/install_postgres.sh"
    )


def has_pgvector(bindir: Path) -> bool:
    """Whether the server of ``bindir`` has the ``vector`` extension installed."""
    pg_config = bindir / "pg_config"
    if pg_config.is_file():
        sharedir = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, check=True)
        return (Path(sharedir.stdout.strip()) / "extension" / "vector.control").is_file()
    major = bindir.parent.name
    return Path(f"/usr/share/postgresql/{major}/extension/vector.control").is_file()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; ``start()`` then ``url()``; ``stop()`` removes it."""

    def __init__(self, bindir: Path | None = None):
        self.bindir = bindir or find_bindir()
        self.port = _free_port()
        # Under root the cluster's owner must reach its folder: /tmp, not a private TMPDIR.
        parent = "/tmp" if os.geteuid() == 0 and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="atelier-pg-", dir=parent))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.run_as: str | None = None
        if os.geteuid() == 0:
            try:
                self.run_as = pwd.getpwnam("postgres").pw_name
            except KeyError as exc:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to own the cluster") from exc
            entry = pwd.getpwnam(self.run_as)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self.root.chmod(0o700)

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        command = list(args)
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False)

    def start(self) -> PostgresServer:
        """``initdb`` then start the server and wait until it accepts connections.

        Raises:
            RuntimeError: initdb or the server failed (their output is in the message).
        """
        init = self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
        )
        started = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", options, "start",
        )
        if started.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}\n{log}")
        return self

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3) of ``database`` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (immediate mode: the data is thrown away) and delete its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
