"""The formats export writes a part in: Parquet (zstd), JSON Lines, JSON Lines in one zstd frame; and how many rows
a part holds, read back (what a rerun checks before it keeps a part an earlier run wrote)."""

from __future__ import annotations

import io
from typing import IO

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl", "jsonl.zst": ".jsonl.zst"}
_ROW_GROUP_ROWS = 8192  # a reader that streams (datasets' streaming mode, Ray Data) holds a row group at a time


def write_table(table: pa.Table, f: IO[bytes], fmt: str) -> None:
    """``table`` as a whole file of format ``fmt``, written to ``f``."""
    if fmt == "parquet":
        pq.write_table(table, f, compression="zstd", row_group_size=_ROW_GROUP_ROWS)
        return
    buffer = io.BytesIO()
    pl.from_arrow(table).write_ndjson(buffer)  # polars writes nested values, nulls and unicode as JSON does
    data = buffer.getvalue()
    f.write(zstandard.ZstdCompressor(level=3).compress(data) if fmt == "jsonl.zst" else data)


def count_rows(f: IO[bytes], fmt: str) -> int:
    """The rows of a part: its Parquet footer's count, or its non-blank lines."""
    if fmt == "parquet":
        return pq.read_metadata(f).num_rows
    data = f.read()
    if fmt == "jsonl.zst":
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return sum(1 for line in data.split(b"\n") if line.strip())
