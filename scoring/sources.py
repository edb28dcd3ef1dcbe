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
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from fsspec.core import url_to_fs

from scoring.foundation.errors import HardfocusError
from scoring.foundation.sample_format import Columns, Message
from scoring.foundation.scores import ERROR_PREFIX, Status
from scoring.foundation.storage import fs_url

log = logging.getLogger(__name__)

_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_JSONL_EXT = (".jsonl", ".json", ".ndjson")
_PEEK_BYTES = 16 * 1024  # what a look at a shard's first row reads


@dataclass(frozen=True)
class Shard:
    """One input file. ``url`` is what fsspec opens; ``rel`` names it in sample ids."""

    url: str
    rel: str
    format: Literal["parquet", "jsonl"]
    compression: str | None
    size: int


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

    Relative paths are taken from the directory given, or from the part of a glob before its
    first wildcard, or are the file name for a single file.
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
            raise HardfocusError(
                f"two input shards have the same relative path '{shard.rel}' ({by_rel[shard.rel].url} and "
                f"{shard.url}), so their sample ids would collide; pass their common parent directory instead"
            )
        by_rel[shard.rel] = shard
    return sorted(by_rel.values(), key=lambda s: s.rel)


def _expand(spec: str) -> list[Shard]:
    fs, path = url_to_fs(spec)
    if has_magic(path):
        base = path[: min(i for i, c in enumerate(path) if c in "*?[")]
        base = base if base.endswith("/") else posixpath.dirname(base)
        matches = [p for p in sorted(fs.glob(path)) if fs.isfile(p)]
        if not matches:
            raise HardfocusError(f"the glob '{spec}' matches no file")
        files = matches
    elif fs.isdir(path):
        base = path
        files = sorted(p for p in fs.find(path) if shard_format(p) is not None)
        if not files:
            raise HardfocusError(
                f"directory '{spec}' holds no .parquet or .jsonl/.json/.ndjson (.gz, .zst) file"
            )
    elif fs.exists(path):
        base, files = posixpath.dirname(path), [path]
    else:
        raise HardfocusError(f"input '{spec}' does not exist")

    shards = []
    for p in files:
        fmt = shard_format(p)
        if fmt is None:
            raise HardfocusError(
                f"'{fs_url(fs, p)}' is not a shard format hardfocus reads (.parquet, .jsonl/.json/.ndjson, plain, .gz or .zst)"
            )
        rel = posixpath.relpath(p, base) if base else posixpath.basename(p)
        shards.append(Shard(url=fs_url(fs, p), rel=rel, format=fmt[0], compression=fmt[1], size=int(fs.size(p))))
    return shards


def check_columns(shard: Shard, columns: Columns) -> None:
    """Fail early, cheaply, when the configured columns are not there: a Parquet footer, or a JSONL shard's first row."""
    if shard.format == "parquet":
        _check_parquet_columns(shard, _parquet_file(shard).schema_arrow, columns)
        return
    for _, line in _jsonl_lines(shard, buffer_size=_PEEK_BYTES):
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


def iter_units(shard: Shard, columns: Columns, rows_per_unit: int, skip: frozenset[int] = frozenset()) -> Iterator[UnitRows]:
    """The shard as consecutive units ``[k*n, min((k+1)*n, rows))``, every byte read and decompressed once.

    Units whose start is in ``skip`` (finished in an earlier run) are counted but not parsed; a Parquet
    row group that only skipped units need is not read at all. The last unit is shorter; a shard
    without rows yields nothing.
    """
    if shard.format == "parquet":
        yield from _parquet_units(shard, columns, rows_per_unit, skip)
    else:
        yield from _jsonl_units(shard, columns, rows_per_unit, skip)


def read_shard(shard: Shard, columns: Columns) -> RowBlock:
    """Every row of a (small) shard, in one block."""
    block = RowBlock()
    for unit in iter_units(shard, columns, rows_per_unit=1 << 30):
        block = unit.block
    return block


# ---- Parquet ---------------------------------------------------------------------------------


def _parquet_file(shard: Shard) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(fsspec.open(shard.url, "rb").open())
    except (pa.ArrowInvalid, OSError) as exc:
        raise HardfocusError(f"cannot read Parquet shard {shard.url}: {exc}; is the file complete?") from exc


def _check_parquet_columns(shard: Shard, schema: pa.Schema, columns: Columns) -> None:
    named = columns.sample_columns + [("--id-column", columns.id), ("--group-column", columns.group)]
    for flag, name in named:
        if name is not None and name not in schema.names:
            raise HardfocusError(
                f"shard {shard.url} has no column '{name}' (columns: {', '.join(schema.names)}); pass {flag}"
                + ("" if columns.format != "text" else " (or --format for conversations)")
            )
    for flag, name in columns.sample_columns:
        kind = schema.field(name).type
        if columns.format == "messages":
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
                raise HardfocusError(
                    f"column '{name}' of shard {shard.url} is {kind}, not a list of {{role, content}} structs; pass {flag}"
                )
        elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
                  or pa.types.is_large_binary(kind)):
            raise HardfocusError(f"column '{name}' of shard {shard.url} is {kind}, not text; pass the right column with {flag}")


def _parquet_units(shard: Shard, columns: Columns, n: int, skip: frozenset[int]) -> Iterator[UnitRows]:
    pf = _parquet_file(shard)
    _check_parquet_columns(shard, pf.schema_arrow, columns)
    wanted = list(dict.fromkeys([c for _, c in columns.sample_columns] + [c for c in (columns.id, columns.group) if c]))
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    total = sum(sizes)
    bounds = [0]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    buffered: list[pa.Table] = []  # the rows [buffer_start, bounds[group]) read and not yet used
    buffer_start = group = 0
    for start in range(0, total, n):
        stop = min(start + n, total)
        if start in skip:
            yield UnitRows(start, stop, None, stop / total)
            continue
        while bounds[group] < stop:  # each needed row group read once, in order
            if bounds[group + 1] <= start:  # only finished units' rows: never read
                buffered, buffer_start = [], bounds[group + 1]
            else:
                if not buffered:
                    buffer_start = bounds[group]
                buffered.append(pf.read_row_group(group, columns=wanted))
            group += 1
        table = pa.concat_tables(buffered)
        yield UnitRows(start, stop, _block_from_table(table.slice(start - buffer_start, stop - start), columns), stop / total)
        buffered = [table.slice(stop - buffer_start)] if bounds[group] > stop else []
        buffer_start = stop


def _block_from_table(table: pa.Table, columns: Columns) -> RowBlock:
    n = table.num_rows
    ids = table.column(columns.id).to_pylist() if columns.id else [None] * n
    grp = table.column(columns.group).to_pylist() if columns.group else [None] * n
    fields = [_decoded_column(table.column(c).to_pylist()) for _, c in columns.sample_columns]
    block = RowBlock()
    for i, (id_, group) in enumerate(zip(ids, grp)):
        value, status = sample_value([f[i] for f in fields], columns)
        block.append(value, _str_or_none(id_), _str_or_none(group), status)
    return block


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


def _jsonl_units(shard: Shard, columns: Columns, n: int, skip: frozenset[int]) -> Iterator[UnitRows]:
    block: RowBlock | None = None
    start = rows = 0
    for index, (line, position) in _jsonl_lines(shard, position=True):
        if index == 0:
            _check_first_json_row(shard, line, columns)
        if index == start:
            block = None if start in skip else RowBlock()
        if block is not None:
            _parse_json_row(line, columns, block)
        rows = index + 1
        if rows - start == n:
            yield UnitRows(start, rows, block, min(position / max(shard.size, 1), 1.0))
            start = rows
    if rows > start:
        yield UnitRows(start, rows, block, 1.0)


def _jsonl_lines(shard: Shard, position: bool = False, buffer_size: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """(row index, raw line) for each non-blank line; blank lines are not rows.

    With ``position``, the line is ``(line, compressed bytes read so far)``.
    """
    try:
        with fsspec.open(shard.url, "rb") as raw, _decompressed(raw, shard.compression, buffer_size) as f:
            index = 0
            for line in f:
                if line.strip():
                    yield index, ((line, raw.tell()) if position else line)
                    index += 1
    except (OSError, EOFError, zstandard.ZstdError) as exc:  # gzip/zstd corruption, permission, vanished file
        raise HardfocusError(f"cannot read JSON Lines shard {shard.url}: {exc}") from exc


def _decompressed(raw, compression: str | None, buffer_size: int):
    """A line-iterable binary stream (fsspec's own zstd file cannot iterate lines)."""
    if compression == "gzip":
        return gzip.open(raw, "rb")
    if compression == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=min(buffer_size, 1 << 17), read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=buffer_size)
    return contextlib.nullcontext(raw)


def _check_first_json_row(shard: Shard, line: bytes, columns: Columns) -> None:
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return  # a bad line is a per-row status, reported when it is read
    if not isinstance(obj, dict):
        return
    for flag, name in columns.sample_columns:
        if name not in obj and not (flag == "--system-column"):
            raise HardfocusError(
                f"the first row of shard {shard.url} has no field '{name}' (fields: {', '.join(obj)}); pass {flag}"
                + ("" if columns.format != "text" else " (or --format for conversations)")
            )


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
