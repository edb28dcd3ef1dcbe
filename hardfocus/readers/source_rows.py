"""A shard's full rows, every source column unchanged, by the row indices scoring assigns: what a later stage reads to
put the source rows next to their scores (``(shard, row)`` of scores/ points at one row here).

Row indices are the readers' own (:mod:`hardfocus.readers.formats`): a Parquet row, a non-blank JSON Lines line, an
Arrow row.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Iterator

import pyarrow as pa

from hardfocus.readers.formats import reader_of
from hardfocus.readers.shard import Shard

__all__ = ["source_batches"]


def source_batches(url: str, format: str, compression: str | None, start: int = 0, stop: int | None = None,  # noqa: A002
                   batch_rows: int = 8192, skip: Collection[int] = ()) -> Iterator[tuple[int, pa.Table]]:
    """Rows [start, stop) of one input shard, in order, as (index of the batch's first row, a table of those rows
    with every source column unchanged). Row indices are exactly the ones scoring assigns, so (shard, row) from
    scores/ points at the same row.

    ``format`` and ``compression`` as :class:`hardfocus.contracts.scores.ShardInfo` records them (an unknown format
    is refused by name). Every table but the last holds ``batch_rows`` rows; a ``stop`` past the shard's end stops at
    its last row (so compare the rows yielded with the rows expected), and a ``start`` at or past it yields nothing.

    Parquet: only the row groups with rows in the range are read; the schema is the file's. Arrow: the record
    batches are read in order (memory-mapped locally: those before ``start`` are not touched); the schema is the
    file's. JSON Lines: the lines before ``start`` are split, never parsed; the columns' types are unified over the
    range (:mod:`hardfocus.readers.jsonl_rows`); an integer column is uint64 where some of its values are past int64 and
    none is negative (64-bit hashes). ``skip``: JSON Lines rows not to parse (the lines scoring could not read), each a
    row of nulls, so that a range around them is still one read, in one schema.
    """
    reader = reader_of(format)
    if start < 0 or (stop is not None and stop < start) or batch_rows < 1:
        raise ValueError(f"bad row range [{start}, {stop}) or batch_rows {batch_rows}")
    if stop == start:
        return
    shard = Shard(url=url, rel=posixpath.basename(url), format=format, compression=compression, size=0)
    rows = reader.rows(shard, start, stop, batch_rows, frozenset(skip))
    try:
        yield from rows
    finally:
        rows.close()
