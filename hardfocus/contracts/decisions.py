"""The contract of ``selected/decisions/``: what selection decided for every scored row, and why.

One Parquet part per score part the selection read, in the same order (``decisions/part-00000.parquet`` holds
the rows of the selection's first score part, row for row), so every scored row has exactly one decision:
``kept`` (in the training parts, with its weight), ``dropped`` (the highest-scored band, taken for noise),
``easy`` (below the kept band) or ``excluded`` (never ranked; ``reason`` says why, in the words of the
summary's ``excluded`` counts). ``hardfocus run``'s label table, ``hardfocus report``, ``hardfocus export`` and
the polars recipes read these rows instead of recomputing the bands.

Each part is stamped (:mod:`hardfocus.parts`) with the selection's identity digest and its place: its index, which
scores directory (its index in the summary's ``scores``) and which part of it the rows come from.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow as pa
from fsspec.core import url_to_fs

from hardfocus.contracts.selected import REDO, SelectedDir, open_selected
from hardfocus.errors import HardfocusError
from hardfocus.parts import Expected, read_footer
from hardfocus.storage import fs_url, list_names, prefetched, redact

DECISIONS_DIR = "decisions"
DROPPED, KEPT, EASY, EXCLUDED = "dropped", "kept", "easy", "excluded"
DECISION_BANDS = (DROPPED, KEPT, EASY, EXCLUDED)
DECISIONS_LAYOUT = 2  # in the selection's identity: 1, decisions/ of before the part stamp (hardfocus.parts); none, before decisions/

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


def decisions_part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def decisions_place(index: int, scores: int, part: str) -> dict:
    """Where a decisions part belongs: its index, and the score part (scores directory index, file name) it decides."""
    return {"index": index, "scores": scores, "part": part}


def decisions_expected(url: str, identity: str) -> Expected:
    """What the decisions part at ``url`` must be in the selection of identity digest ``identity``: its index is its
    name's."""
    name = posixpath.basename(url)
    index = int(name[5:10]) if name.startswith("part-") and name[5:10].isdigit() else -1
    return Expected("decisions", identity, {"index": index}, what="the decisions part", redo=REDO)


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


@dataclass(frozen=True)
class DecisionsPart:
    """One checked decisions part: where it is, what it must be when read, and the score part it decides."""

    url: str
    expected: Expected
    scores: int  # its scores directory's index in the selection's summary
    part: str  # the file name of its score part
    rows: int


def decision_parts(selected: str | SelectedDir) -> list[DecisionsPart]:
    """Each decisions part of a complete selection, in order, checked by its footer: as many as its summary counts,
    each stamped with this selection's identity in its own place, of this contract, and together holding a decision
    for every scored row. A selection made before decisions/ existed is refused with the command that makes one."""
    opened = selected if isinstance(selected, SelectedDir) else open_selected(selected)
    fs, root = url_to_fs(opened.url)
    want = opened.summary.get("decision_parts")
    where = posixpath.join(root, DECISIONS_DIR)
    if want is None or not fs.exists(where):
        raise HardfocusError(f"'{redact(opened.url)}' was selected by an earlier version of hardfocus and records no "
                             f"decisions/: {REDO}")
    names = sorted(n for n in list_names(fs, where) if n.startswith("part-") and n.endswith(".parquet"))
    if names != [decisions_part_name(i) for i in range(want)]:
        raise HardfocusError(f"{redact(fs_url(fs, where))} holds {len(names)} parts where its summary counts {want}: "
                             f"it was changed after it was written; {REDO}")

    def footer(name: str) -> DecisionsPart:
        url = fs_url(fs, posixpath.join(where, name))
        expected = decisions_expected(url, opened.identity)
        meta, stamp = read_footer(url, expected)
        check_decisions_schema(meta.schema.to_arrow_schema(), redact(url))
        scores, part = stamp.place.get("scores"), stamp.place.get("part")
        if not isinstance(scores, int) or not isinstance(part, str):
            raise expected.refuse(url, "records no score part in its stamp")
        return DecisionsPart(url, expected, scores, part, stamp.rows)

    parts = list(prefetched(footer, names))
    decided, scored = sum(p.rows for p in parts), opened.summary.get("rows")
    if isinstance(scored, int) and decided != scored:
        raise HardfocusError(f"the decisions of {redact(opened.url)} hold {decided} rows where its summary counts {scored} "
                             f"scored rows: {REDO}")
    return parts
