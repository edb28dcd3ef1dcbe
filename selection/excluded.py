"""The rows selection never ranks, one row each with its reason: ``_row`` (global row index) and ``reason``.

Every step that leaves rows out (a status other than ok, a loss or score that is not finite, ``--max-ifd``, a
reference without the row, a document with an unscored window) adds its rows here, so ``decisions/`` records
each one's reason and the summary's counts are these rows counted: the two cannot disagree.
"""

from __future__ import annotations

import polars as pl

from hardfocus.contracts.scores import ERROR_PREFIX, Status

SCHEMA = {"_row": pl.UInt64, "reason": pl.String}


def none_excluded() -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMA)


def excluded_rows(frame: pl.DataFrame, reason: pl.Expr) -> pl.DataFrame:
    """The rows of ``frame`` (with ``_row``) for which ``reason`` (a string expression) is not null."""
    return (frame.select(pl.col("_row").cast(pl.UInt64), reason.alias("reason"))
            .filter(pl.col("reason").is_not_null()))


def merge_excluded(*frames: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([f.cast(SCHEMA) for f in frames]) if frames else none_excluded()


def reason_counts(excluded: pl.DataFrame) -> dict[str, int]:
    """Rows per reason, sorted by reason: the summary's ``excluded``."""
    return {reason: int(n) for reason, n in excluded.group_by("reason").len().sort("reason").iter_rows()}


def status_reason() -> pl.Expr:
    """Why a scored row is not eligible, from its ``status`` (a row with status ok is one whose loss is not finite)."""
    status = pl.col("status")
    return (pl.when(status == Status.OK.value).then(pl.lit("loss not finite"))
            .when(status.str.starts_with(ERROR_PREFIX)).then(pl.lit("status: error"))
            .otherwise(pl.lit("status: ") + status))
