"""Policy language: a golden table of decisions, conditions, parser errors with line and column,
comments and case, and render/parse round trips."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atelier.errors import InvalidInput
from atelier.security import policy
from atelier.security.policy import (
    GENAI_FAMILY,
    OPERATIONS,
    RESOURCE_TYPES,
    STATEMENT_RESOURCE_TYPES,
    VARIABLES,
    VERBS,
    Comparison,
    Decision,
    Junction,
    Request,
    Statement,
    evaluate,
    min_verb,
    parse_policy,
    render,
    verb_allows,
)

# --- golden table --------------------------------------------------------------------------------

GOLDEN_POLICY = """
# One group per kind of grant.
allow group admins to manage genai-family in tenancy
allow group ml-eng to use endpoints in compartment eng
allow group readers to read custom-models in compartment eng:ml
allow group auditors to inspect genai-family in tenancy
allow group tuners to manage fine-tuning-jobs in compartment ml     # a bare name: any depth
allow group keepers to manage keys in compartment ops
"""
STATEMENTS = parse_policy(GOLDEN_POLICY)

COMPARTMENTS = {"root": (), "eng": ("eng",), "eng:ml": ("eng", "ml"), "ops": ("ops",), "ops:ml": ("ops", "ml")}
"""The tenancy root, a compartment, its sub-compartment, a sibling and the sibling's child."""
EVERYWHERE = set(COMPARTMENTS)

# The oracle, written out by hand rather than computed by the module under test.
OPERATIONS_OF_VERB = {
    "inspect": {"list"},
    "read": {"list", "get"},
    "use": {"list", "get", "invoke", "update"},
    "manage": {"list", "get", "invoke", "update", "create", "delete"},
}
GRANTS = {  # group: (verb, resource types, compartments covered)
    "admins": ("manage", set(RESOURCE_TYPES), EVERYWHERE),
    "ml-eng": ("use", {"endpoints"}, {"eng", "eng:ml"}),
    "readers": ("read", {"custom-models"}, {"eng:ml"}),
    "auditors": ("inspect", set(RESOURCE_TYPES), EVERYWHERE),
    "tuners": ("manage", {"fine-tuning-jobs"}, {"eng:ml", "ops:ml"}),
    "keepers": ("manage", {"keys"}, {"ops", "ops:ml"}),
}
PRINCIPALS = {
    "alice": {"admins"},
    "bob": {"ml-eng"},
    "carol": {"readers"},
    "dave": {"auditors"},
    "erin": {"tuners"},
    "frank": {"ml-eng", "readers"},
    "grace": {"keepers"},
    "mallory": {"interns"},
}
GOLDEN_TYPES = ("endpoints", "custom-models", "fine-tuning-jobs", "keys")


def expected(principal: str, operation: str, resource_type: str, compartment: str) -> bool:
    for group in PRINCIPALS[principal]:
        verb, types, covered = GRANTS.get(group, ("", set(), set()))
        if operation in OPERATIONS_OF_VERB.get(verb, ()) and resource_type in types and compartment in covered:
            return True
    return False


GOLDEN_ROWS = [
    (principal, operation, resource_type, compartment, expected(principal, operation, resource_type, compartment))
    for principal, operation, resource_type, compartment in itertools.product(
        PRINCIPALS, OPERATIONS, GOLDEN_TYPES, COMPARTMENTS
    )
]

HAND_ROWS = [  # (principal, operation, resource type, compartment, allowed): the edge cases, spelled out
    ("alice", "delete", "policies", "root", True),  # genai-family covers every type, manage covers delete
    ("alice", "create", "knowledge-bases", "ops:ml", True),
    ("bob", "update", "endpoints", "eng:ml", True),  # use covers update; the grant covers sub-compartments
    ("bob", "delete", "endpoints", "eng", False),  # use does not cover delete
    ("bob", "create", "endpoints", "eng", False),
    ("bob", "invoke", "endpoints", "ops", False),  # a sibling compartment
    ("bob", "list", "endpoints", "root", False),  # a compartment grant does not reach the root
    ("bob", "invoke", "custom-models", "eng", False),  # another resource type
    ("carol", "get", "custom-models", "eng:ml", True),
    ("carol", "get", "custom-models", "eng", False),  # a path grant does not reach the parent
    ("carol", "invoke", "custom-models", "eng:ml", False),  # read is not use
    ("dave", "list", "clusters", "eng", True),
    ("dave", "get", "clusters", "eng", False),  # inspect is not read
    ("erin", "create", "fine-tuning-jobs", "ops:ml", True),  # a bare name matches at any depth
    ("erin", "create", "fine-tuning-jobs", "ops", False),
    ("frank", "get", "custom-models", "eng:ml", True),  # the union of the principal's groups
    ("frank", "invoke", "endpoints", "eng:ml", True),
    ("grace", "delete", "keys", "ops:ml", True),
    ("grace", "delete", "keys", "eng", False),
    ("mallory", "list", "endpoints", "root", False),  # default deny
]


def decide(principal: str, operation: str, resource_type: str, compartment: str) -> Decision:
    request = Request(
        principal_id=f"user_{principal}",
        groups=frozenset(PRINCIPALS[principal]),
        operation=operation,  # type: ignore[arg-type]
        resource_type=resource_type,
        compartment_path=COMPARTMENTS[compartment],
        target_id="obj_1",
        target_name="thing",
    )
    return evaluate(STATEMENTS, request)


def test_golden_table_is_big_and_mixed():
    allowed = sum(row[-1] for row in GOLDEN_ROWS)
    print(f"golden table: {len(GOLDEN_ROWS)} rows, {allowed} allowed, {len(GOLDEN_ROWS) - allowed} denied")
    assert len(GOLDEN_ROWS) >= 100 and 100 <= allowed <= len(GOLDEN_ROWS) - 100


@pytest.mark.parametrize(("principal", "operation", "resource_type", "compartment", "allowed"), GOLDEN_ROWS)
def test_golden_table(principal, operation, resource_type, compartment, allowed):
    decision = decide(principal, operation, resource_type, compartment)
    assert decision.allowed is allowed
    if allowed:
        assert decision.statement is not None
        assert decision.statement.group in PRINCIPALS[principal]
        assert decision.reason == f"allowed by: {decision.statement.text}"
    else:
        assert decision.statement is None and "no statement allows" in decision.reason


@pytest.mark.parametrize(("principal", "operation", "resource_type", "compartment", "allowed"), HAND_ROWS)
def test_edge_cases(principal, operation, resource_type, compartment, allowed):
    assert expected(principal, operation, resource_type, compartment) is allowed  # the oracle agrees
    assert decide(principal, operation, resource_type, compartment).allowed is allowed


SCOPES = {  # statement scope: compartments it covers
    "tenancy": EVERYWHERE,
    "compartment eng": {"eng", "eng:ml"},
    "compartment eng:ml": {"eng:ml"},
    "compartment ml": {"eng:ml", "ops:ml"},
    "compartment ops:ml": {"ops:ml"},
    "compartment 'ml:ops'": set(),  # a quoted name is one name, not a path
}


@pytest.mark.parametrize(
    ("scope", "compartment"), list(itertools.product(SCOPES, COMPARTMENTS)), ids="{0[0]}-{0[1]}".format
)
def test_scope_table(scope, compartment):
    (statement,) = parse_policy(f"allow group g to read endpoints in {scope}")
    request = Request("u", frozenset({"g"}), "get", "endpoints", COMPARTMENTS[compartment])
    assert evaluate([statement], request).allowed is (compartment in SCOPES[scope])


@pytest.mark.parametrize(("verb", "operation"), list(itertools.product(VERBS, OPERATIONS)))
def test_verbs_are_cumulative(verb, operation):
    assert verb_allows(verb, operation) is (operation in OPERATIONS_OF_VERB[verb])
    assert verb_allows(min_verb(operation), operation)


def test_min_verb_and_unknown_names():
    assert [min_verb(op) for op in OPERATIONS] == ["inspect", "read", "use", "use", "manage", "manage"]
    assert VERBS == ("inspect", "read", "use", "manage")
    assert STATEMENT_RESOURCE_TYPES == (*RESOURCE_TYPES, GENAI_FAMILY) and len(RESOURCE_TYPES) == 8
    for call in (lambda: min_verb("destroy"), lambda: verb_allows("own", "get")):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError, match="genai-family"):
        evaluate([], Request("u", frozenset(), "get", GENAI_FAMILY))
    with pytest.raises(ValueError):
        Statement("g", "own", "endpoints")  # type: ignore[arg-type]


def test_first_allowing_statement_wins():
    statements = parse_policy(
        "allow group a to inspect endpoints in tenancy\n"
        "allow group b to use endpoints in compartment eng\n"
        "allow group b to manage genai-family in tenancy\n"
    )
    decision = evaluate(statements, Request("u", frozenset({"a", "b"}), "invoke", "endpoints", ("eng",)))
    assert decision.allowed and decision.statement == statements[1] and decision.statement.line == 2
    assert decision.reason == "allowed by: allow group b to use endpoints in compartment eng"
    denied = evaluate(statements, Request("u", frozenset({"a"}), "get", "endpoints", ("eng", "ml")))
    assert denied == Decision(False, None, "no statement allows get (read or stronger) on endpoints in eng:ml")


# --- conditions ----------------------------------------------------------------------------------

CONDITION_ROWS = [  # (where clause, request fields, allowed)
    ("target.name = 'prod'", {"target_name": "prod"}, True),
    ("target.name = 'prod'", {"target_name": "staging"}, False),
    ("target.name = 'prod'", {"target_name": "Prod"}, False),  # values compare exactly
    ("target.name != 'prod'", {"target_name": "staging"}, True),
    ("target.name != 'prod'", {"target_name": "prod"}, False),
    ("target.name != 'prod'", {}, False),  # no target (a list): every comparison on it is false
    ("target.name in ('a', 'b')", {"target_name": "b"}, True),
    ("target.name in ('a', 'b')", {"target_name": "c"}, False),
    ("target.name in ('a')", {"target_name": "a"}, True),
    ("target.id = 'ep_1'", {"target_id": "ep_1"}, True),
    ("target.id = 'ep_1'", {"target_id": "ep_2"}, False),
    ("target.id = 'ep_1'", {}, False),
    ("request.principal.id = 'u1'", {"principal_id": "u1"}, True),
    ("request.principal.id = 'u1'", {"principal_id": "u2"}, False),
    ("request.principal.id in ('u2', 'u3')", {"principal_id": "u3"}, True),
    ("target.name = 'a' and target.id = 'x'", {"target_name": "a", "target_id": "x"}, True),
    ("target.name = 'a' and target.id = 'x'", {"target_name": "a", "target_id": "y"}, False),
    ("target.name = 'a' or target.id = 'x'", {"target_name": "b", "target_id": "x"}, True),
    ("target.name = 'a' or target.id = 'x'", {"target_name": "b", "target_id": "y"}, False),
    # and binds tighter than or: a or (b and x)
    ("target.name = 'a' or target.name = 'b' and target.id = 'x'", {"target_name": "a", "target_id": "y"}, True),
    ("target.name = 'a' or target.name = 'b' and target.id = 'x'", {"target_name": "b", "target_id": "y"}, False),
    ("(target.name = 'a' or target.name = 'b') and target.id = 'x'",
     {"target_name": "a", "target_id": "y"}, False),
    ("all {target.name = 'a', target.id = 'x'}", {"target_name": "a", "target_id": "x"}, True),
    ("all {target.name = 'a', target.id = 'x'}", {"target_name": "a", "target_id": "y"}, False),
    ("any {target.name = 'a', target.id = 'x'}", {"target_name": "z", "target_id": "x"}, True),
    ("any {target.name = 'a', all {target.id = 'x', request.principal.id = 'u9'}}", {"target_id": "x"}, False),
]


@pytest.mark.parametrize(("where", "fields", "allowed"), CONDITION_ROWS)
def test_conditions(where, fields, allowed):
    (statement,) = parse_policy(f"allow group g to use endpoints in tenancy where {where}")
    request = Request(**{"principal_id": "u0", "groups": frozenset({"g"}), "operation": "invoke",
                         "resource_type": "endpoints", **fields})
    assert evaluate([statement], request).allowed is allowed


def test_conditions_parse_into_a_normal_form():
    (s,) = parse_policy(
        "allow group g to use endpoints in tenancy where "
        "any {target.name = 'a', target.name = 'b' or target.id in ('x', \"y'z\")} and target.id != 'q'"
    )
    a, b = Comparison("target.name", "=", ("a",)), Comparison("target.name", "=", ("b",))
    xy = Comparison("target.id", "in", ("x", "y'z"))
    assert s.condition == Junction("and", (Junction("or", (a, b, xy)), Comparison("target.id", "!=", ("q",))))
    assert s.text == (
        "allow group g to use endpoints in tenancy where "
        "(target.name = 'a' or target.name = 'b' or target.id in ('x', \"y'z\")) and target.id != 'q'"
    )


# --- parser errors -------------------------------------------------------------------------------

HEAD = "allow group g to read endpoints in tenancy"
ERROR_ROWS = [  # (text, line, column, message after "line L, column C: ")
    ("allow group g to rule endpoints in tenancy", 1, 18,
     "expected a verb (inspect, read, use, manage), found 'rule'"),
    ("# ok\nallow group g to rule endpoints in tenancy", 2, 18,
     "expected a verb (inspect, read, use, manage), found 'rule'"),
    ("permit group g to read endpoints in tenancy", 1, 1, "expected 'allow', found 'permit'"),
    ("allow users g to read endpoints in tenancy", 1, 7, "expected 'group', found 'users'"),
    ("allow group", 1, 12, "expected a group name, found end of line"),
    ("allow group '' to read endpoints in tenancy", 1, 13, "expected a group name, found ''"),
    ("allow group g read endpoints in tenancy", 1, 15, "expected 'to', found 'read'"),
    ("allow group g to read models in tenancy", 1, 23,
     "expected a resource type (clusters, custom-models, endpoints, fine-tuning-jobs, knowledge-bases, "
     "files, keys, policies, genai-family), found 'models'"),
    ("allow group g to read endpoints on tenancy", 1, 33, "expected 'in', found 'on'"),
    ("allow group g to read endpoints in region", 1, 36, "expected 'tenancy' or 'compartment', found 'region'"),
    ("allow group g to read endpoints in compartment", 1, 47, "expected a compartment name, found end of line"),
    ("allow group g to read endpoints in compartment eng:", 1, 52,
     "expected a compartment name, found end of line"),
    ("allow group g to read endpoints in compartment eng::ml", 1, 52, "expected a compartment name, found ':'"),
    (f"{HEAD} extra", 1, 44, "expected 'where' or end of line, found 'extra'"),
    (f"{HEAD} where", 1, 49,
     "expected a condition (target.id, target.name, request.principal.id, '(', 'all {' or 'any {'), "
     "found end of line"),
    (f"{HEAD} where target.size = 'x'", 1, 50,
     "expected a condition (target.id, target.name, request.principal.id, '(', 'all {' or 'any {'), "
     "found 'target.size'"),
    (f"{HEAD} where target.name == 'x'", 1, 63, "expected a quoted string, found '='"),
    (f"{HEAD} where target.name = prod", 1, 64, "expected a quoted string, found 'prod'"),
    (f"{HEAD} where target.name like 'x'", 1, 62, "expected '=', '!=' or 'in', found 'like'"),
    (f"{HEAD} where target.name in 'a'", 1, 65, "expected '(', found 'a'"),
    (f"{HEAD} where target.name in ('a' 'b')", 1, 70, "expected ',' or ')', found 'b'"),
    (f"{HEAD} where target.name in ()", 1, 66, "expected a quoted string, found ')'"),
    (f"{HEAD} where target.name = 'a' target.id = 'b'", 1, 68,
     "expected 'and', 'or' or end of line, found 'target.id'"),
    (f"{HEAD} where (target.name = 'a'", 1, 68, "expected 'and', 'or' or ')', found end of line"),
    (f"{HEAD} where any {{target.name = 'a' target.id = 'b'}}", 1, 73, "expected ',' or '}', found 'target.id'"),
    (f"{HEAD} where (", 1, 51,
     "expected a condition (target.id, target.name, request.principal.id, '(', 'all {' or 'any {'), "
     "found end of line"),
    (f"{HEAD} where any {{", 1, 55,
     "expected a condition (target.id, target.name, request.principal.id, '(', 'all {' or 'any {'), "
     "found end of line"),
    (f"{HEAD} where target.name = 'x", 1, 64, "unterminated string starting with '"),
    ("allow group g@x to read endpoints in tenancy", 1, 14, "unexpected character '@'"),
    (f"{HEAD}\n\n  # comment\n\tallow group g to read endpoints in tenancy where target.name = 'a' !", 4, 69,
     "unexpected character '!'"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), ERROR_ROWS)
def test_parser_errors_name_line_and_column(text, line, column, message):
    with pytest.raises(InvalidInput) as caught:
        parse_policy(text)
    error = caught.value
    assert error.message == f"line {line}, column {column}: {message}"
    assert (error.param, error.line, error.column) == ("statements", line, column)


def test_column_is_where_the_token_starts():
    text = "allow group g to rule endpoints in tenancy"
    with pytest.raises(InvalidInput) as caught:
        parse_policy(text)
    assert text[caught.value.column - 1 :].startswith("rule")


FRAGMENTS = ["allow", "group", "g", "to", "read", "manage", "endpoints", "genai-family", "in", "tenancy",
             "compartment", "eng", ":", "where", "target.name", "target.id", "=", "!=", "'v'", "(", ")", "{", "}",
             ",", "and", "or", "all", "any", "#", "\n", "'", "!"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30), st.sampled_from(["", " ", "  "]))
def test_any_text_parses_or_raises_invalid_input(fragments, separator):
    text = separator.join(["allow group g to read endpoints in", *fragments])
    try:
        statements = parse_policy(text)
    except InvalidInput as error:
        assert error.message.startswith(f"line {error.line}, column {error.column}: ")
    else:
        assert parse_policy("\n".join(s.text for s in statements)) == statements


# --- comments, blank lines, case -----------------------------------------------------------------


def test_comments_and_blank_lines():
    text = (
        "# policy for the ML team\n"
        "\n"
        "   \t\n"
        "allow group ml to use endpoints in tenancy   # trailing comment\n"
        "    # indented comment\n"
        "allow group 'a # b' to read files in compartment \"x # y\" where target.name = '#1'\n"
    )
    first, second = parse_policy(text)
    assert (first.line, second.line) == (4, 6)
    assert first.text == "allow group ml to use endpoints in tenancy"
    assert (second.group, second.compartment) == ("a # b", ("x # y",))
    assert second.condition == Comparison("target.name", "=", ("#1",))
    assert parse_policy("") == [] and parse_policy("# nothing\n\n") == []


def test_keywords_are_case_insensitive_names_are_not():
    upper = parse_policy("ALLOW Group Admins TO Manage GENAI-Family IN Compartment Eng:ML "
                         "WHERE Target.Name = 'X' AND Request.Principal.ID IN ('U1') OR TARGET.ID != 'y'")
    lower = parse_policy("allow group Admins to manage genai-family in compartment Eng:ML "
                         "where target.name = 'X' and request.principal.id in ('U1') or target.id != 'y'")
    assert upper == lower and upper[0].text == lower[0].text
    assert upper[0].group == "Admins" and upper[0].compartment == ("Eng", "ML")
    assert not evaluate(upper, Request("u", frozenset({"admins"}), "list", "endpoints")).allowed


# --- render and round trips ----------------------------------------------------------------------

ROUND_TRIP_SOURCES = [
    "allow group admins to manage genai-family in tenancy",
    "Allow  GROUP   'Data Scientists'  to  USE  endpoints  in  compartment  \"eng team\":ml:'v2'",
    "allow group g to inspect knowledge-bases in compartment ml where target.id in ('kb_1', 'kb_2')",
    "allow group g to read files in tenancy where all {target.name = 'a', any {target.id = 'b', target.id = 'c'}}",
    "allow group g to use clusters in tenancy where (target.name = 'a' and target.id = 'b') or "
    "(request.principal.id != \"it's me\")",
    "allow group \"o'brien\" to read policies in tenancy",
]


@pytest.mark.parametrize("source", ROUND_TRIP_SOURCES)
def test_render_round_trips(source):
    (statement,) = parse_policy(source)
    assert parse_policy(render(statement)) == [statement]
    assert statement.text == render(statement) == parse_policy(statement.text)[0].text


def test_render_normal_form():
    (statement,) = parse_policy(ROUND_TRIP_SOURCES[1])
    assert statement.text == "allow group 'Data Scientists' to use endpoints in compartment 'eng team':ml:v2"
    built = Statement("g", "read", "keys", ("a b",), Comparison("target.id", "=", ("k",)))
    assert built.text == "allow group g to read keys in compartment 'a b' where target.id = 'k'"
    with pytest.raises(ValueError):
        Statement("both'\"quotes", "read", "keys")


NAMES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"'), min_size=1)
VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="'"))
COMPARISONS = st.builds(
    lambda var, op, values: Comparison(var, op, tuple(values) if op == "in" else tuple(values[:1])),
    st.sampled_from(VARIABLES), st.sampled_from(["=", "!=", "in"]), st.lists(VALUES, min_size=1, max_size=3),
)
CONDITIONS = st.recursive(
    COMPARISONS,
    lambda inner: st.builds(lambda op, terms: policy._join(op, terms),
                            st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(
    group=NAMES, verb=st.sampled_from(VERBS), resource_type=st.sampled_from(STATEMENT_RESOURCE_TYPES),
    compartment=st.lists(NAMES, max_size=3), condition=st.none() | CONDITIONS,
)
def test_round_trip_property(group, verb, resource_type, compartment, condition):
    statement = Statement(group, verb, resource_type, tuple(compartment), condition)
    assert parse_policy(statement.text) == [statement]


# --- boundary ------------------------------------------------------------------------------------


def test_module_is_pure():
    tree = ast.parse(Path(policy.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    banned = ("fastapi", "starlette", "sqlalchemy", "atelier.store", "atelier.api", "atelier.engine")
    assert not [name for name in imported if name.startswith(banned)]
