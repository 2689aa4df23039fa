"""What a request asks of the output's shape: response formats, structured outputs, tools.

``response_format`` (OpenAI's ``json_object`` / ``json_schema``), Atelier's
``structured_outputs`` (vLLM's names: ``json``, ``choice``, ``regex``, ``grammar``) and a
forced tool call all become one engine ``Constraint``, enforced by a token mask at every
step (``engine/constraints.py``). :func:`plan_tools` checks ``tools`` and ``tool_choice`` as
OpenAI does (400 naming the parameter) and says how calls are made: ``none`` (tools ignored),
``auto`` (the model may write ``<tool_call>`` blocks, parsed afterwards) or forced
(``required`` or a named function: the output is constrained to one call's JSON, so its
arguments always validate against the function's ``parameters``). Knows nothing about models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from atelier.engine.types import Constraint
from atelier.errors import InvalidInput
from atelier.prompts.tools import call_schema, tool_functions

MAX_SPEC = 100_000
"""Longest schema, regex or grammar, in characters."""


class JsonSchemaFormat(BaseModel):
    """OpenAI's ``response_format.json_schema``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field("response", max_length=64, description="A name for the schema.")
    description: str | None = Field(None, max_length=4000, description="What the answer is (ignored).")
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema the answer must match.")
    strict: bool | None = Field(None, description="Accepted; the answer always matches the schema.")


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"] = Field(description="The answer's format.")
    json_schema: JsonSchemaFormat | None = Field(None, description="With type `json_schema`: the schema.")

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self


class StructuredOutputs(BaseModel):
    """Atelier extension (vLLM's names): exactly one of the fields."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | None = Field(None, alias="json", description="A JSON Schema the output must match.")
    choice: list[str] | None = Field(None, min_length=1, max_length=1000, description="The output is one of these.")
    regex: str | None = Field(None, min_length=1, max_length=MAX_SPEC, description="A regular expression to match.")
    grammar: str | None = Field(None, min_length=1, max_length=MAX_SPEC, description="A Lark grammar to follow.")

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [name for name in ("json_", "choice", "regex", "grammar") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of json, choice, regex, grammar")
        return self


def _schema_constraint(schema: dict[str, Any], param: str) -> Constraint:
    text = json.dumps(schema)
    if len(text) > MAX_SPEC:
        raise InvalidInput(f"the schema is longer than {MAX_SPEC} characters", param=param)
    return Constraint("json_schema", text)


def output_constraint(response_format: ResponseFormat | None,
                      structured: StructuredOutputs | None) -> tuple[Constraint | None, str]:
    """The constraint a request's format options ask for, and the parameter to name if it is refused.

    Raises:
        InvalidInput: Both ``response_format`` (other than text) and ``structured_outputs`` given.
    """
    wants_format = response_format is not None and response_format.type != "text"
    if wants_format and structured is not None:
        raise InvalidInput("give response_format or structured_outputs, not both", param="structured_outputs")
    if wants_format:
        if response_format.type == "json_object":
            return Constraint("json_object"), "response_format"
        return _schema_constraint(response_format.json_schema.schema_, "response_format.json_schema.schema"), \
            "response_format.json_schema.schema"
    if structured is None:
        return None, ""
    if structured.json_ is not None:
        return _schema_constraint(structured.json_, "structured_outputs.json"), "structured_outputs.json"
    if structured.choice is not None:
        return Constraint("choice", json.dumps(structured.choice)), "structured_outputs.choice"
    if structured.regex is not None:
        return Constraint("regex", structured.regex), "structured_outputs.regex"
    return Constraint("grammar", structured.grammar), "structured_outputs.grammar"


@dataclass(frozen=True)
class ToolPlan:
    """How a chat request uses its tools."""

    mode: Literal["none", "auto", "forced"] = "none"
    functions: dict[str, Any] = field(default_factory=dict)
    """The functions described to the model (none when ``tool_choice`` is ``none``)."""
    constraint: Constraint | None = None
    """Forced: the output is one call's JSON."""
    parallel: bool = True


def plan_tools(tools: list[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None,
               parallel_tool_calls: bool | None) -> ToolPlan:
    """Check ``tools`` and ``tool_choice`` as OpenAI does and plan the calls.

    Raises:
        InvalidInput: ``tool_choice`` without ``tools`` or naming no function of them, an
            unknown ``tool_choice`` value, a bad tool, or two functions of one name.
    """
    if not tools:
        if tool_choice is not None and tool_choice != "none":
            raise InvalidInput("tool_choice is only allowed when tools are given", param="tool_choice")
        return ToolPlan()
    functions = tool_functions(tools)
    parallel = parallel_tool_calls is not False
    if tool_choice is None or tool_choice == "auto":
        return ToolPlan("auto", functions, parallel=parallel)
    if tool_choice == "none":
        return ToolPlan()
    if tool_choice == "required":
        return ToolPlan("forced", functions, _call_constraint(functions, None), parallel)
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function") if tool_choice.get("type") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InvalidInput('tool_choice must be "none", "auto", "required" or {"type": "function", "function": '
                               '{"name": ...}}', param="tool_choice")
        if name not in functions:
            raise InvalidInput(f"tool_choice names function {name!r}, which is not among the tools",
                               param="tool_choice")
        return ToolPlan("forced", functions, _call_constraint(functions, name), parallel)
    raise InvalidInput(f"tool_choice {tool_choice!r} is not none, auto or required", param="tool_choice")


def _call_constraint(functions: dict[str, Any], name: str | None) -> Constraint:
    return _schema_constraint(call_schema(functions, name), "tools")
