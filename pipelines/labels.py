"""Where labelled rows landed: counts per selection band of a column that scoring and selection never
read (``[run] label_column``; the demo corpus marks its injected noise this way)."""

from __future__ import annotations

import dataclasses

import polars as pl

from scoring.foundation.sample_format import Columns
from scoring.foundation.scores import Status
from scoring.sources import find_shards, read_shard

UNLABELLED = "(none)"


def band_labels(inputs: list[str], columns: Columns, label_column: str, scores_parts: list[str],
                selected_parts: list[str], per_group: bool) -> pl.DataFrame:
    """``band`` (dropped / kept / easy / not scored) x ``label`` -> ``rows``, over every input row."""
    labels = []
    with_label = dataclasses.replace(columns, id=None, group=label_column)
    for shard in find_shards(inputs):
        block = read_shard(shard, with_label)
        labels.append(pl.DataFrame({"shard": [shard.rel] * len(block), "row": range(len(block)), "label": block.groups},
                                   schema={"shard": pl.String, "row": pl.Int64, "label": pl.String}))
    scores = pl.read_parquet(scores_parts, glob=False, columns=["sample_id", "shard", "row", "group", "loss", "status"])
    kept = pl.read_parquet(selected_parts, glob=False, columns=["sample_id"]).with_columns(kept=pl.lit(True))
    kept_max = pl.col("loss").filter("kept").max()  # the top of the kept band, per group when banded per group
    rows = scores.join(kept, on="sample_id", how="left").with_columns(pl.col("kept").fill_null(False))
    rows = rows.with_columns(kept_max=kept_max.over("group") if per_group else kept_max)
    band = (
        pl.when(pl.col("status") != Status.OK.value).then(pl.lit("not scored"))
        .when("kept").then(pl.lit("kept"))
        .when(pl.col("loss") > pl.col("kept_max")).then(pl.lit("dropped"))
        .otherwise(pl.lit("easy"))
    )
    joined = rows.with_columns(band=band).join(pl.concat(labels), on=["shard", "row"], how="left")
    return (
        joined.with_columns(pl.col("label").fill_null(UNLABELLED))
        .group_by("band", "label").agg(pl.len().alias("rows")).sort("band", "label")
    )


def format_band_labels(table: pl.DataFrame, label_column: str) -> str:
    wide = table.pivot(on="label", index="band", values="rows").fill_null(0).sort("band")
    columns = wide.columns
    lines = [f"'{label_column}' by selection band:", "  ".join(f"{c:>14}" for c in columns)]
    lines += ["  ".join(f"{v!s:>14}" for v in r) for r in wide.iter_rows()]
    return "\n".join(lines)
