"""One contract for every part a stage writes, and the one reader that checks it.

A *part* is a Parquet file of a stage's output: a score part, a decisions part, a training part of selected/, a part of
the token cache, an export part written as Parquet. Each carries the same *stamp* in its footer (key
:data:`STAMP_KEY`)::

    {"stage": "decisions", "identity": "<digest>", "place": {"index": 3, ...}, "rows": 2000,
     "columns": {"sample_id": "<xxh3>", "band": "<xxh3>", ...}}

- ``stage``: what kind of part it is (:data:`STAGES`);
- ``identity``: the digest of the identity of the run that wrote it (the one its directory's job file records), so a
  part of another run, of other settings or other inputs, is never taken for one of this run's;
- ``place``: where it belongs in its output (its index, the shard and rows it holds, the score part it decides on: each
  stage says), so a part under another part's name is refused;
- ``rows``: the rows it holds, checked against the footer's count;
- ``columns``: a 64-bit xxhash (XXH3) of each column's values (:class:`ColumnDigest`), so a part changed after it was
  written, at any size, is refused by whoever reads the changed column.

Readers never open a part themselves: :func:`read_part` (and :func:`iter_part`, its batches) checks the stamp against
what the reader opened (:class:`Expected`), the footer's row count and the schema's columns against the stamp's, and
the digest of every column it reads, before any row is handed out; :func:`read_footer` checks what a footer alone says
(to plan, or to rerun a stage, without reading rows). A refusal is one line that names the part, says what is wrong
with it and how to redo it. A part written before stamps existed is refused the same way.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.storage import is_local, redact

STAMP_KEY = b"hardfocus.part"
STAGES = ("scores", "decisions", "selected", "tokens", "export")
DAMAGED = (OSError, pa.ArrowException, ValueError, EOFError)  # what reading a part cut short or overwritten raises


# ---- the digest of a column ------------------------------------------------------------------------------------


class ColumnDigest:
    """The XXH3-64 digest of one column's values, the same however the column is cut into chunks or batches.

    The values are fed as separate streams (validity, lengths, bytes), each a concatenation over rows, so a column
    read in batches digests as it was written in one piece. What is digested is the values, not Parquet's bytes:
    nulls count as nulls whatever lies under them, dictionaries are decoded, and ``string`` and ``large_string`` (or a
    list and a large list) of the same values digest alike, so a reader may read a column as any of them.
    """

    def __init__(self) -> None:
        self._streams: dict[str, xxhash.xxh3_64] = {}
        self._seen: dict[str, int] = {}  # values walked so far at each path: where the next chunk's nulls stand

    def update(self, values: pa.Array | pa.ChunkedArray) -> ColumnDigest:
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        for chunk in chunks or [values.combine_chunks()]:  # a column of no chunk is walked as an empty one
            self._walk("", chunk)
        return self

    def hexdigest(self) -> str:
        total = xxhash.xxh3_64()
        for path in sorted(self._seen):
            total.update(f"{path}#{self._seen[path]};".encode())
        for key in sorted(self._streams):
            total.update(key.encode() + b"=" + self._streams[key].digest())
        return total.hexdigest()

    def _feed(self, key: str, data) -> None:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = xxhash.xxh3_64()
        stream.update(data)

    def _walk(self, path: str, array: pa.Array) -> None:
        array = _canonical(array)
        kind = array.type
        n = len(array)
        seen = self._seen.get(path, 0)
        self._seen[path] = seen + n
        valid = None
        if array.null_count:  # where the nulls stand, counted over the whole column: no cost where there are none
            valid = array.is_valid().to_numpy(zero_copy_only=False)
            self._feed(path + "v", (np.flatnonzero(~valid) + seen).astype(np.int64))
        if pa.types.is_null(kind):
            return
        if pa.types.is_boolean(kind):
            self._feed(path + "b", array.fill_null(False).to_numpy(zero_copy_only=False).view(np.uint8))
        elif _fixed_width(kind):
            width = kind.bit_width // 8
            data = array.buffers()[1]
            raw = np.frombuffer(data, np.uint8, count=n * width, offset=array.offset * width) if n else np.zeros(0, np.uint8)
            if valid is not None:
                raw = raw.reshape(n, width).copy()
                raw[~valid] = 0
            self._feed(path + "f", raw)
        elif _binary_like(kind):
            self._bytes(path, array, kind)
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            self._feed(path + "n", lengths)
            self._walk(path + "[", array.flatten())
        elif pa.types.is_struct(kind):  # each child under its name: a renamed field is another column
            for i, child in enumerate(array.flatten()):
                self._walk(f"{path}.{json.dumps(kind.field(i).name)}", child)
        else:  # maps, unions and the like: each value as JSON, length first (slow, and rare in a part)
            for value in array.to_pylist():
                text = json.dumps(value, default=str, sort_keys=True).encode()
                self._feed(path + "j", len(text).to_bytes(8, "little") + text)

    def _bytes(self, path: str, array: pa.Array, kind: pa.DataType) -> None:
        """Each value's length, then all the values' bytes: the same for string, binary, large and view types."""
        if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind):
            array = array.cast(pa.large_string() if _is_text(kind) else pa.large_binary())
            kind = array.type
        if array.null_count:  # a null's slot may hold bytes: read as the empty value it stands for
            array = array.fill_null("" if _is_text(kind) else b"")
        width = np.int64 if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind) else np.int32
        offsets = np.frombuffer(array.buffers()[1], width, count=len(array) + 1, offset=array.offset * width().itemsize)
        self._feed(path + "n", np.diff(offsets).astype(np.int64, copy=False))
        data = array.buffers()[2]
        if data is not None and offsets[-1] > offsets[0]:
            self._feed(path + "d", memoryview(data)[int(offsets[0]) : int(offsets[-1])])


def _canonical(array: pa.Array) -> pa.Array:
    """The array as its values, whatever Arrow layout a writer or a reader gave them: an extension type as its storage,
    a dictionary decoded, a list view as a list, and the temporal types Parquet stores in other units (seconds and
    milliseconds, ``date64``, ``time32``) in the units Parquet gives back, so a part digests alike before it is written
    and once read."""
    kind = array.type
    if isinstance(kind, pa.BaseExtensionType):
        return _canonical(array.storage)
    if pa.types.is_dictionary(kind):
        return _canonical(array.dictionary_decode())
    if pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind):  # pyarrow's own cast of a view is unsafe
        return pa.array(array.to_pylist(), pa.large_list(kind.value_field))
    if pa.types.is_timestamp(kind) and kind.unit in ("s", "ms"):
        return array.cast(pa.timestamp("us", kind.tz))
    if pa.types.is_date64(kind):
        return array.cast(pa.date32(), safe=False)
    if pa.types.is_time32(kind) or pa.types.is_time64(kind) and kind.unit == "us":
        return array.cast(pa.time64("us"))
    return array


def _fixed_width(kind: pa.DataType) -> bool:
    return (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_temporal(kind)
            or pa.types.is_decimal(kind) or pa.types.is_fixed_size_binary(kind))


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _binary_like(kind: pa.DataType) -> bool:
    return _is_text(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind)


def column_digests(table: pa.Table) -> dict[str, str]:
    """The digest of every column of ``table``, by name."""
    return {name: ColumnDigest().update(table.column(name)).hexdigest() for name in table.column_names}


# ---- the stamp -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stamp:
    stage: str
    identity: str
    place: dict
    rows: int
    columns: dict[str, str]

    def to_json(self) -> bytes:
        return json.dumps({"stage": self.stage, "identity": self.identity, "place": self.place, "rows": self.rows,
                           "columns": self.columns}, sort_keys=True).encode()

    @classmethod
    def of(cls, metadata: Mapping[bytes, bytes] | None) -> Stamp | None:
        """The stamp in a part's footer (or schema) metadata; None where there is none or it is not one."""
        raw = (metadata or {}).get(STAMP_KEY)
        try:
            obj = json.loads(raw) if raw else None
            return cls(str(obj["stage"]), str(obj["identity"]), dict(obj["place"]), int(obj["rows"]),
                       {str(k): str(v) for k, v in obj["columns"].items()})
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


def stamped(table: pa.Table, stage: str, identity: str, place: dict) -> pa.Table:
    """``table`` with its stamp in its schema metadata, which Parquet writes into the footer: what every writer of a
    part calls last before it writes. The stamp's column digests are of ``table`` as it is here."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage of a part: {stage}")
    stamp = Stamp(stage, identity, dict(place), table.num_rows, column_digests(table))
    return table.replace_schema_metadata({**(table.schema.metadata or {}), STAMP_KEY: stamp.to_json()})


# ---- the reader ------------------------------------------------------------------------------------------------


class PartRefused(HardfocusError):
    """A part the verified reader refuses; ``why`` says how it fails its contract: ``missing``, ``damaged`` (cut short,
    unreadable, changed after it was written), ``foreign`` (another run's, or another place's) or ``unstamped`` (of an
    earlier version). A stage rereading its own parts redoes a missing or damaged one, and refuses the others."""

    def __init__(self, message: str, why: str = "foreign"):  # a default: an exception is unpickled from its message
        super().__init__(message)
        self.why = why


@dataclass(frozen=True)
class Expected:
    """What a reader opened, and so what every part it reads must be: of this ``stage``, written by the run whose
    identity digest is ``identity``, in this ``place`` (the keys given must be equal in the stamp's place), holding
    ``rows`` rows where the reader counted on a number. ``what`` names the part in messages ("the score part");
    ``redo`` says what rewrites it ("run `hardfocus select` again with --overwrite"), ``whole`` what rewrites the whole
    output (for a part of an earlier version, whose siblings are all of it too), ``foreign`` what to do about a part of
    another run (default for both: ``redo``)."""

    stage: str
    identity: str
    place: dict = field(default_factory=dict)
    rows: int | None = None
    what: str = "the part"
    redo: str = "rerun the stage that wrote it with --overwrite"
    whole: str | None = None
    foreign: str | None = None  # what to do about a part of another run (default: ``redo``)

    def refuse(self, url: str, why: str, kind: str = "foreign") -> PartRefused:
        redo = {"unstamped": self.whole, "foreign": self.foreign}.get(kind) or self.redo
        return PartRefused(f"{self.what} {redact(url)} {why}: {redo}", kind)


def check_stamp(url: str, metadata: Mapping[bytes, bytes] | None, num_rows: int, expected: Expected,
                names: Sequence[str] | None = None) -> Stamp:
    """The part's stamp, checked against ``expected``, the footer's row count ``num_rows`` and, where given, the
    columns of the part's schema (``names``: exactly those its stamp records); else a refusal."""
    stamp = Stamp.of(metadata)
    if stamp is None and (metadata or {}).get(STAMP_KEY):
        raise expected.refuse(url, "carries a stamp that is not one hardfocus wrote (damaged after it was written)",
                              "damaged")
    if stamp is None:
        raise expected.refuse(url, "carries no stamp of the run that wrote it (it was written by an earlier version "
                                   "of hardfocus, or rewritten by a tool that drops Parquet metadata)", "unstamped")
    if stamp.stage != expected.stage:
        raise expected.refuse(url, f"is a part of {stamp.stage}, not of {expected.stage}")
    if stamp.identity != expected.identity:
        raise expected.refuse(url, "was written by another run than the one this output records (other settings or "
                                   "other inputs: copied in, or left by a run that replaced it)")
    wrong = sorted(k for k, v in expected.place.items() if stamp.place.get(k) != v)
    if wrong:
        shown = ", ".join(f"{k} {stamp.place.get(k)!r} where {expected.place[k]!r} belongs" for k in wrong[:2])
        raise expected.refuse(url, f"stands in another part's place ({shown})")
    if num_rows != stamp.rows:
        raise expected.refuse(url, f"holds {num_rows} rows where its stamp says {stamp.rows}", "damaged")
    if expected.rows is not None and stamp.rows != expected.rows:
        raise expected.refuse(url, f"holds {stamp.rows} rows where {expected.rows} were counted on")
    if names is not None and sorted(names) != sorted(stamp.columns):
        lost, added = sorted(set(stamp.columns) - set(names)), sorted(set(names) - set(stamp.columns))
        why = f"lost its column {lost[0]!r}" if lost else f"has a column {added[0]!r} its stamp does not record"
        raise expected.refuse(url, f"{why}: it was changed after it was written", "damaged")
    return stamp


def read_footer(url: str, expected: Expected) -> tuple[pq.FileMetaData, Stamp]:
    """A part's footer and its checked stamp, reading nothing else."""
    fs, path = url_to_fs(url)
    try:
        with fs.open(path, "rb") as f:
            meta = pq.read_metadata(f)
    except FileNotFoundError:
        raise expected.refuse(url, "is missing", "missing") from None
    except DAMAGED as exc:
        raise expected.refuse(url, f"cannot be read ({_one_line(exc)}): it was cut short or changed after it was "
                                   "written", "damaged") from None
    return meta, check_stamp(url, meta.metadata, meta.num_rows, expected, meta.schema.to_arrow_schema().names)


def read_part(url: str, expected: Expected, columns: Iterable[str] | None = None) -> pa.Table:
    """The ``columns`` of a part (all where None), after its stamp is checked, each column's digest verified."""
    fs, path = url_to_fs(url)
    try:
        # a local part by its path: Arrow's own reads, no Python file object in between (a tenth of a small part's read)
        with (contextlib.nullcontext(path) if is_local(fs) else fs.open(path, "rb")) as f, pq.ParquetFile(f) as part:
            stamp = check_stamp(url, part.metadata.metadata, part.metadata.num_rows, expected, part.schema_arrow.names)
            wanted = _columns(url, part.schema_arrow, stamp, columns, expected)
            table = part.read(columns=wanted)
    except HardfocusError:
        raise
    except FileNotFoundError:
        raise expected.refuse(url, "is missing", "missing") from None
    except DAMAGED as exc:
        raise expected.refuse(url, f"cannot be read ({_one_line(exc)}): it was cut short or changed after it was "
                                   "written", "damaged") from None
    _verify(url, table.num_rows, {name: ColumnDigest().update(table.column(name)) for name in wanted}, stamp, expected)
    return table.replace_schema_metadata(None) if table.schema.metadata else table


def iter_part(url: str, expected: Expected, columns: Iterable[str] | None = None,
              batch_rows: int = 8192) -> Iterator[pa.Table]:
    """The part's rows as tables of up to ``batch_rows`` rows. The part is read whole and verified before its first
    row is handed out (:func:`read_part`), so no caller ever uses a row of a part that fails its stamp: what is held is
    one part's columns."""
    table = read_part(url, expected, columns)
    for start in range(0, table.num_rows, batch_rows):
        yield table.slice(start, batch_rows)


def _columns(url: str, schema: pa.Schema, stamp: Stamp, columns: Iterable[str] | None, expected: Expected) -> list[str]:
    wanted = list(schema.names if columns is None else columns)
    missing = [c for c in wanted if c not in stamp.columns or c not in schema.names]
    if missing:
        raise expected.refuse(url, f"has no column {missing[0]!r} in its stamp or its schema", "damaged")
    return wanted


def _verify(url: str, rows: int, digests: dict[str, ColumnDigest], stamp: Stamp, expected: Expected) -> None:
    if rows != stamp.rows:
        raise expected.refuse(url, f"holds {rows} rows where its stamp says {stamp.rows}", "damaged")
    changed = [name for name, d in digests.items() if d.hexdigest() != stamp.columns[name]]
    if changed:
        raise expected.refuse(url, f"was changed after it was written (its column {changed[0]!r} is not what its stamp "
                                   "records)", "damaged")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
