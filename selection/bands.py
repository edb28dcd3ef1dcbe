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

from selection.irdro import irdro_weights

DROPPED, KEPT, EASY = "dropped", "kept", "easy"
BANDS = pl.Enum([DROPPED, KEPT, EASY])
NO_GROUP = "(none)"

IdLookup = Callable[[np.ndarray], np.ndarray]  # global row indices -> their sample ids


def rank_bands(
    eligible: pl.DataFrame, drop_top: float, keep: float, per_group: bool, ids_of: IdLookup, column: str = "loss"
) -> pl.DataFrame:
    """``eligible`` (``_row``, ``group``, ``column``) with ``loss_rank`` (0 = the highest ``column`` value in its
    scope: the loss, or the score selection ranks by) and ``band``."""
    loss = eligible[column].to_numpy()
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
    order = np.argsort(loss)[::-1]  # highest first; order within equal losses is fixed below where it matters
    sorted_loss = loss[order]
    for boundary in (n_drop, n_drop + n_keep):
        if 0 < boundary < n and sorted_loss[boundary - 1] == sorted_loss[boundary]:
            tie = sorted_loss[boundary]
            lo = n - np.searchsorted(loss, tie, side="right", sorter=order[::-1])  # first position with this loss
            hi = n - np.searchsorted(loss, tie, side="left", sorter=order[::-1])
            run = order[lo:hi].copy()
            order[lo:hi] = run[np.argsort(ids_of(rows[run]), kind="stable")]  # ties: lower sample id first
    position_band = np.full(n, 2, dtype=np.uint8)
    position_band[:n_drop] = 0
    position_band[n_drop : n_drop + n_keep] = 1
    # competition rank: the position of the first row with the same loss (memory: 4 bytes a row, in place)
    rank = np.arange(n, dtype=np.uint32 if n < 2**32 else np.uint64)
    rank[1:][sorted_loss[1:] == sorted_loss[:-1]] = 0
    np.maximum.accumulate(rank, out=rank)
    del sorted_loss
    share = rank.astype(np.float32)
    share *= np.float32(1 / max(n - 1, 1))
    loss_rank, band = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.uint8)
    loss_rank[order] = share
    band[order] = position_band
    return loss_rank, band


def band_weights(
    kept: pl.DataFrame, per_group: bool, weighting: str, temperature: float, max_weight: float | None,
    column: str = "loss",
) -> np.ndarray:
    """Weights of the kept rows, in their order: IR-DRO on ``column`` (mean 1 per scope) or all ones."""
    if weighting == "none":
        return np.ones(kept.height)
    losses = kept[column].to_numpy().astype(np.float64)
    if not per_group:
        return irdro_weights(losses, temperature, max_weight)
    weights = np.empty(kept.height)
    codes = kept["group"].to_physical().to_numpy()
    for code in np.unique(codes):
        where = codes == code
        weights[where] = irdro_weights(losses[where], temperature, max_weight)
    return weights
