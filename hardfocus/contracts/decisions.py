"""The contract of ``selected/decisions/``: what selection decided for every scored row, and why.

One Parquet part per score part the selection read, in the same order (``decisions/part-00000.parquet`` holds
the rows of the selection's first score part, row for row), so every scored row has exactly one decision:
``kept`` (in the training parts, with its weight), ``dropped`` (the highest-scored band, taken for noise),
``easy`` (below the kept band) or ``excluded`` (never ranked; ``reason`` says why, in the words of the
summary's ``excluded`` counts). ``hardfocus run``'s label table, ``hardfocus report``, ``hardfocus export`` and
the polars recipes read these rows instead of recomputing the bands.

Each part's footer metadata records which scores directory (its index in the summary's ``scores``) and which
part of it the rows come from (:data:`SOURCE_KEY`), and how many rows it holds.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import digest
from hardfocus.storage import fs_url, list_names, prefetched, read_json, redact

DECISIONS_DIR = "decisions"
DROPPED, KEPT, EASY, EXCLUDED = "dropped", "kept", "easy", "excluded"
DECISION_BANDS = (DROPPED, KEPT, EASY, EXCLUDED)
DECISIONS_LAYOUT = 1  # in the selection's identity: a selection of before decisions/ has none
SOURCE_KEY = b"hardfocus.decisions"  # footer: {"index", "scores": dir index, "part": score part name, "rows", "selection"}

DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),  # the input shard's relative path, as in scores/
        pa.field("row", pa.int64(), nullable=False),  # the row's index in its shard
        pa.field("group", pa.string()),
        pa.field("loss", pa.float32()),  # the row's own loss (null where it was not scored)
        pa.field("score", pa.float32()),  # the ranked score (the loss, ifd, bpb, excess, or by document the
        # document's); null where it was not computed
        pa.field("band", pa.dictionary(pa.int8(), pa.string()), nullable=False),  # one of DECISION_BANDS
        pa.field("reason", pa.string()),  # why it was excluded; null otherwise
        pa.field("rank", pa.float32()),  # share of its scope scored higher (0 = the highest); null when excluded
        pa.field("weight", pa.float32()),  # its training weight; null outside the kept band
    ]
)
# windowed scores (score --long-documents windows) add the columns that place each window in its document
WINDOW_FIELDS = (
    pa.field("document_id", pa.string()),
    pa.field("window", pa.int32()),
    pa.field("windows", pa.int32()),
    pa.field("char_start", pa.int64()),  # the characters of the document the window's own tokens cover
    pa.field("char_stop", pa.int64()),
)


def decisions_schema(windowed: bool) -> pa.Schema:
    return pa.schema(list(DECISIONS_SCHEMA) + (list(WINDOW_FIELDS) if windowed else []))


def decision_source(metadata: dict[bytes, bytes] | None, where: str) -> dict:
    """The footer record of a decisions part: ``{"scores": int, "part": str, "rows": int}``."""
    try:
        record = json.loads((metadata or {})[SOURCE_KEY])
        if isinstance(record.get("scores"), int) and isinstance(record.get("part"), str) and isinstance(record.get("rows"), int):
            return record
    except (KeyError, ValueError, AttributeError):
        pass
    raise HardfocusError(f"{where} is not a hardfocus decisions part (no '{SOURCE_KEY.decode()}' record in its footer): "
                         "select again with this version of hardfocus")


def check_decisions_schema(schema: pa.Schema, where: str) -> None:
    """Raise naming each column that is missing or of another type."""
    problems = []
    for field in DECISIONS_SCHEMA:
        if field.name not in schema.names:
            problems.append(f"missing column '{field.name}'")
        elif schema.field(field.name).type != field.type:
            problems.append(f"column '{field.name}' is {schema.field(field.name).type}, expected {field.type}")
    if problems:
        raise HardfocusError(f"{where} is not a hardfocus decisions part: " + "; ".join(problems))


def decision_parts(selected: str) -> list[tuple[str, dict]]:
    """(URL, footer record) of each decisions part of a complete selected/ directory, in order, checked: as many as
    its summary counts, each whole, of this contract, holding the rows its record says. A selection made before
    decisions/ existed is refused with the command that makes one."""
    from hardfocus.kinds import identify  # kinds imports storage only; keep this module light for workers

    found = identify(selected)
    if found.kind != "selected" or not found.complete:
        raise HardfocusError(f"'{redact(selected)}' is {found.describe()}, not a complete selected/ directory")
    fs, root = url_to_fs(selected)
    summary = read_json(fs, posixpath.join(root, "summary.json"), "selection summary", kind=dict)
    want = summary.get("decision_parts")
    where = posixpath.join(root, DECISIONS_DIR)
    if want is None or not fs.exists(where):
        raise HardfocusError(f"'{redact(selected)}' was selected by an earlier version of hardfocus and records no "
                             "decisions/: run the same `hardfocus select` again with --overwrite")
    job = read_json(fs, posixpath.join(root, "selection_job.json"), "selection job file", kind=dict) or {}
    selection = digest(job["identity"]) if isinstance(job.get("identity"), dict) else None
    names = sorted(n for n in list_names(fs, where) if n.startswith("part-") and n.endswith(".parquet"))
    if len(names) != want or names != [f"part-{i:05d}.parquet" for i in range(want)]:
        raise HardfocusError(f"{redact(fs_url(fs, where))} holds {len(names)} parts where its summary counts {want}: "
                             "it was changed after it was written; run `hardfocus select` again with --overwrite")

    def footer(name: str) -> tuple[str, dict]:
        url = fs_url(fs, posixpath.join(where, name))
        try:
            with fs.open(posixpath.join(where, name), "rb") as f:
                meta = pq.read_metadata(f)
        except (OSError, pa.ArrowException) as exc:
            raise HardfocusError(f"the decisions part {redact(url)} is damaged ({' '.join(str(exc).split())}): run "
                                 "`hardfocus select` again with --overwrite") from exc
        check_decisions_schema(meta.schema.to_arrow_schema(), redact(url))
        record = decision_source(meta.metadata, redact(url))
        if record.get("index") != int(name[5:10]) or record.get("selection") != selection:
            raise HardfocusError(f"the decisions part {redact(url)} is not this selection's part {name[5:10]} (its footer "
                                 "records another selection or another place): it was moved or copied in after it was "
                                 "written; run `hardfocus select` again with --overwrite")
        if meta.num_rows != record["rows"]:
            raise HardfocusError(f"the decisions part {redact(url)} holds {meta.num_rows} rows where its record says "
                                 f"{record['rows']}: run `hardfocus select` again with --overwrite")
        return url, record

    return list(prefetched(footer, names))
