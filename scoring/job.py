"""``score``: the scoring stage as a library call. Lists the shards, skips finished ones, streams the rest,
writes the manifest.

Planning lists files and reads only the first shard's footer or first line (so that a wrong column fails
at once): row counts come from the shards' ``done/`` markers, written as each shard finishes, and each
task checks its own shard's columns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch

from hardfocus.chat import check_chat_tokenizer, load_chat_template, template_sha256
from hardfocus.console import native_stderr_to_file
from hardfocus.contracts.scores import (
    SCORES_JOB_FILE,
    SCORES_LAYOUT,
    SCORES_MANIFEST_FILE,
    RunInfo,
    ScoreCounts,
    ScoreManifest,
    ScoresParts,
    ShardInfo,
    parse_part_name,
    part_place,
    score_part_expected,
)
from hardfocus.errors import HardfocusError
from hardfocus.fingerprints import digest, tokenizer_fingerprint
from hardfocus.models import ResolvedModel, resolve_model
from hardfocus.parts import check_stamp, read_part
from hardfocus.ray_local import starts_local_ray
from hardfocus.readers import Shard, check_columns, find_shards
from hardfocus.stagedir import refuse_inside, refuse_overlap
from hardfocus.storage import canonical, file_identity, prefetched, read_footer, redact
from hardfocus.tokenizers import load_tokenizer
from hardfocus.versions import library_versions
from scoring.config import MAX_ROW_BYTES, ScoreConfig
from scoring.executors import WORK, UnitWork, init_ray, run_local, run_ray
from scoring.manifest import count_duplicate_ids
from scoring.model import resolve_device, resolve_dtype
from scoring.output import ScoresDir
from scoring.progress import ScoringProgress
from scoring.units import (
    EMPTY_COUNTS,
    ShardTask,
    columns_of,
    expected_parts,
    merge_counts,
    shard_digest,
)
from scoring.windows import check_windows_tokenizer

log = logging.getLogger(__name__)

_COMPILE_MIN_BYTES_PER_ACTOR = 8 * 1024**2
_SCORING_DIR = os.path.dirname(os.path.abspath(__file__))  # what a cluster's workers import beside the foundation

# What the part files depend on: a rerun with any of these changed must not reuse them.
_IDENTITY_KEYS = ("model_fingerprint", "tokenizer_fingerprint", "dtype", "max_tokens", "add_special_tokens",
                  "text_column", "id_column", "group_column", "keep_input_ids", "rows_per_unit")
# ... and for conversations (kept out of plain-text identities, so score dirs of before keep matching)
_CHAT_IDENTITY_KEYS = ("format", "prompt_column", "response_column", "system_column", "messages_column",
                       "chat_template_sha256")


@dataclass
class ScoreResult:
    output: str
    manifest: ScoreManifest
    units_scored: int
    skipped: bool = False  # the output was complete for these inputs: nothing was written


def score(cfg: ScoreConfig, progress: bool = True) -> ScoreResult:
    """Score every row of ``cfg.inputs`` into ``cfg.output``; resumes where a previous run stopped."""
    started_at, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    # workers get the template's text, and the device and dtype decided here, once, for every actor
    cfg = cfg.model_copy(update={"chat_template": load_chat_template(cfg.chat_template), **_device_and_dtype(cfg)})
    out = ScoresDir(cfg.output)
    refuse_overlap(cfg.output, cfg.inputs)
    out.lock()  # before anything slow: a second run on this output refuses at once
    try:
        resolved = resolve_model(cfg.model)
        identity = _job_identity(cfg, resolved)
        shards = find_shards(cfg.inputs)
        refuse_inside(cfg.output, [s.url for s in shards])
        check_columns(shards[0], columns_of(cfg))  # a wrong column fails at once; each task checks its own shard
        out.open(identity, cfg.overwrite, inputs=cfg.inputs, named={"model_fingerprint": [cfg.model]})
        out.create()
        plan = plan_shards(out, shards, cfg, digest(identity))
        log.info(
            "planned %d shards (%.1f MB) in %.1fs: %d finished, %d to score (%d of their parts already written)",
            len(shards), sum(s.size for s in shards) / 1e6, time.perf_counter() - t0, len(plan.done),
            len(plan.tasks), sum(len(t.done) for t in plan.tasks),
        )
        manifest = out.read_record(SCORES_MANIFEST_FILE, ScoreManifest)
        if not plan.tasks and not plan.changed and manifest is not None:
            log.info("%s is complete (%d parts): nothing to score", redact(cfg.output), manifest.parts)
            return ScoreResult(cfg.output, manifest, units_scored=0, skipped=True)
        out.unmark()  # the manifest marks a complete directory; it is not, until the end
        compiled = _want_compile(cfg, plan.tasks)
        scored = _run(plan, out, cfg, resolved, compiled, progress, digest(identity)) if plan.tasks else Tally()
        wall = time.perf_counter() - t0  # the whole call: model, planning, Ray start, scoring, writes
        parts = sum(math.ceil(m["rows"] / cfg.rows_per_unit) for m in plan.done.values())
        run = RunInfo(
            started_at=started_at, wall_s=wall, units_scored=scored.units, units_reused=parts - scored.units,
            rows_scored=scored.rows, tokens_scored=scored.tokens, tokens_per_s=scored.tokens / wall, nodes=scored.nodes,
            actor_s=round(scored.actor_s, 3),
        )
        manifest = _finalize(out, cfg, resolved, identity, shards, plan.done, run)
    finally:
        out.unlock()
    result = ScoreResult(cfg.output, manifest, scored.units)
    log.debug(scores_summary_line(result))  # the CLI prints it; a library caller has it in the result
    return result


def scores_summary_line(result: ScoreResult) -> str:
    """rows per status, tokens, and this run's tokens, wall time and tokens/s (or that nothing was left)."""
    m = result.manifest
    statuses = ", ".join(f"{k} {v}" for k, v in m.rows_by_status.items())
    run = m.runs[-1]
    this_run = (
        f"this run: {run.tokens_scored} tokens in {run.wall_s:.1f}s, {run.tokens_per_s:.0f} tokens/s"
        if result.units_scored else "already complete, nothing scored in this run"
    )
    rows = f"{m.rows} rows" if m.long_documents == "truncate" else f"{m.documents} documents in {m.rows} windows"
    return f"scored {rows} ({statuses}) | {m.tokens} tokens | {this_run} | {result.output}"


def _job_identity(cfg: ScoreConfig, resolved: ResolvedModel) -> dict:
    tokenizer = load_tokenizer(resolved.path)
    if cfg.format != "text":
        check_chat_tokenizer(tokenizer, cfg.chat_template)
    if cfg.long_documents == "windows":
        check_windows_tokenizer(tokenizer)
    values = cfg.model_dump() | {
        "model_fingerprint": resolved.fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "chat_template_sha256": template_sha256(cfg.chat_template, tokenizer) if cfg.format != "text" else None,
    }
    keys = (_IDENTITY_KEYS + (_CHAT_IDENTITY_KEYS if cfg.format != "text" else ()) + (("ifd",) if cfg.ifd else ())
            + (("max_row_bytes",) if cfg.max_row_bytes != MAX_ROW_BYTES else ())  # kept out at the default: old dirs match
            + (("long_documents", "window_context") if cfg.long_documents != "truncate" else ()))
    return {"parts": SCORES_LAYOUT} | {k: values[k] for k in keys}


def _device_and_dtype(cfg: ScoreConfig) -> dict[str, str]:
    """The device and dtype every scoring actor uses. GPU actors may be planned by a driver without a GPU:
    ``auto`` there means cuda and bf16 (every GPU since Ampere; pass --dtype float16 for older ones)."""
    if cfg.executor == "ray" and cfg.gpus_per_actor > 0 and not torch.cuda.is_available():
        return {"device": "cuda" if cfg.device == "auto" else cfg.device,
                "dtype": "bfloat16" if cfg.dtype == "auto" else cfg.dtype}
    device = resolve_device(cfg.device)
    return {"device": str(device), "dtype": str(resolve_dtype(cfg.dtype, device)).removeprefix("torch.")}


@dataclass
class Plan:
    tasks: list[ShardTask]  # shards to (finish) scoring
    done: dict[str, dict] = field(default_factory=dict)  # shard digest -> done marker, of every finished shard
    changed: bool = False  # planning removed parts or markers (of shards that changed or left the inputs)


def plan_shards(out: ScoresDir, shards: list[Shard], cfg: ScoreConfig, job: str) -> Plan:
    """Check the directory (opened for this job) holds only parts of these inputs, and find what is left to do.

    A shard is finished when its done marker matches it (same file size and modification stamp) and every part
    the marker implies is there, whole (the size the marker recorded; a footer with the unit's row count for
    markers of older versions); otherwise its task skips the parts that are there. A damaged part (cut short or
    emptied after its run, e.g. by a power cut before it reached the disk) is removed and scored again.
    """
    names = out.names()
    listing = out.parts(names)
    markers = out.shard_done_markers()
    n = cfg.rows_per_unit
    by_digest = {shard_digest(s): s for s in shards}
    stale_markers = [d for d, m in markers.items() if d not in by_digest or not _marker_matches(m, by_digest[d])]
    starts: dict[str, dict[int, str]] = {d: {} for d in by_digest}
    stale = []
    for name in listing:
        parsed = parse_part_name(name)
        digest, start, stop = parsed if parsed else ("", 0, 0)
        if digest not in by_digest or digest in stale_markers or start % n or not 0 < stop - start <= n:
            stale.append(name)
        else:
            starts[digest][start] = name
    done = {}
    for digest, marker in markers.items():
        if digest in stale_markers:
            continue
        expected = expected_parts(by_digest[digest], marker["rows"], n)
        have = set(starts[digest].values())
        stale += sorted(have - set(expected))
        if set(expected) <= have:
            done[digest] = marker
    damaged = _damaged_parts(out, {d: by_digest[d] for d in done}, done, n, job, whole=cfg.overwrite)
    for digest, broken in damaged.items():
        log.warning("%s: %d parts of %s are damaged (e.g. %s): scoring them again", redact(out.url), len(broken),
                    redact(by_digest[digest].url), broken[0])
        del done[digest]
    if damaged:
        gone = {name for broken in damaged.values() for name in broken}
        out.remove(sorted(gone))
        out.remove_shard_done(list(damaged))
        starts = {d: {k: v for k, v in named.items() if v not in gone} for d, named in starts.items()}
    if stale or stale_markers:
        if not cfg.overwrite:
            changed = [by_digest[d].url for d in stale_markers if d in by_digest]
            raise HardfocusError(
                f"{redact(out.url)} holds {len(stale)} part files that the current inputs do not produce (e.g. "
                f"{min(stale or ['-'])})"
                + (f", and scores of {len(changed)} shards that changed since (e.g. {redact(changed[0])})" if changed else "")
                + ": the inputs changed since they were scored. Choose another --output, or pass --overwrite"
            )
        out.remove(sorted(stale))
        out.remove_shard_done(stale_markers)
        gone = set(stale)
        starts = {d: {k: v for k, v in named.items() if v not in gone} for d, named in starts.items()}
    removed = out.remove_leftovers(names)
    if removed:
        log.info("removed %d temporary files of an interrupted run", removed)
    tasks = [ShardTask(s, tuple(sorted(starts[d])), tuple(starts[d][k] for k in sorted(starts[d])))
             for d, s in by_digest.items() if d not in done]
    return Plan(tasks=sorted(tasks, key=lambda t: t.shard.rel), done=done, changed=bool(stale or stale_markers or damaged))


def _marker_matches(marker: dict, shard: Shard) -> bool:
    """Whether a done marker describes this shard as it is now: its size, and its modification stamp (mtime or
    ETag) where both the marker and the listing have one (markers of older versions have none)."""
    if marker.get("size") != shard.size:
        return False
    recorded, now = marker.get("modified"), getattr(shard, "modified", None)
    return recorded is None or now is None or recorded == now


def _damaged_parts(out: ScoresDir, shards: dict[str, Shard], done: dict[str, dict], n: int, job: str,
                   whole: bool = False) -> dict[str, list[str]]:
    """digest -> the parts of that finished shard that are not whole: a size other than the one its marker
    recorded or, on a local disk, no Parquet footer at its end (an open and 8 bytes read each; on a store the
    sizes of one listing); for markers without sizes, a footer that does not read or whose stamp is not this job's
    for that place (:mod:`hardfocus.parts`); with ``whole`` (--overwrite), any part the verified reader refuses when it
    reads it whole (its stamp, its columns' digests)."""
    sized = {d: m for d, m in done.items() if isinstance(m.get("part_bytes"), list)}
    expected = {d: expected_parts(shards[d], done[d]["rows"], n) for d in done}
    names = [name for d in sized for name in expected[d]]
    ends = out.local_part_ends(names) if out.is_local else {k: (v, True) for k, v in out.part_sizes(names).items()}
    broken: dict[str, list[str]] = {}
    for d, marker in sized.items():
        bad = [name for name, size in zip(expected[d], marker["part_bytes"]) if ends.get(name) != (size, True)]
        if bad or len(marker["part_bytes"]) != len(expected[d]):
            broken[d] = bad or expected[d][:1]
    unsized = [(d, name) for d in done if d not in sized for name in expected[d]]
    for (d, name), meta in zip(unsized, prefetched(lambda item: read_footer(out.fs, out.join(item[1])), unsized, depth=16)):
        if isinstance(meta, Exception) or _stamp_problem(meta, job, shards[d], name):
            broken.setdefault(d, []).append(name)
    if whole:
        whole_names = [(d, name) for d in done for name in expected[d] if name not in broken.get(d, [])]

        def refused(item: tuple[str, str]) -> bool:
            d, name = item
            bounds = parse_part_name(name)
            try:
                read_part(out.url_of(name), score_part_expected(job, part_place(shards[d], *bounds[1:])))
            except HardfocusError:
                return True
            return False

        for (d, name), bad in zip(whole_names, prefetched(refused, whole_names, depth=4)):
            if bad:
                broken.setdefault(d, []).append(name)
    return broken


def _stamp_problem(meta, job: str, shard: Shard, name: str) -> bool:
    """Whether a part's footer ``meta`` fails its stamp's check (this job's, in the place its name says)."""
    bounds = parse_part_name(name)
    try:
        check_stamp(name, meta.metadata, meta.num_rows, score_part_expected(job, part_place(shard, *bounds[1:])))
    except HardfocusError:
        return True
    return False


def _want_compile(cfg: ScoreConfig, pending: list[ShardTask]) -> bool:
    """torch.compile costs 30-75 s per actor (less with a warm inductor cache) and pays back its
    time after about 1 MiB of text on a 2-core CPU; ``auto`` asks for 8 MiB per actor to be safe."""
    if cfg.compile != "auto":
        return cfg.compile == "on"
    return sum(t.shard.size for t in pending) / cfg.actors >= _COMPILE_MIN_BYTES_PER_ACTOR


@dataclass
class Tally:
    """What this run scored: parts, rows the model ran on, their tokens."""

    units: int = 0
    rows: int = 0
    tokens: int = 0
    nodes: dict[str, int] = field(default_factory=dict)  # units scored per host / Ray node
    actor_s: float = 0.0  # seconds spent scoring units, summed over actors


@dataclass
class _ShardProgress:
    task: ShardTask
    counts: dict = field(default_factory=lambda: dict(EMPTY_COUNTS))
    units: int = 0
    rows: int | None = None  # known when the task's end record arrives
    consumed: float = 0.0
    part_bytes: dict[int, int] = field(default_factory=dict)  # unit start -> its part's size (0: not known)


def _run(plan: Plan, out: ScoresDir, cfg: ScoreConfig, resolved: ResolvedModel, compiled: bool, progress: bool,
         job: str) -> Tally:
    """Score the pending shards with a progress bar over their bytes; mark each shard done as its last unit lands."""
    with native_stderr_to_file() if cfg.executor == "ray" else contextlib.nullcontext():
        return score_pending(plan, out, cfg, resolved, compiled, progress, job)


def score_pending(plan: Plan, out: ScoresDir, cfg: ScoreConfig, resolved: ResolvedModel, compiled: bool,
                  progress: bool, job: str = "", work: UnitWork = WORK) -> Tally:
    """The driver loop: the plan's tasks through the executor ``cfg`` names (``work``: what reads a shard and what
    scores a unit, :class:`scoring.executors.UnitWork`, a seam for benchmarks), each shard marked done as its last
    unit lands; returns what this run scored."""
    tally = Tally()
    started_ray = False
    if cfg.executor == "ray":
        started_ray = init_ray(cfg.ray_address, packages=[_SCORING_DIR])
        summaries = run_ray(plan.tasks, cfg, resolved.fingerprint, compiled,
                            started_local=started_ray and starts_local_ray(cfg.ray_address), fence=out.fence(), job=job, work=work)
    else:
        summaries = run_local(plan.tasks, cfg, resolved.fingerprint, compiled, fence=out.fence(), job=job, work=work)
    shards = {t.to_row()["task"]: _ShardProgress(t) for t in plan.tasks}
    scoring_now: dict[tuple[str, int], tuple[int, int]] = {}  # (task, unit start) -> rows, tokens scored so far
    bar = ScoringProgress(sum(t.shard.size for t in plan.tasks), enabled=progress)
    consumed = 0.0
    try:
        for summary in summaries:
            if summary["error"]:
                raise HardfocusError(summary["error"])
            state = shards[summary["task"]]
            size = state.task.shard.size
            if summary["consumed"] > state.consumed:  # units finish out of order on several actors
                consumed += (summary["consumed"] - state.consumed) * size
                state.consumed = summary["consumed"]
            if summary["kind"] == "progress":
                scoring_now[summary["task"], summary["start"]] = (
                    summary["scored"], json.loads(summary["counts"])["tokens"]
                )
            elif summary["kind"] == "end":
                state.rows = summary["stop"]
            else:
                scoring_now.pop((summary["task"], summary["start"]), None)
                counts = json.loads(summary["counts"])
                state.units += 1
                state.counts = merge_counts(state.counts, counts)
                state.part_bytes[summary["start"]] = int(summary.get("bytes") or 0)
                if summary["kind"] == "score":
                    tally.nodes[summary["node"]] = tally.nodes.get(summary["node"], 0) + 1
                    tally.units += 1
                    tally.rows += summary["scored"]
                    tally.tokens += counts["tokens"]
                    tally.actor_s += summary["seconds"]
            if state.rows is not None and state.units == math.ceil(state.rows / cfg.rows_per_unit):
                plan.done[shard_digest(state.task.shard)] = _mark_done(out, state, cfg.rows_per_unit)
                del shards[summary["task"]]
            bar.update(consumed, tally.rows + sum(r for r, _ in scoring_now.values()),
                       tally.tokens + sum(t for _, t in scoring_now.values()))
    finally:
        bar.close()
        summaries.close()  # stop Ray Data's iteration while Ray is still up
        if started_ray:
            import ray

            ray.shutdown()
    if shards:
        raise RuntimeError(f"{len(shards)} shards did not finish (e.g. {redact(next(iter(shards.values())).task.shard.url)})")
    return tally


def _mark_done(out: ScoresDir, state: _ShardProgress, rows_per_unit: int) -> dict:
    shard = state.task.shard
    if state.rows == 0:
        log.warning("input shard %s has no rows (listed in the manifest with rows 0)", redact(shard.url))
    marker = {"rel": shard.rel, "url": redact(shard.url), "size": shard.size, "modified": getattr(shard, "modified", None),
              "rows": state.rows, "rows_per_unit": rows_per_unit, "counts": state.counts}
    sizes = [state.part_bytes.get(start, 0) for start in range(0, state.rows, rows_per_unit)]
    if all(sizes):  # what a resume checks each finished part against (one stat each)
        marker["part_bytes"] = sizes
    out.write_shard_done(shard_digest(shard), marker)
    return marker


def check_parts(out: ScoresDir, shards: list[Shard], done: dict[str, dict], rows_per_unit: int) -> tuple[set[str], dict]:
    """The part files, checked to be exactly those the done markers imply, and the counts the markers sum to.

    One listing and a set of names: what a job of N units costs at its end (``benchmarks/scoring_units.py``).
    """
    expected = {name for s in shards for name in expected_parts(s, done[shard_digest(s)]["rows"], rows_per_unit)}
    parts = set(out.parts())
    if parts != expected:
        missing, extra = sorted(expected - parts), sorted(parts - expected)
        raise RuntimeError(f"after the run, {len(missing)} parts are missing (e.g. {missing[:1]}) and {len(extra)} "
                           f"are not expected (e.g. {extra[:1]})")
    counts = EMPTY_COUNTS
    for marker in done.values():
        counts = merge_counts(counts, marker["counts"])
    return parts, counts


def _finalize(out: ScoresDir, cfg, resolved, identity, shards: list[Shard], done: dict[str, dict], run: RunInfo
              ) -> ScoreManifest:
    """Check that the parts are exactly those the done markers imply, count, and write the manifest last."""
    parts, counts = check_parts(out, shards, done, cfg.rows_per_unit)
    counts = ScoreCounts(**counts)
    if cfg.id_column:  # default ids ('<shard>#<row>') are unique by construction
        stamps = ScoresParts(digest(identity), {shard_digest(s): s for s in shards})  # as the manifest will record them
        parts_read = [(out.url_of(name), stamps.expected(name)) for name in sorted(parts)]
        counts.duplicate_ids, counts.duplicate_id_examples = count_duplicate_ids(parts_read)
    if counts.duplicate_ids and cfg.on_error == "stop":
        raise HardfocusError(
            f"{counts.duplicate_ids} rows share a sample id with another row (e.g. {', '.join(counts.duplicate_id_examples)}): "
            f"ids from --id-column '{cfg.id_column}' must be unique; fix them, or pass --on-error record to keep the rows "
            "and report the duplicates"
        )
    if counts.duplicate_ids:
        log.warning(
            "%d rows share a sample id with another row (e.g. %s): ids from --id-column must be unique",
            counts.duplicate_ids, ", ".join(counts.duplicate_id_examples),
        )
    job = out.read_json(SCORES_JOB_FILE) or {"identity": identity, "runs": []}
    job["runs"] = job.get("runs", []) + [run.model_dump()]
    out.commit_json(SCORES_JOB_FILE, job)
    manifest = ScoreManifest(
        model=cfg.model,
        model_path=resolved.path,
        model_fingerprint=resolved.fingerprint,
        tokenizer_fingerprint=identity["tokenizer_fingerprint"],
        max_tokens=cfg.max_tokens,
        dtype=identity["dtype"],
        device=cfg.device,
        add_special_tokens=cfg.add_special_tokens,
        text_column=cfg.text_column,
        id_column=cfg.id_column,
        group_column=cfg.group_column,
        format=cfg.format,
        long_documents=cfg.long_documents,
        window_context=cfg.window_context,
        sample_columns=[c for _, c in columns_of(cfg).sample_columns],
        chat_template_sha256=identity.get("chat_template_sha256"),
        shards=[ShardInfo(url=redact(s.url), location=redact(canonical(s.url)), file_id=file_identity(s.url), rel=s.rel,
                          format=s.format, compression=s.compression, size=s.size, modified=s.modified,
                          rows=done[shard_digest(s)]["rows"]) for s in shards],
        parts=len(parts),
        **counts.model_dump(),
        runs=[RunInfo.model_validate(r) for r in job["runs"]],
        versions=library_versions(),
    )
    out.mark(manifest.model_dump())
    return manifest
