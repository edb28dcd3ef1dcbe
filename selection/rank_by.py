"""What selection ranks by: the loss, or a score computed from the columns beside it in scores/.

| score    | value                                        | units                                           | needs             |
|----------|----------------------------------------------|-------------------------------------------------|-------------------|
| `loss`   | mean NLL of the scored tokens                | nats per token                                  | any scores/       |
| `ifd`    | loss with the prompt / loss without it       | a ratio (1 = the prompt does not help)          | `score --ifd`     |
| `bpb`    | nll_sum / (n_bytes ln 2)                     | bits per byte                                   | ``n_bytes``       |
| `excess` | loss - the reference model's loss            | nats per token (same tokenizer), else bits/byte | ``--reference``   |

A row whose score cannot be computed is excluded and counted by reason, like an ineligible row, so
a NaN never reaches a band. The reference of ``excess`` is another ``hardfocus score`` run on the same
inputs, joined on ``sample_id``; with another tokenizer the two are compared in bits per byte. With
``--by document`` (windowed scores) each score is a document's, summed over its windows
(:mod:`selection.by_document`), and the reference is joined on ``document_id``.
"""

from __future__ import annotations

import math

import polars as pl
import pyarrow as pa

from hardfocus.contracts.scores import ERROR_PREFIX
from hardfocus.errors import HardfocusError
from hardfocus.storage import prefetched, redact
from selection.by_document import document_scores
from selection.config import SelectConfig
from selection.excluded import excluded_rows, merge_excluded
from selection.score_terms import (
    BITS_PER_BYTE,
    NATS,
    SCORE_COLUMN,
    UNITS,
    bpb,
    check_same_inputs,
    require_column,
)
from selection.scores import ScoreParts, differing_key, open_scores


def eligible_scores(parts: ScoreParts, cfg: SelectConfig, reference: ScoreParts | None = None
                    ) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """(the rows excluded, with their reason: :mod:`selection.excluded`, eligible rows with ``_row``, ``group``, ``loss`` and, unless ranking by loss,
    ``score``, the score's units). By document the rows are the eligible windows and ``score`` their document's
    (:mod:`selection.by_document`, which also says which windows are eligible then)."""
    if cfg.by == "document":
        excluded, windows, _, units = document_scores(parts, cfg, reference)
        return excluded, windows.drop("_doc"), units
    if cfg.score == "loss":
        excluded, frame = parts.eligible()
        return excluded, frame, NATS
    if cfg.score == "ifd":
        require_column(parts, cfg.scores, "ifd", "score it with --ifd (formats prompt_response and messages)")
        excluded, frame = parts.eligible(("ifd",))
        frame = frame.rename({"ifd": SCORE_COLUMN})
    elif cfg.score == "bpb":
        require_column(parts, cfg.scores, "n_bytes", "score it again with this version of hardfocus")
        excluded, frame = parts.eligible(("nll_sum", "n_bytes"))
        frame = frame.with_columns(bpb("nll_sum", "n_bytes").alias(SCORE_COLUMN)).drop("nll_sum", "n_bytes")
    else:
        return excess_scores(parts, cfg, reference)
    return _finite(excluded, frame, cfg), frame.filter(_keep(cfg)), UNITS[cfg.score]


def excess_scores(parts: ScoreParts, cfg: SelectConfig, reference: ScoreParts | None = None
                  ) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """Loss minus the reference model's loss on the same sample (RHO-LOSS's reducible loss): in nats per
    token when both share a tokenizer (and so score the same tokens), else in bits per byte."""
    reference = reference or open_scores(cfg.reference)  # the caller's, where it opened it already
    check_same_windows(parts, reference, cfg)  # first: other windows have other row counts too
    check_same_inputs(parts, reference, cfg)
    same_tokens = parts.manifests[0].tokenizer_fingerprint == reference.manifests[0].tokenizer_fingerprint
    if not same_tokens:
        fix = "score it again with this version of hardfocus (bytes are what tokenizers share)"
        require_column(parts, cfg.scores, "n_bytes", fix)
        require_column(reference, cfg.reference, "n_bytes", fix)
    values = ["n_tokens"] if same_tokens else ["nll_sum", "n_bytes"]
    excluded, frame = parts.eligible(("sample_id", *values))
    ref = _read_reference(reference, values)
    joined = frame.join(ref, on="sample_id", how="left").sort("_row")
    status, ok = pl.col("ref_status"), pl.col("ref_status") == "ok"
    if same_tokens:
        differ, other = ok & (pl.col("n_tokens") != pl.col("ref_n_tokens")), "reference scored other tokens"
        score = pl.col("loss") - pl.col("ref_loss")
    else:
        differ, other = ok & (pl.col("n_bytes") != pl.col("ref_n_bytes")), "reference scored other bytes"
        score = bpb("nll_sum", "n_bytes") - bpb("ref_nll_sum", "ref_n_bytes")
    reason = (pl.when(status.is_null()).then(pl.lit("reference: no row with this sample_id"))
              .when(status.str.starts_with(ERROR_PREFIX)).then(pl.lit("reference status: error"))
              .when(~ok).then(pl.lit("reference status: ") + status)
              .when(differ).then(pl.lit(other)))
    excluded = merge_excluded(excluded, excluded_rows(joined, reason))
    joined = joined.filter(ok & ~differ).select("_row", "group", "loss", score.cast(pl.Float32).alias(SCORE_COLUMN))
    return _finite(excluded, joined, cfg), joined.filter(_keep(cfg)), NATS if same_tokens else BITS_PER_BYTE


def _keep(cfg: SelectConfig) -> pl.Expr:
    """Rows that may be ranked: a finite score and, for IFD, below ``max_ifd``."""
    keep = pl.col(SCORE_COLUMN).is_finite()
    if cfg.score == "ifd" and math.isfinite(cfg.max_ifd):
        keep = keep & (pl.col(SCORE_COLUMN) < cfg.max_ifd)
    return keep


def _finite(excluded: pl.DataFrame, frame: pl.DataFrame, cfg: SelectConfig) -> pl.DataFrame:
    """``excluded`` plus the rows :func:`_keep` drops, with their reason."""
    col = pl.col(SCORE_COLUMN)
    reason = pl.when(col.is_null() | ~col.is_finite()).then(pl.lit(f"{cfg.score} not finite"))
    if cfg.score == "ifd" and math.isfinite(cfg.max_ifd):
        reason = reason.when(col >= cfg.max_ifd).then(pl.lit(f"ifd >= {cfg.max_ifd:g} (the prompt does not help)"))
    return merge_excluded(excluded, excluded_rows(frame, reason))


WINDOW_LAYOUT = ("long_documents", "tokenizer_fingerprint", "add_special_tokens", "max_tokens", "window_context")


def check_same_windows(parts: ScoreParts, reference: ScoreParts, cfg: SelectConfig) -> None:
    """Windows are joined on ``sample_id`` ('<document>#w<k>'): window k of the reference must hold the same text as
    window k of the scores, so both must cut documents alike (one tokenizer, one window size and context)."""
    ours, theirs = parts.manifests[0], reference.manifests[0]
    if "windows" not in (ours.long_documents, theirs.long_documents):
        return
    if key := differing_key(ours, theirs, WINDOW_LAYOUT):
        raise HardfocusError(
            f"the reference scores ({', '.join(map(redact, cfg.reference))}) cut documents into other windows than "
            f"{', '.join(map(redact, cfg.scores))} ({key} {getattr(theirs, key)!r} vs {getattr(ours, key)!r}), so "
            "window k of one is not window k of the other: select --by document, which compares whole documents"
        )


def _read_reference(reference: ScoreParts, values: list[str]) -> pl.DataFrame:
    """``sample_id``, ``ref_status``, ``ref_loss`` and ``ref_<value>`` of every reference row."""
    columns = ["sample_id", "status", "loss", *values]
    tables = list(prefetched(lambda index: reference.read_part(index, columns), range(len(reference.urls))))
    frame = pl.from_arrow(pa.concat_tables(tables))
    return frame.rename({c: f"ref_{c}" for c in columns if c != "sample_id"})
