"""Counting over the part files of a scores/ directory (the manifest itself: :mod:`hardfocus.contracts.scores`)."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from hardfocus.parts import Expected, read_part
from hardfocus.storage import prefetched


def count_duplicate_ids(parts: list[tuple[str, Expected]]) -> tuple[int, list[str]]:
    """(rows whose sample id another row has too, up to 5 such ids), over the ``sample_id`` column of the parts
    (``(URL, expected)``: each read through the verified reader)."""
    if not parts:
        return 0, []
    ids = pa.concat_tables(prefetched(lambda item: read_part(*item, ["sample_id"]), parts))
    dups = pl.from_arrow(ids).group_by("sample_id").agg(pl.len().alias("n")).filter(pl.col("n") > 1).sort("sample_id")
    return (int(dups["n"].sum() - len(dups)) if len(dups) else 0), dups["sample_id"].head(5).to_list()
