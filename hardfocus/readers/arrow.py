"""Arrow IPC shards (``.arrow``): the data files of a Hugging Face ``datasets`` ``save_to_disk`` directory (the IPC
stream format), or the IPC file format. Record batches are read one after another (memory-mapped locally, so a
batch's bytes are touched only when its rows are used), the columns checked against the schema as a Parquet
footer's are, units cut as Parquet's are (:func:`hardfocus.readers.parquet.block_from_table`: a row over the cap gets a
status), and a damaged or cut-short file is an error that names it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import fsspec
import pyarrow as pa
from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.readers.parquet import block_from_table, check_parquet_columns
from hardfocus.readers.shard import Shard, UnitRows, one_line, rebatched
from hardfocus.sample_format import Columns
from hardfocus.storage import is_local, redact

__all__ = ["ArrowShard", "arrow_rows", "arrow_units", "check_arrow_columns"]

_FILE_MAGIC = b"ARROW1"  # the IPC file format begins (and ends) with it; the stream format has none
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the end-of-stream marker a stream writer's close() leaves
_DAMAGED = "the file is damaged: replace it, or remove it from the inputs"


class ArrowShard:
    """One open ``.arrow`` shard: its :attr:`schema`, and its record batches in order (:meth:`batches`).

    A stream that does not end with the end-of-stream marker was cut short (a partial copy, a full disk), even when
    the cut fell between two batches: it is refused when opened, so no row is dropped silently.
    """

    def __init__(self, shard: Shard):
        self.shard = shard
        fs, path = url_to_fs(shard.url)
        try:
            self._source = pa.memory_map(path, "r") if is_local(fs) else fsspec.open(shard.url, "rb").open()
        except (OSError, ValueError) as exc:
            raise HardfocusError(redact(f"cannot read Arrow shard {shard.url}: {one_line(exc)}")) from None
        try:
            self.size = self._source.seek(0, 2)
            self._source.seek(0)
            head = self._source.read(len(_FILE_MAGIC))
            self._source.seek(0)
            self._file = head == _FILE_MAGIC
            if not self._file:
                self._check_stream_end()
            self._reader = pa.ipc.open_file(self._source) if self._file else pa.ipc.open_stream(self._source)
            self.schema: pa.Schema = _plain(self._reader.schema)
            self._cast = self.schema != self._reader.schema
        except HardfocusError:
            self.close()
            raise
        except (OSError, pa.ArrowException) as exc:
            self.close()
            raise HardfocusError(redact(
                f"cannot read Arrow shard {shard.url}: {one_line(exc)}; is the file complete? Replace it, or remove it "
                "from the inputs"
            )) from None

    def _check_stream_end(self) -> None:
        if self.size == 0:
            raise HardfocusError(redact(
                f"Arrow shard {self.shard.url} is empty (0 bytes), not an Arrow IPC file: is the file complete? Replace "
                "it, or remove it from the inputs"
            ))
        tail = b""
        if self.size >= len(_EOS):
            self._source.seek(self.size - len(_EOS))
            tail = self._source.read(len(_EOS))
            self._source.seek(0)
        if tail != _EOS:  # (the 4-byte marker of Arrow < 0.15 is refused: a batch's zero padding ends alike)
            raise HardfocusError(redact(
                f"Arrow shard {self.shard.url} ({self.size} bytes) does not end with the end-of-stream marker a finished "
                "write leaves: it is cut short (a partial copy, a full disk?) or not an Arrow IPC file; replace it, or "
                "remove it from the inputs"
            ))

    def batches(self) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(index of its first row, batch) for every record batch, in order; a damaged one is an error naming it."""
        offset = 0
        count = self._reader.num_record_batches if self._file else None
        k = 0
        while count is None or k < count:
            try:
                batch = self._reader.get_batch(k) if self._file else self._reader.read_next_batch()
            except StopIteration:
                return
            except (OSError, pa.ArrowException) as exc:
                raise HardfocusError(redact(
                    f"cannot read record batch {k} (from row {offset}) of Arrow shard {self.shard.url}: {one_line(exc)}; "
                    + _DAMAGED
                )) from None
            yield offset, batch.cast(self.schema) if self._cast else batch
            offset += batch.num_rows
            k += 1

    def consumed(self) -> float:
        """The share of the file's bytes read so far."""
        try:
            return min(self._source.tell() / max(self.size, 1), 1.0)
        except (OSError, ValueError):
            return 0.0

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> ArrowShard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _plain(schema: pa.Schema) -> pa.Schema:
    """``schema`` with view and dictionary-encoded text as plain text (polars writes ``string_view``; ``datasets``
    may dictionary-encode): the readers downstream handle string/binary, and the values are the same."""
    def plain(kind: pa.DataType) -> pa.DataType:
        if pa.types.is_dictionary(kind):
            return plain(kind.value_type)
        if kind == pa.string_view():
            return pa.large_string()
        if kind == pa.binary_view():
            return pa.large_binary()
        return kind

    return pa.schema([f.with_type(plain(f.type)) for f in schema], metadata=schema.metadata)


def checked(shard: Shard, table: pa.Table, start: int) -> pa.Table:
    """``table`` (rows from ``start`` of the shard) after a full validation: an IPC reader trusts the offsets and
    lengths it reads, so damaged bytes would otherwise surface as garbage or a crash when the cells are used."""
    try:
        table.validate(full=True)
    except (pa.ArrowException, ValueError) as exc:
        raise HardfocusError(redact(
            f"rows {start}-{start + table.num_rows - 1} of Arrow shard {shard.url} are not valid Arrow data: "
            f"{one_line(exc)}; " + _DAMAGED
        )) from None
    return table


def check_arrow_columns(shard: Shard, columns: Columns) -> None:
    """The configured columns against the shard's schema (its first message: one small read)."""
    with ArrowShard(shard) as arrow:
        check_parquet_columns(shard, arrow.schema, columns)


def arrow_units(shard: Shard, columns: Columns, n: int, skip: frozenset[int], cap: int) -> Iterator[UnitRows]:
    """Units of an Arrow shard, cut from its record batches as they are read. A skipped unit's rows are counted, not
    validated or parsed (memory-mapped, their bytes are not even read)."""
    with ArrowShard(shard) as arrow:
        check_parquet_columns(shard, arrow.schema, columns)
        wanted = list(dict.fromkeys([c for _, c in columns.sample_columns] + [c for c in (columns.id, columns.group) if c]))
        schema = pa.schema([arrow.schema.field(c) for c in wanted])
        buffered: list[pa.RecordBatch] = []  # rows from ``start`` on, read and not yet cut into a unit
        have = start = 0
        for _, batch in arrow.batches():
            buffered.append(batch.select(wanted))
            have += batch.num_rows
            while have > n:  # a unit that ends the shard waits for the end, so that its consumed is 1.0
                table = pa.Table.from_batches(buffered, schema=schema)
                yield _unit(shard, table.slice(0, n), start, columns, skip, cap, arrow.consumed())
                rest = table.slice(n)
                buffered, have, start = rest.to_batches(), rest.num_rows, start + n
        if have:  # at most n rows: the last unit
            yield _unit(shard, pa.Table.from_batches(buffered, schema=schema), start, columns, skip, cap, 1.0)


def arrow_rows(shard: Shard, start: int, stop: int | None, batch_rows: int,
               skip: frozenset[int]) -> Iterator[tuple[int, pa.Table]]:
    """Rows [start, stop) with every column, validated (:func:`checked`); batches before ``start`` are not touched."""
    with ArrowShard(shard) as arrow:
        batches = arrow.batches()
        until = batches if stop is None else itertools.takewhile(lambda pair: pair[0] < stop, batches)
        for first, table in rebatched(until, start, stop, batch_rows):
            yield first, checked(shard, table, first)


def _unit(shard: Shard, table: pa.Table, start: int, columns: Columns, skip: frozenset[int], cap: int,
          consumed: float) -> UnitRows:
    stop = start + table.num_rows
    if start in skip:
        return UnitRows(start, stop, None, consumed)
    return UnitRows(start, stop, block_from_table(checked(shard, table, start), columns, cap), consumed)
