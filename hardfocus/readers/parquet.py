"""Parquet shards: the columns checked against the footer, and units read in batches of at most a unit's rows,
so a unit never needs a whole row group as Python objects; a damaged row group is named."""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hardfocus.errors import HardfocusError
from hardfocus.readers.shard import (
    UNDECODABLE,
    RowBlock,
    Shard,
    UnitRows,
    null_id,
    one_line,
    over_cap,
    rebatched,
    sample_value,
    str_or_none,
)
from hardfocus.sample_format import Columns
from hardfocus.storage import redact

_PARQUET_BATCH_ROWS = 1 << 16  # the most rows asked of pyarrow at once (fewer when a unit is smaller)


def parquet_file(shard: Shard) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fsspec.open(shard.url, "rb").open())
    except (pa.ArrowInvalid, OSError) as exc:
        raise HardfocusError(redact(f"cannot read Parquet shard {shard.url}: {one_line(exc)}; is the file complete?")
                             ) from None


def check_parquet_columns(shard: Shard, schema: pa.Schema, columns: Columns) -> None:
    named = columns.sample_columns + [("--id-column", columns.id), ("--group-column", columns.group)]
    for flag, name in named:
        if name is not None and name not in schema.names:
            raise HardfocusError(redact(
                f"shard {shard.url} has no column '{name}' (columns: {', '.join(schema.names)}); pass {flag}"
                + ("" if columns.format != "text" else " (or --format for conversations)")
            ))
    for flag, name in columns.sample_columns:
        kind = schema.field(name).type
        if columns.format == "messages":
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
                raise HardfocusError(redact(
                    f"column '{name}' of shard {shard.url} is {kind}, not a list of {{role, content}} structs; pass {flag}"
                ))
        elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
                  or pa.types.is_large_binary(kind)):
            raise HardfocusError(redact(
                f"column '{name}' of shard {shard.url} is {kind}, not text; pass the right column with {flag}"
            ))


def check_columns(shard: Shard, columns: Columns) -> None:
    """The configured columns against the shard's footer (one small read)."""
    pf = parquet_file(shard)
    try:
        check_parquet_columns(shard, pf.schema_arrow, columns)
    finally:
        pf.close(force=True)


def parquet_units(shard: Shard, columns: Columns, n: int, skip: frozenset[int], cap: int) -> Iterator[UnitRows]:
    """Units of a Parquet shard, its row groups read in batches of at most a unit's rows: a unit never needs a
    whole row group as Python objects, and a row group that only skipped units need is not read."""
    pf = parquet_file(shard)
    check_parquet_columns(shard, pf.schema_arrow, columns)
    wanted = list(dict.fromkeys([c for _, c in columns.sample_columns] + [c for c in (columns.id, columns.group) if c]))
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    total = sum(sizes)
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    needed = [g for g in range(len(sizes))  # the row groups a unit to parse has rows in
              if any(s not in skip for s in range(bounds[g] // n * n, bounds[g + 1], n))]
    batches = parquet_batches(shard, pf, needed, bounds, wanted, min(n, _PARQUET_BATCH_ROWS))
    buffered: list[tuple[int, pa.RecordBatch]] = []  # (first row, batch) read and not yet used up
    for start in range(0, total, n):
        stop = min(start + n, total)
        if start in skip:
            yield UnitRows(start, stop, None, stop / total)
            continue
        buffered = [(o, b) for o, b in buffered if o + b.num_rows > start]
        while not buffered or buffered[-1][0] + buffered[-1][1].num_rows < stop:
            offset, batch = next(batches)
            if offset + batch.num_rows > start:
                buffered.append((offset, batch))
        table = pa.Table.from_batches([b for _, b in buffered], schema=buffered[0][1].schema)
        block = block_from_table(table.slice(start - buffered[0][0], stop - start), columns, cap)
        yield UnitRows(start, stop, block, stop / total)


def parquet_batches(shard: Shard, pf: pq.ParquetFile, groups: list[int], bounds: list[int], columns: list[str],
                     batch_size: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first row, batch) of the row groups ``groups``, in order; a damaged one is an error naming it."""
    for g in groups:
        offset = bounds[g]
        reader = pf.iter_batches(batch_size=batch_size, row_groups=[g], columns=columns)
        while True:
            try:
                batch = next(reader, None)
            except (OSError, pa.ArrowException) as exc:  # a corrupt page: 'ZSTD decompression failed', 'page header'
                raise HardfocusError(redact(
                    f"cannot read row group {g} (rows {bounds[g]}-{bounds[g + 1] - 1}) of Parquet shard {shard.url}: "
                    f"{one_line(exc)}; the file is damaged: replace it, or remove it from the inputs"
                )) from None
            if batch is None:
                break
            yield offset, batch
            offset += batch.num_rows
        if offset != bounds[g + 1]:
            raise HardfocusError(redact(
                f"row group {g} of Parquet shard {shard.url} holds {offset - bounds[g]} rows, its footer says "
                f"{bounds[g + 1] - bounds[g]}; the file is damaged: replace it, or remove it from the inputs"
            ))


def parquet_rows(shard: Shard, start: int, stop: int | None, batch_rows: int,
                 skip: frozenset[int]) -> Iterator[tuple[int, pa.Table]]:
    """Rows [start, stop) with every column, as they are; only the row groups holding them are read."""
    pf = parquet_file(shard)
    bounds = [0]
    for g in range(pf.metadata.num_row_groups):
        bounds.append(bounds[-1] + pf.metadata.row_group(g).num_rows)
    end = bounds[-1] if stop is None else min(stop, bounds[-1])
    groups = [g for g in range(len(bounds) - 1) if bounds[g + 1] > start and bounds[g] < end]
    batches = parquet_batches(shard, pf, groups, bounds, None, batch_rows)
    try:
        yield from rebatched(batches, start, stop, batch_rows)
    finally:
        batches.close()
        pf.close(force=True)


def block_from_table(table: pa.Table, columns: Columns, cap: int) -> RowBlock:
    n = table.num_rows
    size = np.zeros(n, dtype=np.int64)
    for _, c in columns.sample_columns:
        size += _cell_bytes(table.column(c).combine_chunks())
    over = size > cap
    ids = table.column(columns.id).to_pylist() if columns.id else [None] * n
    grp = table.column(columns.group).to_pylist() if columns.group else [None] * n
    fields = [_decoded_column(_pylist(table.column(c), over)) for _, c in columns.sample_columns]
    block = RowBlock()
    for i, (id_, group) in enumerate(zip(ids, grp)):
        if over[i]:
            block.append(id=str_or_none(id_), group=str_or_none(group), status=over_cap(int(size[i]), cap))
        elif columns.id and id_ is None:
            block.append(group=str_or_none(group), status=null_id(columns.id))
        else:
            value, status = sample_value([f[i] for f in fields], columns)
            block.append(value, str_or_none(id_), str_or_none(group), status)
    return block


def _cell_bytes(array: pa.Array) -> np.ndarray:
    """Bytes of text in each cell: a string's UTF-8 length; a list's or struct's, the sum of the strings in it."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) \
            or pa.types.is_large_binary(kind):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _cell_bytes(array.flatten())
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=inner, minlength=len(array)).astype(np.int64)
    if pa.types.is_struct(kind):
        out = np.zeros(len(array), dtype=np.int64)
        for child in array.flatten():
            out += _cell_bytes(child)
        return out
    return np.zeros(len(array), dtype=np.int64)


def _pylist(column: pa.ChunkedArray, over: np.ndarray) -> list:
    """``column`` as Python objects, None where ``over``: an oversized cell never becomes one."""
    if not over.any():
        return column.to_pylist()
    out = [None] * len(column)
    keep = np.flatnonzero(~over)
    for i, value in zip(keep, column.take(pa.array(keep)).to_pylist()):
        out[i] = value
    return out


def _decoded_column(values: list) -> list:
    """Binary text cells as str, or an :class:`_Undecodable` marker that becomes ``invalid_utf8``."""
    out = []
    for v in values:
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                v = UNDECODABLE
        out.append(v)
    return out


