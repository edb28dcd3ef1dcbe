"""Rewriting a stage's part as a test means to, restamped as the stage that wrote it would have stamped it (the same
stage, run and place: :mod:`hardfocus.parts`), so the readers take it; a test of the readers' refusals leaves it
unstamped, or stamped as before, on purpose."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hardfocus.parts import STAMP_KEY, Stamp, stamped


def rewrite_part(path: Path, table: pa.Table) -> None:
    """Write ``table`` over the part at ``path``, stamped with the stage, run and place of the part it replaces."""
    stamp = Stamp.of(pq.read_metadata(path).metadata)
    assert stamp is not None, f"{path} carries no stamp to keep"
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != STAMP_KEY}
    pq.write_table(stamped(table.replace_schema_metadata(metadata or None), stamp.stage, stamp.identity, stamp.place), path)


def write_sibling_part(sibling: Path, path: Path, table: pa.Table, place: dict) -> None:
    """Write ``table`` at ``path`` as another part of the output ``sibling`` belongs to (its stage and run), in
    ``place``."""
    stamp = Stamp.of(pq.read_metadata(sibling).metadata)
    assert stamp is not None, f"{sibling} carries no stamp to follow"
    pq.write_table(stamped(table, stamp.stage, stamp.identity, place), path)


def rewrite_keeping_stamp(path: Path, change) -> None:
    """What any read-modify-write tool does (pandas, polars via pyarrow, a notebook): read the part, change it, write
    it back; pyarrow keeps the schema metadata, so the part keeps the stamp it was written with."""
    table = pq.read_table(path)
    pq.write_table(change(table), path)
    assert Stamp.of(pq.read_metadata(path).metadata) is not None
