"""Response formats, structured outputs and tool choices become one engine constraint, or a 400 naming the field."""

from __future__ import annotations

import json

import pytest

from atelier.api.openai.options import ResponseFormat, StructuredOutputs, output_constraint, plan_tools
from atelier.engine.types import Constraint
from atelier.errors import InvalidInput

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def test_formats_become_constraints():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert output_constraint(fmt, None) == (Constraint("json_schema", json.dumps(schema)),
                                             "response_format.json_schema.schema")
    assert output_constraint(ResponseFormat(type="json_object"), None)[0] == Constraint("json_object")
    assert output_constraint(ResponseFormat(type="text"), None) == (None, "")
    choice = StructuredOutputs.model_validate({"choice": ["yes", "no"]})
    assert output_constraint(None, choice)[0] == Constraint("choice", '["yes", "no"]')
    assert output_constraint(None, StructuredOutputs.model_validate({"regex": "[0-9]+"}))[0] == Constraint("regex",
                                                                                                        "[0-9]+")
    with pytest.raises(InvalidInput):
        output_constraint(ResponseFormat(type="json_object"), choice)


def test_tool_choices_are_planned_and_checked():
    assert plan_tools(None, None, None).mode == "none"
    assert plan_tools([TOOL], None, None).mode == "auto"
    assert plan_tools([TOOL], "none", None).mode == "none"
    forced = plan_tools([TOOL], {"type": "function", "function": {"name": "f"}}, False)
    assert forced.mode == "forced" and forced.constraint.kind == "json_schema" and not forced.parallel
    assert plan_tools([TOOL], "required", None).constraint is not None
    for tools, choice in ((None, "auto"), (None, "required"), ([TOOL], "maybe"),
                          ([TOOL], {"type": "function", "function": {"name": "g"}}), ([TOOL], {"type": "x"})):
        with pytest.raises(InvalidInput) as refused:
            plan_tools(tools, choice, None)
        assert refused.value.param == "tool_choice"
