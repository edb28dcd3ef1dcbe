"""Find input shards and read row ranges of them.

A shard is one Parquet or JSON Lines file (plain, ``.gz``, ``.zst``), local or any fsspec URL.
A row is a Parquet row or a non-blank JSONL line; its index is stable across runs, so the
default sample id ``"<shard relative path>#<row index>"`` is stable too.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import posixpath
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard
from fsspec.core import url_to_fs

from scoring.config import MAX_ROW_BYTES
from scoring.foundation.errors import HardfocusError
from scoring.foundation.sample_format import Columns, Message
from scoring.foundation.scores import ERROR_PREFIX, Status
from scoring.foundation.storage import fs_protocol, fs_url, is_local, redact

log = logging.getLogger(__name__)

_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_JSONL_EXT = (".jsonl", ".json", ".ndjson")
_PEEK_BYTES = 16 * 1024  # what a look at a shard's first row reads
_READ_BYTES = 1 << 20  # what a JSONL shard is read in: a chunk of decompressed bytes, split into lines
_PEEK_LINE_BYTES = 1 << 20  # a first line longer than this is not looked at while planning (its task checks it)
_PARQUET_BATCH_ROWS = 1 << 16  # the most rows asked of pyarrow at once (fewer when a unit is smaller)

# A row whose text (a JSON line, or a Parquet row's sample cells) is longer than this is not parsed: it gets the
# status ``error: row of N bytes over the cap of M bytes`` (time and memory follow the unit, not one giant row).
def _over_cap(size: int, cap: int) -> str:
    return f"{ERROR_PREFIX}row of {size} bytes over the cap of {cap} bytes (--max-row-bytes)"


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line (pyarrow's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class Shard:
    """One input file. ``url`` is what fsspec opens (credentials included: name it in a message only through
    :func:`scoring.foundation.storage.redact`); ``rel`` names it in sample ids.

    ``modified``: what the listing says about the file's version, an opaque string to compare for equality only:
    locally ``st_mtime_ns`` (as a decimal string); elsewhere the ETag (or etag, generation), else the last-modified
    time, the listing (or ``fs.info`` for a single file) gives; None when it gives none. A different value means
    the file was rewritten (its content may still be the same); the same value means it was not, as far as the
    filesystem tells.
    """

    url: str
    rel: str
    format: Literal["parquet", "jsonl"]
    compression: str | None
    size: int
    modified: str | None = None


@dataclass
class RowBlock:
    """Rows ``start..stop`` of a shard, column by column. ``status`` is set where reading failed.

    ``values`` holds the text (format ``text``) or the conversation, a list of messages (the others).
    """

    values: list[str | list[Message] | None] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    groups: list[str | None] = field(default_factory=list)
    status: list[str | None] = field(default_factory=list)

    def append(self, value=None, id=None, group=None, status=None) -> None:  # noqa: A002 - mirrors the column name
        self.values.append(value)
        self.ids.append(id)
        self.groups.append(group)
        self.status.append(status)

    def __len__(self) -> int:
        return len(self.values)


def has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def shard_format(path: str) -> tuple[Literal["parquet", "jsonl"], str | None] | None:
    """(format, compression) from the file name, or None for a file that is not a shard."""
    name = path.lower()
    compression = None
    for ext, comp in _COMPRESSION.items():
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
            break
    if name.endswith(".parquet") and compression is None:
        return "parquet", None
    if name.endswith(_JSONL_EXT):
        return "jsonl", compression
    return None


def find_shards(inputs: list[str]) -> list[Shard]:
    """Expand files, directories and globs into shards, sorted by relative path.

    An input that exists is taken literally (``file[1].jsonl``, ``run[2024]/``); one that does not is a glob.
    Relative paths are taken from the directory given, or from the part of a glob before its first wildcard,
    or are the file name for a single file.
    """
    if not inputs:
        raise HardfocusError("no input given: pass one or more shard files, directories or globs")
    shards: dict[str, Shard] = {}
    for spec in inputs:
        for shard in _expand(spec):
            shards.setdefault(shard.url, shard)
    by_rel: dict[str, Shard] = {}
    for shard in shards.values():
        if shard.rel in by_rel:
            raise HardfocusError(redact(
                f"two input shards have the same relative path '{shard.rel}' ({by_rel[shard.rel].url} and "
                f"{shard.url}), so their sample ids would collide; pass their common parent directory instead"
            ))
        by_rel[shard.rel] = shard
    return sorted(by_rel.values(), key=lambda s: s.rel)


def _expand(spec: str) -> list[Shard]:
    fs, path = url_to_fs(spec)
    try:
        info = _info(fs, path)
        if info is not None and (info.get("type") == "directory" or _is_index_page(fs, path, info)):
            base = path
            listing = fs.find(path, detail=True)
            entries = sorted((p, i) for p, i in listing.items() if shard_format(p) is not None)
            if not entries:
                raise HardfocusError(redact(
                    f"directory '{spec}' holds no .parquet or .jsonl/.json/.ndjson (.gz, .zst) file"
                ))
        elif info is not None:
            base, entries = posixpath.dirname(path), [(path, info)]
        elif has_magic(path):
            base = path[: min(i for i, c in enumerate(path) if c in "*?[")]
            base = base if base.endswith("/") else posixpath.dirname(base)
            matches = fs.glob(path, detail=True)
            entries = sorted((p, i) for p, i in matches.items() if i.get("type", "file") == "file")
            if not entries:
                raise HardfocusError(redact(f"the glob '{spec}' matches no file"))
        else:
            raise HardfocusError(redact(f"input '{spec}' does not exist"))
    except (OSError, ValueError) as exc:  # a store that refuses the listing, a malformed URL
        raise HardfocusError(redact(f"cannot list input '{spec}': {_one_line(exc)}")) from None

    shards = []
    for p, i in entries:
        fmt = shard_format(p)
        if fmt is None:
            raise HardfocusError(redact(
                f"'{_url(fs, p)}' is not a shard format hardfocus reads (.parquet, .jsonl/.json/.ndjson, plain, .gz "
                "or .zst)"
            ))
        rel = posixpath.relpath(p, base) if base else posixpath.basename(p)
        if i.get("size") is None:  # a listing without details (an HTTP index page): one request for them
            i = {**i, **_info_or_raise(fs, p, spec)}
        shards.append(Shard(url=_url(fs, p), rel=rel, format=fmt[0], compression=fmt[1], size=int(i.get("size") or 0),
                            modified=_modified(fs, p, i)))
    return shards


def _info_or_raise(fs, path: str, spec: str) -> dict:
    try:
        return fs.info(path)
    except (OSError, ValueError) as exc:
        raise HardfocusError(redact(f"cannot list '{_url(fs, path)}' of input '{spec}': {_one_line(exc)}")) from None


def _is_index_page(fs, path: str, info: dict) -> bool:
    """An HTTP page listing files (a server's directory index): its links are the files of the directory."""
    return _is_http(fs) and shard_format(path) is None and info.get("mimetype") == "text/html"


def _is_http(fs) -> bool:
    return fs_protocol(fs) in ("http", "https")


def _info(fs, path: str) -> dict | None:
    """What ``fs`` says about ``path`` (one request), or None when nothing is there."""
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def _url(fs, path: str) -> str:
    """The URL that opens ``path`` again: fsspec's HTTP filesystem keeps the whole URL as the path."""
    return path if _is_http(fs) else fs_url(fs, path)


_VERSION_KEYS = ("ETag", "etag", "generation", "LastModified", "last_modified", "Last-Modified", "updated", "mtime")


def _modified(fs, path: str, info: dict) -> str | None:
    """The file's version as :attr:`Shard.modified` says, from the listing's ``info`` (a stat locally)."""
    if is_local(fs):
        try:
            return str(os.stat(path).st_mtime_ns)
        except OSError:
            return None
    for key in _VERSION_KEYS:
        value = info.get(key)
        if value is not None and value != "":
            return value.isoformat() if hasattr(value, "isoformat") else str(value)
    return None


def check_columns(shard: Shard, columns: Columns) -> None:
    """Fail early, cheaply, when the configured columns are not there: a Parquet footer, or a JSONL shard's first row
    (when it is not longer than a look reads)."""
    if shard.format == "parquet":
        _check_parquet_columns(shard, _parquet_file(shard).schema_arrow, columns)
        return
    for _, line in _jsonl_lines(shard, buffer_size=_PEEK_BYTES, cap=_PEEK_LINE_BYTES, peek=True):
        if not isinstance(line, _Oversized):
            _check_first_json_row(shard, line, columns)
        return


@dataclass
class UnitRows:
    """Rows ``[start, stop)`` of a shard: ``block`` is None for a skipped unit (counted, never parsed).

    ``consumed`` is the share of the shard's bytes read so far, for progress by bytes.
    """

    start: int
    stop: int
    block: RowBlock | None
    consumed: float


def iter_units(shard: Shard, columns: Columns, rows_per_unit: int, skip: frozenset[int] = frozenset(),
               max_row_bytes: int = MAX_ROW_BYTES) -> Iterator[UnitRows]:
    """The shard as consecutive units ``[k*n, min((k+1)*n, rows))``, every byte read and decompressed once.

    Units whose start is in ``skip`` (finished in an earlier run) are counted but not parsed; a Parquet
    row group that only skipped units need is not read at all. The last unit is shorter; a shard
    without rows yields nothing. A row over ``max_row_bytes`` gets a status instead of being parsed.
    """
    if shard.format == "parquet":
        yield from _parquet_units(shard, columns, rows_per_unit, skip, max_row_bytes)
    else:
        yield from _jsonl_units(shard, columns, rows_per_unit, skip, max_row_bytes)


def read_shard(shard: Shard, columns: Columns, max_row_bytes: int = MAX_ROW_BYTES) -> RowBlock:
    """Every row of a (small) shard, in one block."""
    block = RowBlock()
    for unit in iter_units(shard, columns, rows_per_unit=1 << 30, max_row_bytes=max_row_bytes):
        block = unit.block
    return block


# ---- Parquet ---------------------------------------------------------------------------------


def _parquet_file(shard: Shard) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fsspec.open(shard.url, "rb").open())
    except (pa.ArrowInvalid, OSError) as exc:
        raise HardfocusError(redact(f"cannot read Parquet shard {shard.url}: {_one_line(exc)}; is the file complete?")
                             ) from None


def _check_parquet_columns(shard: Shard, schema: pa.Schema, columns: Columns) -> None:
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


def _parquet_units(shard: Shard, columns: Columns, n: int, skip: frozenset[int], cap: int) -> Iterator[UnitRows]:
    """Units of a Parquet shard, its row groups read in batches of at most a unit's rows: a unit never needs a
    whole row group as Python objects, and a row group that only skipped units need is not read."""
    pf = _parquet_file(shard)
    _check_parquet_columns(shard, pf.schema_arrow, columns)
    wanted = list(dict.fromkeys([c for _, c in columns.sample_columns] + [c for c in (columns.id, columns.group) if c]))
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    total = sum(sizes)
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    needed = [g for g in range(len(sizes))  # the row groups a unit to parse has rows in
              if any(s not in skip for s in range(bounds[g] // n * n, bounds[g + 1], n))]
    batches = _parquet_batches(shard, pf, needed, bounds, wanted, min(n, _PARQUET_BATCH_ROWS))
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
        block = _block_from_table(table.slice(start - buffered[0][0], stop - start), columns, cap)
        yield UnitRows(start, stop, block, stop / total)


def _parquet_batches(shard: Shard, pf: pq.ParquetFile, groups: list[int], bounds: list[int], columns: list[str],
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
                    f"{_one_line(exc)}; the file is damaged: replace it, or remove it from the inputs"
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


def _block_from_table(table: pa.Table, columns: Columns, cap: int) -> RowBlock:
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
            block.append(id=_str_or_none(id_), group=_str_or_none(group), status=_over_cap(int(size[i]), cap))
        elif columns.id and id_ is None:
            block.append(group=_str_or_none(group), status=_null_id(columns.id))
        else:
            value, status = sample_value([f[i] for f in fields], columns)
            block.append(value, _str_or_none(id_), _str_or_none(group), status)
    return block


def _null_id(column: str) -> str:
    return f"{ERROR_PREFIX}null id in column '{column}'"


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
                v = _UNDECODABLE
        out.append(v)
    return out


class _Undecodable:
    pass


_UNDECODABLE = _Undecodable()


def sample_value(cells: list, columns: Columns) -> tuple[str | list[Message] | None, str | None]:
    """One row's sample from its cells (in ``columns.sample_columns`` order): (value, status or None)."""
    if any(c is _UNDECODABLE for c in cells):
        return None, Status.INVALID_UTF8.value
    if columns.format == "text":
        return cells[0], None
    if columns.format == "prompt_response":
        for (_, name), cell in zip(columns.sample_columns, cells):
            if cell is not None and not isinstance(cell, str):
                return None, f"{ERROR_PREFIX}field '{name}' is {type(cell).__name__}, not a string"
        prompt, response, system = (cells + [None])[:3]
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt or ""})
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        return messages, None
    return _messages(cells[0], columns.messages)


def _messages(value, name: str) -> tuple[list[Message] | None, str | None]:
    """A ``messages`` cell checked: a list of objects with a string ``role`` and a string (or null) ``content``."""
    if value is None:
        return None, Status.EMPTY.value
    if not isinstance(value, list):
        return None, f"{ERROR_PREFIX}field '{name}' is {type(value).__name__}, not a list of messages"
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            return None, f"{ERROR_PREFIX}message {i} of '{name}' is not an object with a string 'role'"
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            return None, f"{ERROR_PREFIX}message {i} of '{name}' has a {type(content).__name__} 'content', not a string"
        messages.append({"role": m["role"], "content": content or ""})
    return messages, None


# ---- JSON Lines ------------------------------------------------------------------------------


def _jsonl_units(shard: Shard, columns: Columns, n: int, skip: frozenset[int], cap: int) -> Iterator[UnitRows]:
    block: RowBlock | None = None
    start = rows = 0
    for index, (line, position) in _jsonl_lines(shard, position=True, cap=cap):
        if index == 0 and not isinstance(line, _Oversized):
            _check_first_json_row(shard, line, columns)
        if index == start:
            block = None if start in skip else RowBlock()
        if block is not None:
            if isinstance(line, _Oversized):
                block.append(status=_over_cap(line.size, cap))
            else:
                _parse_json_row(line, columns, block)
        rows = index + 1
        if rows - start == n:
            yield UnitRows(start, rows, block, min(position / max(shard.size, 1), 1.0))
            start = rows
    if rows > start:
        yield UnitRows(start, rows, block, 1.0)


class _Oversized(NamedTuple):
    """A line longer than the cap, in place of its bytes (which were dropped as they were read)."""

    size: int


def _jsonl_lines(shard: Shard, position: bool = False, buffer_size: int | None = None, cap: int | None = None,
                 peek: bool = False) -> Iterator[tuple[int, bytes | _Oversized]]:
    """(row index, raw line) for each non-blank line; blank lines are not rows. A line longer than ``cap`` bytes is an
    :class:`_Oversized` instead: the stream is read in chunks of ``buffer_size``, so it is never held whole. With
    ``peek``, the reading stops at the first line over the cap (its size then is what was read of it).

    With ``position``, the line is ``(line, compressed bytes read so far)``.
    """
    cap = MAX_ROW_BYTES if cap is None else cap
    buffer_size = buffer_size or _READ_BYTES
    try:
        with fsspec.open(shard.url, "rb") as raw, _decompressed(raw, shard.compression, buffer_size) as f:
            index = 0
            for line in _split_lines(lambda: f.read(buffer_size), cap, give_up_over_cap=peek):
                if line:
                    yield index, ((line, raw.tell()) if position else line)
                    index += 1
    except EOFError as exc:  # a compressed stream that ends before its format says it does
        raise HardfocusError(redact(
            f"cannot read JSON Lines shard {shard.url}: {_one_line(exc)}; is the file complete (a partial upload, a "
            "full disk)? Replace it, or remove it from the inputs"
        )) from None
    except (OSError, zlib.error, zstandard.ZstdError) as exc:  # gzip/zstd corruption, permission, vanished file
        raise HardfocusError(redact(f"cannot read JSON Lines shard {shard.url}: {_one_line(exc)}")) from None


def _split_lines(read: Callable[[], bytes], cap: int, give_up_over_cap: bool = False) -> Iterator[bytes | _Oversized]:
    """The lines of the stream ``read()`` returns chunk by chunk (newlines dropped), with ``b""`` for a blank one
    (whitespace only); a line over ``cap`` bytes is :class:`_Oversized`, its bytes dropped as they arrive (or, with
    ``give_up_over_cap``, the last thing yielded, as soon as it passes the cap)."""
    head: list[bytes] = []  # the start of the line that the last chunk ended in
    size = 0  # its bytes so far
    blank = True  # whether they are all whitespace
    while chunk := read():
        parts = chunk.split(b"\n")
        tail = parts.pop()
        for k, part in enumerate(parts):
            if k == 0 and size:  # the end of the line the previous chunks began
                total = size + len(part)
                blank = blank and (not part or part.isspace())
                if blank:
                    yield b""
                elif total > cap:
                    yield _Oversized(total)
                else:
                    yield b"".join(head) + part
                head, size, blank = [], 0, True
            elif len(part) > cap:
                if part.isspace():
                    yield b""
                    continue
                yield _Oversized(len(part))
                if give_up_over_cap:
                    return
            else:
                yield part if part and not part.isspace() else b""
        if tail:
            size += len(tail)
            blank = blank and tail.isspace()
            if size > cap:
                head = []  # dropped: only its length counts
                if give_up_over_cap and not blank:
                    yield _Oversized(size)
                    return
            else:
                head.append(tail)
    if size:
        if blank:
            yield b""
        elif size > cap:
            yield _Oversized(size)
        else:
            yield b"".join(head)


def _decompressed(raw, compression: str | None, buffer_size: int):
    """A binary stream of the decompressed bytes (fsspec's own zstd file cannot iterate lines, and a zstd stream
    cut short reads as a shorter one without :class:`_ZstdFrames`)."""
    if compression == "gzip":
        return gzip.open(raw, "rb")
    if compression == "zstd":
        return io.BufferedReader(_ZstdFrames(raw, read_size=min(buffer_size, 1 << 17)), buffer_size=buffer_size)
    return contextlib.nullcontext(raw)


class _ZstdFrames(io.RawIOBase):
    """Every frame of a zstd stream decompressed, in reads of bounded size; a stream that ends inside a frame raises
    :class:`EOFError`, as gzip does.

    zstandard's stream reader returns EOF where its input ends, whether or not the frame did; so the compressed bytes
    it reads are walked too, frame header by block header (:class:`_FrameWalker`), to tell a cut from an end.
    """

    def __init__(self, raw, read_size: int):
        self._source = _WalkedSource(raw)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._source, read_size=read_size, read_across_frames=True, closefd=False
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._reader.readinto(buffer)
        if n == 0 and not self._source.walker.at_frame_boundary():
            raise EOFError("the zstd stream ends inside a frame (compressed data cut short)")
        return n

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()


class _WalkedSource:
    """The compressed bytes, as the stream reader reads them, fed to a :class:`_FrameWalker` on the way."""

    def __init__(self, raw):
        self._raw = raw
        self.walker = _FrameWalker()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.walker.feed(data)
        return data


class _FrameWalker:
    """Follows the zstd frame format (RFC 8878) over the bytes fed, reading headers and skipping contents, so that
    :meth:`at_frame_boundary` tells whether the bytes so far end between frames."""

    _MAGIC, _DESCRIPTOR, _HEADER, _BLOCK, _CHECKSUM, _SKIPPABLE_SIZE, _UNKNOWN = range(7)

    def __init__(self):
        self._state, self._want, self._buf, self._skip = self._MAGIC, 4, b"", 0
        self._checksum = False

    def at_frame_boundary(self) -> bool:
        return self._state == self._UNKNOWN or (self._state == self._MAGIC and not self._buf and not self._skip)

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and self._state != self._UNKNOWN:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            take = min(self._want - len(self._buf), n - i)
            self._buf += data[i : i + take]
            i += take
            if len(self._buf) == self._want:
                head, self._buf = self._buf, b""
                self._parse(head)

    def _parse(self, head: bytes) -> None:
        state = self._state
        if state == self._MAGIC:
            magic = int.from_bytes(head, "little")
            if magic == 0xFD2FB528:
                self._state, self._want = self._DESCRIPTOR, 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._want = self._SKIPPABLE_SIZE, 4
            else:  # not a frame this walker knows (a legacy format): the decompressor judges it
                self._state = self._UNKNOWN
        elif state == self._DESCRIPTOR:
            d = head[0]
            single_segment = bool(d & 0x20)
            fcs = (1 if single_segment else 0, 2, 4, 8)[d >> 6]
            dict_id = (0, 1, 2, 4)[d & 0x03]
            self._checksum = bool(d & 0x04)
            rest = (0 if single_segment else 1) + dict_id + fcs
            self._state, self._want = (self._HEADER, rest) if rest else (self._BLOCK, 3)
        elif state == self._HEADER:
            self._state, self._want = self._BLOCK, 3
        elif state == self._BLOCK:
            header = int.from_bytes(head, "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            if kind == 3:  # reserved: the decompressor raises for it
                self._state = self._UNKNOWN
                return
            self._skip = 1 if kind == 1 else size
            if not last:
                self._state, self._want = self._BLOCK, 3
            elif self._checksum:
                self._state, self._want = self._CHECKSUM, 4
            else:
                self._state, self._want = self._MAGIC, 4
        elif state == self._CHECKSUM:
            self._state, self._want = self._MAGIC, 4
        elif state == self._SKIPPABLE_SIZE:
            self._skip = int.from_bytes(head, "little")
            self._state, self._want = self._MAGIC, 4


def _check_first_json_row(shard: Shard, line: bytes, columns: Columns) -> None:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return  # a bad line is a per-row status, reported when it is read
    if not isinstance(obj, dict):
        return
    for flag, name in columns.sample_columns:
        if name not in obj and not (flag == "--system-column"):
            raise HardfocusError(redact(
                f"the first row of shard {shard.url} has no field '{name}' (fields: {', '.join(obj)}); pass {flag}"
                + ("" if columns.format != "text" else " (or --format for conversations)")
            ))


def _parse_json_row(line: bytes, columns: Columns, block: RowBlock) -> None:
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError:
        block.append(status=Status.INVALID_UTF8.value)
        return
    try:
        obj = json.loads(decoded)
    except ValueError as exc:
        block.append(status=f"{ERROR_PREFIX}invalid JSON: {exc}")
        return
    if not isinstance(obj, dict):
        block.append(status=f"{ERROR_PREFIX}line is a JSON {type(obj).__name__}, not an object")
        return
    id_ = _str_or_none(obj.get(columns.id)) if columns.id else None
    group = _str_or_none(obj.get(columns.group)) if columns.group else None
    if columns.id and id_ is None:  # never the default '<shard>#<row>' id in its place: a row error
        missing = columns.id not in obj
        block.append(group=group, status=f"{ERROR_PREFIX}no field '{columns.id}' (the --id-column)" if missing
                     else _null_id(columns.id))
        return
    for flag, name in columns.sample_columns:
        if name not in obj and flag != "--system-column":
            block.append(id=id_, group=group, status=f"{ERROR_PREFIX}no field '{name}'")
            return
    if columns.format == "text":
        text = obj[columns.text]
        if text is not None and not isinstance(text, str):
            block.append(id=id_, group=group, status=f"{ERROR_PREFIX}field '{columns.text}' is {type(text).__name__}, not a string")
            return
    value, status = sample_value([obj.get(name) for _, name in columns.sample_columns], columns)
    block.append(value, id_, group, status)


def _str_or_none(value) -> str | None:
    return None if value is None else str(value)
