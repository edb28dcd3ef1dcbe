"""What an export reads of a selection: its summary, the scores/ directories it was made from (their manifests name
the input shards), and which ``decisions/`` parts hold each shard's rows.

A decisions part holds the rows of one score part (its footer record names the scores directory and the part), so of
one shard as scoring writes them: each part's ``shard`` column is read once here, and each shard's task reads only its
own parts, and the score parts they stand for (what each exported row's text is checked against).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow.compute as pc
from fsspec.core import url_to_fs

from exporting.decided import read_decisions
from hardfocus.contracts.decisions import decision_parts
from hardfocus.contracts.scores import SCORES_MANIFEST_FILE, ScoreManifest, ShardInfo, manifest_digest
from hardfocus.contracts.selected import SUMMARY_FILE
from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import digest
from hardfocus.kinds import SELECTED
from hardfocus.storage import fs_url, prefetched, read_json, read_record, redact


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
    # the score part of each decisions part, where its n_bytes are the text's bytes (plain text, not conversations)
    score_parts: tuple[str, ...] = ()

    @classmethod
    def of(cls, index: int, scores: int, shard: ShardInfo, manifest: ScoreManifest,
           decisions: list[tuple[str, str]]) -> ShardJob:
        plain = manifest.format == "text"
        return cls(index, scores, shard.rel, shard.url, shard.format, shard.compression, shard.size, shard.modified,
                   shard.rows, manifest.id_column, manifest.text_column, manifest.long_documents == "windows",
                   tuple(d for d, _ in decisions), tuple(p for _, p in decisions) if plain else ())


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
    parts = decision_parts(selected)  # refuses an incomplete selection, or one without decisions/
    fs, root = url_to_fs(selected)
    summary = read_json(fs, posixpath.join(root, SUMMARY_FILE), "selection summary", kind=dict)
    job = read_json(fs, posixpath.join(root, SELECTED.job), "selection job file", kind=dict) or {}
    made_from = (job.get("identity") or {}).get("scores")
    recorded = [entry["dir"] for entry in summary["scores"]]
    if scores and len(scores) != len(recorded):
        raise HardfocusError(f"--scores gives {len(scores)} directories, and {redact(selected)} was selected from "
                             f"{len(recorded)} ({', '.join(map(redact, recorded))}): give each, in that order")
    dirs = scores or recorded
    manifests = [_manifest(d, i, made_from, bool(scores)) for i, d in enumerate(dirs)]
    by_shard: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for (url, record), rels in zip(parts, prefetched(_shards_in, [url for url, _ in parts])):
        if not 0 <= record["scores"] < len(manifests):
            raise HardfocusError(f"the decisions part {redact(url)} names scores directory {record['scores']}, which its "
                                 "selection does not have: run `hardfocus select` again with --overwrite")
        for rel in rels:
            by_shard.setdefault((record["scores"], rel), []).append((url, _score_part(dirs[record["scores"]], record["part"])))
    for i, m in enumerate(manifests):
        decided = sum(record["rows"] for _, record in parts if record["scores"] == i)
        if decided != m.rows:
            raise HardfocusError(f"{redact(selected)} holds decisions for {decided} rows of {redact(dirs[i])}, whose manifest "
                                 f"counts {m.rows}: they are not the scores it was made from; give the right ones with --scores")
    shards, index = [], 0
    for i, m in enumerate(manifests):
        for shard in sorted(m.shards, key=lambda s: s.rel):
            shards.append(ShardJob.of(index, i, shard, m, by_shard.pop((i, shard.rel), [])))
            index += 1
    if by_shard:
        (scores, rel), urls = next(iter(by_shard.items()))
        raise HardfocusError(f"the decisions part {redact(urls[0][0])} holds rows of a shard '{rel}' that the manifest of "
                             f"{redact(dirs[scores])} does not list: give the scores it was made from with --scores")
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


def _shards_in(url: str) -> list[str]:
    """The shards whose rows a decisions part holds (one, as scoring writes its parts)."""
    return pc.unique(read_decisions(url, ["shard"])["shard"]).to_pylist()


def _score_part(scores: str, name: str) -> str:
    fs, root = url_to_fs(scores)
    return fs_url(fs, posixpath.join(root, name))
