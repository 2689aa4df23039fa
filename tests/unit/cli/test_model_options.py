"""``model_options``: a pydantic model's fields become a typer command's options (names, bounds, defaults)."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from atelier.cli.model_options import model_options


class Knobs(BaseModel):
    steps: int = Field(3, ge=1, le=5, description="How many steps.")
    rate: float = Field(None, gt=0, le=1, description="A rate.")  # type: ignore[assignment]
    mode: Literal["fast", "slow"] = Field("fast", description="How to go.")
    names: tuple[str, ...] = Field((), max_length=2, description="Some names.")
    keep: bool = Field(True, description="Keep it.")
    note: str | None = Field(None, description="A note.")


def command_app(**kwargs: Any) -> tuple[typer.Typer, list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []
    app = typer.Typer()

    @app.command()
    @model_options(Knobs, into="knobs", **kwargs)
    def run(label: str = "x", *, knobs: dict[str, Any]) -> None:
        received.append({"label": label, **knobs})

    @app.command()
    def other() -> None: ...

    return app, received


def invoke(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["run", *args], env={"COLUMNS": "200"})


def test_only_the_given_fields_reach_the_command():
    app, received = command_app()
    assert invoke(app).exit_code == 0
    result = invoke(app, "--label", "y", "--steps", "4", "--rate", "0.5", "--mode", "slow", "--names", "a",
                    "--names", "b", "--no-keep", "--note", "hi")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert received == [
        {"label": "x"},
        {"label": "y", "steps": 4, "rate": 0.5, "mode": "slow", "names": ["a", "b"], "keep": False, "note": "hi"},
    ]


@pytest.mark.parametrize(
    "args",
    [["--steps", "0"], ["--steps", "6"], ["--rate", "0"], ["--mode", "medium"], ["--names", "a", "--names", "b",
                                                                                  "--names", "c"]],
)
def test_bounds_and_choices_are_checked_before_the_command_runs(args):
    app, received = command_app()
    result = invoke(app, *args)
    assert result.exit_code == 2, result.output
    assert received == []


def test_help_shows_descriptions_defaults_and_renamed_options():
    app, _ = command_app(names={"steps": "--n"}, panel="Knobs")
    text = invoke(app, "--help").output
    assert "--n " in text and "--steps" not in text
    assert "How many steps. [default: 3]" in text and "[1<=x<=5]" in text
    assert "A rate. [x>0]" in text and "[default: fast]" in text
    assert "--keep" in text and "--no-keep" in text and "Knobs" in text


def test_a_command_without_the_target_parameter_is_refused():
    with pytest.raises(ValueError, match="no parameter 'knobs'"):
        model_options(Knobs, into="knobs")(lambda label: None)
