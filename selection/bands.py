"""MidRanking: rank samples by loss, drop the top band, keep the next one; then weight the kept band.

Ranking is global, or per group (``per_group``: each domain keeps its own band, so a domain whose
losses are all high is not wiped out). Ties in loss are broken by sample id, so two runs over the
same scores give identical output.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from scoring.schema import ERROR_PREFIX
from selection.irdro import irdro_weights

DROPPED, KEPT, EASY = "dropped", "kept", "easy"
NO_GROUP = "(none)"


def exclusion_reason() -> pl.Expr:
    """Why a row cannot be ranked (null when it can): its status, or a loss that is not finite."""
    status = pl.col("status")
    return (
        pl.when(status != "ok")
        .then(pl.when(status.str.starts_with(ERROR_PREFIX)).then(pl.lit("status: error")).otherwise("status: " + status))
        .when(pl.col("loss").is_null() | ~pl.col("loss").is_finite())
        .then(pl.lit("loss not finite"))
    )


def rank_bands(eligible: pl.LazyFrame, drop_top: float, keep: float, per_group: bool) -> pl.DataFrame:
    """Every eligible row with ``rank`` (0 = highest loss in its scope), ``scope_n``, ``loss_rank`` and ``band``.

    Needs columns ``_row``, ``sample_id``, ``group``, ``loss``.
    """
    scope = "group" if per_group else pl.lit(0)
    ranked = (
        eligible.with_columns(pl.col("group").fill_null(NO_GROUP))
        .sort(["loss", "sample_id"], descending=[True, False])
        .with_columns(
            rank=pl.int_range(pl.len(), dtype=pl.Int64).over(scope),
            scope_n=pl.len().over(scope).cast(pl.Int64),
        )
    )
    n_drop = (pl.col("scope_n") * drop_top).floor().cast(pl.Int64)
    n_keep = (pl.col("scope_n") * keep).floor().cast(pl.Int64)
    return ranked.with_columns(
        loss_rank=(pl.col("rank") / (pl.col("scope_n") - 1).clip(lower_bound=1)).cast(pl.Float32),
        band=pl.when(pl.col("rank") < n_drop)
        .then(pl.lit(DROPPED))
        .when(pl.col("rank") < n_drop + n_keep)
        .then(pl.lit(KEPT))
        .otherwise(pl.lit(EASY)),
    ).collect(engine="streaming")


def band_weights(
    kept: pl.DataFrame, per_group: bool, weighting: str, temperature: float, max_weight: float | None
) -> np.ndarray:
    """Weights of the kept rows, in their order: IR-DRO (mean 1 per scope) or all ones."""
    if weighting == "none":
        return np.ones(kept.height)
    losses = kept["loss"].to_numpy().astype(np.float64)
    if not per_group:
        return irdro_weights(losses, temperature, max_weight)
    weights = np.empty(kept.height)
    groups = kept["group"].to_numpy()
    for group in np.unique(groups):
        where = groups == group
        weights[where] = irdro_weights(losses[where], temperature, max_weight)
    return weights
