"""Identity repositories: tenancy scoping (foreign = missing), names, nesting, protection."""

from __future__ import annotations

from datetime import timedelta

import pytest

from atelier.errors import Conflict, InvalidInput, NotFound
from atelier.principal import ADMINISTRATORS, Principal
from atelier.store import Database, identity, repos
from atelier.store.tables import ApiKey, GroupMember, utcnow

READ_FILES = "allow group devs to read files in tenancy"


@pytest.fixture
def session(db):
    with db.session() as s:
        yield s


@pytest.fixture
def a(session) -> Principal:
    return Principal(repos.create_tenancy(session, "a").id, "key_a", "admin")


@pytest.fixture
def b(session) -> Principal:
    return Principal(repos.create_tenancy(session, "b").id, "key_b", "admin")


def _message(exc_info) -> str:
    return exc_info.value.message


# --- tenancy scoping ----------------------------------------------------------------------

GETTERS = [
    ("compartment", identity.get_compartment, lambda s, p: identity.create_compartment(s, p, "eng")),
    ("user", identity.get_user, lambda s, p: identity.create_user(s, p, "ann")),
    ("group", identity.get_group, lambda s, p: identity.create_group(s, p, "devs")),
    ("policy", identity.get_policy, lambda s, p: identity.create_policy(s, p, "p", READ_FILES)),
]


@pytest.mark.parametrize(("what", "get", "make"), GETTERS, ids=[g[0] for g in GETTERS])
def test_another_tenancys_row_is_not_found_like_a_missing_one(session, a, b, what, get, make):
    row = make(session, a)
    assert get(session, a, row.id) is row
    with pytest.raises(NotFound) as foreign:
        get(session, b, row.id)
    missing_id = row.id[:4] + "0" * (len(row.id) - 4)
    with pytest.raises(NotFound) as missing:
        get(session, b, missing_id)
    assert _message(foreign).replace(row.id, "X") == _message(missing).replace(missing_id, "X")
    assert foreign.value.param == missing.value.param


def test_lists_hold_only_the_callers_tenancy(session, a, b):
    identity.create_user(session, a, "ann")
    identity.create_group(session, a, "devs")
    identity.create_compartment(session, a, "eng")
    identity.create_policy(session, a, "p", "allow group devs to read files in tenancy")
    for lister in (identity.list_users, identity.list_groups, identity.list_compartments, identity.list_policies):
        assert lister(session, b) == []
        assert len(lister(session, a)) == 1


def test_same_names_in_two_tenancies_are_fine(session, a, b):
    for p in (a, b):
        identity.create_user(session, p, "ann")
        identity.create_group(session, p, "devs")
        identity.create_compartment(session, p, "eng")


def test_updates_and_deletes_of_foreign_rows_are_not_found(session, a, b):
    user = identity.create_user(session, a, "ann")
    group = identity.create_group(session, a, "devs")
    comp = identity.create_compartment(session, a, "eng")
    pol = identity.create_policy(session, a, "p", "allow group devs to read files in tenancy")
    calls = [
        lambda: identity.update_user(session, b, user.id, name="x"),
        lambda: identity.delete_user(session, b, user.id),
        lambda: identity.update_group(session, b, group.id, name="x"),
        lambda: identity.delete_group(session, b, group.id),
        lambda: identity.update_compartment(session, b, comp.id, name="x"),
        lambda: identity.delete_compartment(session, b, comp.id),
        lambda: identity.update_policy(session, b, pol.id, name="x"),
        lambda: identity.delete_policy(session, b, pol.id),
        lambda: identity.compartment_path(session, b, comp.id),
    ]
    for call in calls:
        with pytest.raises(NotFound):
            call()
    assert (user.name, group.name, comp.name, pol.name) == ("ann", "devs", "eng", "p")


# --- compartments -------------------------------------------------------------------------


def test_nested_compartments_paths_and_resolution(session, a):
    eng = identity.create_compartment(session, a, "eng")
    ml = identity.create_compartment(session, a, "ml", parent_id=eng.id)
    deep = identity.create_compartment(session, a, "vision", parent_id=ml.id)
    identity.create_compartment(session, a, "ml")  # same name at the root: another compartment
    assert identity.compartment_path(session, a, deep.id) == ("eng", "ml", "vision")
    assert identity.resolve_compartment(session, a, "eng:ml:vision") is deep
    assert identity.resolve_compartment(session, a, "eng:ml") is ml
    assert identity.resolve_compartment(session, a, ml.id) is ml
    for ref in ("eng:nope", "vision", "cmp_000000000000000000000000", ""):
        with pytest.raises(NotFound):
            identity.resolve_compartment(session, a, ref)


def test_compartment_names_are_unique_among_siblings_only(session, a):
    eng = identity.create_compartment(session, a, "eng")
    identity.create_compartment(session, a, "ml", parent_id=eng.id)
    with pytest.raises(Conflict):
        identity.create_compartment(session, a, "ml", parent_id=eng.id)
    with pytest.raises(Conflict):
        identity.create_compartment(session, a, "eng")  # root siblings too (parent NULL)
    other = identity.create_compartment(session, a, "ops")
    with pytest.raises(Conflict):
        identity.update_compartment(session, a, other.id, name="eng")


def test_a_compartment_with_children_cannot_be_deleted(session, a):
    eng = identity.create_compartment(session, a, "eng")
    ml = identity.create_compartment(session, a, "ml", parent_id=eng.id)
    with pytest.raises(Conflict, match="sub-compartment"):
        identity.delete_compartment(session, a, eng.id)
    identity.delete_compartment(session, a, ml.id)
    identity.delete_compartment(session, a, eng.id)
    assert identity.list_compartments(session, a) == []


def test_a_parent_of_another_tenancy_is_not_found(session, a, b):
    eng = identity.create_compartment(session, a, "eng")
    with pytest.raises(NotFound):
        identity.create_compartment(session, b, "ml", parent_id=eng.id)
    with pytest.raises(NotFound):
        identity.resolve_compartment(session, b, "eng")


@pytest.mark.parametrize("name", ["", "a:b", "has space", "x" * 101, "naïve"])
def test_bad_compartment_and_group_names(session, a, name):
    with pytest.raises(InvalidInput):
        identity.create_compartment(session, a, name)
    with pytest.raises(InvalidInput):
        identity.create_group(session, a, name)


def test_user_names_may_be_email_addresses(session, a):
    assert identity.create_user(session, a, "ann+ci@example.com").name == "ann+ci@example.com"
    with pytest.raises(InvalidInput):
        identity.create_user(session, a, "ann smith")
    with pytest.raises(Conflict):
        identity.create_user(session, a, "ann+ci@example.com")


# --- users, groups, members ---------------------------------------------------------------


def test_membership_needs_a_user_and_group_of_the_same_tenancy(session, a, b):
    group = identity.create_group(session, a, "devs")
    ann = identity.create_user(session, a, "ann")
    bob = identity.create_user(session, b, "bob")
    with pytest.raises(NotFound):
        identity.add_member(session, a, group.id, bob.id)
    with pytest.raises(NotFound):
        identity.add_member(session, b, group.id, bob.id)
    identity.add_member(session, a, group.id, ann.id)
    identity.add_member(session, a, group.id, ann.id)  # again: no change
    assert [u.name for u in identity.members_of(session, a, group.id)] == ["ann"]
    assert [g.name for g in identity.groups_of(session, a, ann.id)] == ["devs"]
    assert repos.group_names_of(session, a.tenancy_id, ann.id) == {"devs"}
    identity.remove_member(session, a, group.id, ann.id)
    with pytest.raises(NotFound):
        identity.remove_member(session, a, group.id, ann.id)
    assert identity.members_of(session, a, group.id) == []


def test_deleting_a_user_revokes_its_keys_and_memberships(session, a):
    ann = identity.create_user(session, a, "ann")
    group = identity.create_group(session, a, "devs")
    identity.add_member(session, a, group.id, ann.id)
    key = repos.create_api_key(session, a.tenancy_id, name="k", role="user", secret_hash="0" * 64, user_id=ann.id)
    revoked = identity.delete_user(session, a, ann.id)
    assert revoked == [key.id]
    assert session.get(ApiKey, key.id).revoked_at is not None
    assert session.get(GroupMember, (group.id, ann.id)) is None
    with pytest.raises(NotFound):
        identity.get_user(session, a, ann.id)


def test_the_administrators_group_and_the_last_administrator_are_kept(session, a):
    admins = identity.create_group(session, a, ADMINISTRATORS)
    ann = identity.create_user(session, a, "ann")
    bob = identity.create_user(session, a, "bob")
    identity.add_member(session, a, admins.id, ann.id)
    with pytest.raises(Conflict):
        identity.delete_group(session, a, admins.id)
    with pytest.raises(Conflict):
        identity.update_group(session, a, admins.id, name="Admins")
    with pytest.raises(Conflict, match="last member"):
        identity.remove_member(session, a, admins.id, ann.id)
    with pytest.raises(Conflict, match="last member"):
        identity.delete_user(session, a, ann.id)
    identity.add_member(session, a, admins.id, bob.id)
    identity.remove_member(session, a, admins.id, ann.id)
    as_bob = Principal(a.tenancy_id, "key_bob", "user", bob.id, frozenset({ADMINISTRATORS}))
    with pytest.raises(Conflict, match="your own"):
        identity.delete_user(session, as_bob, bob.id)


# --- policies -----------------------------------------------------------------------------


def test_a_protected_policy_cannot_be_changed_or_deleted(session, a):
    text = "allow group Administrators to manage genai-family in tenancy"
    pol = identity.create_policy(session, a, "Tenant Admin Policy", text, protected=True)
    with pytest.raises(Conflict):
        identity.update_policy(session, a, pol.id, statements="allow group x to read files in tenancy")
    with pytest.raises(Conflict):
        identity.delete_policy(session, a, pol.id)
    assert identity.get_policy(session, a, pol.id).statements == text


def test_policy_update_and_names(session, a):
    pol = identity.create_policy(session, a, "p", "allow group devs to read files in tenancy")
    identity.create_policy(session, a, "q", "allow group devs to read files in tenancy")
    with pytest.raises(Conflict):
        identity.create_policy(session, a, "p", "allow group x to read files in tenancy")
    with pytest.raises(Conflict):
        identity.update_policy(session, a, pol.id, name="q")
    before = pol.updated_at
    updated = identity.update_policy(session, a, pol.id, statements="allow group ops to use endpoints in tenancy")
    assert updated.statements.startswith("allow group ops") and updated.updated_at >= before
    assert repos.policy_texts(session, a.tenancy_id)[0] == updated.statements
    identity.delete_policy(session, a, pol.id)
    assert [p.name for p in identity.list_policies(session, a)] == ["q"]


# --- API keys -----------------------------------------------------------------------------


def test_api_keys_are_scoped_and_rotation_moves_the_old_hash(session, a, b):
    ann = identity.create_user(session, a, "ann")
    key = repos.create_api_key(session, a.tenancy_id, name="k", role="user", secret_hash="1" * 64, user_id=ann.id)
    with pytest.raises(NotFound):
        identity.get_api_key(session, b, key.id)
    with pytest.raises(NotFound):
        identity.revoke_api_key(session, b, key.id)
    assert identity.list_api_keys(session, b) == []
    assert identity.list_api_keys(session, a, user_id=ann.id) == [key]
    until = utcnow() + timedelta(hours=1)
    identity.replace_secret(session, a, key.id, "2" * 64, previous_until=until)
    assert (key.secret_hash_1, key.secret_hash_2, key.secret_2_expires_at) == ("2" * 64, "1" * 64, until)
    identity.replace_secret(session, a, key.id, "3" * 64, previous_until=until)
    assert (key.secret_hash_1, key.secret_hash_2) == ("3" * 64, "2" * 64)  # the oldest one is dropped
    identity.revoke_api_key(session, a, key.id)
    assert identity.list_api_keys(session, a) == []
    assert identity.list_api_keys(session, a, include_revoked=True) == [key]
    with pytest.raises(Conflict, match="revoked"):
        identity.replace_secret(session, a, key.id, "4" * 64, previous_until=until)


def test_an_expired_key_cannot_be_rotated(session, a):
    key = repos.create_api_key(
        session, a.tenancy_id, name="k", role="user", secret_hash="1" * 64, expires_at=utcnow() - timedelta(seconds=1)
    )
    with pytest.raises(Conflict, match="expired"):
        identity.replace_secret(session, a, key.id, "2" * 64, previous_until=utcnow())


def test_a_key_cannot_be_bound_to_another_tenancys_user(session, a, b):
    bob = identity.create_user(session, b, "bob")
    with pytest.raises(NotFound):
        repos.create_api_key(session, a.tenancy_id, name="k", role="user", secret_hash="1" * 64, user_id=bob.id)
