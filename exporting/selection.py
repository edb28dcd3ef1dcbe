"""What an export reads of a selection: its summary, the scores/ directories it was made from (their manifests name
the input shards), and which ``decisions/`` parts hold each shard's rows.

A decisions part holds the rows of one score part (its stamp names the scores directory and the part), so of one
shard as scoring writes them; each shard's task reads only its own decisions parts, and the score parts they stand
for (what each exported row's source is checked against), each through the verified reader against the identities
opened here: a selection (or scores) replaced while the export runs stops it in one line.
"""

from __future__ import annotations

import dataclasses
import posixpath
from dataclasses import dataclass

from fsspec.core import url_to_fs

from hardfocus.contracts.decisions import decision_parts, decisions_expected
from hardfocus.contracts.scores import (
    SCORES_MANIFEST_FILE,
    ScoreManifest,
    ScoresParts,
    ShardInfo,
    manifest_digest,
    parse_part_name,
    rel_digest,
    score_part_expected,
)
from hardfocus.contracts.selected import open_selected
from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import digest
from hardfocus.parts import Expected
from hardfocus.sample_format import Columns
from hardfocus.storage import fs_url, read_record, redact


@dataclass(frozen=True)
class ShardJob:
    """One scored input shard and where its decisions are: what a task needs to export it (plain values, so it
    travels to a Ray task as a row)."""

    index: int  # its place among the selection's shards (scores directory, then relative path): names its parts
    scores: int  # its scores directory's index in the summary's "scores"
    rel: str
    url: str  # where the manifest says it was scored from
    format: str
    compression: str | None
    size: int
    modified: str | None
    rows: int  # the documents scoring counted in it
    id_column: str | None
    text_column: str
    windowed: bool
    decisions: tuple[str, ...]  # the decisions parts that hold its rows
    score_parts: tuple[str, ...]  # the score part of each decisions part (each row's source digest is there)
    selection: str  # the digest of the selection's identity: what each decisions part must be stamped with
    scores_job: str  # the digest of its scores directory's job: what each score part must be stamped with
    sample_format: str  # how scoring read a row's sample: text, prompt_response or messages
    sample_columns: tuple[str, ...]  # and from which columns

    @classmethod
    def of(cls, index: int, scores: int, shard: ShardInfo, manifest: ScoreManifest, decisions: list[tuple[str, str]],
           selection: str, scores_job: str) -> ShardJob:
        return cls(index, scores, shard.rel, shard.url, shard.format, shard.compression, shard.size, shard.modified,
                   shard.rows, manifest.id_column, manifest.text_column, manifest.long_documents == "windows",
                   tuple(d for d, _ in decisions), tuple(p for _, p in decisions), selection, scores_job,
                   manifest.format, tuple(manifest.sample_columns))

    def decisions_expected(self, url: str) -> Expected:
        """What a decisions part must be: of the selection this export opened (a selection replaced meanwhile stops the
        export, instead of mixing its rows with the old one's)."""
        return dataclasses.replace(decisions_expected(url, self.selection), foreign=(
            "the selection was replaced while this export read it; run the export again once the selection is complete"))

    def score_part_expected(self, url: str) -> Expected:
        """What the score part at ``url`` (rows [start, stop) of this shard, by its name) must be."""
        bounds = parse_part_name(posixpath.basename(url))
        start, stop = bounds[1:] if bounds else (-1, -1)
        return score_part_expected(self.scores_job, {"shard": self.rel, "shard_size": self.size,
                                                     "shard_modified": self.modified, "start": start, "stop": stop})

    @property
    def columns(self) -> Columns:
        """The columns scoring read each row's sample from (what its source digest is of)."""
        cols = list(self.sample_columns) or [self.text_column]
        if self.sample_format == "messages":
            return Columns(format="messages", messages=cols[0])
        if self.sample_format == "prompt_response":
            return Columns(format="prompt_response", prompt=cols[0], response=cols[1], system=(cols[2:] or [None])[0])
        return Columns(text=cols[0])


@dataclass(frozen=True)
class Selection:
    """A complete selected/ directory, checked against the scores it was made from."""

    url: str
    summary: dict
    digest: str  # of its summary: the selection's identity for the export
    manifests: list[ScoreManifest]
    shards: list[ShardJob]  # every scored shard, in order (some may have no rows of the band exported)

    @property
    def windowed(self) -> bool:
        return self.manifests[0].long_documents == "windows"

    @property
    def ranked_by(self) -> str:
        """What the selection ranked: ``window`` (each row, or each window) or ``document``."""
        return self.summary.get("parameters", {}).get("by", "window")


def open_selection(selected: str, scores: list[str]) -> Selection:
    """The selection at ``selected``, its scores/ directories (where ``scores`` says, else where its summary records
    them) checked to be the ones it was made from, and each scored shard matched to its decisions parts."""
    opened = open_selected(selected)
    parts = decision_parts(opened)  # refuses an incomplete selection, or one without decisions/
    summary = opened.summary
    made_from = opened.recorded.get("scores")
    recorded = [entry["dir"] for entry in summary["scores"]]
    if scores and len(scores) != len(recorded):
        raise HardfocusError(f"--scores gives {len(scores)} directories, and {redact(selected)} was selected from "
                             f"{len(recorded)} ({', '.join(map(redact, recorded))}): give each, in that order")
    dirs = scores or recorded
    manifests = [_manifest(d, i, made_from, bool(scores)) for i, d in enumerate(dirs)]
    jobs = [ScoresParts.of(*url_to_fs(d), m).job for d, m in zip(dirs, manifests)]
    rels = [{rel_digest(shard.rel): shard.rel for shard in m.shards} for m in manifests]
    by_shard: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for part in parts:
        bounds = parse_part_name(part.part)
        rel = rels[part.scores].get(bounds[0]) if 0 <= part.scores < len(manifests) and bounds else None
        if rel is None:
            raise HardfocusError(f"the decisions part {redact(part.url)} decides on the score part {part.part} of scores "
                                 f"directory {part.scores}, which the selection's scores do not hold: give the scores it "
                                 "was made from with --scores")
        by_shard.setdefault((part.scores, rel), []).append((part.url, _score_part(dirs[part.scores], part.part)))
    for i, m in enumerate(manifests):
        decided = sum(part.rows for part in parts if part.scores == i)
        if decided != m.rows:
            raise HardfocusError(f"{redact(selected)} holds decisions for {decided} rows of {redact(dirs[i])}, whose manifest "
                                 f"counts {m.rows}: they are not the scores it was made from; give the right ones with --scores")
    shards, index = [], 0
    for i, m in enumerate(manifests):
        for shard in sorted(m.shards, key=lambda s: s.rel):
            shards.append(ShardJob.of(index, i, shard, m, by_shard.pop((i, shard.rel), []), opened.identity, jobs[i]))
            index += 1
    return Selection(selected, summary, digest(summary), manifests, shards)


def _manifest(d: str, index: int, made_from: list | None, given: bool) -> ScoreManifest:
    fs, path = url_to_fs(d)
    manifest = read_record(fs, posixpath.join(path, SCORES_MANIFEST_FILE), ScoreManifest, "scores manifest")
    if manifest is None:
        where = "" if given else " (where the selection's summary.json records it)"
        raise HardfocusError(f"the scores directory '{redact(d)}'{where} has no {SCORES_MANIFEST_FILE}: the export reads "
                             "the input shards' names and sizes there; give the scores/ directories with --scores")
    if made_from is not None and (index >= len(made_from) or made_from[index] != manifest_digest(manifest)):
        raise HardfocusError(f"the scores directory '{redact(d)}' is not the one the selection was made from (its manifest "
                             "differs from the one the selection recorded): give the right ones with --scores")
    return manifest


def _score_part(scores: str, name: str) -> str:
    fs, root = url_to_fs(scores)
    return fs_url(fs, posixpath.join(root, name))
