"""``/v1/policies`` over HTTP: parsed before stored (line/column errors), the protected
admin policy, and access decided by the policies themselves (verbs, conditions)."""

from __future__ import annotations

import pytest

READ_FILES = "allow group devs to read files in tenancy"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def beta(client) -> dict:
    response = client.post("/v1/tenancies", json={"name": "policies-beta"})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def admin(anon, beta):
    """Calls as tenancy B's administrator."""
    return lambda method, path, **kw: anon.request(method.upper(), path, headers=bearer(beta["admin_key"]), **kw)


@pytest.fixture(scope="module")
def member(admin, anon):
    """``member(group)``: a key of a new user in ``group`` (created if needed), as a caller."""
    made: dict[str, str] = {}

    def make(group: str):
        if group not in made:
            groups = {g["name"]: g["id"] for g in admin("get", "/v1/groups").json()["data"]}
            group_id = groups.get(group) or admin("post", "/v1/groups", json={"name": group}).json()["id"]
            user = admin("post", "/v1/users", json={"name": f"in-{group}"}).json()
            admin("post", f"/v1/groups/{group_id}/members", json={"user_id": user["id"]})
            made[group] = admin("post", "/v1/api-keys", json={"name": group, "user_id": user["id"]}).json()["key"]
        key = made[group]
        return lambda method, path, **kw: anon.request(method.upper(), path, headers=bearer(key), **kw)

    return make


def test_crud(admin, check_error):
    created = admin("post", "/v1/policies", json={"name": "devs", "description": "d", "statements": READ_FILES})
    assert created.status_code == 201, created.text
    policy = created.json()
    assert (policy["object"], policy["statements"], policy["protected"]) == ("policy", READ_FILES, False)
    assert admin("get", f"/v1/policies/{policy['id']}").json() == policy
    check_error(admin("post", "/v1/policies", json={"name": "devs", "statements": READ_FILES}), 409, param="name")
    text = READ_FILES + "\n# and more\nallow group devs to use endpoints in compartment eng:ml"
    replaced = admin("put", f"/v1/policies/{policy['id']}", json={"name": "devs2", "statements": text}).json()
    assert (replaced["name"], replaced["statements"], replaced["description"]) == ("devs2", text, "")
    assert admin("delete", f"/v1/policies/{policy['id']}").json() == {
        "id": policy["id"], "object": "policy", "deleted": True
    }
    check_error(admin("get", f"/v1/policies/{policy['id']}"), 404)


@pytest.mark.parametrize(
    ("statements", "where"),
    [
        (READ_FILES + "\nallow grop devs to read files in tenancy", "line 2, column 7"),
        ("allow group devs to write files in tenancy", "line 1, column 21"),
        ("allow group devs to read potatoes in tenancy", "line 1, column 26"),
    ],
)
def test_a_syntax_error_names_line_and_column(admin, check_error, statements, where):
    for method, path in (("post", "/v1/policies"), ("put", None)):
        if path is None:
            target = admin("post", "/v1/policies", json={"name": f"ok-{where}", "statements": READ_FILES}).json()
            path = f"/v1/policies/{target['id']}"
        response = admin(method, path, json={"name": "bad", "statements": statements})
        error = check_error(response, 400, param="statements")
        assert error["message"].startswith(where + ":"), error["message"]
        assert error["line"] == int(where.split()[1].rstrip(","))


def test_a_policy_needs_a_statement(admin, check_error):
    check_error(admin("post", "/v1/policies", json={"name": "empty", "statements": "# nothing\n"}), 400,
                param="statements")


def test_the_admin_policy_is_protected(admin, client, check_error):
    for caller in (admin, lambda m, p, **kw: client.request(m.upper(), p, **kw)):
        protected = [p for p in caller("get", "/v1/policies").json()["data"] if p["protected"]]
        assert [p["name"] for p in protected] == ["Tenant Admin Policy"]
        pid = protected[0]["id"]
        check_error(caller("put", f"/v1/policies/{pid}", json={"name": "x", "statements": READ_FILES}), 409)
        check_error(caller("delete", f"/v1/policies/{pid}"), 409)


def test_no_policy_no_access(member, check_error):
    nobody = member("nobody")
    for method, path in (("get", "/v1/policies"), ("post", "/v1/policies"), ("get", "/v1/policies/pol_x")):
        check_error(nobody(method, path, json={"name": "x", "statements": READ_FILES}), 403)


def test_verbs_decide(admin, member, check_error):
    for group, verb in (("inspectors", "inspect"), ("users", "use")):
        statements = f"allow group {group} to {verb} policies in tenancy"
        assert admin("post", "/v1/policies", json={"name": group, "statements": statements}).status_code == 201
    some = admin("post", "/v1/policies", json={"name": "target", "statements": READ_FILES}).json()
    inspector, user = member("inspectors"), member("users")
    assert some["id"] in {p["id"] for p in inspector("get", "/v1/policies").json()["data"]}
    check_error(inspector("get", f"/v1/policies/{some['id']}"), 403)  # visible, verb too weak
    assert user("get", f"/v1/policies/{some['id']}").status_code == 200
    # editing a policy needs manage: use would let a user grant itself anything
    check_error(user("put", f"/v1/policies/{some['id']}", json={"name": "mine", "statements": READ_FILES}), 403)
    check_error(user("delete", f"/v1/policies/{some['id']}"), 403)
    check_error(user("post", "/v1/policies", json={"name": "mine", "statements": READ_FILES}), 403)


def test_conditions_on_the_target_decide(admin, member, check_error):
    public = admin("post", "/v1/policies", json={"name": "public", "statements": READ_FILES}).json()
    hidden = admin("post", "/v1/policies", json={"name": "hidden", "statements": READ_FILES}).json()
    statements = "allow group readers to manage policies in tenancy where target.name = 'public'"
    assert admin("post", "/v1/policies", json={"name": "readers", "statements": statements}).status_code == 201
    reader = member("readers")
    assert [p["name"] for p in reader("get", "/v1/policies").json()["data"]] == ["public"]
    assert reader("get", f"/v1/policies/{public['id']}").status_code == 200
    not_visible = reader("get", f"/v1/policies/{hidden['id']}")
    missing = reader("get", "/v1/policies/pol_" + "0" * 24)
    check_error(not_visible, 404)
    assert not_visible.json()["error"]["message"].replace(hidden["id"], "P") == missing.json()["error"][
        "message"
    ].replace("pol_" + "0" * 24, "P")
    check_error(reader("delete", f"/v1/policies/{hidden['id']}"), 404)
    check_error(reader("post", "/v1/policies", json={"name": "other", "statements": READ_FILES}), 403)
    replaced = reader("put", f"/v1/policies/{public['id']}", json={"name": "public", "statements": READ_FILES})
    assert replaced.status_code == 200


def test_a_new_policy_applies_on_the_next_request(admin, member, check_error):
    late = member("latecomers")
    check_error(late("get", "/v1/policies"), 403)
    grant = admin("post", "/v1/policies", json={
        "name": "late", "statements": "allow group latecomers to inspect policies in tenancy",
    }).json()
    assert late("get", "/v1/policies").status_code == 200
    admin("delete", f"/v1/policies/{grant['id']}")
    check_error(late("get", "/v1/policies"), 403)
