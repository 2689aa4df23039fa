"""Tenancy creation (admins, protected policy, key ring, first key), the same on first
start for the default tenancy, and key rotation with a grace period."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import delete, func, select

from atelier.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from atelier.principal import ADMINISTRATORS, Principal
from atelier.security.api_keys import authenticate, issue_key, rotate_key
from atelier.cloud.bootstrap import DEFAULT_TENANCY, ensure_operator
from atelier.security.crypto import KeyManager, RootKey
from atelier.security.policy import parse_policy
from atelier.security import tenancies
from atelier.security.tenancies import ADMIN_POLICY, ADMIN_STATEMENTS, create_tenancy
from atelier.settings import Settings
from atelier.store import Database, identity, repos
from atelier.store.tables import Group, KeyRing, Policy, utcnow


@pytest.fixture(autouse=True)
def _no_atelier_env(monkeypatch):
    for name in ("ATELIER_ADMIN_KEY", "ATELIER_DATABASE_URL", "ATELIER_DATA_DIR", "ATELIER_ROOT_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def keys(db):
    return KeyManager(db, RootKey.generate())


def test_create_tenancy_makes_a_usable_tenancy(db, keys):
    with db.session() as s:
        tenancy, admin, raw = create_tenancy(s, keys, "acme")
    with db.session() as s:
        principal = authenticate(s, raw)
        scope = Principal(tenancy.id, "k", "admin")
        (policy,) = identity.list_policies(s, scope)
        key = identity.get_api_key(s, scope, principal.key_id)
    assert (principal.tenancy_id, principal.user_id, principal.role) == (tenancy.id, admin.id, "admin")
    assert principal.groups == {ADMINISTRATORS} and principal.is_admin
    assert (policy.name, policy.statements, policy.protected) == (ADMIN_POLICY, ADMIN_STATEMENTS, True)
    assert [s.resource_type for s in parse_policy(policy.statements)] == ["genai-family"]
    assert keys.current_version(tenancy.id) == 1
    assert timedelta(days=89) < key.expires_at - utcnow() <= timedelta(days=90)


def test_a_failed_tenancy_creation_leaves_nothing(db, keys, monkeypatch):
    with db.session() as s:
        create_tenancy(s, keys, "acme")
    with pytest.raises(Conflict), db.session() as s:
        create_tenancy(s, keys, "acme")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tenancies, "issue_key", fail)  # the last step fails: the ring exists by then
    with pytest.raises(RuntimeError), db.session() as s:
        create_tenancy(s, keys, "beta")
    with db.session() as s:
        assert [t.name for t in repos.list_tenancies(s)] == ["acme"]
        assert s.scalar(select(func.count()).select_from(Group)) == 1
        assert s.scalar(select(func.count()).select_from(KeyRing)) == 1


def test_the_default_tenancy_gets_administrators_and_the_protected_policy(db, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", admin_key="operator-key-0123456789")
    ensure_operator(db, settings)
    ensure_operator(db, settings)  # idempotent
    with db.session() as s:
        default = repos.get_tenancy_by_name(s, DEFAULT_TENANCY)
        scope = Principal(default.id, "k", "operator")
        assert [g.name for g in identity.list_groups(s, scope)] == [ADMINISTRATORS]
        assert [(p.name, p.protected) for p in identity.list_policies(s, scope)] == [(ADMIN_POLICY, True)]
        # an install from before these existed
        s.execute(delete(Policy))
        s.execute(delete(Group))
    ensure_operator(db, settings)
    with db.session() as s:
        assert [p.name for p in identity.list_policies(s, scope)] == [ADMIN_POLICY]
        assert identity.find_group(s, scope, ADMINISTRATORS) is not None


def _user_key(db, tenancy_id, **kwargs):
    with db.session() as s:
        user = identity.create_user(s, Principal(tenancy_id, "k", "admin"), "ann")
        key, raw = issue_key(s, tenancy_id, "ci", "user", user_id=user.id, **kwargs)
    return Principal(tenancy_id, key.id, "user", user.id), raw


def test_rotation_keeps_the_old_secret_for_the_grace_period_only(db):
    with db.session() as s:
        tenancy_id = repos.create_tenancy(s, "acme").id
    principal, old = _user_key(db, tenancy_id)
    with db.session() as s:
        key, new = rotate_key(s, principal, principal.key_id, grace_seconds=3600)
    assert new != old and key.id == principal.key_id
    soon, later = utcnow() + timedelta(minutes=59), utcnow() + timedelta(minutes=61)
    with db.session() as s:
        assert authenticate(s, old, now=soon).user_id == principal.user_id
        assert authenticate(s, new, now=later).key_id == key.id
        with pytest.raises(Unauthenticated):
            authenticate(s, old, now=later)
    with db.session() as s:
        _, newest = rotate_key(s, principal, key.id, grace_seconds=0)
    with db.session() as s:
        authenticate(s, newest)
        for stale in (old, new):
            with pytest.raises(Unauthenticated):
                authenticate(s, stale)


def test_rotation_bounds_and_scope(db):
    with db.session() as s:
        tenancy_id = repos.create_tenancy(s, "acme").id
        other = Principal(repos.create_tenancy(s, "other").id, "k", "admin")
    principal, _ = _user_key(db, tenancy_id)
    with db.session() as s:
        with pytest.raises(InvalidInput):
            rotate_key(s, principal, principal.key_id, grace_seconds=-1)
        with pytest.raises(NotFound):
            rotate_key(s, other, principal.key_id)
