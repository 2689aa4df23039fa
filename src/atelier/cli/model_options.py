"""Command-line options generated from a pydantic model's fields (``atelier finetune`` from ``TuneConfig``).

One model is the single description of a set of settings (the API schema, the config saved
beside an artifact, and here the CLI's options): ``model_options`` adds an ``--option`` per
field to a typer command, with the field's description as help, its default shown, its
bounds checked before anything is sent, and ``Literal`` fields as choices. A new field or a
changed default shows up without editing the command. Unset options are not passed, so
the server fills in the defaults (some depend on other fields).

It builds the command's signature with ``inspect`` and ``Annotated[..., typer.Option(...)]``
parameters, which typer reads like any hand-written signature.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
import typer
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from rich.markup import escape

F = TypeVar("F", bound=Callable[..., Any])


OptionNames = Mapping[str, str | tuple[str, ...]]
"""Per field, the option's name (or its names, e.g. ``("--temperature", "-t")``) where it is not the default."""


def option_names(field: str, names: OptionNames) -> tuple[str, ...]:
    """The option names of ``field``: its entry in ``names``, else ``--`` and the field with dashes."""
    given = names.get(field) or "--" + field.replace("_", "-")
    return (given,) if isinstance(given, str) else given


def _value_type(annotation: Any) -> Any:
    """The type an option parses: the annotation without ``None``; a ``tuple[X, ...]`` as ``list[X]``.

    Raises:
        TypeError: A type the command line cannot express (a union of two types, a mapping...).
    """
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [a for a in get_args(annotation) if a is not type(None)]
        if len(kept) != 1:
            raise TypeError(f"no command-line option for {annotation!r}")
        annotation = kept[0]
    if get_origin(annotation) is tuple:
        item, *rest = get_args(annotation)
        if rest != [Ellipsis]:
            raise TypeError(f"no command-line option for {annotation!r}")
        return list[item]  # type: ignore[valid-type]
    if annotation in (bool, int, float, str) or get_origin(annotation) is Literal:
        return annotation
    raise TypeError(f"no command-line option for {annotation!r}")


def _checker(name: str, field: FieldInfo) -> Callable[[Any], Any]:
    """A typer callback that checks a given value against the field's constraints."""
    adapter = TypeAdapter(Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation)

    def check(value: Any) -> Any:
        if value is None:
            return None
        try:
            adapter.validate_python(tuple(value) if isinstance(value, list) else value)
        except ValidationError as exc:
            raise typer.BadParameter(exc.errors()[0]["msg"], param_hint=name) from None
        return value

    return check


def _help(field: FieldInfo) -> str:
    """The field's description, its open bounds (typer shows the closed ones) and its default.

    Escaped for rich, which would read ``[default: 3]`` as markup.
    """
    text = field.description or ""
    for constraint in field.metadata:
        if isinstance(constraint, annotated_types.Gt):
            text += f" [x>{constraint.gt}]"
        elif isinstance(constraint, annotated_types.Lt):
            text += f" [x<{constraint.lt}]"
    if field.default is not None and not field.is_required():
        default = ",".join(field.default) if isinstance(field.default, tuple) else field.default
        text += f" [default: {default}]"
    return escape(text)


def field_option(field_name: str, field: FieldInfo, names: OptionNames, panel: str | None) -> inspect.Parameter:
    """The keyword parameter of one field: ``Annotated[T | None, typer.Option(...)] = None``.

    Args:
        field_name: The field (and the parameter's name).
        field: The field's pydantic description.
        names: Option names that differ from the dashed field name.
        panel: The help panel the option is listed in.

    Raises:
        TypeError: The field's type has no command-line form.
    """
    value_type = _value_type(field.annotation)
    name, *aliases = option_names(field_name, names)
    bounds: dict[str, Any] = {}
    for constraint in field.metadata:
        if isinstance(constraint, annotated_types.Ge):
            bounds["min"] = constraint.ge
        elif isinstance(constraint, annotated_types.Le):
            bounds["max"] = constraint.le
    decls = (f"{name}/--no-{name.removeprefix('--')}",) if value_type is bool else (name, *aliases)
    option = typer.Option(*decls, help=_help(field), callback=_checker(name, field), rich_help_panel=panel,
                          show_default=False, **bounds)
    return inspect.Parameter(field_name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[value_type | None, option])


def model_options(model: type[BaseModel], into: str, names: OptionNames | None = None,
                  panel: str | None = None) -> Callable[[F], F]:
    """Decorate a typer command so that every field of ``model`` is one of its options.

    The command declares a parameter ``into``, which the decorator replaces by one option
    per field, in its place (the parameters after it become keyword-only); the command
    receives there the fields given on the command line (unset ones are left out).

    Args:
        model: The pydantic model whose fields become options.
        into: The command's parameter that receives ``{field: value}``.
        names: Option names that differ from ``--`` and the dashed field name.
        panel: The help panel the options are listed in.

    Returns:
        The decorator.

    Raises:
        TypeError: A field's type has no command-line form.
        ValueError: The command has no parameter ``into``, or one named like a field.
    """
    names = names or {}

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        if into not in signature.parameters:
            raise ValueError(f"{command.__name__} has no parameter {into!r}")
        clash = set(signature.parameters) & set(model.model_fields)
        if clash:
            raise ValueError(f"{command.__name__} already has parameters named like fields: {sorted(clash)}")
        own = list(signature.parameters.values())
        at = own.index(signature.parameters[into])
        after = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[at + 1:]]
        fields = [field_option(name, field, names, panel) for name, field in model.model_fields.items()]

        @functools.wraps(command)
        def with_options(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in model.model_fields if name in kwargs}
            return command(*args, **kwargs, **{into: {k: v for k, v in given.items() if v is not None}})

        parameters = [*own[:at], *fields, *after]
        with_options.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return with_options  # type: ignore[return-value]

    return decorate
