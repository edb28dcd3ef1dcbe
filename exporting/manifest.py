"""``export.json``, the marker of a complete export: what was exported, counted per band and per shard, part by part.

Before it is written the counts the tasks report are reconciled with the decisions, counted here on their own
(polars over the decisions parts): a shard whose rows were lost or doubled is an error, never an export marked done.
"""

from __future__ import annotations

from collections import Counter

import polars as pl
from pydantic import BaseModel, ConfigDict

from exporting.decided import read_decisions
from exporting.selection import Selection, ShardJob
from hardfocus.contracts.decisions import EXCLUDED
from hardfocus.errors import HardfocusError
from hardfocus.storage import prefetched, redact


class ShardRows(BaseModel):
    scores: int  # the index of its scores directory in the selection's summary
    rel: str
    rows: int  # rows exported from it (windows, or documents by document)
    bands: dict[str, int]
    copies: int | None = None  # --resample: the copies of those rows written


class PartRows(BaseModel):
    name: str
    rows: int
    bytes: int | None = None  # the part file's size and the XXH3-64 digest of its bytes: a rerun checks them
    xxh3: str | None = None


class ExportManifest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a newer version's fields are read past

    selection: str
    selection_digest: str
    band: str
    by: str
    format: str
    shard_rows: int
    columns: dict[str, str]  # the columns export added: their own name -> their name in the parts
    resample: float | None = None
    seed: int | None = None
    expected_copies: float | None = None  # --resample: K times the sum of the kept rows' weights
    rows: int  # rows in the parts
    bands: dict[str, int]
    shards: list[ShardRows]
    parts: list[PartRows]
    versions: dict[str, str]


def decided_counts(selection: Selection, band: str, by: str) -> dict[int, dict[str, int]]:
    """Shard index -> rows of the band(s) exported per band, counted from the decisions parts, each read through the
    verified reader (by document: the documents, each in the band its ranked windows share; a document's windows are
    in one part, as its unit's)."""
    out: dict[int, dict[str, int]] = {}

    def count(item: tuple[int, str, ShardJob]) -> tuple[int, dict[str, int]]:
        index, url, job = item
        frame = pl.from_arrow(read_decisions(url, ["row", "band"], job.decisions_expected(url)))
        frame = frame.with_columns(pl.col("band").cast(pl.String))
        if by == "document":
            ranked = pl.col("band").filter(pl.col("band") != EXCLUDED)
            frame = frame.group_by("row").agg(ranked.first().fill_null(EXCLUDED).alias("band"))
        if band != "all":
            frame = frame.filter(pl.col("band") == band)
        return index, dict(frame.group_by("band").len().iter_rows())

    items = [(job.index, url, job) for job in selection.shards for url in job.decisions]
    for index, counts in prefetched(count, items):
        for name, n in counts.items():
            shard = out.setdefault(index, {})
            shard[name] = shard.get(name, 0) + n
    return out


def reconcile(jobs: list[ShardJob], expected: dict[int, dict[str, int]], records: dict[str, dict],
              resampled: bool) -> list[ShardRows]:
    """The rows written per shard, checked against the decisions; a difference is an error naming the shard."""
    per_shard: dict[int, Counter] = {}
    copies: Counter = Counter()
    for record in records.values():
        if record["shard"] is None:
            continue
        per_shard.setdefault(record["shard"], Counter()).update(record["bands"] if not resampled
                                                                else {"kept": record["rows"]})
        copies[record["shard"]] += record.get("copies") or 0
    shards = []
    for job in jobs:
        want, got = expected.get(job.index, {}), dict(per_shard.get(job.index, {}))
        if got != want:
            raise HardfocusError(
                f"the export of {redact(job.url)} wrote {got or 'no rows'} where the selection decided on {want}: parts "
                "were lost or written twice (changed while it ran?); rerun the export"
            )
        shards.append(ShardRows(scores=job.scores, rel=job.rel, rows=sum(got.values()), bands=got,
                                copies=copies[job.index] if resampled else None))
    if resampled:
        spilled = sum(copies.values())
        shuffled = sum(r["rows"] for r in records.values() if r["kind"] == "part")
        if spilled != shuffled:
            raise HardfocusError(f"the shuffled parts hold {shuffled} rows where phase one wrote {spilled} copies: rerun "
                                 "the export")
    return shards
