"""API keys and the first-start operator key: round trips, refusals, hashes only, file modes."""

from __future__ import annotations

import stat
from datetime import timedelta

import pytest

from atelier.errors import Conflict, InvalidInput, Unauthenticated
from atelier.security.api_keys import (
    ADMIN_KEY_ID,
    INCORRECT,
    authenticate,
    hash_secret,
    install_key,
    issue_key,
    split_key,
)
from atelier.cloud.bootstrap import ADMIN_KEY_FILE, ensure_operator
from atelier.principal import Principal
from atelier.settings import Settings
from atelier.store import Database, repos
from atelier.store.tables import ApiKey, Tenancy, utcnow

ADMIN = "correct-horse-battery-staple-42"


@pytest.fixture(autouse=True)
def _no_atelier_env(monkeypatch):
    for name in ("ATELIER_ADMIN_KEY", "ATELIER_DATABASE_URL", "ATELIER_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tenancy_id(db):
    with db.session() as s:
        return repos.create_tenancy(s, "acme").id


def _issue(db, tenancy_id, role="user", **kwargs):
    with db.session() as s:
        return issue_key(s, tenancy_id, "ci", role, **kwargs)


def _auth(db, raw, **kwargs):
    with db.session() as s:
        return authenticate(s, raw, **kwargs)


def test_issue_then_authenticate(db, tenancy_id):
    key, raw = _issue(db, tenancy_id)
    assert raw.startswith(f"atl_{key.id}_") and split_key(raw) == (key.id, raw.split("_", 3)[3])
    principal = _auth(db, raw)
    assert principal == Principal(tenancy_id=tenancy_id, key_id=key.id, role="user")
    assert not principal.is_operator
    assert key.expires_at is not None and timedelta(days=89) < key.expires_at - utcnow() <= timedelta(days=90)


@pytest.mark.parametrize("role", ["operator", "admin", "user"])
def test_role_carries_to_the_principal(db, tenancy_id, role):
    _, raw = _issue(db, tenancy_id, role=role)
    assert _auth(db, raw).is_operator == (role == "operator")


def test_issue_refuses_bad_arguments(db, tenancy_id):
    with pytest.raises(InvalidInput):
        _issue(db, tenancy_id, role="root")
    with pytest.raises(InvalidInput):
        _issue(db, tenancy_id, expires_in_days=0)


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_missing_key(db, raw):
    with pytest.raises(Unauthenticated, match="didn't provide an API key"):
        _auth(db, raw)


@pytest.mark.parametrize(
    "raw", ["atl_nope", "atl_key_0123456789abcdef01234567", "short", "has spaces in it, long", "é" * 20]
)
def test_malformed_key(db, raw):
    with pytest.raises(Unauthenticated, match="Malformed API key"):
        _auth(db, raw)


def test_wrong_secret_and_unknown_key_get_the_same_message(db, tenancy_id):
    _, raw = _issue(db, tenancy_id)
    wrong_secret = raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")
    unknown_id = f"atl_key_{'0' * 24}_{raw.split('_', 3)[3]}"
    messages = []
    for candidate in (wrong_secret, unknown_id, "some-opaque-string-not-installed"):
        with pytest.raises(Unauthenticated) as excinfo:
            _auth(db, candidate)
        messages.append(excinfo.value.message)
    assert messages == [INCORRECT] * 3


def test_revoked_key(db, tenancy_id):
    key, raw = _issue(db, tenancy_id)
    with db.session() as s:
        repos.revoke_api_key(s, tenancy_id, key.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        _auth(db, raw)


def test_expired_key(db, tenancy_id):
    _, raw = _issue(db, tenancy_id, expires_in_days=1)
    _auth(db, raw)
    with pytest.raises(Unauthenticated, match="expired"):
        _auth(db, raw, now=utcnow() + timedelta(days=2))


def test_key_without_expiry(db, tenancy_id):
    key, raw = _issue(db, tenancy_id, expires_in_days=None)
    assert key.expires_at is None
    assert _auth(db, raw, now=utcnow() + timedelta(days=10_000)).key_id == key.id


def test_second_secret_slot_also_authenticates(db, tenancy_id):
    key, raw = _issue(db, tenancy_id)
    with db.session() as s:
        s.get(ApiKey, key.id).secret_hash_2 = hash_secret("x" * 43)
    assert _auth(db, f"atl_{key.id}_{'x' * 43}").key_id == key.id
    assert _auth(db, raw).key_id == key.id


def test_last_used_is_written_at_most_once_a_minute(db, tenancy_id):
    key, raw = _issue(db, tenancy_id)
    t0 = utcnow()
    _auth(db, raw, now=t0)
    _auth(db, raw, now=t0 + timedelta(seconds=30))
    with db.session() as s:
        assert s.get(ApiKey, key.id).last_used_at == t0
    _auth(db, raw, now=t0 + timedelta(seconds=61))
    with db.session() as s:
        assert s.get(ApiKey, key.id).last_used_at == t0 + timedelta(seconds=61)


def test_only_hashes_are_stored(tmp_path, db, tenancy_id):
    key, raw = _issue(db, tenancy_id)
    secret = raw.split("_", 3)[3]
    _auth(db, raw)
    with db.session() as s:
        assert s.get(ApiKey, key.id).secret_hash_1 == hash_secret(secret)
        install_key(s, ADMIN, tenancy_id, "admin", "operator")
    db.dispose()
    files = list(tmp_path.glob("atelier.db*"))  # the WAL file too
    assert files
    blob = b"".join(f.read_bytes() for f in files)
    assert key.id.encode() in blob  # sanity: the scan does see the rows
    assert secret.encode() not in blob and ADMIN.encode() not in blob


def test_install_opaque_key(db, tenancy_id):
    with db.session() as s:
        key = install_key(s, ADMIN, tenancy_id, "admin", "operator")
        assert key.id == ADMIN_KEY_ID and key.expires_at is None
        assert install_key(s, ADMIN, tenancy_id, "admin", "operator").id == ADMIN_KEY_ID  # idempotent
    principal = _auth(db, ADMIN)
    assert principal.key_id == ADMIN_KEY_ID and principal.is_operator


def test_install_atl_format_key(db, tenancy_id):
    raw = f"atl_key_{'ab' * 12}_{'s' * 43}"
    with db.session() as s:
        assert install_key(s, raw, tenancy_id, "admin", "operator").id == f"key_{'ab' * 12}"
    assert _auth(db, raw).key_id == f"key_{'ab' * 12}"


def test_install_new_secret_replaces_the_old_one(db, tenancy_id):
    with db.session() as s:
        install_key(s, ADMIN, tenancy_id, "admin", "operator")
        install_key(s, ADMIN + "-v2", tenancy_id, "admin", "operator")
    assert _auth(db, ADMIN + "-v2").is_operator
    with pytest.raises(Unauthenticated, match="Incorrect"):
        _auth(db, ADMIN)


@pytest.mark.parametrize("raw", ["too-short", "atl_truncated_key", "with spaces but long enough", "ü" * 20])
def test_install_refuses_bad_keys(db, tenancy_id, raw):
    with pytest.raises(InvalidInput), db.session() as s:
        install_key(s, raw, tenancy_id, "admin", "operator")


def test_install_refuses_a_key_id_of_another_role(db, tenancy_id):
    with db.session() as s:
        install_key(s, ADMIN, tenancy_id, "admin", "operator")
        with pytest.raises(Conflict):
            install_key(s, ADMIN, tenancy_id, "admin", "user")


# --- first start -----------------------------------------------------------------------


def _start(tmp_path, **settings):
    config = Settings(data_dir=tmp_path / "data", **settings)
    db = Database.from_settings(config)
    db.migrate()
    try:
        return ensure_operator(db, config), db, config
    finally:
        db.dispose()


def _tenancies(db):
    with db.session() as s:
        return s.query(Tenancy).count()


def test_first_start_generates_a_private_operator_key(tmp_path):
    raw, db, config = _start(tmp_path)
    assert raw and raw.startswith("atl_key_")
    path = config.data_path / ADMIN_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.data_path.stat().st_mode) == 0o700
    assert path.read_text().strip() == raw
    assert [p.name for p in config.data_path.iterdir() if p.name.startswith(".")] == []  # no temp file left
    principal = _auth(db, raw)
    assert principal.is_operator
    with db.session() as s:
        assert repos.get_tenancy(s, principal.tenancy_id).name == "default"
        assert s.get(ApiKey, principal.key_id).expires_at is None


def test_second_start_creates_nothing(tmp_path):
    raw, db, config = _start(tmp_path)
    again, db, _ = _start(tmp_path)
    assert again is None
    assert _tenancies(db) == 1
    assert (config.data_path / ADMIN_KEY_FILE).read_text().strip() == raw
    assert _auth(db, raw).is_operator


def test_admin_key_from_settings(tmp_path):
    raw, db, config = _start(tmp_path, admin_key=ADMIN)
    assert raw is None
    assert not (config.data_path / ADMIN_KEY_FILE).exists()
    assert _auth(db, ADMIN).is_operator
    again, db, _ = _start(tmp_path, admin_key=ADMIN)
    assert again is None and _tenancies(db) == 1
    with db.session() as s:
        assert [k.id for k in s.query(ApiKey)] == [ADMIN_KEY_ID]


def test_admin_key_is_installed_on_an_existing_database(tmp_path):
    generated, db, _ = _start(tmp_path)
    again, db, _ = _start(tmp_path, admin_key=ADMIN)
    assert again is None and _tenancies(db) == 1
    assert _auth(db, ADMIN).is_operator
    assert _auth(db, generated).is_operator


def test_bad_admin_key_is_refused(tmp_path):
    with pytest.raises(InvalidInput):
        _start(tmp_path, admin_key="short")
