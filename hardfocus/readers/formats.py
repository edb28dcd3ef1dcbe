"""The one table of input formats: which files are shards of which format, and the reader of each.

| format  | files                                                   | reader                                    |
|---------|---------------------------------------------------------|-------------------------------------------|
| parquet | ``*.parquet``                                           | :mod:`hardfocus.readers.parquet`          |
| jsonl   | ``*.jsonl``, ``*.json``, ``*.ndjson``; plain, ``.gz``, ``.zst`` | :mod:`hardfocus.readers.jsonl`, :mod:`hardfocus.readers.jsonl_rows` |
| arrow   | ``*.arrow`` (Arrow IPC, stream or file)                 | :mod:`hardfocus.readers.arrow`            |

A Hugging Face ``save_to_disk`` directory is a directory of ``.arrow`` shards whose ``state.json`` says which files are
data (:mod:`hardfocus.readers.find`). Every stage that reads a shard (scoring, training's raw shards, export, eval)
goes through :func:`reader_of`, so a new format is one reader module and one line here, and a format that is not in
the table is refused by name, never read as another.
"""

from __future__ import annotations

from collections.abc import Iterator

from hardfocus.errors import HardfocusError
from hardfocus.readers import arrow, jsonl, jsonl_rows, parquet
from hardfocus.readers.shard import MAX_ROW_BYTES, RowBlock, Shard, ShardReader, UnitRows
from hardfocus.sample_format import Columns

_COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}

READERS: dict[str, ShardReader] = {reader.name: reader for reader in (
    ShardReader("parquet", (".parquet",), {}, parquet.check_columns, parquet.parquet_units, parquet.parquet_rows),
    ShardReader("jsonl", (".jsonl", ".json", ".ndjson"), _COMPRESSED, jsonl.check_columns, jsonl.jsonl_units,
                jsonl_rows.jsonl_rows),
    ShardReader("arrow", (".arrow",), {}, arrow.check_arrow_columns, arrow.arrow_units, arrow.arrow_rows),
)}

FORMATS_TEXT = ", ".join(
    "/".join(r.suffixes) + (f" (plain, {' or '.join(sorted(set(r.compressions)))})" if r.compressions else "")
    for r in READERS.values()
)


def reader_of(name: str) -> ShardReader:
    """The reader of the format ``name``; an unknown one is refused, naming the formats there are."""
    try:
        return READERS[name]
    except KeyError:
        raise HardfocusError(f"unknown shard format '{name}' (one of: {', '.join(READERS)})") from None


def shard_format(path: str) -> tuple[str, str | None] | None:
    """(format, compression) from the file name, or None for a file that is no format's shard."""
    name = path.lower()
    for reader in READERS.values():
        for ending, compression in [*reader.compressions.items(), ("", None)]:
            if ending and not name.endswith(ending):
                continue
            stem = name[: len(name) - len(ending)]
            if stem.endswith(reader.suffixes):
                return reader.name, compression
    return None


def check_columns(shard: Shard, columns: Columns) -> None:
    """Fail early, cheaply, when the configured columns are not in the shard (a footer, a schema, a first row)."""
    reader_of(shard.format).check_columns(shard, columns)


def iter_units(shard: Shard, columns: Columns, rows_per_unit: int, skip: frozenset[int] = frozenset(),
               max_row_bytes: int = MAX_ROW_BYTES) -> Iterator[UnitRows]:
    """The shard as consecutive units ``[k*n, min((k+1)*n, rows))``, every byte read and decompressed once.

    Units whose start is in ``skip`` (finished in an earlier run) are counted but not parsed; a Parquet row group that
    only skipped units need is not read at all (an Arrow record batch is, to count its rows). The last unit is
    shorter; a shard without rows yields nothing. A row over ``max_row_bytes`` gets a status instead of being parsed.
    """
    yield from reader_of(shard.format).units(shard, columns, rows_per_unit, skip, max_row_bytes)


def read_shard(shard: Shard, columns: Columns, max_row_bytes: int = MAX_ROW_BYTES) -> RowBlock:
    """Every row of a (small) shard, in one block."""
    block = RowBlock()
    for unit in iter_units(shard, columns, rows_per_unit=1 << 30, max_row_bytes=max_row_bytes):
        block = unit.block
    return block
