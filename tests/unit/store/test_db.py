"""The metadata store: migrations, SQLite options, sessions, tables and repositories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from atelier.errors import Conflict, InvalidInput, NotFound
from atelier.store import Database, repos
from atelier.store.db import MIGRATIONS_DIR
from atelier.store.tables import ApiKey, Base, Tenancy, new_id


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'data' / 'atelier.db'}")
    database.migrate()
    yield database
    database.dispose()


def _head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def test_migrate_creates_tables(db):
    assert {"tenancies", "api_keys", "alembic_version"} <= set(inspect(db.engine).get_table_names())
    assert "tenancy_id" in {c["name"] for c in inspect(db.engine).get_columns("api_keys")}


def test_migrate_is_idempotent(db):
    with db.session() as s:
        repos.create_tenancy(s, "kept")
    db.migrate()
    db.migrate()
    with db.engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == _head_revision()
    with db.session() as s:
        assert [t.name for t in repos.list_tenancies(s)] == ["kept"]


def test_models_match_migration(db):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_sqlite_pragmas(db):
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0


def test_in_memory_database_is_shared_across_sessions():
    db = Database("sqlite://")
    db.migrate()
    with db.session() as s:
        repos.create_tenancy(s, "mem")
    with db.session() as s:
        assert repos.any_tenancy(s)
    db.dispose()


def test_session_commits_on_success_and_rolls_back_on_error(db):
    with db.session() as s:
        repos.create_tenancy(s, "a")
    with pytest.raises(RuntimeError), db.session() as s:
        repos.create_tenancy(s, "b")
        raise RuntimeError("boom")
    with db.session() as s:
        assert [t.name for t in repos.list_tenancies(s)] == ["a"]


def test_foreign_keys_are_enforced(db):
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(ApiKey(id=new_id("key"), tenancy_id="ten_missing", name="k", role="user", secret_hash_1="0" * 64))


def test_role_is_checked_by_the_database(db):
    with db.session() as s:
        ten = repos.create_tenancy(s, "t")
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(ApiKey(tenancy_id=ten.id, name="k", role="root", secret_hash_1="0" * 64))


def test_datetimes_round_trip_as_aware_utc(db):
    paris = timezone(timedelta(hours=2))
    with db.session() as s:
        ten = repos.create_tenancy(s, "t")
        key = repos.create_api_key(
            s, ten.id, name="k", role="user", secret_hash="0" * 64, expires_at=datetime(2030, 1, 1, 12, tzinfo=paris)
        )
    with db.session() as s:
        loaded = s.get(ApiKey, key.id)
        assert loaded.expires_at == datetime(2030, 1, 1, 10, tzinfo=UTC)
        assert loaded.expires_at.tzinfo is not None and loaded.created_at.tzinfo is not None
        assert s.get(Tenancy, ten.id).created_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(db):
    with db.session() as s:
        ten = repos.create_tenancy(s, "t")
    with pytest.raises(Exception, match="naive datetime"), db.session() as s:
        repos.create_api_key(s, ten.id, name="k", role="user", secret_hash="0" * 64, expires_at=datetime(2030, 1, 1))


def test_ids_are_prefixed_and_opaque(db):
    with db.session() as s:
        ten = repos.create_tenancy(s, "t")
        key = repos.create_api_key(s, ten.id, name="k", role="user", secret_hash="0" * 64)
    assert ten.id.startswith("ten_") and key.id.startswith("key_")
    assert len({new_id("key") for _ in range(100)}) == 100


# --- repositories --------------------------------------------------------------------


def test_tenancy_names_are_unique_and_checked(db):
    with db.session() as s:
        repos.create_tenancy(s, "acme")
        with pytest.raises(Conflict):
            repos.create_tenancy(s, "acme")
        with pytest.raises(InvalidInput):
            repos.create_tenancy(s, "")
        with pytest.raises(InvalidInput):
            repos.create_tenancy(s, "x" * 101)


def test_get_tenancy(db):
    with db.session() as s:
        ten = repos.create_tenancy(s, "acme")
        assert repos.get_tenancy(s, ten.id).name == "acme"
        assert repos.get_tenancy_by_name(s, "acme").id == ten.id
        assert repos.get_tenancy_by_name(s, "nope") is None
        with pytest.raises(NotFound):
            repos.get_tenancy(s, "ten_nope")


def test_api_keys_are_scoped_to_their_tenancy(db):
    with db.session() as s:
        a = repos.create_tenancy(s, "a")
        b = repos.create_tenancy(s, "b")
        ka = repos.create_api_key(s, a.id, name="ka", role="user", secret_hash="1" * 64)
        kb = repos.create_api_key(s, b.id, name="kb", role="admin", secret_hash="2" * 64)
    with db.session() as s:
        assert [k.id for k in repos.list_api_keys(s, a.id)] == [ka.id]
        assert repos.get_api_key(s, b.id, kb.id).name == "kb"
        with pytest.raises(NotFound):  # another tenancy's key looks exactly like a missing one
            repos.get_api_key(s, a.id, kb.id)
        with pytest.raises(NotFound):
            repos.revoke_api_key(s, a.id, kb.id)
        assert repos.find_api_key(s, kb.id).tenancy_id == b.id


def test_create_api_key_checks_role_tenancy_and_id(db):
    with db.session() as s:
        ten = repos.create_tenancy(s, "t")
        with pytest.raises(InvalidInput):
            repos.create_api_key(s, ten.id, name="k", role="root", secret_hash="0" * 64)
        with pytest.raises(NotFound):
            repos.create_api_key(s, "ten_nope", name="k", role="user", secret_hash="0" * 64)
        repos.create_api_key(s, ten.id, name="k", role="user", secret_hash="0" * 64, key_id="key_fixed")
        with pytest.raises(Conflict):
            repos.create_api_key(s, ten.id, name="k", role="user", secret_hash="0" * 64, key_id="key_fixed")


def test_revoke_api_key(db):
    with db.session() as s:
        ten = repos.create_tenancy(s, "t")
        key = repos.create_api_key(s, ten.id, name="k", role="user", secret_hash="0" * 64)
    with db.session() as s:
        first = repos.revoke_api_key(s, ten.id, key.id).revoked_at
        assert first is not None
    with db.session() as s:
        assert repos.revoke_api_key(s, ten.id, key.id).revoked_at == first
        assert repos.list_api_keys(s, ten.id) == []
        assert [k.id for k in repos.list_api_keys(s, ten.id, include_revoked=True)] == [key.id]
