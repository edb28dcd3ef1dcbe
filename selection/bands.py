"""MidRanking: rank samples by loss, drop the top band, keep the next one; then weight the kept band.

Ranking is global, or per group (``per_group``: each domain keeps its own band, so a domain whose
losses are all high is not wiped out). Ties in loss are broken by sample id, so two runs over the
same scores give identical output.

It works on one float column: the eligible losses are loaded as a numpy array (4 bytes a row) and
argsorted; sample ids are fetched only for the rows whose loss ties across a band boundary, the
one place where their order decides the outcome. ``loss_rank`` of tied rows is their shared
(competition) rank, so it does not depend on tie order at all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from scoring.schema import ERROR_PREFIX
from selection.irdro import irdro_weights

DROPPED, KEPT, EASY = "dropped", "kept", "easy"
BANDS = pl.Enum([DROPPED, KEPT, EASY])
NO_GROUP = "(none)"

IdLookup = Callable[[np.ndarray], np.ndarray]  # global row indices -> their sample ids


def exclusion_reason() -> pl.Expr:
    """Why a row cannot be ranked (null when it can): its status, or a loss that is not finite."""
    status = pl.col("status")
    return (
        pl.when(status != "ok")
        .then(pl.when(status.str.starts_with(ERROR_PREFIX)).then(pl.lit("status: error")).otherwise("status: " + status))
        .when(pl.col("loss").is_null() | ~pl.col("loss").is_finite())
        .then(pl.lit("loss not finite"))
    )


def rank_bands(eligible: pl.DataFrame, drop_top: float, keep: float, per_group: bool, ids_of: IdLookup) -> pl.DataFrame:
    """``eligible`` (``_row``, ``group``, ``loss``) with ``loss_rank`` (0 = highest loss in its scope) and ``band``."""
    loss = eligible["loss"].to_numpy()
    rows = eligible["_row"].to_numpy()
    loss_rank = np.empty(len(loss), dtype=np.float32)
    band = np.empty(len(loss), dtype=np.uint8)  # index into BANDS
    if per_group:
        codes = eligible["group"].to_physical().to_numpy()
        order = np.argsort(codes, kind="stable")
        splits = np.flatnonzero(np.diff(codes[order])) + 1
        scopes = np.split(order, splits)
    else:
        scopes = [slice(None)]
    for where in scopes:
        loss_rank[where], band[where] = _band_scope(loss[where], rows[where], drop_top, keep, ids_of)
    band_names = pl.Series(BANDS.categories.to_list(), dtype=BANDS)
    return eligible.with_columns(loss_rank=pl.Series(loss_rank), band=band_names.gather(band))


def _band_scope(
    loss: np.ndarray, rows: np.ndarray, drop_top: float, keep: float, ids_of: IdLookup
) -> tuple[np.ndarray, np.ndarray]:
    n = len(loss)
    n_drop, n_keep = int(np.floor(n * drop_top)), int(np.floor(n * keep))
    order = np.argsort(-loss)  # highest first; order within equal losses fixed below where it matters
    sorted_loss = loss[order]
    for boundary in (n_drop, n_drop + n_keep):
        if 0 < boundary < n and sorted_loss[boundary - 1] == sorted_loss[boundary]:
            lo = np.searchsorted(-sorted_loss, -sorted_loss[boundary], side="left")
            hi = np.searchsorted(-sorted_loss, -sorted_loss[boundary], side="right")
            run = order[lo:hi]
            order[lo:hi] = run[np.argsort(ids_of(rows[run]), kind="stable")]  # ties: lower sample id first
    position_band = np.full(n, 2, dtype=np.uint8)
    position_band[:n_drop] = 0
    position_band[n_drop : n_drop + n_keep] = 1
    new_run = np.r_[True, sorted_loss[1:] != sorted_loss[:-1]]
    competition_rank = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
    loss_rank, band = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.uint8)
    loss_rank[order] = competition_rank / max(n - 1, 1)
    band[order] = position_band
    return loss_rank, band


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
    codes = kept["group"].to_physical().to_numpy()
    for code in np.unique(codes):
        where = codes == code
        weights[where] = irdro_weights(losses[where], temperature, max_weight)
    return weights
