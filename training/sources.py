"""The one reader of training data's layout: which directories are what, and whether training may use them.

:func:`find_sources` is called once per run, by the in-process path (:mod:`training.data`) and the
Ray Train path (:mod:`training.ray_train`) alike. It lists the parts and reads their footers only
(and, for scores/, the ``status`` column, to count the rows that are not trained on); the rows
themselves are read once, later, by whichever path trains, and each table or block of them goes
through :func:`training_rows`, which does the row checks the footers cannot.

A source is one of (as :func:`hardfocus.stagedir.identify` tells them apart)
- ``selected``: ``summary.json`` (written last) and parts in the :mod:`hardfocus.contracts.selected` contract;
  an unfinished selection is refused;
- ``scores``: ``manifest.json`` (written last) and parts in the :mod:`hardfocus.contracts.scores` contract; the
  rows with status ``ok`` are trained on, with weight 1;
- ``tokens``: raw shards tokenised by ``hardfocus train`` (``tokenized.json``), or any other directory of
  ``part-*.parquet`` with ``input_ids`` (``weight``, ``sample_id``, ``group`` and ``loss_spans`` optional).
Every part may carry ``loss_spans`` (:data:`hardfocus.contracts.scores.LOSS_SPANS_TYPE`), or not (plain text).
Each source's marker must count the parts and rows the directory holds, and gives the source's identity (part of
the training run's) and the fingerprint of the tokenizer that made its ``input_ids``.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from hardfocus.contracts.scores import (
    LOSS_SPANS_TYPE,
    SCORES_MANIFEST_FILE,
    ScoreManifest,
    ScoresParts,
    Status,
    check_scores_schema,
    input_files,
    manifest_digest,
    refuse_files_read_twice,
)
from hardfocus.contracts.selected import SUMMARY_FILE, check_selected_schema, open_selected
from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import digest
from hardfocus.kinds import PathInfo, identify
from hardfocus.parts import Expected, Stamp, read_part
from hardfocus.parts import read_footer as check_footer
from hardfocus.stagedir import refuse_repeated
from hardfocus.storage import (
    file_version,
    fresh,
    fs_url,
    prefetched,
    read_footer,
    read_json,
    read_record,
    redact,
)

log = logging.getLogger(__name__)

OPTIONAL = ("sample_id", "group", "weight", "loss_spans")  # what training reads beside input_ids, where a part has it
TRAINED = ("input_ids", "status", "weight", "loss_spans")  # of those, what the training batches are made of


@dataclass(frozen=True)
class Source:
    """One checked directory: its kind, its parts (URLs) and the columns training reads from each."""

    path: str  # as given
    kind: str  # selected | scores | tokens
    parts: tuple[str, ...]
    columns: tuple[tuple[str, ...], ...]  # per part: input_ids (+ status for scores) and the OPTIONAL columns it has
    rows: int  # rows training will use (status ok for scores/)
    not_ok: int  # scores/ rows whose status is not ok: counted, never trained on
    identity: str = ""  # a digest of its marker (summary.json, manifest.json, tokenized.json) or of its parts
    tokenizer: str | None = None  # the fingerprint of the tokenizer that made its input_ids, where recorded
    token_range: tuple[int, int] | None = None  # the lowest and highest token id (footer statistics), where known
    part_rows: tuple[int, ...] = ()  # per part: the rows training uses (a stream skips whole parts on a resume)
    part_versions: tuple[tuple[int | None, str | None], ...] = ()  # per part: (size, version) when found
    expected: tuple[Expected | None, ...] = ()  # per part: what its stamp must say (None: parts written by hand)
    inputs: tuple[list, ...] = ()  # the input files its rows come from (hardfocus.contracts.scores.input_files)


@dataclass(frozen=True)
class TrainingSources:
    sources: tuple[Source, ...]

    def __len__(self) -> int:
        return self.rows

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.sources)

    @property
    def not_ok(self) -> int:
        return sum(s.not_ok for s in self.sources)

    @property
    def paths(self) -> list[str]:
        """The directories read (a token directory of the cache where raw shards were given)."""
        return [s.path for s in self.sources]

    @property
    def kinds(self) -> dict[str, str]:
        return {s.path: s.kind for s in self.sources}

    @property
    def identity(self) -> list[str]:
        """What a training run on these sources depends on: each source's identity (part of the run's key)."""
        return [s.identity for s in self.sources]

    @property
    def has_weights(self) -> bool:
        """Static weights exist unless a source is scores/ (weight 1 for every row is no selection)."""
        return all(s.kind != "scores" for s in self.sources)


def find_sources(paths: list[str], raw: Callable[[str], str] | None = None) -> TrainingSources:
    """Open every directory once (:func:`open_source`); ``raw``: what makes raw shards into a token directory (the
    cache of :mod:`training.raw_shards`), where a path is not a stage's output. Raises a :class:`HardfocusError` that
    names the directory that is unusable and why."""
    refuse_repeated(paths, "training data directory")
    sources = tuple(open_source(path, raw) for path in paths)
    # one input file read through two sources (two scores/, a selection and its scores, two selections of one
    # scores, raw shards and their scores): its rows would count twice
    refuse_files_read_twice([(s.path, list(s.inputs)) for s in sources], what="read through")
    if sum(s.rows for s in sources) == 0:
        raise HardfocusError(f"no trainable rows in {list(paths)}")
    return TrainingSources(sources)


def open_source(path: str, raw: Callable[[str], str] | None = None) -> Source:
    """One directory of training data, identified once and checked by its footers: its kind, its parts with what each
    must be (the part stamp of the stage that wrote it: :mod:`hardfocus.parts`), the rows training uses of each."""
    found = identify(path)
    if raw is not None and found.kind in _RAW:
        path = raw(path)  # raw shards: tokenised once into the cache, a token directory of its own
        found = identify(path)
    fs, root = url_to_fs(path)
    if found.kind in ("absent", "file"):
        raise HardfocusError(f"training data '{redact(path)}' is not a directory (give selected/ or scores/ directories)")
    kind = _KINDS.get(found.kind)
    if kind is None:
        raise HardfocusError(f"'{redact(path)}' is {found.describe()}: not training data (give selected/ or scores/ directories)")
    if found.stage is not None and not found.complete:
        stage = {"selected": "select", "scores": "score"}.get(found.kind, "train")
        raise HardfocusError(
            f"'{redact(path)}' is {found.describe()} (no {found.stage.marker}): it did not finish; rerun `hardfocus {stage}`"
        )
    recorded = _recorded(fs, root, path, found)
    parts = [url for url, _ in recorded.parts]
    if not parts:
        raise HardfocusError(f"'{redact(path)}' is a finished {kind}/ directory without rows")
    footers = list(prefetched(lambda item: _footer(fs, *item), recorded.parts))
    if found.kind == "parts":
        _refuse_unfinished(path, footers)
    for part, footer in zip(parts, footers):
        if isinstance(footer, Exception):
            raise HardfocusError(
                f"cannot read '{redact(part)}' of '{redact(path)}' ({footer}): it was damaged after it was "
                f"written; write it again (rerun the stage that wrote '{redact(path)}' with --overwrite)"
            )
    columns, part_rows = [], [f.num_rows for f in footers]
    for part, footer in zip(parts, footers):
        columns.append(_check_part(footer.schema.to_arrow_schema(), kind, f"'{redact(part)}'"))
        if kind == "tokens" and "status" in footer.schema.names:
            raise HardfocusError(
                f"'{redact(path)}' has scores/ parts but no {SCORES_MANIFEST_FILE}: the scoring did not finish; rerun `hardfocus score`"
            )
    rows = sum(part_rows)
    if (recorded.parts_count is not None and recorded.parts_count != len(parts)
            or recorded.rows is not None and recorded.rows != rows):
        raise HardfocusError(
            f"'{redact(path)}' holds {len(parts)} part files with {rows} rows, but its {found.stage.marker} says "
            f"{recorded.parts_count} with {recorded.rows}: parts were lost or added after it was written; write it again "
            "(rerun the stage with --overwrite)"
        )
    fresh(fs, root)
    listed = {fs_url(fs, e["name"].rstrip("/")): e for e in fs.ls(root, detail=True)}  # the parts' sizes and stamps now
    if kind == "scores":  # the status column only: which rows are trained on
        statuses = prefetched(lambda item: _read(*item, ["status"]).column("status"), recorded.parts)
        part_rows = [pc.sum(pc.equal(status, Status.OK.value)).as_py() or 0 for status in statuses]
    elif any("weight" in c for c in columns):  # 4 bytes a row, read up front: a bad weight is refused before a step
        with_weight = [item for item, c in zip(recorded.parts, columns) if "weight" in c]
        read = prefetched(lambda item: _read(*item, ["weight"]).column("weight"), with_weight)
        _check_weights(pa.chunked_array([chunk.cast(pa.float32()) for column in read for chunk in column.chunks],
                                        pa.float32()), redact(path))
    versions = tuple((listed.get(p, {}).get("size"), file_version(fs, url_to_fs(p)[1], listed.get(p, {}))) for p in parts)
    return Source(path, kind, tuple(parts), tuple(columns), sum(part_rows), rows - sum(part_rows),
                  identity=recorded.identity, tokenizer=recorded.tokenizer, token_range=_token_range(footers),
                  part_rows=tuple(part_rows), part_versions=versions, expected=tuple(e for _, e in recorded.parts),
                  inputs=recorded.inputs)


_KINDS = {"selected": "selected", "scores": "scores", "tokens": "tokens", "parts": "tokens"}
_RAW = ("absent", "file", "empty", "other")  # what may be raw shards (a glob, a file, a directory of them)


@dataclass(frozen=True)
class _Recorded:
    """What a source's own records say: its parts (URL, and what each must be; None for a directory of parts written
    by hand, which carries no stamps), its identity, the tokenizer of its token ids, the parts and rows it counts."""

    parts: list[tuple[str, Expected | None]]
    identity: str
    tokenizer: str | None
    parts_count: int | None
    rows: int | None
    inputs: tuple[list, ...] = ()


def _recorded(fs, root: str, path: str, found: PathInfo) -> _Recorded:
    names = sorted(n for n in found.names if n.startswith("part-") and n.endswith(".parquet"))
    urls = [fs_url(fs, posixpath.join(root, n)) for n in names]
    if found.kind == "parts":  # a token directory written by hand: its parts as listed are its identity, no tokenizer
        listed = {posixpath.basename(e["name"].rstrip("/")): e for e in fs.ls(root, detail=True)}
        stamps = [[n, (listed.get(n) or {}).get("size"), _changed(listed.get(n) or {})] for n in names]
        return _Recorded([(u, None) for u in urls], digest(stamps), None, None, None)
    if found.kind == "selected":
        opened = open_selected(path, found)
        tokenizers = {s.get("tokenizer_fingerprint") for s in opened.summary.get("scores", [])}
        inputs = tuple(f for entry in opened.summary.get("scores", []) for f in entry.get("inputs", []))
        return _Recorded(list(opened.parts), opened.identity, tokenizers.pop() if len(tokenizers) == 1 else None,
                         None, opened.kept, inputs)
    if found.kind == "scores":
        manifest = read_record(fs, posixpath.join(root, SCORES_MANIFEST_FILE), ScoreManifest, "scores manifest")
        stamps = ScoresParts.of(fs, root, manifest)
        return _Recorded([(u, stamps.expected(n)) for u, n in zip(urls, names)], manifest_digest(manifest),
                         manifest.tokenizer_fingerprint, manifest.parts, manifest.rows, tuple(input_files(manifest)))
    marker = read_json(fs, posixpath.join(root, found.stage.marker), f"{found.kind}/ marker", kind=dict)
    job = read_json(fs, posixpath.join(root, found.stage.job), "tokens/ job file", kind=dict) or {}
    identity = digest(job["identity"]) if isinstance(job.get("identity"), dict) else ""
    return _Recorded([(u, token_part_expected(identity, i)) for i, u in enumerate(urls)], digest(marker),
                     marker.get("tokenizer_fingerprint"), marker.get("parts"), marker.get("rows"),
                     tuple(marker.get("inputs") or ()))


def token_part_expected(identity: str, index: int) -> Expected:
    """What part ``index`` of a token directory (the raw shards' cache) of tokenize identity digest ``identity`` must
    be."""
    return Expected("tokens", identity, {"index": index}, what="the tokenised part",
                    redo="delete the cache entry; the next run tokenises the shards again")


def _footer(fs, url: str, expected: Expected | None):
    """A part's footer, its stamp checked where it has a contract; else the error that stopped it (named above)."""
    if expected is None:
        return read_footer(fs, url_to_fs(url)[1])
    return check_footer(url, expected)[0]


def _token_range(footers: list[pq.FileMetaData]) -> tuple[int, int] | None:
    """(min, max) of ``input_ids`` over every row group, from the footers' statistics; None where one lacks them."""
    low = high = None
    for footer in footers:
        leaf = next((i for i in range(footer.num_columns) if footer.schema.column(i).path.startswith("input_ids.")), None)
        if leaf is None:
            return None
        for g in range(footer.num_row_groups):
            stats = footer.row_group(g).column(leaf).statistics
            if footer.row_group(g).num_rows == 0:
                continue
            if stats is None or not stats.has_min_max:
                return None
            low = stats.min if low is None else min(low, stats.min)
            high = stats.max if high is None else max(high, stats.max)
    return None if low is None else (int(low), int(high))


def _changed(info: dict) -> str | None:
    """A listing entry's modification stamp: mtime locally, the ETag or last-modified on a store."""
    for key in ("mtime", "ETag", "LastModified", "last_modified", "updated"):
        if info.get(key) is not None:
            return str(info[key])
    return None


def _refuse_unfinished(path: str, footers: list) -> None:
    """A directory of parts a stage wrote, given where training data goes: a selection's decisions/ (stamped so), or
    selected/ parts (or a first part cut short) without summary.json: the selection did not finish."""
    stages = {stamp.stage for f in footers if not isinstance(f, Exception) and (stamp := Stamp.of(f.metadata))}
    if "decisions" in stages:
        raise HardfocusError(
            f"'{redact(path)}' holds a selection's decisions (a band and a reason for every scored row), not training "
            f"data: give the selected/ directory itself ('{redact(posixpath.dirname(path.rstrip('/')))}')"
        )
    names = [set() if isinstance(f, Exception) else set(f.schema.names) for f in footers]
    if isinstance(footers[0], Exception) or any("loss_rank" in n for n in names):
        raise HardfocusError(
            f"'{redact(path)}' has selected/ shards (or an unreadable part) but no {SUMMARY_FILE}: the selection did not "
            "finish; rerun `hardfocus select`"
        )


def _read(url: str, expected: Expected | None, columns: list[str]) -> pa.Table:
    """Some columns of a part: through the verified reader where the part has a contract, else as they are (a
    directory of parts written by hand)."""
    if expected is not None:
        return read_part(url, expected, columns)
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def _check_part(schema: pa.Schema, kind: str, where: str) -> tuple[str, ...]:
    """The part's contract (selected/ or scores/), then what training itself needs; returns the columns to read."""
    if kind == "selected":
        check_selected_schema(schema, where)
    elif kind == "scores":
        check_scores_schema(schema, where)
    if "input_ids" not in schema.names:
        raise HardfocusError(
            f"{where} has no input_ids column: score with --keep-input-ids (the default) so training can reuse the tokens"
        )
    ids = schema.field("input_ids").type
    if not (pa.types.is_list(ids) or pa.types.is_large_list(ids)) or not pa.types.is_integer(ids.value_type):
        raise HardfocusError(f"{where} has an input_ids column of type {ids}, expected a list of integers")
    weight = schema.field("weight").type if "weight" in schema.names else None
    if weight is not None and not (pa.types.is_floating(weight) or pa.types.is_integer(weight)):
        raise HardfocusError(f"{where} has a weight column of type {weight}, expected {pa.float32()}")
    for name, target in (("loss_spans", LOSS_SPANS_TYPE),):
        if name in schema.names and not _castable(schema.field(name).type, target):
            raise HardfocusError(f"{where} has a {name} column of type {schema.field(name).type}, expected {target}")
    extra = ("status",) if kind == "scores" else ()
    return ("input_ids", *extra, *(c for c in OPTIONAL if c in schema.names and not (kind == "scores" and c == "weight")))


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    try:
        pa.array([], source).cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def trained_columns(columns: tuple[str, ...]) -> tuple[str, ...]:
    """The columns of a part the training batches are made of: a stream reads no ``sample_id`` or ``group``, which
    :func:`training_rows` keeps only where it is given the part (the in-memory reader)."""
    return tuple(c for c in columns if c in TRAINED)


def training_rows(table: pa.Table, kind: str, where: str, part: str | None = None) -> pa.Table:
    """The trainable rows of a part (or a Ray Data block of one) in one schema, checked.

    Columns: ``input_ids`` list<int32>, ``weight`` float32 (1 for scores/ and where absent),
    ``loss_spans`` (null for plain text); given the ``part`` it came from (in-process), also
    ``sample_id`` and ``group`` (``<part>#<row>`` and null where absent). Errors name ``where``. Scores rows with a status other than ok are dropped
    (:func:`find_sources` counted them). Raises on rows that cannot be trained on: fewer than 2
    tokens, a null, NaN, infinite or negative weight, malformed spans or spans that select no target token.
    """
    where = redact(where)
    if kind == "scores":
        table = table.filter(pc.equal(table.column("status"), Status.OK.value))
    n = table.num_rows
    names = table.column_names
    weight = table.column("weight").cast(pa.float32()) if "weight" in names and kind != "scores" else pa.array(np.ones(n, np.float32))
    _check_weights(weight, where)
    columns = {
        "input_ids": table.column("input_ids").cast(pa.list_(pa.int32())),
        "weight": weight,
        "loss_spans": table.column("loss_spans").cast(LOSS_SPANS_TYPE) if "loss_spans" in names else pa.nulls(n, LOSS_SPANS_TYPE),
    }
    if part is not None:
        columns = {
            "sample_id": table.column("sample_id") if "sample_id" in names else pa.array([f"{part}#{i}" for i in range(n)]),
            "group": table.column("group").cast(pa.string()) if "group" in names else pa.nulls(n, pa.string()),
            **columns,
        }
    out = pa.table(columns)
    short = pc.sum(pc.less(pc.list_value_length(out.column("input_ids")), 2)).as_py() or 0
    if short:
        raise HardfocusError(f"rows of '{where}' have fewer than 2 tokens: nothing to predict (were they scored ok?)")
    _check_spans(out, where)
    return out


def _check_weights(weight: pa.Array | pa.ChunkedArray, where: str) -> None:
    """Refuse null, NaN, infinite and negative weights: one would make the loss, and so the model, NaN or train it
    backwards."""
    if weight.null_count:
        raise HardfocusError(f"{weight.null_count} rows of '{where}' have a null weight")
    values = weight.to_numpy()
    for bad, what in ((~np.isfinite(values), "not finite (NaN or infinite)"), (values < 0, "negative")):
        if n := int(np.count_nonzero(bad)):
            example = values[np.flatnonzero(bad)[0]]
            raise HardfocusError(
                f"{n} rows of '{where}' have a weight that is {what} (e.g. {example}): weights must be finite and >= 0; "
                "rerun `hardfocus select`, or fix the weight column"
            )


def _check_spans(table: pa.Table, where: str) -> None:
    """Refuse malformed spans (null bounds, start < 0, stop < start) and rows whose spans select no target token."""
    spans = table.column("loss_spans").combine_chunks()
    if spans.null_count == len(spans):
        return
    flat = spans.flatten()  # the spans of the non-null rows, in row order
    row = pc.list_parent_indices(spans).to_numpy()
    start, stop = pc.struct_field(flat, "start"), pc.struct_field(flat, "stop")
    if start.null_count or stop.null_count:
        raise HardfocusError(f"rows of '{where}' have loss_spans with a null start or stop")
    start, stop = start.to_numpy().astype(np.int64), stop.to_numpy().astype(np.int64)
    if (bad := (start < 0) | (stop < start)).any():
        i = int(np.flatnonzero(bad)[0])
        raise HardfocusError(
            f"rows of '{where}' have loss spans that are not ranges [start, stop) with 0 <= start <= stop "
            f"(e.g. {{start: {start[i]}, stop: {stop[i]}}})"
        )
    n_tokens = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    has_target = np.zeros(len(spans), dtype=bool)
    has_target[row[np.minimum(stop, n_tokens[row]) > np.maximum(start, 1)]] = True  # token 0 is never a target
    if (spans.is_valid().to_numpy(zero_copy_only=False) & ~has_target).any():
        raise HardfocusError(
            f"rows of '{where}' have loss_spans that select no target token: nothing to train on (were they scored ok?)"
        )
