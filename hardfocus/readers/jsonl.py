"""JSON Lines shards (plain, gzip, zstd): lines read in bounded chunks (a line over the cap is dropped as it
streams past), a compressed stream that does not end where its format says is an unreadable shard, and each line
parsed into a row or a status."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import fsspec
import zstandard

from hardfocus.contracts.scores import ERROR_PREFIX, Status
from hardfocus.errors import HardfocusError
from hardfocus.readers.shard import (
    MAX_ROW_BYTES,
    RowBlock,
    Shard,
    UnitRows,
    null_id,
    one_line,
    over_cap,
    sample_value,
    str_or_none,
)
from hardfocus.sample_format import Columns
from hardfocus.storage import redact

PEEK_BYTES = 16 * 1024  # what a look at a shard's first row reads
PEEK_LINE_BYTES = 1 << 20  # a first line longer than this is not looked at while planning (its task checks it)
_READ_BYTES = 1 << 20  # what a JSONL shard is read in: a chunk of decompressed bytes, split into lines


def check_columns(shard: Shard, columns: Columns) -> None:
    """The configured columns against the shard's first row, when it is not longer than a look reads (its task checks
    it otherwise)."""
    for _, line in jsonl_lines(shard, buffer_size=PEEK_BYTES, cap=PEEK_LINE_BYTES, peek=True):
        if not isinstance(line, Oversized):
            check_first_json_row(shard, line, columns)
        return


def jsonl_units(shard: Shard, columns: Columns, n: int, skip: frozenset[int], cap: int) -> Iterator[UnitRows]:
    block: RowBlock | None = None
    start = rows = 0
    for index, (line, position) in jsonl_lines(shard, position=True, cap=cap):
        if index == 0 and not isinstance(line, Oversized):
            check_first_json_row(shard, line, columns)
        if index == start:
            block = None if start in skip else RowBlock()
        if block is not None:
            if isinstance(line, Oversized):
                block.append(status=over_cap(line.size, cap))
            else:
                _parse_json_row(line, columns, block)
        rows = index + 1
        if rows - start == n:
            yield UnitRows(start, rows, block, min(position / max(shard.size, 1), 1.0))
            start = rows
    if rows > start:
        yield UnitRows(start, rows, block, 1.0)


class Oversized(NamedTuple):
    """A line longer than the cap, in place of its bytes (which were dropped as they were read)."""

    size: int


def jsonl_lines(shard: Shard, position: bool = False, buffer_size: int | None = None, cap: int | None = None,
                 peek: bool = False) -> Iterator[tuple[int, bytes | Oversized]]:
    """(row index, raw line) for each non-blank line; blank lines are not rows. A line longer than ``cap`` bytes is an
    :class:`Oversized` instead: the stream is read in chunks of ``buffer_size``, so it is never held whole. With
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
            f"cannot read JSON Lines shard {shard.url}: {one_line(exc)}; is the file complete (a partial upload, a "
            "full disk)? Replace it, or remove it from the inputs"
        )) from None
    except (OSError, zlib.error, zstandard.ZstdError) as exc:  # gzip/zstd corruption, permission, vanished file
        raise HardfocusError(redact(f"cannot read JSON Lines shard {shard.url}: {one_line(exc)}")) from None


def _split_lines(read: Callable[[], bytes], cap: int, give_up_over_cap: bool = False) -> Iterator[bytes | Oversized]:
    """The lines of the stream ``read()`` returns chunk by chunk (newlines dropped), with ``b""`` for a blank one
    (whitespace only); a line over ``cap`` bytes is :class:`Oversized`, its bytes dropped as they arrive (or, with
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
                    yield Oversized(total)
                else:
                    yield b"".join(head) + part
                head, size, blank = [], 0, True
            elif len(part) > cap:
                if part.isspace():
                    yield b""
                    continue
                yield Oversized(len(part))
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
                    yield Oversized(size)
                    return
            else:
                head.append(tail)
    if size:
        if blank:
            yield b""
        elif size > cap:
            yield Oversized(size)
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


def check_first_json_row(shard: Shard, line: bytes, columns: Columns) -> None:
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
        decoded = line.removeprefix(b"\xef\xbb\xbf").decode("utf-8")  # a file's byte order mark is not its row's
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
    id_ = str_or_none(obj.get(columns.id)) if columns.id else None
    group = str_or_none(obj.get(columns.group)) if columns.group else None
    if columns.id and id_ is None:  # never the default '<shard>#<row>' id in its place: a row error
        missing = columns.id not in obj
        block.append(group=group, status=f"{ERROR_PREFIX}no field '{columns.id}' (the --id-column)" if missing
                     else null_id(columns.id))
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


