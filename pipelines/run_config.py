"""The one config of ``hardfocus run``: a ``[run]`` table plus the four stages' own tables.

``[run]`` names the working directory, the training and held-out shards and the model once; the
stage tables (``[score]``, ``[select]``, ``[train]``, ``[eval]``) hold each stage's own keys, spelled
as its CLI flags. Paths between stages are derived (``<workdir>/scores``, ``selected``, ``model``,
``eval``), so a stage table may not set them. ``--set table.key=value`` overrides one key.
Unknown tables and keys are errors that name them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.config import _describe, read_toml
from scoring import HardfocusError, ScoreConfig
from scoring.config import SampleFormat
from selection import SelectConfig
from training import TrainConfig
from training.config import EvalConfig

STAGES = ["score", "select", "train", "eval"]
# keys the runner derives from [run] and the working directory
_FORMAT = set(SampleFormat.model_fields)  # the sample format is set once, in [run]
_DERIVED = {
    "score": {"inputs", "output", "model", "group_column", "id_column", "overwrite"} | _FORMAT,
    "select": {"scores", "output", "overwrite"},
    "train": {"data", "output", "model", "overwrite", "group_column"} | _FORMAT,
    "eval": {"models", "data", "output", "group_column"} | _FORMAT,
}


class RunSection(SampleFormat):
    """The shards, the model and the sample format (``format``, its columns, ``chat_template``), set once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workdir: str = Field(description="where the stages write scores/, selected/, model/ and eval/")
    data: list[str] = Field(min_length=1, description="training shards (files, directories, globs)")
    heldout: list[str] = Field(default_factory=list, description="held-out shards for eval; empty = no eval")
    model: str = Field("smollm2-135m", description="base model: hub id, local dir, .gguf, or 'smollm2-135m'")
    group_column: str | None = Field("group", description="group (domain) column, or none")
    id_column: str | None = Field(None, description="unique sample id column; default '<shard>#<row>'")
    label_column: str | None = Field(
        None, description="a column only the final report reads (e.g. injected noise marks): rows per band and label"
    )

    @field_validator("workdir")
    @classmethod
    def _local_workdir(cls, value: str) -> str:
        if "://" in value:  # pathlib would turn s3://b/w into a local directory s3:/b/w
            raise ValueError(
                f"'{value}' is a URL: the workdir holds model/, a checkpoint written with save_pretrained, and must be "
                "a local (or mounted shared) directory; [run] data and heldout may be on an object store, and "
                "`hardfocus score` / `select` may write to one"
            )
        return value


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run: RunSection
    score: dict = {}
    select: dict = {}
    train: dict = {}
    eval: dict = {}

    @property
    def workdir(self) -> Path:
        return Path(self.run.workdir)

    def score_config(self) -> ScoreConfig:
        r = self.run
        return _stage(ScoreConfig, "score", self.score, inputs=r.data, output=str(self.workdir / "scores"), model=r.model,
                      group_column=r.group_column, id_column=r.id_column, overwrite=True, **r.sample_format())

    def select_config(self) -> SelectConfig:
        return _stage(SelectConfig, "select", self.select, scores=[str(self.workdir / "scores")],
                      output=str(self.workdir / "selected"))

    def train_config(self) -> TrainConfig:
        return _stage(TrainConfig, "train", self.train, data=[str(self.workdir / "selected")],
                      output=str(self.workdir / "model"), model=self.run.model, group_column=self.run.group_column,
                      **self.run.sample_format())

    def eval_config(self) -> EvalConfig | None:
        if not self.run.heldout:
            return None
        r = self.run
        return _stage(EvalConfig, "eval", self.eval, models=[f"base={r.model}", f"trained={self.workdir / 'model'}"],
                      data=r.heldout, output=str(self.workdir / "eval"), group_column=r.group_column,
                      **r.sample_format())


def _stage(config_type: type[BaseModel], table: str, values: dict, **derived):
    clash = sorted(set(values) & _DERIVED[table])
    if clash:
        raise HardfocusError(f"[{table}] may not set {', '.join(clash)}: `run` derives it from [run] and the workdir")
    try:
        return config_type.model_validate(values | derived)
    except ValidationError as exc:
        raise HardfocusError(f"[{table}]: {_describe(exc)}") from None


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read the TOML, apply ``table.key=value`` overrides (values in TOML syntax, else strings), validate."""
    raw = read_toml(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        table, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise HardfocusError(f"--set '{item}': expected TABLE.KEY=VALUE, e.g. select.temperature=0.5")
        if table not in {"run", *STAGES}:
            raise HardfocusError(f"--set '{item}': unknown table '{table}' (run, {', '.join(STAGES)})")
        raw.setdefault(table, {})[name] = _parse_value(value)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise HardfocusError(f"config file '{path}': {_describe(exc)}") from None
    # validate every stage table now, so a typo in [eval] fails before hours of scoring and training
    cfg.score_config(), cfg.select_config(), cfg.train_config(), cfg.eval_config()
    return cfg


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
