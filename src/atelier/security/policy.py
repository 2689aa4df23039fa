"""Policies: a small OCI-IAM-like language, its parser and a pure evaluator (default deny).

One statement per line; blank lines and ``#`` comments are ignored; keywords are case-insensitive::

    allow group <name> to <inspect|read|use|manage> <resource-type>
        in <tenancy | compartment <name>[:<name>...]> [where <conditions>]

Names (groups, compartments) are ``[A-Za-z0-9_.-]+`` or quoted with ``'`` or ``"`` and compare
exactly (case-sensitive). ``in compartment eng`` (a bare name) covers every compartment named
``eng`` at any depth and all of its sub-compartments; ``in compartment eng:ml`` is a path anchored
at the tenancy root and covers ``eng/ml`` and below. Conditions compare ``target.id``,
``target.name`` or ``request.principal.id`` with ``=``, ``!=`` or ``in ('a', 'b')`` against
quoted strings (exact, case-sensitive), joined by ``and``/``or`` (``and`` binds tighter),
parentheses, or OCI's ``all {c, ...}`` / ``any {c, ...}``. As in OCI, a comparison on a variable
the request does not carry (no target on a ``list``) is false, whatever the operator.

This module knows nothing about HTTP, databases or tenancies: callers pass statements and a
:class:`Request` describing the access; the API layer maps routes to operations and types.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar, Union, get_args

from atelier.errors import InvalidInput

Verb = Literal["inspect", "read", "use", "manage"]
Operation = Literal["list", "get", "invoke", "update", "create", "delete"]
VERBS: tuple[Verb, ...] = get_args(Verb)
"""Verbs from weakest to strongest; each allows everything the previous ones allow."""
OPERATIONS: tuple[Operation, ...] = get_args(Operation)
_MIN_VERB: dict[str, Verb] = {
    "list": "inspect", "get": "read", "invoke": "use", "update": "use", "create": "manage", "delete": "manage",
}
RESOURCE_TYPES = (
    "clusters", "custom-models", "endpoints", "fine-tuning-jobs", "knowledge-bases", "files", "keys", "policies",
)
"""Concrete resource types, the ones a :class:`Request` names."""
GENAI_FAMILY = "genai-family"
"""A statement resource type covering every one of :data:`RESOURCE_TYPES`."""
STATEMENT_RESOURCE_TYPES = (*RESOURCE_TYPES, GENAI_FAMILY)
VARIABLES = ("target.id", "target.name", "request.principal.id")
_IDENT_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_PUNCT = ":=(){},"
T = TypeVar("T")


def min_verb(operation: Operation) -> Verb:
    """The weakest verb that allows ``operation`` (``list`` → inspect … ``delete`` → manage).

    Raises:
        ValueError: ``operation`` is not one of :data:`OPERATIONS`.
    """
    if operation not in _MIN_VERB:
        raise ValueError(f"unknown operation {operation!r}; expected one of {', '.join(OPERATIONS)}")
    return _MIN_VERB[operation]


def verb_allows(verb: Verb, operation: Operation) -> bool:
    """Whether ``verb`` allows ``operation``: verbs are cumulative, so manage ⊇ use ⊇ read ⊇ inspect.

    Raises:
        ValueError: Unknown verb or operation.
    """
    if verb not in VERBS:
        raise ValueError(f"unknown verb {verb!r}; expected one of {', '.join(VERBS)}")
    return VERBS.index(verb) >= VERBS.index(min_verb(operation))


@dataclass(frozen=True)
class Comparison:
    """``variable = 'v'``, ``variable != 'v'`` or ``variable in ('v1', 'v2')``."""

    variable: str
    """One of :data:`VARIABLES`."""
    op: Literal["=", "!=", "in"]
    values: tuple[str, ...]
    """One value for ``=``/``!=``; one or more for ``in``."""


@dataclass(frozen=True)
class Junction:
    """``a and b`` or ``all {a, b}`` (op ``and``); ``a or b`` or ``any {a, b}`` (op ``or``).

    Normalized by the parser: two or more terms, none a Junction with the same op.
    """

    op: Literal["and", "or"]
    terms: tuple[Condition, ...]


Condition = Union[Comparison, Junction]


@dataclass(frozen=True)
class Statement:
    """One ``allow`` statement. ``text`` is its normalized form (see :func:`render`)."""

    group: str
    verb: Verb
    resource_type: str
    """One of :data:`STATEMENT_RESOURCE_TYPES`."""
    compartment: tuple[str, ...] = ()
    """``()`` for ``in tenancy``; one name (any depth) or a path anchored at the root."""
    condition: Condition | None = None
    line: int | None = field(default=None, compare=False)
    """Line of the policy text it was parsed from, if any (for messages; not compared)."""
    text: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if self.verb not in VERBS or self.resource_type not in STATEMENT_RESOURCE_TYPES:
            raise ValueError(f"bad verb {self.verb!r} or resource type {self.resource_type!r}")
        object.__setattr__(self, "text", render(self))


@dataclass(frozen=True)
class Request:
    """The access being decided: who, which operation, on what, where."""

    principal_id: str
    groups: frozenset[str]
    operation: Operation
    resource_type: str
    """One of :data:`RESOURCE_TYPES` (never ``genai-family``)."""
    compartment_path: tuple[str, ...] = ()
    """The target's compartment from the root, e.g. ``("eng", "ml")``; ``()`` is the tenancy root."""
    target_id: str | None = None
    target_name: str | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome: the first allowing statement (for the audit log) and a readable reason."""

    allowed: bool
    statement: Statement | None
    reason: str


class PolicySyntaxError(InvalidInput):
    """A statement that does not parse; ``line`` and ``column`` are 1-based."""

    def __init__(self, line: int, column: int, message: str):
        super().__init__(f"line {line}, column {column}: {message}", param="statements", line=line)
        self.column = column


# --- rendering -------------------------------------------------------------------------------

def _string(text: str) -> str:
    if "'" in text and '"' in text:
        raise ValueError(f"a name or value cannot hold both quote characters: {text!r}")
    return f'"{text}"' if "'" in text else f"'{text}'"


def _quote(name: str) -> str:
    return name if name and all(c in _IDENT_CHARS for c in name) else _string(name)


def _render_condition(cond: Condition, inside_and: bool = False) -> str:
    if isinstance(cond, Comparison):
        values = [_string(v) for v in cond.values]
        rhs = f"({', '.join(values)})" if cond.op == "in" else values[0]
        return f"{cond.variable} {cond.op} {rhs}"
    text = f" {cond.op} ".join(_render_condition(t, inside_and=cond.op == "and") for t in cond.terms)
    return f"({text})" if inside_and and cond.op == "or" else text


def render(statement: Statement) -> str:
    """The normalized text of a statement: lower-case keywords, single spaces, minimal quoting.

    ``parse_policy(render(s)) == [s]`` for every statement ``s``.
    """
    scope = "tenancy"
    if statement.compartment:
        scope = "compartment " + ":".join(_quote(name) for name in statement.compartment)
    text = f"allow group {_quote(statement.group)} to {statement.verb} {statement.resource_type} in {scope}"
    if statement.condition is not None:
        text += " where " + _render_condition(statement.condition)
    return text


# --- tokenizer and parser ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    kind: Literal["word", "string", "punct", "end"]
    value: str
    column: int


def _tokenize(line: str, number: int) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(line):
        char = line[pos]
        if char.isspace():
            pos += 1
        elif char == "#":
            break
        elif char in _IDENT_CHARS:
            start = pos
            while pos < len(line) and line[pos] in _IDENT_CHARS:
                pos += 1
            tokens.append(_Token("word", line[start:pos], start + 1))
        elif char in "'\"":
            end = line.find(char, pos + 1)
            if end < 0:
                raise PolicySyntaxError(number, pos + 1, f"unterminated string starting with {char}")
            tokens.append(_Token("string", line[pos + 1 : end], pos + 1))
            pos = end + 1
        elif line.startswith("!=", pos) or char in _PUNCT:
            size = 2 if char == "!" else 1
            tokens.append(_Token("punct", line[pos : pos + size], pos + 1))
            pos += size
        else:
            raise PolicySyntaxError(number, pos + 1, f"unexpected character {char!r}")
    end_column = tokens[-1].column + len(tokens[-1].value) + 2 * (tokens[-1].kind == "string") if tokens else 1
    return [*tokens, _Token("end", "", end_column)]


class _Parser:
    """Recursive descent over one line's tokens; each method consumes one grammar rule."""

    def __init__(self, tokens: list[_Token], number: int):
        self.tokens, self.pos, self.number = tokens, 0, number

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += token.kind != "end"
        return token

    def fail(self, expected: str) -> PolicySyntaxError:
        token = self.peek()
        found = "end of line" if token.kind == "end" else repr(token.value)
        return PolicySyntaxError(self.number, token.column, f"expected {expected}, found {found}")

    def at(self, *keywords: str) -> bool:
        token = self.peek()
        return token.kind == "word" and token.value.lower() in keywords

    def accept(self, keyword: str) -> bool:
        """Consume ``keyword`` (a word, any case, or a punctuation mark) if it comes next."""
        token = self.peek()
        found = self.at(keyword) or (token.kind == "punct" and token.value == keyword)
        self.pos += found
        return found

    def keyword(self, *choices: str, expected: str = "") -> str:
        if not self.at(*choices):
            raise self.fail(expected or " or ".join(f"'{c}'" for c in choices))
        return self.take().value.lower()

    def punct(self, value: str, expected: str = "") -> None:
        if not self.accept(value):
            raise self.fail(expected or f"'{value}'")

    def name(self, what: str) -> str:
        token = self.peek()
        if token.kind not in ("word", "string") or not token.value:
            raise self.fail(f"a {what} name")
        return self.take().value

    def statement(self) -> Statement:
        self.keyword("allow")
        self.keyword("group")
        group = self.name("group")
        self.keyword("to")
        verb = self.keyword(*VERBS, expected=f"a verb ({', '.join(VERBS)})")
        types = ", ".join(STATEMENT_RESOURCE_TYPES)
        resource_type = self.keyword(*STATEMENT_RESOURCE_TYPES, expected=f"a resource type ({types})")
        self.keyword("in")
        compartment: tuple[str, ...] = ()
        if self.keyword("tenancy", "compartment") == "compartment":
            compartment = (self.name("compartment"),)
            while self.accept(":"):
                compartment += (self.name("compartment"),)
        condition = self.junction("or") if self.accept("where") else None
        if self.peek().kind != "end":
            raise self.fail("'and', 'or' or end of line" if condition else "'where' or end of line")
        return Statement(group, verb, resource_type, compartment, condition, line=self.number)

    def junction(self, op: Literal["and", "or"]) -> Condition:
        """``or`` of ``and``-terms of primaries: ``and`` binds tighter."""
        term = (lambda: self.junction("and")) if op == "or" else self.primary
        terms = [term()]
        while self.accept(op):
            terms.append(term())
        return _join(op, terms)

    def items(self, item: Callable[[], T], close: str) -> list[T]:
        """``item (, item)* close``: the lists of ``in (...)``, ``all {...}`` and ``any {...}``."""
        values = [item()]
        while self.accept(","):
            values.append(item())
        self.punct(close, f"',' or '{close}'")
        return values

    def primary(self) -> Condition:
        if self.accept("("):
            inner = self.junction("or")
            self.punct(")", "'and', 'or' or ')'")
            return inner
        ahead = self.tokens[self.pos + 1] if self.at("all", "any") else None  # a word is never last
        if ahead is not None and (ahead.kind, ahead.value) == ("punct", "{"):
            op = "and" if self.take().value.lower() == "all" else "or"
            self.take()
            return _join(op, self.items(lambda: self.junction("or"), "}"))
        expected = f"a condition ({', '.join(VARIABLES)}, '(', 'all {{' or 'any {{')"
        variable = self.keyword(*VARIABLES, expected=expected)
        for op in ("=", "!="):
            if self.accept(op):
                return Comparison(variable, op, (self.string(),))  # type: ignore[arg-type]
        self.keyword("in", expected="'=', '!=' or 'in'")
        self.punct("(")
        return Comparison(variable, "in", tuple(self.items(self.string, ")")))

    def string(self) -> str:
        if self.peek().kind != "string":
            raise self.fail("a quoted string")
        return self.take().value


def _join(op: Literal["and", "or"], terms: list[Condition]) -> Condition:
    flat: list[Condition] = []
    for term in terms:
        flat.extend(term.terms if isinstance(term, Junction) and term.op == op else (term,))
    return flat[0] if len(flat) == 1 else Junction(op, tuple(flat))


def parse_policy(text: str) -> list[Statement]:
    """Parse policy text, one statement per line, skipping blank lines and ``#`` comments.

    Args:
        text: The policy source.

    Returns:
        The statements in source order, each with its ``line`` and normalized ``text``.

    Raises:
        PolicySyntaxError: An :class:`~atelier.errors.InvalidInput` with ``param="statements"``,
            ``line`` and ``column`` set, whose message reads
            ``line L, column C: expected ..., found ...``.
    """
    statements = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = _tokenize(line, number)
        if tokens[0].kind != "end":
            statements.append(_Parser(tokens, number).statement())
    return statements


# --- evaluation --------------------------------------------------------------------------------

def _covers(compartment: tuple[str, ...], path: tuple[str, ...]) -> bool:
    if not compartment:
        return True
    if len(compartment) == 1:
        return compartment[0] in path
    return tuple(path[: len(compartment)]) == compartment


def _holds(cond: Condition, request: Request) -> bool:
    if isinstance(cond, Junction):
        return (all if cond.op == "and" else any)(_holds(t, request) for t in cond.terms)
    values = {"target.id": request.target_id, "target.name": request.target_name,
              "request.principal.id": request.principal_id}
    actual = values[cond.variable]
    return actual is not None and (actual in cond.values) != (cond.op == "!=")


def evaluate(statements: Sequence[Statement], request: Request) -> Decision:
    """Decide a request: allowed by the first statement that matches, denied if none does.

    As a loop: ``for s in statements: if s.group in request.groups and verb_allows(s.verb, op)
    and s.resource_type in (request.resource_type, "genai-family") and s covers the request's
    compartment and s.condition holds: return allow(s)``; then ``return deny``.

    Args:
        statements: Parsed statements of the caller's tenancy, in order.
        request: The access to decide.

    Returns:
        The decision, carrying the allowing statement (None when denied) and a reason.

    Raises:
        ValueError: The request names an unknown operation or resource type (a caller bug).
    """
    if request.resource_type not in RESOURCE_TYPES:
        raise ValueError(f"unknown resource type {request.resource_type!r}; expected one of {RESOURCE_TYPES}")
    needed = min_verb(request.operation)
    for statement in statements:
        if (
            statement.group in request.groups
            and verb_allows(statement.verb, request.operation)
            and statement.resource_type in (request.resource_type, GENAI_FAMILY)
            and _covers(statement.compartment, request.compartment_path)
            and (statement.condition is None or _holds(statement.condition, request))
        ):
            return Decision(True, statement, f"allowed by: {statement.text}")
    where = ":".join(request.compartment_path) or "the tenancy root"
    asked = f"{request.operation} ({needed} or stronger) on {request.resource_type} in {where}"
    return Decision(False, None, f"no statement allows {asked}")
