"""Counting over the part files of a scores/ directory (the manifest itself: :mod:`hardfocus.contracts.scores`)."""

from __future__ import annotations

import polars as pl


def count_duplicate_ids(part_urls: list[str]) -> tuple[int, list[str]]:
    """(rows whose sample id another row has too, up to 5 such ids), streaming over the id column only."""
    if not part_urls:
        return 0, []
    dups = (
        pl.scan_parquet(part_urls, glob=False).group_by("sample_id").agg(pl.len().alias("n")).filter(pl.col("n") > 1)
        .sort("sample_id").collect(engine="streaming")
    )
    return (int(dups["n"].sum() - len(dups)) if len(dups) else 0), dups["sample_id"].head(5).to_list()
