"""The composed configuration: one TOML file with a table per stage, validated by the stage's own model.

``[score]`` holds :class:`scoring.ScoreConfig` keys, ``[select]`` :class:`selection.SelectConfig`
keys, ``[train]`` :class:`training.TrainConfig` keys, ``[eval]`` :class:`pipelines.evaluation.EvalConfig` keys and ``[export]``
:class:`exporting.ExportConfig` keys, spelled exactly as the CLI flags (``max_tokens`` = ``--max-tokens``). Unknown tables and keys are errors that name them.

Values are validated strictly (pydantic's strict mode): TOML has types, so ``max_tokens = "64"``, ``overwrite =
"true"`` or ``max_tokens = 64.0`` are errors naming the key, not silently converted (an integer where a float is
expected is fine). The flags typer parsed arrive with their types, so the same strict check holds for them. A key
that must be a table and is not (``score = 5``) is an error naming it.
"""

from __future__ import annotations

import difflib
import json
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines.evaluation.config import EvalConfig
from scoring import HardfocusError, ScoreConfig
from selection import SelectConfig
from training.config import TrainConfig


class StageTables(BaseModel):
    """The raw per-stage tables of a config file, before flags are merged in."""

    model_config = ConfigDict(extra="forbid")

    run: dict = {}  # read by `hardfocus run` only; a single stage ignores it
    score: dict = {}
    select: dict = {}
    train: dict = {}
    eval: dict = {}
    export: dict = {}


def read_toml(path: str | Path) -> dict:
    """The file's tables; a missing file or bad TOML is a one-line error naming the file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HardfocusError(f"config file '{path}' does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise HardfocusError(f"config file '{path}' is not valid TOML: {exc}") from None


def load_config(path: str | Path, model: type[BaseModel] = StageTables, overrides: Sequence[str] = ()):
    """The one way a config file is read: its TOML, each table checked to be one, the ``TABLE.KEY=VALUE``
    overrides applied (values in TOML syntax, else strings), validated strictly as ``model``: :class:`StageTables`
    for a stage's command and ``hardfocus submit``, :class:`pipelines.run_config.RunConfig` for ``hardfocus run``."""
    raw = read_toml(path)
    tables = list(model.model_fields)
    check_tables(raw, tables, f"config file '{path}'")  # before an override adds keys to them
    for item in overrides:
        key, sep, value = item.partition("=")
        table, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise HardfocusError(f"--set '{item}': expected TABLE.KEY=VALUE, e.g. select.temperature=0.5")
        if table not in tables:
            raise HardfocusError(
                f"--set '{item}': unknown table '{table}'{did_you_mean(table, tables)} ({', '.join(tables)})"
            )
        raw.setdefault(table, {})[name] = parse_toml_value(value.strip())
    try:
        return model.model_validate(raw, strict=True)
    except ValidationError as exc:
        raise HardfocusError(f"config file '{path}': {describe(exc, model)}") from None


def check_tables(raw: dict, tables, where: str) -> None:
    """Each of ``tables`` present in ``raw`` is a table (``[score]``); else a one-line error naming the key."""
    for name in tables:
        if name in raw and not isinstance(raw[name], dict):
            raise HardfocusError(
                f"{where}: '{name}' must be a table ([{name}] with its keys below it), not {_kind(raw[name])} "
                f"{_shown(raw[name])}"
            )


def build_score_config(config_file: str | Path | None, overrides: dict) -> ScoreConfig:
    """``[score]`` of the config file, with the flags that were given on top."""
    return build_config("score", ScoreConfig, config_file, overrides)


def build_select_config(config_file: str | Path | None, overrides: dict) -> SelectConfig:
    """``[select]`` of the config file, with the flags that were given on top."""
    return build_config("select", SelectConfig, config_file, overrides)


def build_train_config(config_file: str | Path | None, overrides: dict) -> TrainConfig:
    """``[train]`` of the config file, with the flags that were given on top."""
    return build_config("train", TrainConfig, config_file, overrides)


def build_eval_config(config_file: str | Path | None, overrides: dict) -> EvalConfig:
    """``[eval]`` of the config file, with the flags that were given on top."""
    return build_config("eval", EvalConfig, config_file, overrides)


def build_config(table: str, model: type[BaseModel], config_file: str | Path | None, overrides: dict):
    """``model`` from the config file's ``[table]``, with the overrides that are not None (= flags given) on top."""
    tables = load_config(config_file) if config_file is not None else StageTables()
    values = getattr(tables, table) | {k: v for k, v in overrides.items() if v is not None}
    try:
        return model.model_validate(values, strict=True)  # the flags typer parsed have their types already
    except ValidationError as exc:
        where = f"config file '{config_file}' [{table}] with flags" if config_file else f"{table} flags"
        raise HardfocusError(f"{where}: {describe(exc, model)}") from None


def parse_toml_value(text: str, strict: bool = False):
    """``text`` read as a TOML value (``0.5``, ``true``, ``["a", "b"]``, ``{scorer = 1}``); else the string itself
    (``select.by=document``), or with ``strict`` a ValueError saying why."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if strict:
            raise ValueError(f"'{text}' is not a TOML value ({exc})") from None
        return text


def did_you_mean(name: str, known) -> str:
    """`` (did you mean 'temperature'?)`` for a misspelt key, else nothing."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def describe(exc: ValidationError, model: type[BaseModel]) -> str:
    """The errors of validating ``model`` in one line, each naming its key; a misspelt key gets a suggestion."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'{did_you_mean(str(err['loc'][-1]), _known_keys(model, err['loc']))}")
        elif err["type"] == "missing":
            parts.append(f"'{key}' is required (--{key.replace('_', '-')})")
        elif err["type"].endswith("_type") and not isinstance(err.get("input"), dict):  # a value of another type
            parts.append(f"'{key}': {err['msg']}, not {_kind(err['input'])} {_shown(err['input'])}")
        else:
            parts.append(f"'{key}': {err['msg']}")
    return "; ".join(parts)


def _kind(value) -> str:
    """How TOML calls the type of ``value``, with its article."""
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"), (list, "an array"),
             (dict, "a table"))
    return next((name for t, name in kinds if isinstance(value, t)), f"a {type(value).__name__}")


def _shown(value) -> str:
    text = json.dumps(value, default=str)  # TOML's spelling for strings, booleans, numbers and arrays
    return text if len(text) <= 60 else text[:57] + "..."


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed beside the last part of ``loc``, following nested models (``run.tempreature``)."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        inner = field.annotation if field else None
        if typing.get_origin(inner) in (Union, types.UnionType):
            inner = next((a for a in typing.get_args(inner) if a is not type(None)), None)
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return []
        model = inner
    return list(model.model_fields)
