"""The one config of ``hardfocus run``: a ``[run]`` table plus the four stages' own tables.

``[run]`` names the working directory, the training and held-out shards and the model once; the
stage tables (``[score]``, ``[select]``, ``[train]``, ``[eval]``) hold each stage's own keys, spelled
as its CLI flags. Paths between stages are derived (``<workdir>/scores``, ``selected``, ``model``,
``eval``), so a stage table may not set them. ``--set table.key=value`` overrides one key.
Unknown tables and keys are errors that name them; values, from the file and from ``--set`` (TOML too), are
validated strictly (:mod:`pipelines.config`), and a table that is not one (``score = 5``) is an error naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hardfocus.sample_format import SampleFormat
from pipelines.config import describe, load_config
from pipelines.evaluation.config import EvalConfig
from scoring import HardfocusError, ScoreConfig
from selection import SelectConfig
from training import TrainConfig

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

    workdir: str = Field(min_length=1, description="where the stages write scores/, selected/, model/ and eval/")
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
    def _workdir(cls, value: str) -> str:
        """A local directory or a URL (``s3://bucket/work``); ``s3:/b/w`` would become a local directory ``s3:``, and
        ``~/work`` (TOML has no shell to expand it) a directory named ``~``: it is expanded."""
        if re.match(r"[a-z][a-z0-9+.-]*:/(?!/)", value):
            raise ValueError(f"'{value}' looks like a URL missing a '/': write it as scheme://bucket/path")
        return os.path.expanduser(value) if value.startswith("~") else value


class _Url(str):
    """A workdir URL (``s3://bucket/work``) that joins like a Path: ``workdir / "scores"``."""

    def __truediv__(self, name: str) -> _Url:
        return _Url(f"{self.rstrip('/')}/{name}")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    run: RunSection
    score: dict = {}
    select: dict = {}
    train: dict = {}
    eval: dict = {}

    @property
    def workdir(self) -> Path | _Url:
        """The workdir, joined with ``/``: a Path, or a URL on an object store (pathlib would turn s3://b into s3:/b)."""
        return _Url(self.run.workdir) if "://" in self.run.workdir else Path(self.run.workdir)

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
        return config_type.model_validate(values | derived, strict=True)  # TOML has types: "64" is not 64
    except ValidationError as exc:
        raise HardfocusError(f"[{table}]: {describe(exc, config_type)}") from None


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read the TOML, apply ``table.key=value`` overrides (values in TOML syntax, else strings), validate."""
    cfg = load_config(path, RunConfig, overrides)
    # validate every stage table now, so a typo in [eval] fails before hours of scoring and training
    cfg.score_config(), cfg.select_config(), cfg.train_config(), cfg.eval_config()
    return cfg


def check_stage_range(start: str, until: str) -> list[str]:
    """The stages from ``start`` to ``until``, or a :class:`HardfocusError` naming what is wrong."""
    for stage in (start, until):
        if stage not in STAGES:
            raise HardfocusError(f"unknown stage '{stage}': one of {', '.join(STAGES)}")
    if STAGES.index(start) > STAGES.index(until):
        raise HardfocusError(f"--from {start} comes after --until {until}")
    return STAGES[STAGES.index(start) : STAGES.index(until) + 1]
