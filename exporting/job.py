"""``export``: the export stage as a library call. Reads a selection's decisions, checks the input shards are the ones
scored, streams each once (a Ray Data task per shard, or in process), and writes the rows of one band with every
source column unchanged plus the selection's columns; ``export.json`` last, once the counts are reconciled.

The output's identity is the parameters and the selection's summary: a rerun of the same export of the same selection
finds it complete and writes nothing; an interrupted one keeps the parts that check out and writes the rest.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from tqdm.auto import tqdm

from exporting.config import ExportConfig
from exporting.copies import output_shards
from exporting.executors import Runner, runner
from exporting.inputs import check_unchanged, located, refuse_scored_overlap, scored_roots
from exporting.manifest import ExportManifest, PartRows, decided_counts, reconcile
from exporting.output import ExportDir, part_name
from exporting.rows import added_columns
from exporting.schemas import common_schema
from exporting.selection import Selection, ShardJob, open_selection
from exporting.tasks import export_shard, shuffle_output, task_row
from hardfocus.errors import HardfocusError
from hardfocus.stagedir import Opening, refuse_inside, refuse_overlap
from hardfocus.storage import absolute, prefetched, redact
from hardfocus.versions import library_versions

log = logging.getLogger(__name__)

EXPORT_LAYOUT = 1  # in the export's identity: exports of before the part stamp and the parts' digests are other exports


@dataclass
class ExportResult:
    output: str
    manifest: ExportManifest
    parts_written: int = 0
    skipped: bool = False  # the output already held this export, complete: nothing was written


def export(cfg: ExportConfig, progress: bool = True) -> ExportResult:
    """Export the rows of ``cfg.band`` of the selection ``cfg.selected`` into ``cfg.output`` (see the module docstring)."""
    out = ExportDir(cfg.output)
    refuse_overlap(cfg.output, [cfg.selected, *cfg.scores])
    selection = open_selection(cfg.selected, cfg.scores)
    refuse_scored_overlap(cfg.output, scored_roots(selection.shards, cfg.input_root))  # before the lock writes there
    with out.locked():
        inputs = [cfg.selected, *(cfg.scores or [entry["dir"] for entry in selection.summary["scores"]])]
        _check_by(cfg, selection)
        named = {"selection": [cfg.selected]}
        if out.open(export_identity(cfg, selection), cfg.overwrite, inputs=inputs, named=named) is Opening.COMPLETE:
            out.remove_spill()  # left by a run stopped between its marker and this clean-up
            manifest = out.read_record(out.kind.marker, ExportManifest)
            damaged = out.damaged_parts(manifest.parts, whole=cfg.overwrite)  # --overwrite: every part's bytes too
            if damaged and not cfg.overwrite:  # the parts kept are recorded again: each must be the one written
                damaged = out.damaged_parts(manifest.parts, whole=True)
            if not damaged:
                log.info("'%s' already holds this export: nothing to do", redact(cfg.output))
                return ExportResult(cfg.output, manifest, skipped=True)
            name, why = damaged[0]
            log.warning("%s holds this export, but %d of its parts are not as they were written (e.g. %s: %s): writing "
                        "them again", redact(cfg.output), len(damaged), name, why)
            out.unmark()
            out.remove([name for name, _ in damaged])
        expected = decided_counts(selection, cfg.band, cfg.by)
        jobs = _jobs(cfg, selection, expected)
        log.info("exporting %d %s rows of %d shards (of %d scored) to %s", sum(n for c in expected.values() for n in c.values()),
                 cfg.band, len(jobs), len(selection.shards), redact(cfg.output))
        tasks_cfg = cfg.model_copy(update={"output": absolute(cfg.output)})  # a Ray worker's cwd is its Ray's
        with runner(tasks_cfg) as run:
            write = _resample if cfg.resample else _direct
            records = write(tasks_cfg, out, jobs, expected, run, progress)
        manifest = _manifest(cfg, selection, jobs, expected, records)
        found = out.parts()
        extra, missing = sorted(found - {p.name for p in manifest.parts}), sorted({p.name for p in manifest.parts} - found)
        if extra:
            raise HardfocusError(f"{redact(cfg.output)} holds part files this export did not write (e.g. {extra[0]}): "
                                 "move them away, or pass --overwrite to begin the export again")
        if missing:  # a task that reported a part it did not write where this export reads (never marked complete)
            raise HardfocusError(f"{redact(cfg.output)} lacks {len(missing)} part files its tasks reported written (e.g. "
                                 f"{missing[0]}): run the same command again")
        out.mark(manifest.model_dump())
        out.remove_spill()
    written = sum(r["written"] for r in records.values() if r["kind"] == "part")
    log.info("wrote %d parts, kept %d an earlier run wrote", written, len(manifest.parts) - written)
    return ExportResult(cfg.output, manifest, parts_written=written)


def export_identity(cfg: ExportConfig, selection: Selection) -> dict:
    """What makes two exports the same: what decides their rows and files, and the selection (where the inputs are
    read from and how the tasks run do not change what is written)."""
    keys = ["band", "by", "format", "shard_rows", "prefix"] + (["resample", "seed"] if cfg.resample else [])
    return {"parts": EXPORT_LAYOUT, "parameters": {k: getattr(cfg, k) for k in keys}, "selection": selection.digest}


def _check_by(cfg: ExportConfig, selection: Selection) -> None:
    if cfg.by != "document":
        return
    if not selection.windowed:
        raise HardfocusError("--by document exports the documents of windowed scores (score --long-documents windows); "
                             "these scores have a row per document already: drop --by document")
    if selection.ranked_by != "document":
        raise HardfocusError(f"{redact(cfg.selected)} ranked windows (select --by window): a document's windows have bands "
                             "and weights of their own, so a document has none; select again with --by document, or export "
                             "--by window (a row per window)")


def _jobs(cfg: ExportConfig, selection: Selection, expected: dict[int, dict[str, int]]) -> list[ShardJob]:
    """The shards with rows to export, each found (``--input-root``) and checked to be the file that was scored."""
    jobs = []
    for job in selection.shards:
        if not expected.get(job.index):
            continue  # no row of this band: not read
        url = located(job.url, job.rel, cfg.input_root)
        check_unchanged(url, job.rel, job.size, job.modified, moved=cfg.input_root is not None)
        jobs.append(ShardJob(**{**job.__dict__, "url": url}))
    refuse_inside(cfg.output, [job.url for job in jobs])
    if not jobs:  # an empty band: an export of no rows, its manifest saying so
        log.warning("%s has no %s rows: the export holds none", redact(cfg.selected), cfg.band)
    return jobs


def _direct(cfg: ExportConfig, out: ExportDir, jobs: list[ShardJob], expected: dict[int, dict[str, int]], run: Runner,
            progress: bool) -> dict[str, dict]:
    """Each shard's rows into its own parts."""
    existing = out.parts()
    rows = [task_row(job, existing) for job in jobs]
    total = sum(n for job in jobs for n in expected[job.index].values())
    return _collect(run(export_shard, rows, {"cfg": cfg, "fence": out.fence()}), "exporting", total, progress)


def _resample(cfg: ExportConfig, out: ExportDir, jobs: list[ShardJob], expected: dict[int, dict[str, int]], run: Runner,
              progress: bool) -> dict[str, dict]:
    """Phase one: each shard's copies into phase-one files, a row group per output shard; phase two: each output
    shard's copies gathered and shuffled. Both keep what an earlier run wrote."""
    kept = sum(n for counts in expected.values() for n in counts.values())
    outputs = output_shards(kept, cfg.resample, cfg.shard_rows)
    existing = out.spills()
    rows = [task_row(job, existing, outputs=outputs) for job in jobs]
    spilled = _collect(run(export_shard, rows, {"cfg": cfg, "fence": out.fence()}), "phase 1: copying", kept, progress)
    sources: dict[int, list[list]] = {}
    for name in sorted(spilled):
        for index, (shard, _) in enumerate(spilled[name]["groups"]):
            sources.setdefault(shard, []).append([name, index])
    sizes = {shard: 0 for shard in sources}
    for record in spilled.values():
        for shard, n in record["groups"]:
            sizes[shard] += n
    if not sources:  # no copies (no kept rows, or K small enough that every row drew none): no part to shuffle
        return spilled
    # every shuffled part in one schema, the union of the shards' columns (a part holds rows of any of them)
    rel = {job.index: job.rel for job in jobs}
    names = sorted(spilled)
    schemas = [(rel[spilled[n]["shard"]], s) for n, s in zip(names, prefetched(out.spill_schema, names))]
    schema = common_schema(schemas, added_columns(cfg.band, jobs[0].windowed, cfg.by, cfg.prefix or ""))
    encoded = base64.b64encode(schema.serialize().to_pybytes()).decode()
    parts = out.parts()
    tasks = []
    for shard in sorted(sources):
        name = part_name(cfg.format, shard)
        tasks.append({"task": json.dumps({"output": shard, "name": name, "rows": sizes[shard], "sources": sources[shard],
                                          "exists": name in parts, "schema": encoded})})
    shuffled = _collect(run(shuffle_output, tasks, {"cfg": cfg, "fence": out.fence()}), "phase 2: shuffling",
                        sum(sizes.values()), progress)
    return {**spilled, **shuffled}


def _collect(records: Iterator[dict], what: str, total: int, progress: bool) -> dict[str, dict]:
    """The tasks' records by file name (a task that Ray ran again reports its files again), errors raised."""
    by_name: dict[str, dict] = {}
    bar = tqdm(total=total, unit=" rows", desc=what, disable=not progress, mininterval=1.0)
    try:
        for record in records:
            if record["kind"] == "error":
                raise HardfocusError(record["error"])
            if record["name"] not in by_name:
                bar.update(record["rows"])
            by_name[record["name"]] = record
    finally:
        bar.close()
        records.close()
    return by_name


def _manifest(cfg: ExportConfig, selection: Selection, jobs: list[ShardJob], expected: dict[int, dict[str, int]],
              records: dict[str, dict]) -> ExportManifest:
    shards = reconcile(jobs, expected, records, resampled=cfg.resample is not None)
    parts = sorted((r for r in records.values() if r["kind"] == "part"), key=lambda r: r["name"])
    bands: dict[str, int] = {}
    for part in parts:
        for band, n in part["bands"].items():
            bands[band] = bands.get(band, 0) + n
    weight = sum(r.get("weight") or 0.0 for r in records.values() if r["kind"] == "spill")
    return ExportManifest(
        selection=redact(cfg.selected), selection_digest=selection.digest, band=cfg.band, by=cfg.by, format=cfg.format,
        shard_rows=cfg.shard_rows, columns=added_columns(cfg.band, selection.windowed, cfg.by, cfg.prefix or ""),
        resample=cfg.resample, seed=cfg.seed if cfg.resample else None,
        expected_copies=cfg.resample * weight if cfg.resample else None,
        rows=sum(p["rows"] for p in parts), bands=dict(sorted(bands.items())), shards=shards,
        parts=[PartRows(name=p["name"], rows=p["rows"], bytes=p["bytes"], xxh3=p["xxh3"]) for p in parts],
        versions=library_versions(),
    )


def export_summary_line(result: ExportResult) -> str:
    m = result.manifest
    bands = ", ".join(f"{k} {v}" for k, v in m.bands.items())
    what = (f"{m.rows} copies of {sum(s.rows for s in m.shards)} kept rows (resample {m.resample:g}, expected "
            f"{m.expected_copies:.0f})" if m.resample else f"{m.rows} rows ({bands})")
    done = "already complete, nothing written" if result.skipped else f"{result.parts_written} parts written this run"
    return (f"exported {what} of {len(m.shards)} shards into {len(m.parts)} {m.format} parts | {done} | "
            f"{result.output}")

