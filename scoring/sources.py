"""Find input shards and read row ranges of them (the readers: :mod:`scoring.read_parquet`, :mod:`scoring.read_jsonl`).

A shard is one Parquet or JSON Lines file (plain, ``.gz``, ``.zst``), local or any fsspec URL.
A row is a Parquet row or a non-blank JSONL line; its index is stable across runs, so the
default sample id ``"<shard relative path>#<row index>"`` is stable too.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterator
from typing import Literal

from fsspec.core import url_to_fs

from scoring.config import MAX_ROW_BYTES
from scoring.foundation.errors import HardfocusError
from scoring.foundation.sample_format import Columns
from scoring.foundation.storage import fs_protocol, fs_url, is_local, redact
from scoring.read_jsonl import PEEK_BYTES, PEEK_LINE_BYTES, Oversized, check_first_json_row, jsonl_lines, jsonl_units
from scoring.read_parquet import check_parquet_columns, parquet_file, parquet_units
from scoring.shard import RowBlock, Shard, UnitRows, one_line

__all__ = ["RowBlock", "Shard", "UnitRows", "check_columns", "find_shards", "iter_units", "read_shard", "shard_format"]

log = logging.getLogger(__name__)

_COMPRESSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_JSONL_EXT = (".jsonl", ".json", ".ndjson")


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
        raise HardfocusError(redact(f"cannot list input '{spec}': {one_line(exc)}")) from None

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
        raise HardfocusError(redact(f"cannot list '{_url(fs, path)}' of input '{spec}': {one_line(exc)}")) from None


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
        check_parquet_columns(shard, parquet_file(shard).schema_arrow, columns)
        return
    for _, line in jsonl_lines(shard, buffer_size=PEEK_BYTES, cap=PEEK_LINE_BYTES, peek=True):
        if not isinstance(line, Oversized):
            check_first_json_row(shard, line, columns)
        return


def iter_units(shard: Shard, columns: Columns, rows_per_unit: int, skip: frozenset[int] = frozenset(),
               max_row_bytes: int = MAX_ROW_BYTES) -> Iterator[UnitRows]:
    """The shard as consecutive units ``[k*n, min((k+1)*n, rows))``, every byte read and decompressed once.

    Units whose start is in ``skip`` (finished in an earlier run) are counted but not parsed; a Parquet
    row group that only skipped units need is not read at all. The last unit is shorter; a shard
    without rows yields nothing. A row over ``max_row_bytes`` gets a status instead of being parsed.
    """
    if shard.format == "parquet":
        yield from parquet_units(shard, columns, rows_per_unit, skip, max_row_bytes)
    else:
        yield from jsonl_units(shard, columns, rows_per_unit, skip, max_row_bytes)


def read_shard(shard: Shard, columns: Columns, max_row_bytes: int = MAX_ROW_BYTES) -> RowBlock:
    """Every row of a (small) shard, in one block."""
    block = RowBlock()
    for unit in iter_units(shard, columns, rows_per_unit=1 << 30, max_row_bytes=max_row_bytes):
        block = unit.block
    return block


