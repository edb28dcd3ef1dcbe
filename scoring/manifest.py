"""``manifest.json`` of a scores/ directory: what was scored, with what, and how it went.

The counts are summed from the shards' done markers, each counted from the rows of its parts as they
were written (or read back from parts an earlier run wrote), so they are exact after any number of
interrupted and resumed runs. Selection refuses to mix score directories whose manifests
disagree on model or tokenizer.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

_LIBRARIES = ("hardfocus", "torch", "transformers", "tokenizers", "ray", "pyarrow", "polars")


class ShardInfo(BaseModel):
    url: str
    rel: str
    format: str
    compression: str | None
    size: int
    rows: int


class RunInfo(BaseModel):
    """One invocation of ``score``: ``wall_s`` is the whole call, ``tokens_per_s`` = tokens_scored / wall_s."""

    started_at: str
    wall_s: float
    units_scored: int
    units_reused: int
    rows_scored: int
    tokens_scored: int
    tokens_per_s: float
    nodes: dict[str, int] = {}  # units scored per host (and Ray node)
    # seconds the scoring actors spent on units (model, loss, part write), summed: tokens_scored / actor_s is the
    # steady-state rate of one actor, start-up and orchestration left out
    actor_s: float = 0.0


class ScoreCounts(BaseModel):
    """What the part files hold, counted exactly."""

    rows: int = 0
    rows_by_status: dict[str, int] = {}
    error_examples: list[str] = []
    tokens: int = 0
    truncated: int = 0
    duplicate_ids: int = 0
    duplicate_id_examples: list[str] = []


class ScoreManifest(ScoreCounts):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    model_path: str
    model_fingerprint: str
    tokenizer_fingerprint: str
    max_tokens: int
    dtype: str
    device: str
    add_special_tokens: bool
    text_column: str
    id_column: str | None
    group_column: str | None
    format: str = "text"
    sample_columns: list[str] = Field(default_factory=list)  # the columns a sample was read from
    chat_template_sha256: str | None = None  # conversations: the template that rendered them
    shards: list[ShardInfo]
    parts: int
    runs: list[RunInfo]
    versions: dict[str, str]


def count_duplicate_ids(part_urls: list[str]) -> tuple[int, list[str]]:
    """(rows whose sample id another row has too, up to 5 such ids), streaming over the id column only."""
    if not part_urls:
        return 0, []
    dups = (
        pl.scan_parquet(part_urls).group_by("sample_id").agg(pl.len().alias("n")).filter(pl.col("n") > 1)
        .sort("sample_id").collect(engine="streaming")
    )
    return (int(dups["n"].sum() - len(dups)) if len(dups) else 0), dups["sample_id"].head(5).to_list()


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
