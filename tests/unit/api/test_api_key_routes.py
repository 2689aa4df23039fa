"""``/v1/api-keys`` over HTTP: shown once, hashes never, expiry, revocation, rotation with
a grace period, and who may manage whose key (self or an administrator)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from atelier.security import api_keys as api_keys_module
from atelier.security.api_keys import hash_secret, split_key
from atelier.store.tables import utcnow


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def beta(client) -> dict:
    response = client.post("/v1/tenancies", json={"name": "keys-beta"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def call(anon):
    """``call(key, method, path, **kw)``: a request with that key."""
    return lambda key, method, path, **kw: anon.request(method.upper(), path, headers=bearer(key), **kw)


@pytest.fixture(scope="module")
def bob(call, beta) -> dict:
    """A user of tenancy B outside Administrators, with a key made by the administrator."""
    admin = beta["admin_key"]
    user = call(admin, "post", "/v1/users", json={"name": "bob"}).json()
    key = call(admin, "post", "/v1/api-keys", json={"name": "bob-1", "user_id": user["id"]}).json()
    return {"user_id": user["id"], "key": key["key"], "key_id": key["id"]}


@pytest.fixture
def later(monkeypatch):
    """``later(hours)``: move the clock that authentication reads forward."""

    def move(hours: float) -> None:
        monkeypatch.setattr(api_keys_module, "utcnow", lambda: utcnow() + timedelta(hours=hours))

    return move


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def test_a_new_key_is_shown_once_and_stored_as_a_hash(call, beta):
    admin = beta["admin_key"]
    created = call(admin, "post", "/v1/api-keys", json={"name": "ci"})
    assert created.status_code == 201, created.text
    body = created.json()
    key_id, secret = split_key(body["key"])
    assert key_id == body["id"] and body["user_id"] == beta["admin_user_id"] and body["role"] == "user"
    assert timedelta(days=89) < _when(body["expires_at"]) - utcnow() <= timedelta(days=90)
    for response in (
        call(admin, "get", f"/v1/api-keys/{key_id}"), call(admin, "get", "/v1/api-keys"),
        call(body["key"], "get", "/v1/api-keys"),
    ):
        assert response.status_code == 200
        assert secret not in response.text and hash_secret(secret) not in response.text
        assert "hash" not in response.text and '"key"' not in response.text
    assert call(body["key"], "get", "/v1/users").status_code == 200  # the admin user's groups apply


@pytest.mark.parametrize(("days", "status"), [(1, 201), (3650, 201), (0, 400), (3651, 400)])
def test_expiry_bounds(call, beta, check_error, days, status):
    response = call(beta["admin_key"], "post", "/v1/api-keys", json={"name": "b", "expires_in_days": days})
    if status == 400:
        check_error(response, 400, param="expires_in_days")
    else:
        assert response.status_code == 201
        assert _when(response.json()["expires_at"]).date() == (utcnow() + timedelta(days=days)).date()


def test_a_key_without_a_user_must_name_one(client, check_error):
    check_error(client.post("/v1/api-keys", json={"name": "x"}), 400, param="user_id")


def test_expired_and_revoked_keys_are_401(call, beta, later, check_error):
    admin = beta["admin_key"]
    short = call(admin, "post", "/v1/api-keys", json={"name": "short", "expires_in_days": 1}).json()
    gone = call(admin, "post", "/v1/api-keys", json={"name": "gone"}).json()
    assert call(gone["key"], "get", "/v1/api-keys").status_code == 200
    revoked = call(admin, "delete", f"/v1/api-keys/{gone['id']}").json()
    assert revoked["revoked_at"] is not None
    error = check_error(call(gone["key"], "get", "/v1/models"), 401)
    assert "revoked" in error["message"]
    listed = {k["id"] for k in call(admin, "get", "/v1/api-keys").json()["data"]}
    assert gone["id"] not in listed
    all_keys = {k["id"] for k in call(admin, "get", "/v1/api-keys", params={"include_revoked": True}).json()["data"]}
    assert gone["id"] in all_keys
    check_error(call(admin, "post", f"/v1/api-keys/{gone['id']}/rotate"), 409)
    assert call(short["key"], "get", "/v1/models").status_code == 200
    later(25)
    error = check_error(call(short["key"], "get", "/v1/models"), 401)
    assert "expired" in error["message"]


def test_rotation_keeps_the_old_secret_during_the_grace_period(call, beta, later, check_error):
    admin = beta["admin_key"]
    old = call(admin, "post", "/v1/api-keys", json={"name": "rotating"}).json()
    rotated = call(old["key"], "post", f"/v1/api-keys/{old['id']}/rotate")  # a key may rotate itself
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["id"] == old["id"] and new["key"] != old["key"] and new["expires_at"] == old["expires_at"]
    grace = _when(new["previous_secret_expires_at"]) - utcnow()
    assert timedelta(hours=23, minutes=59) < grace <= timedelta(hours=24)
    assert call(old["key"], "get", "/v1/models").status_code == 200
    assert call(new["key"], "get", "/v1/models").status_code == 200
    later(23)
    assert call(old["key"], "get", "/v1/models").status_code == 200
    later(25)
    check_error(call(old["key"], "get", "/v1/models"), 401)
    assert call(new["key"], "get", "/v1/models").status_code == 200


def test_rotation_with_no_grace_ends_the_old_secret_now(call, beta, check_error):
    admin = beta["admin_key"]
    old = call(admin, "post", "/v1/api-keys", json={"name": "now"}).json()
    new = call(admin, "post", f"/v1/api-keys/{old['id']}/rotate", json={"grace_seconds": 0}).json()
    check_error(call(old["key"], "get", "/v1/models"), 401)
    assert call(new["key"], "get", "/v1/models").status_code == 200
    check_error(call(admin, "post", f"/v1/api-keys/{old['id']}/rotate", json={"grace_seconds": -1}), 400,
                param="grace_seconds")


def test_a_user_manages_only_their_own_keys(call, beta, bob, check_error):
    admin = beta["admin_key"]
    admin_key_id = split_key(admin)[0]
    own = call(bob["key"], "post", "/v1/api-keys", json={"name": "bob-2"})
    assert own.status_code == 201 and own.json()["user_id"] == bob["user_id"]
    listed = call(bob["key"], "get", "/v1/api-keys").json()["data"]
    assert {k["user_id"] for k in listed} == {bob["user_id"]} and len(listed) == 2
    missing = "key_" + "0" * 24
    for method, suffix in (("get", ""), ("post", "/rotate"), ("delete", "")):
        theirs = call(bob["key"], method, f"/v1/api-keys/{admin_key_id}{suffix}")
        nothing = call(bob["key"], method, f"/v1/api-keys/{missing}{suffix}")
        check_error(theirs, 404)
        same = nothing.json()["error"]["message"].replace(missing, "K")
        assert theirs.json()["error"]["message"].replace(admin_key_id, "K") == same
    error = check_error(
        call(bob["key"], "post", "/v1/api-keys", json={"name": "x", "user_id": beta["admin_user_id"]}), 400,
        param="user_id",
    )
    assert "not found or not authorized" in error["message"]
    assert call(admin, "get", "/v1/api-keys").status_code == 200  # untouched
    # the administrator sees and revokes bob's keys
    assert bob["key_id"] in {k["id"] for k in call(admin, "get", "/v1/api-keys").json()["data"]}
    assert call(bob["key"], "delete", f"/v1/api-keys/{own.json()['id']}").status_code == 200
    assert call(admin, "delete", f"/v1/api-keys/{bob['key_id']}").status_code == 200
    check_error(call(bob["key"], "get", "/v1/api-keys"), 401)


def test_only_the_operator_sees_operator_keys(client, anon, check_error):
    ops = client.post("/v1/users", json={"name": "ops"}).json()
    admins = next(g for g in client.get("/v1/groups").json()["data"] if g["name"] == "Administrators")
    client.post(f"/v1/groups/{admins['id']}/members", json={"user_id": ops["id"]})
    key = client.post("/v1/api-keys", json={"name": "ops", "user_id": ops["id"]}).json()["key"]
    operator_keys = [k["id"] for k in client.get("/v1/api-keys").json()["data"] if k["role"] == "operator"]
    assert operator_keys
    listed = {k["id"] for k in anon.get("/v1/api-keys", headers=bearer(key)).json()["data"]}
    assert listed and not listed & set(operator_keys)
    for key_id in operator_keys:
        check_error(anon.delete(f"/v1/api-keys/{key_id}", headers=bearer(key)), 404)
    assert client.get("/v1/models").status_code == 200
