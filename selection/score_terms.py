"""The terms every ranked score shares: the column it is ranked in, its units, and the checks a score computed from
other columns or another scores/ directory needs (:mod:`selection.rank_by` by row, :mod:`selection.by_document` by
document)."""

from __future__ import annotations

import math

import polars as pl

from hardfocus.errors import HardfocusError
from selection.config import SelectConfig
from selection.scores import ScoreParts

SCORE_COLUMN = "score"  # the ranked value when it is not the loss itself
NATS, BITS_PER_BYTE = "nats per token", "bits per byte"
UNITS = {"loss": NATS, "ifd": "ratio (loss with prompt / without)", "bpb": BITS_PER_BYTE}


def rank_column(score: str, by: str = "window") -> str:
    """The column of the eligible rows that ranking and weighting read: by document always the document's score
    (``loss`` stays each window's own, which the selected parts carry)."""
    return "loss" if score == "loss" and by == "window" else SCORE_COLUMN


def bpb(nll_sum: str, n_bytes: str) -> pl.Expr:
    """Bits per byte; NaN where nothing was scored (excluded as not finite)."""
    return (pl.col(nll_sum) / (pl.col(n_bytes).cast(pl.Float64) * math.log(2))).cast(pl.Float32)


def require_column(parts: ScoreParts, dirs: list[str], column: str, fix: str) -> None:
    if column not in parts.common_columns:
        raise HardfocusError(f"the scores in {', '.join(dirs)} have no '{column}' column in every part: {fix}")


def check_same_inputs(parts: ScoreParts, reference: ScoreParts, cfg: SelectConfig, documents: bool = False) -> None:
    """The reference must score the very same shards, row for row; ids are joined on, so they must be unique.
    ``documents``: compare input rows, not score rows (by document the two may cut their documents into other
    windows, or not at all)."""
    def shards(p: ScoreParts) -> dict[str, int]:
        return {s.rel: s.rows for m in p.manifests for s in m.shards}

    def count(p: ScoreParts) -> int:
        return sum(m.rows if m.documents is None else m.documents for m in p.manifests) if documents else sum(p.rows)

    ours, theirs = shards(parts), shards(reference)
    if ours != theirs or count(parts) != count(reference):
        only = sorted(set(ours) ^ set(theirs))
        rows = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
        raise HardfocusError(
            f"the reference scores ({', '.join(cfg.reference)}) are not of the same inputs as {', '.join(cfg.scores)}: "
            + (f"shards on one side only (e.g. {only[0]}); " if only else "")
            + (f"different row counts (e.g. {rows[0]}: {ours[rows[0]]} vs {theirs[rows[0]]}); " if rows else "")
            + f"{count(parts)} vs {count(reference)} {'documents' if documents else 'rows'}. Score the reference model on "
            "the same inputs"
        )
    for dirs, p in ((cfg.scores, parts), (cfg.reference, reference)):
        if any(m.duplicate_ids for m in p.manifests):
            raise HardfocusError(
                f"{', '.join(dirs)} hold duplicate sample ids: excess loss joins on sample_id, which must be unique"
            )
