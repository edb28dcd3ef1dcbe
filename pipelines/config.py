"""The composed configuration: one TOML file with a table per stage, validated by the stage's own model.

``[score]`` holds :class:`scoring.ScoreConfig` keys, ``[select]`` :class:`selection.SelectConfig`
keys, ``[train]`` :class:`training.TrainConfig` keys and ``[eval]`` :class:`training.config.EvalConfig` keys, spelled exactly as the CLI flags (``max_tokens`` = ``--max-tokens``). Unknown tables and keys are errors that name them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from scoring import HardfocusError, ScoreConfig
from selection import SelectConfig
from training.config import EvalConfig, TrainConfig


class StageTables(BaseModel):
    """The raw per-stage tables of a config file, before flags are merged in."""

    model_config = ConfigDict(extra="forbid")

    run: dict = {}  # read by `hardfocus run` only; a single stage ignores it
    score: dict = {}
    select: dict = {}
    train: dict = {}
    eval: dict = {}


def read_toml(path: str | Path) -> dict:
    """The file's tables; a missing file or bad TOML is a one-line error naming the file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HardfocusError(f"config file '{path}' does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise HardfocusError(f"config file '{path}' is not valid TOML: {exc}") from None


def load_tables(path: str | Path | None) -> StageTables:
    if path is None:
        return StageTables()
    raw = read_toml(path)
    try:
        return StageTables.model_validate(raw)
    except ValidationError as exc:
        raise HardfocusError(f"config file '{path}': {_describe(exc)}") from None


def build_score_config(config_file: str | Path | None, overrides: dict) -> ScoreConfig:
    """``[score]`` of the config file, with the flags that were given on top."""
    return _build("score", ScoreConfig, config_file, overrides)


def build_select_config(config_file: str | Path | None, overrides: dict) -> SelectConfig:
    """``[select]`` of the config file, with the flags that were given on top."""
    return _build("select", SelectConfig, config_file, overrides)


def build_train_config(config_file: str | Path | None, overrides: dict) -> TrainConfig:
    """``[train]`` of the config file, with the flags that were given on top."""
    return _build("train", TrainConfig, config_file, overrides)


def build_eval_config(config_file: str | Path | None, overrides: dict) -> EvalConfig:
    """``[eval]`` of the config file, with the flags that were given on top."""
    return _build("eval", EvalConfig, config_file, overrides)


def _build(stage: str, model: type[BaseModel], config_file: str | Path | None, overrides: dict):
    values = getattr(load_tables(config_file), stage) | {k: v for k, v in overrides.items() if v is not None}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        where = f"config file '{config_file}' [{stage}] with flags" if config_file else f"{stage} flags"
        raise HardfocusError(f"{where}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        elif err["type"] == "missing":
            parts.append(f"'{key}' is required (--{key.replace('_', '-')})")
        else:
            parts.append(f"'{key}': {err['msg']}")
    return "; ".join(parts)
