"""Command-line flags built from a stage's pydantic config model, so a config field is declared once.

Each field becomes a typer option: ``max_tokens`` -> ``--max-tokens``, typed from its annotation (a
``Literal`` or an ``Enum`` lists its choices, a ``bool`` is ``--x/--no-x``, a list repeats, any other
type, a table say, takes a TOML value), its help the field's description and default. Every option
defaults to None, meaning "not given", so a flag overrides the ``--config`` file's table only when it
is given (:func:`pipelines.config.build_config`). Adding a field to a config model adds its flag; neither
this module nor ``cli.py`` changes. A small builder rather than a library: typer already parses and
prints the help, and the few CLI-only spellings (``-o``, ``--per-group/--global``) stay in one table.
"""

from __future__ import annotations

import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pipelines.config import build_config, parse_toml_value

_PLAIN = (str, int, float, bool)


def parse_toml(text: str) -> Any:
    """A flag value in TOML syntax (``'{scorer = 1}'``, ``'[1, 2]'``), for a field no plain flag type fits."""
    try:
        return parse_toml_value(text, strict=True)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}, e.g. '{{scorer = 1}}' or '[1, 2]'") from None


def without_none(annotation: Any) -> Any:
    """``X | None`` -> ``X``; a union of several types is left as it is."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def choices(annotation: Any) -> list[str] | None:
    """The fixed set of values of a ``Literal`` of strings or a string ``Enum``, else None."""
    annotation = without_none(annotation)
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        return list(values) if all(isinstance(v, str) for v in values) else None
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [member.value for member in annotation]
        return values if all(isinstance(v, str) for v in values) else None
    return None


def flag_type(annotation: Any) -> tuple[Any, dict]:
    """The type typer parses the flag into, and the extra typer settings that type needs.

    typer itself lists a ``Literal``'s or an ``Enum``'s choices (``<text|messages>``) and rejects other values.
    """
    annotation = without_none(annotation)
    if choices(annotation) is not None or annotation in _PLAIN:
        return annotation, {}
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (str,)
        if without_none(item) in (str, int, float):
            return list[without_none(item)], {}
        if (values := choices(item)) is not None:  # typer has no list of Literal: the config model checks the values
            return list[str], {"metavar": f"<{'|'.join(values)}>"}
    return str, {"parser": parse_toml, "metavar": "<toml>"}  # a table, a list of lists, a union: one TOML value


def default_note(field: FieldInfo) -> str:
    """``[default: X]`` for the help; nothing where the default is empty or unset (the description says what then)."""
    if field.is_required():
        return ""
    value = field.get_default(call_default_factory=True)
    if value is None or (isinstance(value, (list, dict, tuple)) and not value):
        return ""
    return f"[default: {value.value if isinstance(value, enum.Enum) else value}]"


def field_parameter(name: str, field: FieldInfo, positional: bool = False, decls: tuple[str, ...] = ()) -> inspect.Parameter:
    """One typer parameter for one config field; it defaults to None (= not given on the command line)."""
    py_type, extra = flag_type(field.annotation)
    help_text = "  ".join(part for part in (field.description or "", default_note(field)) if part)
    if positional:
        info = typer.Argument(help=help_text, show_default=False, **extra)
    else:
        if not decls:
            dashed = name.replace("_", "-")
            decls = (f"--{dashed}/--no-{dashed}",) if py_type is bool else (f"--{dashed}",)
        if field.is_required():
            help_text += "  [required]"  # on the command line or in the --config file, so not click's own
        info = typer.Option(*decls, help=help_text.strip(), show_default=False, **extra)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[py_type], info])


def config_command(
    model: type[BaseModel], table: str, positional: str | None = None, names: Mapping[str, tuple[str, ...]] | None = None,
) -> Callable[[Callable[[Any], Any]], Callable[..., Any]]:
    """Turn ``fn(cfg)`` into a typer command taking a flag per field of ``model``, ``--config FILE`` and, with
    ``positional``, that field as the arguments; ``fn`` gets the model built from the file's ``[table]`` with the
    given flags on top. ``names`` holds option spellings other than ``--field-name`` (fields it lacks are skipped)."""
    names = names or {}
    if "config" in model.model_fields:
        raise TypeError(f"{model.__name__}.config would clash with the --config option")
    config = inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, default=None,
        annotation=Annotated[Optional[Path], typer.Option(
            "--config", "-c", help=f"TOML file; its [{table}] table sets defaults for every flag")],
    )
    fields = [(name, field) for name, field in model.model_fields.items() if name != positional]
    fields.sort(key=lambda item: not item[1].is_required())  # what must be given first, then --config, then the rest
    options = [field_parameter(name, field, decls=names.get(name, ())) for name, field in fields]
    required = sum(field.is_required() for _, field in fields)
    params = [field_parameter(positional, model.model_fields[positional], positional=True)] if positional else []
    params += [*options[:required], config, *options[required:]]

    def decorate(fn: Callable[[Any], Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def command(**values):
            config_file = values.pop("config")
            return fn(build_config(table, model, config_file, values))

        command.__signature__ = inspect.Signature(params)  # typer reads the parameters from here
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
