"""Where labelled rows landed: counts per selection band of a column that scoring and selection never
read (``[run] label_column``; the demo corpus marks its injected noise this way)."""

from __future__ import annotations

import dataclasses

import polars as pl
import pyarrow as pa

from hardfocus.contracts.decisions import decision_parts
from hardfocus.parts import read_part
from hardfocus.readers import find_shards, read_shard
from hardfocus.sample_format import Columns
from hardfocus.storage import prefetched

UNLABELLED = "(none)"


def band_labels(inputs: list[str], columns: Columns, label_column: str, selected: str) -> pl.DataFrame:
    """``band`` (dropped / kept / easy / excluded, as ``decisions/`` records them) x ``label`` -> ``rows``, over
    every scored row (a window each on windowed scores)."""
    labels = []
    with_label = dataclasses.replace(columns, id=None, group=label_column)
    for shard in find_shards(inputs):
        block = read_shard(shard, with_label)
        labels.append(pl.DataFrame({"shard": [shard.rel] * len(block), "row": range(len(block)), "label": block.groups},
                                   schema={"shard": pl.String, "row": pl.Int64, "label": pl.String}))
    tables = prefetched(lambda part: read_part(part.url, part.expected, ["shard", "row", "band"]), decision_parts(selected))
    decisions = pl.from_arrow(pa.concat_tables(tables)).with_columns(pl.col("band").cast(pl.String))
    joined = decisions.join(pl.concat(labels), on=["shard", "row"], how="left")
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
