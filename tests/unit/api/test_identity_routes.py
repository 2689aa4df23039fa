"""Tenancies, compartments, users, groups and members over HTTP, with two tenancies.

Tenancy A is the default one (the operator key of the conftest ``client``); tenancy B is
created through ``POST /v1/tenancies`` and driven with its own administrator key. Another
tenancy's id answers 404 exactly like a missing one; an id in a body answers 400.
"""

from __future__ import annotations

import pytest

ADMIN_ROUTES = [
    ("post", "/v1/compartments"), ("get", "/v1/compartments"), ("get", "/v1/compartments/cmp_x"),
    ("patch", "/v1/compartments/cmp_x"), ("delete", "/v1/compartments/cmp_x"),
    ("post", "/v1/users"), ("get", "/v1/users"), ("get", "/v1/users/usr_x"), ("patch", "/v1/users/usr_x"),
    ("delete", "/v1/users/usr_x"), ("post", "/v1/groups"), ("get", "/v1/groups"), ("get", "/v1/groups/grp_x"),
    ("patch", "/v1/groups/grp_x"), ("delete", "/v1/groups/grp_x"), ("post", "/v1/groups/grp_x/members"),
    ("delete", "/v1/groups/grp_x/members/usr_x"),
]
OPERATOR_ROUTES = [("post", "/v1/tenancies"), ("get", "/v1/tenancies"), ("get", "/v1/tenancies/ten_x")]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def beta(client) -> dict:
    response = client.post("/v1/tenancies", json={"name": "beta"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def b(anon, beta):
    """Calls as tenancy B's administrator: ``b("get", "/v1/users")``."""
    return lambda method, path, **kw: anon.request(method.upper(), path, headers=bearer(beta["admin_key"]), **kw)


@pytest.fixture(scope="module")
def bob(b) -> str:
    """The raw key of ``bob``, a user of tenancy B in no group."""
    user = b("post", "/v1/users", json={"name": "bob"}).json()
    created = b("post", "/v1/api-keys", json={"name": "bob", "user_id": user["id"]})
    assert created.status_code == 201, created.text
    return created.json()["key"]


@pytest.fixture(scope="module")
def a_objects(client) -> dict[str, str]:
    """Objects of tenancy A (the default tenancy), made by the operator."""
    user = client.post("/v1/users", json={"name": "ann"}).json()["id"]
    group = client.post("/v1/groups", json={"name": "devs"}).json()["id"]
    assert client.post(f"/v1/groups/{group}/members", json={"user_id": user}).status_code == 200
    compartment = client.post("/v1/compartments", json={"name": "eng-a"}).json()["id"]
    policy = client.post(
        "/v1/policies", json={"name": "devs-read", "statements": "allow group devs to read files in tenancy"}
    ).json()["id"]
    key = client.post("/v1/api-keys", json={"name": "ann", "user_id": user}).json()["id"]
    return {"user": user, "group": group, "compartment": compartment, "policy": policy, "key": key}


# --- tenancies ------------------------------------------------------------------------------


def test_create_tenancy_answers_its_id_and_admin_key(client, anon, beta):
    assert beta["name"] == "beta" and beta["id"].startswith("ten_") and beta["admin_user_id"].startswith("usr_")
    assert beta["admin_key"].startswith("atl_key_")
    users = anon.get("/v1/users", headers=bearer(beta["admin_key"])).json()["data"]
    assert [(u["id"], u["name"], u["groups"]) for u in users] == [(beta["admin_user_id"], "admin", ["Administrators"])]
    listed = client.get("/v1/tenancies").json()
    assert listed["object"] == "list" and {"default", "beta"} <= {t["name"] for t in listed["data"]}
    one = client.get(f"/v1/tenancies/{beta['id']}").json()
    assert (one["id"], one["name"], "admin_key" in one) == (beta["id"], "beta", False)


def test_tenancy_names_are_unique(client, beta, check_error):
    check_error(client.post("/v1/tenancies", json={"name": "beta"}), 409, param="name")
    check_error(client.post("/v1/tenancies", json={"name": ""}), 400, param="name")
    check_error(client.get("/v1/tenancies/ten_000000000000000000000000"), 404)


@pytest.mark.parametrize(("method", "path"), OPERATOR_ROUTES)
def test_tenancies_are_for_the_operator_only(b, bob, anon, check_error, method, path):
    check_error(b(method, path, json={"name": "gamma"}), 403, type_="permission_error")
    check_error(anon.request(method.upper(), path, headers=bearer(bob), json={"name": "gamma"}), 403)


# --- compartments ----------------------------------------------------------------------------


def test_nested_compartments(b, check_error):
    eng = b("post", "/v1/compartments", json={"name": "eng", "description": "engineering"})
    assert eng.status_code == 201, eng.text
    eng = eng.json()
    ml = b("post", "/v1/compartments", json={"name": "ml", "parent": "eng"}).json()
    vision = b("post", "/v1/compartments", json={"name": "vision", "parent": ml["id"]}).json()
    assert (ml["parent_id"], ml["path"], vision["path"]) == (eng["id"], "eng:ml", "eng:ml:vision")
    listed = {c["path"]: c["id"] for c in b("get", "/v1/compartments").json()["data"]}
    assert listed == {"eng": eng["id"], "eng:ml": ml["id"], "eng:ml:vision": vision["id"]}
    check_error(b("post", "/v1/compartments", json={"name": "ml", "parent": eng["id"]}), 409, param="name")
    check_error(b("post", "/v1/compartments", json={"name": "a:b"}), 400, param="name")
    check_error(b("delete", f"/v1/compartments/{ml['id']}"), 409)
    renamed = b("patch", f"/v1/compartments/{vision['id']}", json={"name": "cv"}).json()
    assert renamed["path"] == "eng:ml:cv"
    for c in (vision, ml, eng):
        assert b("delete", f"/v1/compartments/{c['id']}").json() == {"id": c["id"], "object": "compartment",
                                                                      "deleted": True}
    check_error(b("get", f"/v1/compartments/{eng['id']}"), 404)


# --- users and groups --------------------------------------------------------------------------


def test_users_groups_and_members(b, check_error):
    cy = b("post", "/v1/users", json={"name": "cy@example.com", "description": "ML"})
    assert cy.status_code == 201, cy.text
    cy = cy.json()
    check_error(b("post", "/v1/users", json={"name": "cy@example.com"}), 409, param="name")
    group = b("post", "/v1/groups", json={"name": "ml-team"}).json()
    assert group["members"] == []
    added = b("post", f"/v1/groups/{group['id']}/members", json={"user_id": cy["id"]}).json()
    assert added["members"] == [{"id": cy["id"], "name": "cy@example.com"}]
    assert b("get", f"/v1/users/{cy['id']}").json()["groups"] == ["ml-team"]
    renamed = b("patch", f"/v1/groups/{group['id']}", json={"name": "ml"}).json()
    assert renamed["name"] == "ml" and b("get", f"/v1/users/{cy['id']}").json()["groups"] == ["ml"]
    assert b("patch", f"/v1/users/{cy['id']}", json={"description": "vision"}).json()["description"] == "vision"
    removed = b("delete", f"/v1/groups/{group['id']}/members/{cy['id']}").json()
    assert removed["members"] == []
    check_error(b("delete", f"/v1/groups/{group['id']}/members/{cy['id']}"), 404)
    assert b("delete", f"/v1/groups/{group['id']}").json()["deleted"] is True
    assert b("delete", f"/v1/users/{cy['id']}").json() == {
        "id": cy["id"], "object": "user", "deleted": True, "revoked_keys": []
    }


def test_the_administrators_stay(b, beta, check_error):
    admins = next(g for g in b("get", "/v1/groups").json()["data"] if g["name"] == "Administrators")
    check_error(b("delete", f"/v1/groups/{admins['id']}"), 409)
    check_error(b("delete", f"/v1/groups/{admins['id']}/members/{beta['admin_user_id']}"), 409)
    check_error(b("delete", f"/v1/users/{beta['admin_user_id']}"), 409)


def test_deleting_a_user_revokes_its_keys(b, anon, check_error):
    dan = b("post", "/v1/users", json={"name": "dan"}).json()
    key = b("post", "/v1/api-keys", json={"name": "dan", "user_id": dan["id"]}).json()
    assert anon.get("/v1/api-keys", headers=bearer(key["key"])).status_code == 200
    deleted = b("delete", f"/v1/users/{dan['id']}").json()
    assert deleted["revoked_keys"] == [key["id"]]
    check_error(anon.get("/v1/api-keys", headers=bearer(key["key"])), 401)


# --- who may call -------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_a_user_outside_administrators_is_refused(anon, bob, check_error, method, path):
    response = anon.request(method.upper(), path, headers=bearer(bob), json={"name": "x", "user_id": "usr_x"})
    error = check_error(response, 403, type_="permission_error")
    assert "Administrators" in error["message"]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES + OPERATOR_ROUTES)
def test_no_key_is_401(anon, check_error, method, path):
    check_error(anon.request(method.upper(), path, json={"name": "x"}), 401)


# --- isolation ------------------------------------------------------------------------------------


def _missing(object_id: str) -> str:
    prefix = object_id.split("_")[0]
    return f"{prefix}_{'0' * 24}"


def _same_as_missing(foreign, missing, foreign_id: str, missing_id: str) -> bool:
    if (foreign.status_code, missing.status_code) != (404, 404):
        return False
    f, m = foreign.json(), missing.json()
    if set(f) != {"error"} or set(f["error"]) != set(m["error"]):
        return False
    return all(
        str(f["error"][k]).replace(foreign_id, "ID") == str(m["error"][k]).replace(missing_id, "ID") for k in f["error"]
    )


def test_another_tenancys_ids_answer_404_like_missing_ones(client, b, beta, a_objects):
    own_group = b("post", "/v1/groups", json={"name": "iso"}).json()["id"]
    attempts = [
        ("get", "/v1/compartments/{compartment}", None),
        ("patch", "/v1/compartments/{compartment}", {"name": "stolen"}),
        ("delete", "/v1/compartments/{compartment}", None),
        ("get", "/v1/users/{user}", None),
        ("patch", "/v1/users/{user}", {"name": "stolen"}),
        ("delete", "/v1/users/{user}", None),
        ("get", "/v1/groups/{group}", None),
        ("patch", "/v1/groups/{group}", {"name": "stolen"}),
        ("delete", "/v1/groups/{group}", None),
        ("post", "/v1/groups/{group}/members", {"user_id": beta["admin_user_id"]}),
        ("delete", "/v1/groups/{group}/members/{user}", None),
        ("delete", "/v1/groups/" + own_group + "/members/{user}", None),
        ("get", "/v1/policies/{policy}", None),
        ("put", "/v1/policies/{policy}", {"name": "stolen", "statements": "allow group x to read files in tenancy"}),
        ("delete", "/v1/policies/{policy}", None),
        ("get", "/v1/api-keys/{key}", None),
        ("post", "/v1/api-keys/{key}/rotate", None),
        ("delete", "/v1/api-keys/{key}", None),
    ]
    missing_ids = {name: _missing(value) for name, value in a_objects.items()}
    succeeded = []
    for method, template, body in attempts:
        foreign_path, missing_path = template.format(**a_objects), template.format(**missing_ids)
        foreign = b(method, foreign_path, json=body)
        missing = b(method, missing_path, json=body)
        ids = [(a_objects[k], missing_ids[k]) for k in a_objects if "{" + k + "}" in template]
        fid, mid = ids[-1]
        if not _same_as_missing(foreign, missing, fid, mid):
            succeeded.append((method, foreign_path, foreign.status_code, foreign.text, missing.text))
    print(f"cross-tenant attempts: {len(attempts)}, succeeded: {len(succeeded)}")
    assert not succeeded
    # and A's objects are untouched
    assert client.get(f"/v1/users/{a_objects['user']}").json()["groups"] == ["devs"]
    assert client.get(f"/v1/policies/{a_objects['policy']}").json()["name"] == "devs-read"
    assert client.get(f"/v1/api-keys/{a_objects['key']}").json()["revoked_at"] is None
    assert client.get(f"/v1/compartments/{a_objects['compartment']}").json()["name"] == "eng-a"


def test_another_tenancys_ids_in_a_body_answer_400(b, a_objects, check_error):
    group = b("post", "/v1/groups", json={"name": "body-ids"}).json()["id"]
    for user_id in (a_objects["user"], _missing(a_objects["user"])):
        error = check_error(b("post", f"/v1/groups/{group}/members", json={"user_id": user_id}), 400, param="user_id")
        assert error["message"] == f"user {user_id!r} not found or not authorized"
        error = check_error(b("post", "/v1/api-keys", json={"name": "x", "user_id": user_id}), 400, param="user_id")
        assert error["message"] == f"user {user_id!r} not found or not authorized"
    for parent in (a_objects["compartment"], "eng-a"):
        error = check_error(b("post", "/v1/compartments", json={"name": "x", "parent": parent}), 400, param="parent")
        assert "not found or not authorized" in error["message"]


def test_lists_show_only_the_callers_tenancy(client, b, a_objects):
    assert b("post", "/v1/compartments", json={"name": "eng-a"}).status_code == 201  # A has one of that name too
    for path in ("/v1/users", "/v1/groups", "/v1/compartments", "/v1/policies", "/v1/api-keys"):
        b_ids = {o["id"] for o in b("get", path).json()["data"]}
        a_ids = {o["id"] for o in client.get(path).json()["data"]}
        assert b_ids and a_ids and not a_ids & b_ids, path
    assert a_objects["user"] not in {u["id"] for u in b("get", "/v1/users").json()["data"]}


def test_openapi_describes_the_bodies(app):
    schemas = app.openapi()["components"]["schemas"]
    for name in ("CompartmentCreate", "UserCreate", "GroupCreate", "MemberAdd", "TenancyCreate", "TenancyCreated"):
        assert name in schemas, name
        assert all(p.get("description") for p in schemas[name]["properties"].values()), name


def test_a_uniqueness_race_answers_409_not_500(client, monkeypatch):
    """Two creates of one name at once: the loser hits the unique constraint → 409 conflict."""
    from atelier.store import identity

    monkeypatch.setattr(identity, "find_group", lambda *a, **k: None)  # the check misses the twin
    first = client.post("/v1/groups", json={"name": "racers"})
    assert first.status_code == 201, first.text
    second = client.post("/v1/groups", json={"name": "racers"})
    assert second.status_code == 409, second.text
    assert second.json()["error"]["code"] in ("conflict",)
