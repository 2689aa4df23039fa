"""``atelier admin …`` over ``httpx.MockTransport``: the requests each command sends and
what it prints. Canned answers are shaped like the API's; the server is tested elsewhere."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from atelier.cli import State, app
from atelier.cli.admin import read_text_arg
from atelier.cli.common import format_table

RAW_KEY = "atl_key_0123456789abcdef01234567_s3cr3t-s3cr3t-s3cr3t"
T = "2026-11-23T16:39:05.633208Z"
USERS = [
    {"object": "user", "id": "usr_1", "name": "ann", "description": "", "groups": ["devs"],
     "created_at": T},  # fmt: skip
    {"object": "user", "id": "usr_2", "name": "bob", "description": "", "groups": [], "created_at": T},
]
GROUPS = [{"object": "group", "id": "grp_1", "name": "devs", "description": "", "created_at": T,
           "members": [{"id": "usr_1", "name": "ann"}]}]  # fmt: skip
COMPARTMENTS = [
    {"object": "compartment", "id": "cmp_1", "name": "eng", "parent_id": None, "path": "eng", "description": "",
     "created_at": T},
    {"object": "compartment", "id": "cmp_2", "name": "ml", "parent_id": "cmp_1", "path": "eng:ml", "description": "",
     "created_at": T},
]  # fmt: skip
POLICY = {"object": "policy", "id": "pol_1", "name": "devs", "description": "", "protected": False,
          "statements": "# devs\nallow group devs to read files in tenancy\n", "created_at": T, "updated_at": T}  # fmt: skip
KEY = {"object": "api_key", "id": "key_1", "name": "ci", "user_id": "usr_1", "role": "user", "created_at": T,
       "expires_at": "2027-02-21T16:39:05Z", "revoked_at": None, "last_used_at": None,
       "previous_secret_expires_at": None}  # fmt: skip


def listing(data: list[dict]) -> dict:
    return {"object": "list", "data": data}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("ATELIER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATELIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ATELIER_API_KEY", "sk-test-key")


class Api:
    """A canned API: ``routes[(METHOD, raw path)]`` is a JSON body (200) or a function of the request."""

    def __init__(self, routes: dict[tuple[str, str], dict | Callable[[httpx.Request], httpx.Response]]):
        self.routes = routes
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.raw_path.split(b"?")[0].decode()
        answer = self.routes.get((request.method, path))
        if answer is None:
            return httpx.Response(404, json={"error": {"message": f"no route {path}", "type": "not_found_error",
                                                       "param": None, "code": None}})  # fmt: skip
        return answer(request) if callable(answer) else httpx.Response(200, json=answer)

    def sent(self, method: str, path: str) -> httpx.Request:
        for request in self.requests:
            if request.method == method and request.url.raw_path.split(b"?")[0].decode() == path:
                return request
        raise AssertionError(f"no {method} {path} among {[(r.method, r.url.path) for r in self.requests]}")

    def body(self, method: str, path: str) -> dict:
        return json.loads(self.sent(method, path).content)


def run(api: Api, *args: str, input: str | None = None):
    return CliRunner().invoke(app, ["admin", *args], obj=State(transport=api.transport), input=input)


def test_tenancy_create_prints_the_admin_key_once():
    created = {"object": "tenancy", "id": "ten_1", "name": "beta", "created_at": T, "admin_user_id": "usr_9",
               "admin_key": RAW_KEY}  # fmt: skip
    api = Api({("POST", "/v1/tenancies"): lambda r: httpx.Response(201, json=created)})
    result = run(api, "tenancy", "create", "beta")
    assert result.exit_code == 0, result.output
    assert api.body("POST", "/v1/tenancies") == {"name": "beta"}
    assert f"admin key:  {RAW_KEY}" in result.stdout and "ten_1" in result.stdout
    assert "never shown again" in result.stderr
    assert api.sent("POST", "/v1/tenancies").headers["authorization"] == "Bearer sk-test-key"


def test_tenancy_list_as_a_table_or_json():
    tenancies = [{"object": "tenancy", "id": "ten_1", "name": "default", "created_at": T}]
    api = Api({("GET", "/v1/tenancies"): listing(tenancies)})
    table = run(api, "tenancy", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "CREATED"]
    assert table[1].split() == ["ten_1", "default", "2026-11-23", "16:39:05"]
    assert json.loads(run(api, "tenancy", "list", "--json").stdout) == tenancies


def test_compartments_by_path():
    api = Api({
        ("POST", "/v1/compartments"): COMPARTMENTS[1],
        ("GET", "/v1/compartments"): listing(COMPARTMENTS),
        ("DELETE", "/v1/compartments/cmp_2"): {"id": "cmp_2", "object": "compartment", "deleted": True},
    })
    result = run(api, "compartment", "create", "ml", "--parent", "eng", "-d", "machine learning")
    assert result.exit_code == 0 and "eng:ml" in result.stdout
    assert api.body("POST", "/v1/compartments") == {"name": "ml", "parent": "eng", "description": "machine learning"}
    assert "eng:ml" in run(api, "compartment", "list").stdout
    result = run(api, "compartment", "delete", "eng:ml")
    assert result.exit_code == 0 and "deleted compartment cmp_2" in result.stdout
    api.sent("DELETE", "/v1/compartments/cmp_2")


def test_users_by_name():
    api = Api({
        ("POST", "/v1/users"): USERS[0],
        ("GET", "/v1/users"): listing(USERS),
        ("DELETE", "/v1/users/usr_2"): {"id": "usr_2", "object": "user", "deleted": True, "revoked_keys": ["key_7"]},
    })
    assert run(api, "user", "create", "ann").exit_code == 0
    assert api.body("POST", "/v1/users") == {"name": "ann"}
    lines = run(api, "user", "list").stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "GROUPS", "DESCRIPTION"]
    assert lines[1].split() == ["usr_1", "ann", "devs", "-"]
    result = run(api, "user", "delete", "bob")
    assert result.stdout.strip() == "deleted user usr_2; revoked keys: key_7"
    result = run(api, "user", "delete", "zed")
    assert result.exit_code == 1 and "no user 'zed'" in result.stderr


def test_group_members():
    api = Api({
        ("GET", "/v1/groups"): listing(GROUPS),
        ("GET", "/v1/users"): listing(USERS),
        ("POST", "/v1/groups/grp_1/members"): GROUPS[0],
        ("DELETE", "/v1/groups/grp_1/members/usr_2"): GROUPS[0],
        ("POST", "/v1/groups"): GROUPS[0],
    })
    assert run(api, "group", "create", "devs", "--description", "developers").exit_code == 0
    assert api.body("POST", "/v1/groups") == {"name": "devs", "description": "developers"}
    result = run(api, "group", "add-member", "devs", "ann")
    assert result.exit_code == 0 and "ann" in result.stdout
    assert api.body("POST", "/v1/groups/grp_1/members") == {"user_id": "usr_1"}
    assert run(api, "group", "remove-member", "grp_1", "usr_2").exit_code == 0
    assert "MEMBERS" in run(api, "group", "list").stdout


def test_key_create_list_rotate_revoke():
    created = {**KEY, "key": RAW_KEY}
    rotated = {**created, "previous_secret_expires_at": "2026-11-24T16:39:05Z"}
    api = Api({
        ("GET", "/v1/users"): listing(USERS),
        ("POST", "/v1/api-keys"): lambda r: httpx.Response(201, json=created),
        ("GET", "/v1/api-keys"): listing([KEY]),
        ("POST", "/v1/api-keys/key_1/rotate"): rotated,
        ("DELETE", "/v1/api-keys/key_1"): {**KEY, "revoked_at": T},
        ("DELETE", "/v1/api-keys/a%2Fb"): {**KEY, "revoked_at": T},
    })
    result = run(api, "key", "create", "ci", "--user", "ann", "--expires-in-days", "7")
    assert result.exit_code == 0
    assert api.body("POST", "/v1/api-keys") == {"name": "ci", "user_id": "usr_1", "expires_in_days": 7}
    assert f"key: {RAW_KEY}" in result.stdout and "never shown again" in result.stderr
    run(api, "key", "list", "--all", "--user", "usr_1")
    assert dict(api.sent("GET", "/v1/api-keys").url.params) == {"user_id": "usr_1", "include_revoked": "true"}
    result = run(api, "key", "rotate", "key_1", "--grace-seconds", "60")
    assert api.body("POST", "/v1/api-keys/key_1/rotate") == {"grace_seconds": 60}
    assert RAW_KEY in result.stdout and "previous secret works until" in result.stderr
    assert "revoked key key_1" in run(api, "key", "revoke", "key_1").stdout
    assert run(api, "key", "revoke", "a/b").exit_code == 0  # an id stays one path segment


def test_key_create_for_yourself_sends_no_user():
    api = Api({("POST", "/v1/api-keys"): lambda r: httpx.Response(201, json={**KEY, "key": RAW_KEY})})
    assert json.loads(run(api, "key", "create", "ci", "--json").stdout)["key"] == RAW_KEY
    assert api.body("POST", "/v1/api-keys") == {"name": "ci"}


def test_policy_statements_from_a_file_stdin_or_text(tmp_path):
    api = Api({("POST", "/v1/policies"): lambda r: httpx.Response(201, json=POLICY)})
    path = tmp_path / "devs.policy"
    path.write_text(POLICY["statements"])
    result = run(api, "policy", "create", "devs", "--statements", str(path))
    assert result.exit_code == 0, result.output
    assert api.body("POST", "/v1/policies") == {"name": "devs", "statements": POLICY["statements"]}
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "PROTECTED", "STATEMENTS", "DESCRIPTION"]
    assert lines[1].split() == ["pol_1", "devs", "no", "1", "-"]
    api.requests.clear()
    run(api, "policy", "create", "devs", "-s", "-", input="allow group a to read files in tenancy\n")
    assert api.body("POST", "/v1/policies")["statements"] == "allow group a to read files in tenancy\n"
    api.requests.clear()
    run(api, "policy", "create", "devs", "-s", "allow group a to use endpoints in tenancy")
    assert api.body("POST", "/v1/policies")["statements"] == "allow group a to use endpoints in tenancy"


def test_policy_syntax_error_is_one_line_with_the_position():
    err = {"error": {"message": "line 2, column 7: expected 'group', found 'grop'", "type": "invalid_request_error",
                     "param": "statements", "code": "invalid_value", "line": 2}}  # fmt: skip
    api = Api({("POST", "/v1/policies"): lambda r: httpx.Response(400, json=err)})
    result = run(api, "policy", "create", "bad", "-s", "allow group a to read files in tenancy\nallow grop")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: line 2, column 7: expected 'group', found 'grop' (param: statements)"


def test_policy_get_and_delete_by_name():
    api = Api({
        ("GET", "/v1/policies"): listing([POLICY]),
        ("GET", "/v1/policies/pol_1"): POLICY,
        ("DELETE", "/v1/policies/pol_1"): {"id": "pol_1", "object": "policy", "deleted": True},
    })
    result = run(api, "policy", "get", "devs")
    assert result.exit_code == 0 and result.stdout.rstrip().endswith("allow group devs to read files in tenancy")
    assert run(api, "policy", "list", "--json").exit_code == 0
    assert run(api, "policy", "delete", "devs").stdout.strip() == "deleted policy pol_1"


def test_a_refusal_is_one_line_and_exit_1():
    err = {"error": {"message": "this route is for the tenancy's administrators (group Administrators)",
                     "type": "permission_error", "param": None, "code": "forbidden"}}  # fmt: skip
    api = Api({("GET", "/v1/users"): lambda r: httpx.Response(403, json=err)})
    result = run(api, "user", "list")
    assert result.exit_code == 1 and result.stderr.startswith("error: this route is for the tenancy's administrators")


def test_format_table_and_read_text_arg(tmp_path):
    table = format_table([{"a": "x", "b": None, "c": ["p", "q"]}], [("A", "a"), ("B", "b"), ("C", "c")])
    assert table.splitlines() == ["A  B  C", "x  -  p,q"]
    assert read_text_arg("not a file") == "not a file"
    path = tmp_path / "f"
    path.write_text("text")
    assert read_text_arg(str(path)) == "text"
