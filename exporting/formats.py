"""The formats export writes a part in: Parquet (zstd), JSON Lines, JSON Lines in one zstd frame (with its checksum);
and how many rows a part holds, read back (what a rerun checks before it keeps a part an earlier run wrote): a part
cut short or damaged is an error of :data:`DAMAGED`, so that it is written again."""

from __future__ import annotations

import io
import json
from typing import IO

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from polars.exceptions import PanicException

from exporting.storable import for_json, for_parquet
from hardfocus.errors import HardfocusError
from hardfocus.parts import stamped

EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl", "jsonl.zst": ".jsonl.zst"}
DAMAGED = (OSError, pa.ArrowException, ValueError, zstandard.ZstdError)  # what reading a damaged part raises
_ROW_GROUP_ROWS = 8192  # a reader that streams (datasets' streaming mode, Ray Data) holds a row group at a time


def write_table(table: pa.Table, f: IO[bytes], fmt: str, stamp: tuple[str, dict] | None = None) -> None:
    """``table`` as a whole file of format ``fmt``, written to ``f``; a Parquet part with the part stamp
    (:mod:`hardfocus.parts`) of ``stamp`` (the export's identity digest, the part's place) in its footer, of the
    columns as stored."""
    if fmt == "parquet":
        stored = for_parquet(table)
        if stamp is not None:
            stored = stamped(stored, "export", *stamp)
        pq.write_table(stored, f, compression="zstd", row_group_size=_ROW_GROUP_ROWS)
        return
    buffer = io.BytesIO()
    try:
        pl.from_arrow(for_json(table)).write_ndjson(buffer)  # polars writes nested values, nulls and unicode as JSON does
    except PanicException as exc:  # a Rust panic (a type polars cannot write as JSON) is a BaseException
        raise HardfocusError(f"polars cannot write these rows as JSON Lines ({' '.join(str(exc).split())[:200]}): export "
                             "them with --format parquet") from None
    data = buffer.getvalue()
    f.write(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data) if fmt == "jsonl.zst" else data)


def count_rows(data: bytes, fmt: str) -> int:
    """The rows of a part's bytes: its Parquet footer's count, or its lines, each checked to be a JSON object and the
    last to end the file (a part cut inside its last line raises ValueError)."""
    if fmt == "parquet":
        return pq.read_metadata(pa.BufferReader(data)).num_rows
    if fmt == "jsonl.zst":
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    if data and not data.endswith(b"\n"):
        raise ValueError("its last line is cut short")
    lines = [line for line in data.split(b"\n") if line.strip()]
    if not all(isinstance(json.loads(line), dict) for line in lines):
        raise ValueError("a line is not a JSON object")
    return len(lines)
