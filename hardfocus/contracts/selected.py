"""The contract of ``selected/``: its training parts (one row per selected sample), its summary, and the one opener
every reader of a selection goes through (:func:`open_selected`).

Selection writes it; training, export, the report and ``hardfocus run`` read it. Each training part is stamped
(:mod:`hardfocus.parts`) with the selection's identity digest (the one ``selection_job.json`` records) and its index,
so a part copied in from another selection, even of the same scores, or put under another part's name, is refused.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow as pa
from fsspec.core import url_to_fs

from hardfocus.contracts.scores import LOSS_SPANS_TYPE
from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import digest
from hardfocus.kinds import SELECTED, PathInfo, identify
from hardfocus.parts import Expected
from hardfocus.storage import fs_url, read_json, redact

SELECTED_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("shard", pa.string()),  # where the row came from
        pa.field("row", pa.int64()),
        pa.field("group", pa.string()),
        pa.field("loss", pa.float32(), nullable=False),
        pa.field("loss_rank", pa.float32(), nullable=False),  # share of its scope with a higher loss: 0 = the highest
        pa.field("weight", pa.float32(), nullable=False),  # mean 1 over the selected set (or each group)
        pa.field("input_ids", pa.list_(pa.int32())),  # absent when the scores were written without them
        pa.field("loss_spans", LOSS_SPANS_TYPE),  # the scores' target token ranges; absent for plain-text scores
    ]
)
OPTIONAL_COLUMNS = ("shard", "row", "input_ids", "loss_spans")

SUMMARY_FILE = "summary.json"  # written last: a selected/ without it is incomplete and is refused
REDO = "run `hardfocus select` again with --overwrite"


def selected_schema(with_input_ids: bool, with_loss_spans: bool = False) -> pa.Schema:
    """The schema of a selected/ part; without ``loss_spans`` it is the schema from before conversations."""
    drop = [name for name, keep in (("input_ids", with_input_ids), ("loss_spans", with_loss_spans)) if not keep]
    return pa.schema([f for f in SELECTED_SCHEMA if f.name not in drop])


def check_selected_schema(schema: pa.Schema, where: str) -> None:
    """Raise a :class:`HardfocusError` naming every column that is missing or has the wrong type."""
    problems = []
    for field in SELECTED_SCHEMA:
        if field.name not in schema.names:
            if field.name not in OPTIONAL_COLUMNS:
                problems.append(f"missing column '{field.name}'")
        elif schema.field(field.name).type != field.type:
            problems.append(f"column '{field.name}' is {schema.field(field.name).type}, expected {field.type}")
    if problems:
        raise HardfocusError(f"{where} is not a hardfocus selected/ shard: " + "; ".join(problems))


def training_part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def training_part_expected(identity: str, index: int) -> Expected:
    """What the training part ``index`` of the selection of identity digest ``identity`` must be."""
    return Expected("selected", identity, {"index": index}, what="the training part", redo=REDO)


@dataclass(frozen=True)
class SelectedDir:
    """A complete selected/ directory as its one opener found it: its summary, the digest of its identity (what every
    part of it is stamped with), and its training parts with what each must be."""

    url: str
    summary: dict
    identity: str
    parts: tuple[tuple[str, Expected], ...]  # (URL, expected) of each training part, in order
    recorded: dict  # the identity its job file records (its parameters, the digests of the scores it was made from)

    @property
    def kept(self) -> int:
        return int((self.summary.get("bands") or {}).get("kept", 0))


def open_selected(url: str, found: PathInfo | None = None) -> SelectedDir:
    """Identify ``url`` once (``found``: what :func:`~hardfocus.kinds.identify` said of it already), and check it is a
    complete selection whose training parts are the ones its summary counts; the parts' stamps are checked by whoever
    reads them (:mod:`hardfocus.parts`)."""
    found = found or identify(url)
    if found.kind != "selected" or not found.complete:
        raise HardfocusError(f"'{redact(url)}' is {found.describe()}, not a complete selected/ directory"
                             + (": (re)run `hardfocus select`" if found.kind == "selected" else ""))
    fs, root = url_to_fs(url)
    summary = read_json(fs, posixpath.join(root, SUMMARY_FILE), "selection summary", kind=dict)
    job = read_json(fs, posixpath.join(root, SELECTED.job), "selection job file", kind=dict) or {}
    if not isinstance(job.get("identity"), dict):
        raise HardfocusError(f"'{redact(url)}' records no identity in its {SELECTED.job}: {REDO}")
    identity = digest(job["identity"])
    names = sorted(n for n in found.names if n.startswith("part-") and n.endswith(".parquet"))
    want = summary.get("output_parts")
    if not isinstance(want, int) or names != [training_part_name(i) for i in range(want)]:
        raise HardfocusError(f"'{redact(url)}' holds {len(names)} training parts where its summary counts {want}: it was "
                             f"changed after it was written; {REDO}")
    parts = tuple((fs_url(fs, posixpath.join(root, name)), training_part_expected(identity, i))
                  for i, name in enumerate(names))
    return SelectedDir(url, summary, identity, parts, job["identity"])
