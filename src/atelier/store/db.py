"""The metadata database: one SQLAlchemy engine, sessions, and Alembic migrations.

The embedded default is a SQLite file in the data dir; PostgreSQL works by URL through the
same code path. This module knows nothing about HTTP or models: it opens connections, runs
migrations and hands out sessions that commit or roll back as one unit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

if TYPE_CHECKING:
    from atelier.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
"""Alembic's script folder, shipped inside the package (no alembic.ini needed)."""

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another one to finish before failing."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Set per-connection SQLite options: WAL journal, foreign keys, busy timeout."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


class Database:
    """An engine and a session factory for one database URL.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:////var/lib/atelier/atelier.db`` or
            ``postgresql+psycopg://user@host/atelier``.
        echo: Log every SQL statement (debugging).
    """

    def __init__(self, url: str, *, echo: bool = False):
        self.url = make_url(url)
        kwargs: dict[str, Any] = {"echo": echo}
        is_sqlite = self.url.get_backend_name() == "sqlite"
        if is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False}
            database = self.url.database
            if database in (None, "", ":memory:"):
                kwargs["poolclass"] = StaticPool  # one shared in-memory database
            else:
                Path(database).expanduser().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database named by ``settings.db_url``."""
        return cls(settings.db_url)

    def migrate(self) -> None:
        """Upgrade the schema to the newest migration; a no-op when already there.

        Alembic runs on this Database's own connection, so it works for any URL.
        """
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back if it raises.

        Objects stay readable after the commit (``expire_on_commit=False``).

        Yields:
            An open ``Session``.
        """
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        """Close every pooled connection (call at shutdown, or before deleting the file)."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"
