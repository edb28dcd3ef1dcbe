"""Typed configuration of the export stage; the same keys in TOML (``[export]``), flags and code."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Band = Literal["kept", "dropped", "easy", "excluded", "all"]
Format = Literal["parquet", "jsonl", "jsonl.zst"]


class ExportConfig(BaseModel):
    """Everything ``hardfocus export`` needs. Unknown keys are an error, and so is NaN or inf for any number."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    selected: str = Field(description="the selected/ directory written by `hardfocus select` (with its decisions/)")
    output: str = Field(description="the directory to write the exported shards into (local path or fsspec URL)")
    band: Band = Field(
        "kept", description="which rows: kept (the training band), dropped, easy, excluded (never ranked), or all (audits)"
    )
    by: Literal["window", "document"] = Field(
        "window",
        description="windowed scores: a row per window, its text the window's slice of the source text; or document: "
        "one row per source document (needs a selection made with select --by document)",
    )
    format: Format = Field("parquet", description="parquet, jsonl or jsonl.zst")
    shard_rows: int = Field(
        50_000, ge=1, description="rows per output shard (a shard's last part is shorter; with resample, about this many)"
    )
    prefix: str | None = Field(
        None, description="a prefix for the names of the columns export adds (sample_id, band, weight, score, loss, ...), "
        "where the source has columns of those names: e.g. hf_"
    )
    resample: float | None = Field(
        None, gt=0, description="K: write each kept row floor(K*w) times, plus once more with probability the remainder, "
        "shuffled across the shards; rows then carry weight 1 (for trainers without per-sample weights)"
    )
    seed: int = Field(0, ge=0, description="seed of the resampling: the copies, the shard each copy goes to, the order")
    input_root: str | None = Field(
        None, description="where the scored shards are now, if they moved: each is read at <input_root>/<its relative "
        "path>, its size and each row's bytes checked (its modification stamp is a copy's own); default: where the scores "
        "manifest says"
    )
    scores: list[str] = Field(
        default_factory=list, description="the scores/ directories the selection was made from, if they moved; default: "
        "as its summary.json records them"
    )
    executor: Literal["ray", "local"] = Field("ray", description="ray (a Ray Data job) or local (the same code in-process)")
    ray_address: str | None = Field(None, description="Ray cluster address; default $RAY_ADDRESS, else a local Ray")
    overwrite: bool = Field(False, description="replace an export made with other settings or of another selection")

    @model_validator(mode="after")
    def _resample_needs_weights(self) -> ExportConfig:
        if self.resample is not None and self.band != "kept":
            raise ValueError(f"resample copies rows by their weights, which only the kept band has (band is {self.band}); "
                             "drop --resample or use --band kept")
        return self
