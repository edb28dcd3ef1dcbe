"""The contract of ``scores/``: its files, the Parquet schema of its parts (one row per input row, always),
its ``manifest.json``, and the fingerprints the manifest records.

Writers build tables with :func:`scores_table`, which casts to :data:`SCORES_SCHEMA`;
readers call :func:`check_scores_schema`, which says what differs. The manifest's counts are summed
from the shards' done markers, each counted from the rows of its parts as they were written (or read
back from parts an earlier run wrote), so they are exact after any number of interrupted and resumed
runs. Selection refuses to mix score directories whose manifests disagree on what was scored how.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pyarrow as pa
from fsspec.core import url_to_fs
from pydantic import BaseModel, ConfigDict, Field

from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import digest
from hardfocus.parts import Expected, check_stamp
from hardfocus.storage import fs_url, read_json, read_record, redact

SCORES_JOB_FILE = "job.json"  # what the parts were computed with: written first
SCORES_MANIFEST_FILE = "manifest.json"  # written last, when every unit is done: the marker of a complete scores/
DONE_DIR = "done"  # one marker per finished shard


SCORES_LAYOUT = 2  # in every scoring job's identity: directories of an earlier layout (parts without the part stamp
# of hardfocus.parts) are another job's, replaced with --overwrite
REDO_PART = ("rerun `hardfocus score` with the same arguments and --overwrite, which checks every part whole and scores "
             "again only those that fail")
REDO_WHOLE = "rerun `hardfocus score` with the same arguments and --overwrite, which scores the directory again"


def part_place(shard, start: int, stop: int) -> dict:
    """Where a score part belongs (its stamp's place): the documents ``[start, stop)`` of its shard (a
    :class:`hardfocus.readers.Shard`) as it was when scored (its relative path, size and version), so a part is never
    taken for a part of another shard, another range, or another version of its shard."""
    return {"shard": shard.rel, "shard_size": shard.size, "shard_modified": shard.modified, "start": start, "stop": stop}


def score_part_expected(job: str, place: dict, what: str = "the score part") -> Expected:
    """What a score part of the scoring job of identity digest ``job``, in ``place``, must be."""
    return Expected("scores", job, place, what=what, redo=REDO_PART, whole=REDO_WHOLE)


def rel_digest(rel: str) -> str:
    """The shard part of a part's name: a digest of the shard's relative path."""
    return hashlib.sha1(rel.encode()).hexdigest()[:12]


def parse_part_name(name: str) -> tuple[str, int, int] | None:
    """(shard digest, start, stop) of a part file name (``part-<digest>-<start>-<stop>.parquet``: rows
    ``[start, stop)`` of the shard), or None for another file."""
    stem = name.removeprefix("part-").removesuffix(".parquet")
    bits = stem.split("-")
    if len(bits) != 3 or not (bits[1].isdigit() and bits[2].isdigit()):
        return None
    return bits[0], int(bits[1]), int(bits[2])


class Status(StrEnum):
    """Why a row has (or has no) loss. ``error: <message>`` is written for anything else."""

    OK = "ok"
    EMPTY = "empty"  # null or whitespace-only text
    TOO_SHORT = "too_short"  # fewer than 2 tokens: no position to predict
    INVALID_UTF8 = "invalid_utf8"
    NO_RESPONSE = "no_response"  # a conversation without an assistant turn: no token to score
    PROMPT_TOO_LONG = "prompt_too_long"  # truncation to max_tokens left no assistant token
    # --ifd: the response tokens cannot be scored without their prompt exactly as with it (see hardfocus.chat)
    IFD_UNMATCHED = "ifd_unmatched"


ERROR_PREFIX = "error: "
NON_FINITE_LOSS = ERROR_PREFIX + "non-finite loss"  # the model produced NaN/inf for this row
UNCONDITIONED_NLL_SUM = "nll_sum_unconditioned"
UNCONDITIONED_N_TOKENS = "n_tokens_unconditioned"


def is_input_error(status: str) -> bool:
    """A row that could not be read as text (``empty`` and ``too_short`` are valid, if useless, data)."""
    return status == Status.INVALID_UTF8.value or status.startswith(ERROR_PREFIX)

SOURCE_DIGEST = "source_digest"

# --long-documents windows: a row is one window of a document (sample_id '<document_id>#w<window>')
DOCUMENT_ID, WINDOW, WINDOWS = "document_id", "window", "windows"

# Token ranges [start, stop) of the *target* tokens whose prediction is scored (and trained on): the
# assistant turns of a conversation. Absent (or null) = every token but the first, as for plain text.
LOSS_SPANS_TYPE = pa.list_(pa.struct([pa.field("start", pa.int32()), pa.field("stop", pa.int32())]))

SCORES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("group", pa.string()),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("loss", pa.float32()),
        pa.field("nll_sum", pa.float64()),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("loss_spans", LOSS_SPANS_TYPE),
        # UTF-8 bytes of what the scored tokens cover (the text, or the assistant turns less the template's special
        # tokens): bits per byte = nll_sum / (n_bytes * ln 2) compares models with different tokenizers
        pa.field("n_bytes", pa.int64()),
        # the xxh3-64 of the row's sample as read (:func:`hardfocus.readers.shard.sample_digest`: its text's UTF-8
        # bytes, or its conversation); null where it could not be read. Export checks each source row against it
        pa.field(SOURCE_DIGEST, pa.uint64()),
        # --ifd: the same response tokens scored without their prompt, and IFD = loss / (that sum / that count)
        pa.field(UNCONDITIONED_NLL_SUM, pa.float64()),
        pa.field(UNCONDITIONED_N_TOKENS, pa.int32()),
        pa.field("ifd", pa.float32()),
        # windows: the document's id, the window's index and the document's window count; prefix_tokens: the
        # leading tokens of input_ids the window reads but does not own (a per-window BOS and the context of the
        # window before; 0 in the first window); char_start/char_stop: the characters of the text its own tokens
        # cover (the windows of a document partition its text)
        pa.field(DOCUMENT_ID, pa.string()),
        pa.field(WINDOW, pa.int32()),
        pa.field(WINDOWS, pa.int32()),
        pa.field("prefix_tokens", pa.int32()),
        pa.field("char_start", pa.int64()),
        pa.field("char_stop", pa.int64()),
    ]
)

IFD_COLUMNS = (UNCONDITIONED_NLL_SUM, UNCONDITIONED_N_TOKENS, "ifd")
WINDOW_COLUMNS = (DOCUMENT_ID, WINDOW, WINDOWS, "prefix_tokens", "char_start", "char_stop")
# absent in parts written before they existed (n_bytes, IFD) or not asked for: readers must not require them
OPTIONAL_COLUMNS = ("input_ids", "loss_spans", "n_bytes", SOURCE_DIGEST, *IFD_COLUMNS, *WINDOW_COLUMNS)
REQUIRED_COLUMNS = [f.name for f in SCORES_SCHEMA if f.name not in OPTIONAL_COLUMNS]


def scores_schema(
    with_input_ids: bool = True, with_loss_spans: bool = False, with_n_bytes: bool = False, with_ifd: bool = False,
    with_windows: bool = False, with_source_digest: bool = False,
) -> pa.Schema:
    """The schema of a score part file: ``input_ids`` on by default, ``loss_spans`` for conversations (and windows
    read after a context) only, so plain-text parts keep the schema they had before conversations existed,
    ``n_bytes`` in every part ``hardfocus score`` writes now, the IFD columns with ``--ifd``, the window columns
    with ``--long-documents windows``, ``source_digest`` in every part ``hardfocus score`` writes now."""
    keep = {"input_ids": with_input_ids, "loss_spans": with_loss_spans, "n_bytes": with_n_bytes,
            SOURCE_DIGEST: with_source_digest}
    keep |= dict.fromkeys(IFD_COLUMNS, with_ifd) | dict.fromkeys(WINDOW_COLUMNS, with_windows)
    return pa.schema([f for f in SCORES_SCHEMA if keep.get(f.name, True)])


def scores_table(columns: dict[str, Iterable], with_input_ids: bool = True, with_loss_spans: bool = False) -> pa.Table:
    """Build a table in the exact scores schema (missing columns are an error, extra ones too).

    ``n_bytes``, ``source_digest``, the IFD columns and the window columns are part of it when ``columns`` holds them.
    """
    schema = scores_schema(with_input_ids, with_loss_spans, "n_bytes" in columns, "ifd" in columns, WINDOW in columns,
                           SOURCE_DIGEST in columns)
    if set(columns) != set(schema.names):
        raise ValueError(f"scores columns {sorted(columns)} != schema {sorted(schema.names)}")
    return pa.table({name: _as_array(columns[name], schema.field(name).type) for name in schema.names}, schema=schema)


def _as_array(values, type_: pa.DataType):
    """An Arrow column of ``type_``: Arrow data cast (``pa.array`` would walk it row by row), anything else built."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == type_ else values.cast(type_)
    return pa.array(values, type=type_)


def check_scores_schema(schema: pa.Schema, where: str) -> None:
    """Raise a :class:`HardfocusError` naming every column that is missing or has the wrong type."""
    problems = []
    for field in SCORES_SCHEMA:
        if field.name not in schema.names:
            if field.name in REQUIRED_COLUMNS:
                problems.append(f"missing column '{field.name}'")
            continue
        actual = schema.field(field.name).type
        if actual != field.type:
            problems.append(f"column '{field.name}' is {actual}, expected {field.type}")
    if problems:
        raise HardfocusError(f"{where} is not a hardfocus scores file: " + "; ".join(problems))


def spans_from_mask(mask: np.ndarray) -> list[dict[str, int]]:
    """The ``loss_spans`` value of a boolean target mask: its runs of True as ``{start, stop}``."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [{"start": int(a), "stop": int(b)} for a, b in zip(edges[::2], edges[1::2])]


def loss_spans_array(masks: Iterable[np.ndarray]) -> pa.Array:
    """The ``loss_spans`` column of a list of boolean target masks."""
    return pa.array([spans_from_mask(m) for m in masks], LOSS_SPANS_TYPE)


def mask_from_spans(spans: Iterable[dict[str, int]] | None, n_tokens: int) -> np.ndarray:
    """The boolean target mask of ``n_tokens`` tokens; None = every token but the first (plain text).

    Token 0 is never a target (nothing predicts it); spans beyond ``n_tokens`` (a sequence cut
    shorter later) are clipped.
    """
    mask = np.zeros(n_tokens, dtype=bool)
    if spans is None:
        mask[1:] = True
        return mask
    for span in spans:
        mask[span["start"] : span["stop"]] = True
    mask[:1] = False
    return mask


class ShardInfo(BaseModel):
    url: str
    location: str | None = None  # where the file is, one spelling per file (hardfocus.storage.canonical), and a local
    file_id: str | None = None  # file's device and inode (hardfocus.storage.file_identity): the shard's identity across
    # scores/ directories, whatever name (a glob, a link) it was reached by
    rel: str
    format: str
    compression: str | None
    size: int
    modified: str | None = None  # mtime (ns) locally, the ETag / last-modified on a store: a change at the same size
    rows: int


class RunInfo(BaseModel):
    """One invocation of ``score``: ``wall_s`` is the whole call, ``tokens_per_s`` = tokens_scored / wall_s."""

    started_at: str
    wall_s: float
    units_scored: int
    units_reused: int
    rows_scored: int
    tokens_scored: int
    tokens_per_s: float
    nodes: dict[str, int] = {}  # units scored per host (and Ray node)
    # seconds the scoring actors spent on units (model, loss, part write), summed: tokens_scored / actor_s is the
    # steady-state rate of one actor, start-up and orchestration left out
    actor_s: float = 0.0


class ScoreCounts(BaseModel):
    """What the part files hold, counted exactly."""

    rows: int = 0  # the rows of the parts: one per input row, or one per window of it
    documents: int | None = None  # the input rows (None in manifests of before windows: the rows)
    rows_by_status: dict[str, int] = {}
    error_examples: list[str] = []
    tokens: int = 0
    truncated: int = 0
    duplicate_ids: int = 0
    duplicate_id_examples: list[str] = []


class ScoreManifest(ScoreCounts):
    # a newer version's extra fields are read past, not refused: an older reader still knows what it needs
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str
    model_path: str
    model_fingerprint: str
    tokenizer_fingerprint: str
    max_tokens: int
    dtype: str
    device: str
    add_special_tokens: bool
    text_column: str
    id_column: str | None
    group_column: str | None
    format: str = "text"
    long_documents: str = "truncate"  # or windows: every token of a long document, a row per window
    window_context: int = 0  # windows: tokens of the window before that each later window reads first
    sample_columns: list[str] = Field(default_factory=list)  # the columns a sample was read from
    chat_template_sha256: str | None = None  # conversations: the template that rendered them
    shards: list[ShardInfo]
    parts: int
    runs: list[RunInfo]
    versions: dict[str, str]


def manifest_digest(manifest: ScoreManifest) -> str:
    """The identity of a scores/ directory for the stages that read it: its manifest less the record of its runs
    (a resumed run that scored nothing new changes nothing)."""
    return digest(manifest.model_dump(exclude={"runs", "versions"}))


@dataclass(frozen=True)
class ScoresParts:
    """What every reader of a complete scores/ directory expects of its parts (:mod:`hardfocus.parts`): the digest of
    the directory's job identity, and its shards by the digest that names their parts, each as the manifest records it
    (relative path, size, version)."""

    job: str
    shards: dict[str, ShardInfo]

    @classmethod
    def of(cls, fs, root: str, manifest: ScoreManifest) -> ScoresParts:
        job = read_json(fs, posixpath.join(root, SCORES_JOB_FILE), "scores job file", kind=dict) or {}
        if not isinstance(job.get("identity"), dict):
            raise HardfocusError(f"the scores directory {redact(root)} records no identity in its {SCORES_JOB_FILE}: "
                                 f"{REDO_WHOLE}")
        return cls(digest(job["identity"]), {rel_digest(s.rel): s for s in manifest.shards})

    def expected(self, name: str) -> Expected:
        """What the part named ``name`` must be: the rows its name says, of a shard of the manifest."""
        parsed = parse_part_name(name)
        shard = self.shards.get(parsed[0]) if parsed else None
        if shard is None:  # no shard of this directory has parts of that name: nothing a stamp could match
            return score_part_expected(self.job, {"shard": f"(a shard of this directory, not {name})"})
        return score_part_expected(self.job, {"shard": shard.rel, "shard_size": shard.size,
                                              "shard_modified": shard.modified, "start": parsed[1], "stop": parsed[2]})

    def check(self, url: str, metadata: dict | None, num_rows: int):
        """The stamp of the part at ``url`` from its footer, checked (:func:`hardfocus.parts.check_stamp`)."""
        return check_stamp(url, metadata, num_rows, self.expected(posixpath.basename(url)))


@dataclass(frozen=True)
class ScoresDirectory:
    """A complete scores/ directory as its one opener found it: its manifest and its parts, each with what the
    verified reader checks it against (:mod:`hardfocus.parts`)."""

    url: str
    manifest: ScoreManifest
    parts: list[tuple[str, Expected]]  # (URL, expected) of each part, in the order of their names


def open_scores_dir(url: str) -> ScoresDirectory:
    """Identify ``url`` once and check it is a complete scores/ directory holding the parts its manifest counts."""
    from hardfocus.kinds import identify  # kinds reads markers of every stage: not needed to read a part

    fs, path = url_to_fs(url)
    fs.invalidate_cache(path)  # s3fs caches listings: see parts written since
    found = identify(url)
    if found.kind == "absent":
        raise HardfocusError(f"scores directory '{redact(url)}' does not exist")
    if found.kind == "scores" and not found.complete:
        raise HardfocusError(f"'{redact(url)}' is {found.describe()}, not a finished scores/ directory (no "
                             f"{SCORES_MANIFEST_FILE}): rerun the `hardfocus score` that writes it, which finishes it")
    if found.kind != "scores":
        made = (f"; a selection records the scores/ it was made from in its {found.stage.marker}"
                if found.kind == "selected" else "")
        raise HardfocusError(f"'{redact(url)}' is {found.describe()}, not a scores/ directory: give the scores/ "
                             f"directory `hardfocus score` wrote{made}")
    manifest = read_record(fs, posixpath.join(path, SCORES_MANIFEST_FILE), ScoreManifest, "scores manifest")
    names = sorted(n for n in found.names if n.startswith("part-") and n.endswith(".parquet"))
    if len(names) != manifest.parts:
        raise HardfocusError(f"'{redact(url)}' holds {len(names)} part files but its manifest lists {manifest.parts}: "
                             "parts were lost or added after it was finished; rerun `hardfocus score` with the same "
                             "arguments, which scores a lost part again (and refuses one it did not write)")
    stamps = ScoresParts.of(fs, path, manifest)
    return ScoresDirectory(url, manifest, [(fs_url(fs, posixpath.join(path, n)), stamps.expected(n)) for n in names])


def input_files(manifest: ScoreManifest) -> list[list]:
    """The input files a scores/ directory was scored from, as ``[location, file id, relative name]`` each: what a
    selection records of its scores, and what two sources read together are compared by."""
    return [[shard.location or shard.url, shard.file_id, shard.rel] for shard in manifest.shards]


def refuse_files_read_twice(sources: list[tuple[str, list[list]]], what: str = "scored into") -> None:
    """One input file reached through two of ``sources`` (each: its name, its :func:`input_files`) would have its rows
    counted twice (reached by two names: a directory and a glob, a link): refuse, naming the file and both sources."""
    seen: dict[str, tuple[str, str, str]] = {}
    for name, files in sources:
        for location, file_id, rel in files:
            for key in {location, file_id} - {None}:
                if key in seen and seen[key][0] != name:
                    first, first_rel, path = seen[key]
                    same = location if path == location else f"{path} (and {location}, the same file)"
                    raise HardfocusError(
                        f"the input file {same} was {what} both '{redact(first)}' (as '{first_rel}') and '{redact(name)}' "
                        f"(as '{rel}'): its rows would count twice; read one of the two, or score each file into one "
                        "directory only"
                    )
                seen.setdefault(key, (name, rel, location))


def refuse_shared_shards(dirs: list[str], manifests: list[ScoreManifest]) -> None:
    """One shard scored into two of the scores/ directories read together: refused (:func:`refuse_files_read_twice`)."""
    refuse_files_read_twice([(d, input_files(m)) for d, m in zip(dirs, manifests)])
