"""``summary.json`` of a selected/ directory: counts per band and group, thresholds, quantiles, weights."""

from __future__ import annotations

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from selection.bands import DROPPED, EASY, KEPT

QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)


class GroupCounts(BaseModel):
    eligible: int
    dropped: int
    kept: int
    easy: int
    mean_loss: float
    mean_loss_kept: float | None
    total_weight: float


class Thresholds(BaseModel):
    """Boundaries of a ranking scope in the ranked score: dropped >= dropped_min, kept in [kept_min, kept_max]."""

    dropped_min: float | None
    kept_max: float | None
    kept_min: float | None


class WeightStats(BaseModel):
    min: float
    mean: float
    max: float
    std: float
    effective_sample_size: float  # (sum w)^2 / sum w^2: n for uniform weights
    entropy: float  # of w / sum(w), nats; ln(n) for uniform weights
    max_entropy: float


class SelectionSummary(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())  # a newer version's fields are read past

    parameters: dict
    score: str = "loss"  # what ranked and weighted the rows (thresholds are in its units)
    score_units: str = "nats per token"
    scores: list[dict]
    reference: list[dict] | None = None  # score excess: the reference model's score directories
    rows: int
    excluded: dict[str, int]
    eligible: int
    bands: dict[str, int]
    # windowed scores: "scored" and "eligible" documents, and per band the documents (by document) or the documents
    # with a window in it (by window: they overlap); None for truncated scores and summaries of before windows
    documents: dict[str, int] | None = None
    groups: dict[str, GroupCounts]
    thresholds: dict[str, Thresholds]
    loss_quantiles: dict[str, dict[str, float]]
    score_quantiles: dict[str, dict[str, float]] | None = None  # of the ranked score, when it is not the loss
    weights: WeightStats
    output_parts: int
    decision_parts: int | None = None  # decisions/ parts, one per score part (None: a selection of before them)
    has_input_ids: bool


def group_counts(ranked: pl.DataFrame, kept_weights: pl.DataFrame) -> dict[str, GroupCounts]:
    per = ranked.group_by("group").agg(
        eligible=pl.len(),
        dropped=(pl.col("band") == DROPPED).sum(),
        kept=(pl.col("band") == KEPT).sum(),
        easy=(pl.col("band") == EASY).sum(),
        mean_loss=pl.col("loss").mean(),
        mean_loss_kept=pl.col("loss").filter(pl.col("band") == KEPT).mean(),
    )
    weight = kept_weights.group_by("group").agg(total_weight=pl.col("weight").sum())
    per = per.join(weight, on="group", how="left").with_columns(pl.col("total_weight").fill_null(0.0)).sort("group")
    return {row.pop("group"): GroupCounts(**row) for row in per.to_dicts()}


def thresholds(ranked: pl.DataFrame, per_group: bool, column: str = "loss") -> dict[str, Thresholds]:
    scope = "group" if per_group else pl.lit("all").alias("scope")
    by = ranked.group_by(scope).agg(
        dropped_min=pl.col(column).filter(pl.col("band") == DROPPED).min(),
        kept_max=pl.col(column).filter(pl.col("band") == KEPT).max(),
        kept_min=pl.col(column).filter(pl.col("band") == KEPT).min(),
    )
    key = "group" if per_group else "scope"
    return {row.pop(key): Thresholds(**row) for row in by.sort(key).to_dicts()}


def loss_quantiles(ranked: pl.DataFrame, column: str = "loss") -> dict[str, dict[str, float]]:
    """Quantiles of ``column`` over all eligible rows and each band (polars: no float64 copies of the column)."""
    exprs = [pl.col(column).quantile(q, interpolation="linear").alias(f"q{q:g}") for q in QUANTILES]
    out = {"eligible": {k: float(v) for k, v in ranked.select(exprs).row(0, named=True).items()}}
    per_band = ranked.group_by("band").agg(exprs).with_columns(pl.col("band").cast(pl.String)).sort("band")
    for row in per_band.to_dicts():
        band = row.pop("band")
        out[band] = {k: float(v) for k, v in row.items()}
    return out


def weight_stats(weights: np.ndarray) -> WeightStats:
    w = np.asarray(weights, dtype=np.float64)
    p = w / w.sum()
    nz = p[p > 0]
    return WeightStats(
        min=float(w.min()), mean=float(w.mean()), max=float(w.max()), std=float(w.std()),
        effective_sample_size=float(w.sum() ** 2 / np.square(w).sum()),
        entropy=float(-(nz * np.log(nz)).sum()), max_entropy=float(np.log(w.size)),
    )
