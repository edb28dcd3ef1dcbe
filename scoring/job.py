"""``score``: the scoring stage as a library call. Plans units, skips finished ones, runs the rest, writes the manifest."""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from tqdm.auto import tqdm

from scoring.chat import check_chat_tokenizer, load_chat_template
from scoring.config import ScoreConfig
from scoring.errors import HardfocusError
from scoring.executors import init_ray, run_local, run_ray
from scoring.manifest import RunInfo, ScoreManifest, ShardInfo, count_scores, library_versions
from scoring.model import ResolvedModel, load_tokenizer, resolve_device, resolve_dtype, resolve_model, tokenizer_fingerprint
from scoring.output import JOB_FILE, MANIFEST_FILE, ScoresDir
from scoring.sources import Shard, count_rows, find_shards
from scoring.units import Unit, columns_of, plan_units

log = logging.getLogger(__name__)

_COMPILE_MIN_BYTES_PER_ACTOR = 8 * 1024**2

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


def score(cfg: ScoreConfig, progress: bool = True) -> ScoreResult:
    """Score every row of ``cfg.inputs`` into ``cfg.output``; resumes where a previous run stopped."""
    started_at, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    cfg = cfg.model_copy(update={"chat_template": load_chat_template(cfg.chat_template)})  # workers get the text
    out = ScoresDir(cfg.output)
    out.create()
    out.lock()
    try:
        resolved = resolve_model(cfg.model)
        identity = _job_identity(cfg, resolved)
        shards = find_shards(cfg.inputs)
        shard_rows = _count_rows(shards, cfg)
        units = plan_units(shard_rows, cfg.rows_per_unit)
        existing = _reconcile(out, identity, {u.part for u in units}, cfg.overwrite)
        pending = [u for u in units if u.part not in existing]
        manifest = out.read_json(MANIFEST_FILE)
        if not pending and manifest is not None:
            log.info("%s is complete (%d parts): nothing to score", cfg.output, len(units))
            return ScoreResult(cfg.output, ScoreManifest.model_validate(manifest), units_scored=0)
        if manifest is not None:
            out.remove([MANIFEST_FILE])  # the manifest marks a complete directory; it is not, until the end
        log.info(
            "%d shards, %d rows in %d units: %d units already scored, %d to score",
            len(shards), sum(r for _, r in shard_rows), len(units), len(units) - len(pending), len(pending),
        )
        compiled = _want_compile(cfg, pending, dict((s.url, r) for s, r in shard_rows))
        units_scored, rows_scored, tokens_scored = (
            _run(pending, cfg, resolved, compiled, progress) if pending else (0, 0, 0)
        )
        wall = time.perf_counter() - t0  # the whole call: model, planning, Ray start, scoring, writes
        run = RunInfo(
            started_at=started_at, wall_s=wall, units_scored=units_scored, units_reused=len(units) - len(pending),
            rows_scored=rows_scored, tokens_scored=tokens_scored, tokens_per_s=tokens_scored / wall,
        )
        manifest = _finalize(out, cfg, resolved, identity, shard_rows, units, run)
    finally:
        out.unlock()
    result = ScoreResult(cfg.output, manifest, len(pending))
    log.debug(summary_line(result))  # the CLI prints it; a library caller has it in the result
    return result


def summary_line(result: ScoreResult) -> str:
    """rows per status, tokens, and this run's tokens, wall time and tokens/s (or that nothing was left)."""
    m = result.manifest
    statuses = ", ".join(f"{k} {v}" for k, v in m.rows_by_status.items())
    run = m.runs[-1]
    this_run = (
        f"this run: {run.tokens_scored} tokens in {run.wall_s:.1f}s, {run.tokens_per_s:.0f} tokens/s"
        if result.units_scored else "already complete, nothing scored in this run"
    )
    return f"scored {m.rows} rows ({statuses}) | {m.tokens} tokens | {this_run} | {result.output}"


def _job_identity(cfg: ScoreConfig, resolved: ResolvedModel) -> dict:
    tokenizer = load_tokenizer(resolved.path)
    if cfg.format != "text":
        check_chat_tokenizer(tokenizer, cfg.chat_template)
    device = resolve_device(cfg.device)
    values = cfg.model_dump() | {
        "model_fingerprint": resolved.fingerprint,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "dtype": str(resolve_dtype(cfg.dtype, device)).removeprefix("torch."),
        "chat_template_sha256": _template_sha256(cfg, tokenizer),
    }
    keys = _IDENTITY_KEYS + (_CHAT_IDENTITY_KEYS if cfg.format != "text" else ())
    return {k: values[k] for k in keys}


def _template_sha256(cfg: ScoreConfig, tokenizer) -> str | None:
    """The chat template that renders conversations (the configured one, else the tokenizer's)."""
    if cfg.format == "text":
        return None
    template = cfg.chat_template or tokenizer.chat_template
    return hashlib.sha256(str(template).encode()).hexdigest()


def _count_rows(shards: list[Shard], cfg: ScoreConfig) -> list[tuple[Shard, int]]:
    columns = columns_of(cfg)
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(lambda s: count_rows(s, columns), shards))
    for shard, n in zip(shards, rows):
        if n == 0 and cfg.on_error == "stop":
            raise HardfocusError(f"input shard {shard.url} has no rows; remove it, or pass --on-error record to go on")
        if n == 0:
            log.warning("input shard %s has no rows (listed in the manifest with rows 0)", shard.url)
    return list(zip(shards, rows))


def _reconcile(out: ScoresDir, identity: dict, planned: set[str], overwrite: bool) -> set[str]:
    """Check the directory holds only parts of this job; returns the finished parts to keep."""
    previous = out.read_json(JOB_FILE)
    existing = set(out.parts())
    if previous is not None and previous.get("identity") != identity:
        differs = sorted(k for k in identity if previous.get("identity", {}).get(k) != identity[k])
        if not overwrite:
            raise HardfocusError(
                f"{out.url} holds scores computed with a different configuration (differs in: {', '.join(differs)}); "
                "choose another --output, or pass --overwrite to replace them"
            )
        out.remove(sorted(existing) + [MANIFEST_FILE])
        existing = set()
    stale = existing - planned
    if stale:
        if not overwrite:
            raise HardfocusError(
                f"{out.url} holds {len(stale)} part files that the current inputs do not produce (e.g. {min(stale)}): "
                "the inputs changed since they were scored. Choose another --output, or pass --overwrite"
            )
        out.remove(sorted(stale))
        existing -= stale
    removed = out.remove_leftovers()
    if removed:
        log.info("removed %d temporary files of an interrupted run", removed)
    same_job = previous is not None and previous.get("identity") == identity
    out.write_json(JOB_FILE, {"identity": identity, "runs": previous.get("runs", []) if same_job else []})
    return existing


def _want_compile(cfg: ScoreConfig, pending: list[Unit], rows_of: dict[str, int]) -> bool:
    """torch.compile costs 30-75 s per actor (less with a warm inductor cache) and pays back its
    time after about 1 MiB of text on a 2-core CPU; ``auto`` asks for 8 MiB per actor to be safe."""
    if cfg.compile != "auto":
        return cfg.compile == "on"
    pending_bytes = sum(u.shard.size * (u.stop - u.start) / max(rows_of[u.shard.url], 1) for u in pending)
    return pending_bytes / cfg.actors >= _COMPILE_MIN_BYTES_PER_ACTOR


def _run(
    pending: list[Unit], cfg: ScoreConfig, resolved: ResolvedModel, compiled: bool, progress: bool
) -> tuple[int, int, int]:
    """Score the pending units with a progress bar over rows; returns (units, rows, tokens) scored."""
    t0 = time.perf_counter()
    rows = tokens = done = 0
    started_ray = False
    if cfg.executor == "ray":
        started_ray = init_ray(cfg.ray_address)
        summaries = run_ray(pending, cfg, resolved.fingerprint, compiled, started_local=started_ray and not cfg.ray_address)
    else:
        summaries = run_local(pending, cfg, resolved.fingerprint, compiled)
    bar = tqdm(total=sum(u.stop - u.start for u in pending), unit="rows", disable=not progress, mininterval=1.0)
    try:
        for summary in _user_errors_unwrapped(summaries):
            done += 1
            rows += summary["rows"]
            tokens += summary["tokens"]
            bar.update(summary["rows"])
            bar.set_postfix(units=f"{done}/{len(pending)}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
    finally:
        bar.close()
        if started_ray:
            import ray

            ray.shutdown()
    return done, rows, tokens


def _user_errors_unwrapped(summaries):
    """Raise the HardfocusError a Ray task or actor reported in its summary's ``error``."""
    for summary in summaries:
        if summary.get("error"):
            raise HardfocusError(summary["error"])
        yield summary


def _finalize(out, cfg, resolved, identity, shard_rows, units: list[Unit], run: RunInfo) -> ScoreManifest:
    """Verify one part per unit with exactly the unit's rows, count, and write the manifest last."""
    parts = set(out.parts())
    missing = [u.part for u in units if u.part not in parts]
    if missing:
        raise RuntimeError(f"{len(missing)} units have no part file after the run (e.g. {missing[0]})")
    for u in units:
        if (n := out.part_rows(u.part)) != u.stop - u.start:
            raise RuntimeError(f"part {u.part} has {n} rows, expected {u.stop - u.start}")
    counts = count_scores(out.urls(sorted(u.part for u in units)))
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
    job = out.read_json(JOB_FILE) or {"identity": identity, "runs": []}
    job["runs"] = job.get("runs", []) + [run.model_dump()]
    out.write_json(JOB_FILE, job)
    manifest = ScoreManifest(
        model=cfg.model,
        model_path=resolved.path,
        model_fingerprint=resolved.fingerprint,
        tokenizer_fingerprint=identity["tokenizer_fingerprint"],
        max_tokens=cfg.max_tokens,
        dtype=identity["dtype"],
        device=str(resolve_device(cfg.device)),
        add_special_tokens=cfg.add_special_tokens,
        text_column=cfg.text_column,
        id_column=cfg.id_column,
        group_column=cfg.group_column,
        format=cfg.format,
        sample_columns=[c for _, c in columns_of(cfg).sample_columns],
        chat_template_sha256=identity.get("chat_template_sha256"),
        shards=[ShardInfo(url=s.url, rel=s.rel, format=s.format, compression=s.compression, size=s.size, rows=r)
                for s, r in shard_rows],
        parts=len(units),
        **counts.model_dump(),
        runs=[RunInfo.model_validate(r) for r in job["runs"]],
        versions=library_versions(),
    )
    expected = sum(r for _, r in shard_rows)
    if manifest.rows != expected:
        raise RuntimeError(f"scores hold {manifest.rows} rows but the inputs have {expected}")
    out.write_json(MANIFEST_FILE, manifest.model_dump())
    return manifest
