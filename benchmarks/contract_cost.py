"""What the one part contract costs each stage: its digests and stamps, as a share of the stage's own wall time.

    python -m benchmarks.contract_cost [--docs 160] [--select-rows 1e6] [--export-rows 60000] \\
        [--workdir /tmp/hf-contract] [--out benchmarks/results/contract_cost.md]

Each stage runs once for real, the library call in this process, and its wall time is the base. Then the work the
contract added to that run is timed alone, on the very data the run read and wrote (each figure the median of three
repetitions), so the share is measured, not inferred from two noisy whole runs:

- ``score`` (SmolLM2-135M, ``--executor local``): each row's ``source_digest`` (the xxh3-64 of its sample, over the
  samples the readers give) and each part's stamp (:func:`hardfocus.parts.stamped`: a digest of every column);
- ``select`` (synthetic scores in the exact contract, :mod:`benchmarks.selection_data`): the digests of every column
  the verified reader reads (the ranking pass and the write pass) and the stamps of every part it writes (decisions,
  training parts);
- ``export`` (a JSON Lines corpus of real text, its scores made up but each row's digest real, a selection of half):
  the digests of the decisions and score columns read, each exported row's source digest checked, each part's stamp
  and the XXH3-64 digest of its bytes the manifest records.

Before the contract the stages did none of this work, so the share is the cost of the contract; a figure under 1% is
below what two whole runs on a shared machine can tell apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    command_line,
    fmt,
    library_versions,
    load_average,
    machine_info,
    machine_lines,
    markdown_table,
    write_report,
)

log = logging.getLogger("contract_cost")
MODEL_SPEC = "smollm2-135m"
REPS = 3


def _median_seconds(fn: Callable[[], object], reps: int = REPS) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _parts(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-*.parquet"))


def _stamp_seconds(paths: Sequence[Path]) -> float:
    """The digests of every column of these parts, as their writers computed them for the stamp."""
    import pyarrow.parquet as pq

    from hardfocus.parts import column_digests

    tables = [pq.read_table(p) for p in paths]
    return _median_seconds(lambda: [column_digests(t) for t in tables])


def _column_seconds(paths: Sequence[Path], columns: Sequence[str]) -> float:
    """The digests of ``columns`` of these parts, as the verified reader computes them when it reads them."""
    import pyarrow.parquet as pq

    from hardfocus.parts import ColumnDigest

    tables = [pq.read_table(p, columns=[c for c in columns if c in pq.read_schema(p).names]) for p in paths]
    return _median_seconds(lambda: [ColumnDigest().update(t[c]).hexdigest() for t in tables for c in t.column_names])


# ---- score -----------------------------------------------------------------------------------------------------


def measure_score(workdir: Path, docs: int, seed: int) -> dict:
    from benchmarks.speed_corpus import make_corpus
    from hardfocus.models import resolve_model
    from hardfocus.readers import find_shards, iter_units
    from hardfocus.sample_format import Columns
    from hardfocus.tokenizers import load_tokenizer
    from scoring import ScoreConfig, score
    from scoring.unit_tables import source_digests

    path = resolve_model(MODEL_SPEC).path
    corpus = workdir / "score-corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    texts = [d.text for d in make_corpus(load_tokenizer(path), docs, seed)]
    (corpus / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = workdir / "scores"
    shutil.rmtree(out, ignore_errors=True)
    cfg = ScoreConfig(inputs=[str(corpus)], output=str(out), model=MODEL_SPEC, executor="local", rows_per_unit=40,
                      compile="off")
    load = load_average()
    t0 = time.perf_counter()
    result = score(cfg, progress=False)
    wall = time.perf_counter() - t0
    blocks = [u.block for shard in find_shards([str(corpus)]) for u in iter_units(shard, Columns(), cfg.rows_per_unit)]
    digests = _median_seconds(lambda: [source_digests(b) for b in blocks])
    stamps = _stamp_seconds(_parts(out))
    return {"stage": "score", "rows": result.manifest.rows, "tokens": result.manifest.tokens, "parts": len(_parts(out)),
            "wall_s": wall, "contract_s": digests + stamps,
            "pieces": {"each row's source digest": digests, "each part's stamp": stamps}, "load_1m": load}


# ---- select ----------------------------------------------------------------------------------------------------


def measure_select(workdir: Path, rows: int, seed: int) -> dict:
    from benchmarks.selection_data import ROWS_PER_PART, ensure_scores
    from selection import SelectConfig, select

    scores, _ = ensure_scores(workdir, rows, ROWS_PER_PART, seed)
    out = workdir / "selected"
    shutil.rmtree(out, ignore_errors=True)
    load = load_average()
    t0 = time.perf_counter()
    select(SelectConfig(scores=[str(scores)], output=str(out), report=False), progress=False)
    wall = time.perf_counter() - t0
    parts = _parts(scores)
    ranking = _column_seconds(parts, ["group", "loss", "status"])
    writing = _column_seconds(parts, ["sample_id", "shard", "row", "group", "loss", "input_ids", "loss_spans"])
    stamps = _stamp_seconds([*_parts(out), *_parts(out / "decisions")])
    return {"stage": "select", "rows": rows, "parts": len(parts), "wall_s": wall, "contract_s": ranking + writing + stamps,
            "pieces": {"digests of the columns the ranking pass reads": ranking,
                       "digests of the columns the write pass reads": writing,
                       "stamps of the parts written (decisions, training)": stamps}, "load_1m": load}


# ---- export ----------------------------------------------------------------------------------------------------


def _export_corpus(workdir: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """A JSON Lines shard of ``rows`` windows of real text, and scores of it in the exact contract: made-up losses,
    each row's source digest that of its text as the readers read it."""
    import pyarrow.parquet as pq

    from benchmarks.speed_corpus import source_files
    from hardfocus.contracts.scores import SCORES_LAYOUT, ScoreManifest, ShardInfo, rel_digest, scores_table
    from hardfocus.fingerprints import digest
    from hardfocus.parts import stamped
    from hardfocus.readers import Shard, read_shard
    from hardfocus.readers.shard import sample_digest
    from hardfocus.sample_format import Columns
    from hardfocus.versions import library_versions as versions

    rng = np.random.default_rng(seed)
    pool = [p.read_text(errors="replace")[:20_000] for paths in source_files().values() for p in paths[:200]]
    pool = [t for t in pool if len(t) > 400]
    corpus = workdir / "export-corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    shard = corpus / "docs.jsonl"
    with open(shard, "w") as f:
        for i in range(rows):
            text = pool[rng.integers(len(pool))]
            n = int(rng.integers(100, min(len(text), 4000)))
            start = int(rng.integers(0, len(text) - n + 1))
            f.write(json.dumps({"text": text[start : start + n], "i": i}) + "\n")
    stat = shard.stat()
    info = ShardInfo(url=str(shard), location=str(shard), rel=shard.name, format="jsonl", compression=None,
                     size=stat.st_size, modified=str(stat.st_mtime_ns), rows=rows)
    block = read_shard(Shard(url=str(shard), rel=shard.name, format="jsonl", compression=None, size=stat.st_size),
                       Columns())
    digests = [None if status else sample_digest(value) for value, status in zip(block.values, block.status)]
    scores = workdir / "export-scores"
    shutil.rmtree(scores, ignore_errors=True)
    scores.mkdir()
    identity = {"parts": SCORES_LAYOUT, "benchmark": "contract_cost", "rows": rows, "seed": seed}
    (scores / "job.json").write_text(json.dumps({"stage": "scores", "identity": identity}))
    losses = rng.gamma(4, 0.7, rows)
    per_part = 2000
    for start in range(0, rows, per_part):
        stop = min(start + per_part, rows)
        n = stop - start
        table = scores_table({
            "sample_id": [f"{shard.name}#{r}" for r in range(start, stop)], "shard": [shard.name] * n,
            "row": np.arange(start, stop), "group": ["web"] * n, "n_tokens": np.full(n, 100, np.int32),
            "loss": losses[start:stop].astype(np.float32), "nll_sum": losses[start:stop] * 100,
            "truncated": np.zeros(n, bool), "status": ["ok"] * n, "source_digest": digests[start:stop],
        }, with_input_ids=False)
        place = {"shard": shard.name, "shard_size": info.size, "shard_modified": info.modified, "start": start, "stop": stop}
        name = f"part-{rel_digest(shard.name)}-{start:010d}-{stop:010d}.parquet"
        pq.write_table(stamped(table, "scores", digest(identity), place), scores / name, compression="zstd")
    manifest = ScoreManifest(
        model="synthetic", model_path="/nowhere", model_fingerprint="synthetic", tokenizer_fingerprint="synthetic",
        max_tokens=1024, dtype="bfloat16", device="cpu", add_special_tokens=True, text_column="text", id_column=None,
        group_column=None, shards=[info], parts=math.ceil(rows / per_part), rows=rows, rows_by_status={"ok": rows},
        runs=[], versions=versions(),
    )
    (scores / "manifest.json").write_text(json.dumps(manifest.model_dump()))
    return shard, scores


def measure_export(workdir: Path, rows: int, seed: int) -> dict:
    import xxhash

    from exporting import ExportConfig, export
    from exporting.content import text_digests
    from selection import SelectConfig, select

    shard, scores = _export_corpus(workdir, rows, seed)
    selected = workdir / "export-selected"
    shutil.rmtree(selected, ignore_errors=True)
    select(SelectConfig(scores=[str(scores)], output=str(selected), drop_top=0.1, keep=0.5, report=False), progress=False)
    results = []
    for fmt_name in ("parquet", "jsonl"):
        out = workdir / f"export-{fmt_name}"
        shutil.rmtree(out, ignore_errors=True)
        load = load_average()
        t0 = time.perf_counter()
        result = export(ExportConfig(selected=str(selected), output=str(out), format=fmt_name, executor="local"),
                        progress=False)
        wall = time.perf_counter() - t0
        decisions = _column_seconds(_parts(selected / "decisions"), ["row", "band", "sample_id", "shard", "reason",
                                                                      "score", "loss", "weight"])
        scored = _column_seconds(_parts(scores), ["source_digest"])
        texts = [_exported_texts(p, fmt_name) for p in sorted(out.glob("part-*"))]
        rows_checked = _median_seconds(lambda texts=texts: [text_digests(t) for t in texts])
        files = [p.read_bytes() for p in sorted(out.glob("part-*"))]
        file_digests = _median_seconds(lambda files=files: [xxhash.xxh3_64(b).hexdigest() for b in files])
        stamps = _stamp_seconds(sorted(out.glob("part-*.parquet"))) if fmt_name == "parquet" else 0.0
        results.append({
            "stage": f"export ({fmt_name})", "rows": result.manifest.rows, "parts": len(files), "wall_s": wall,
            "contract_s": decisions + scored + rows_checked + file_digests + stamps,
            "pieces": {"digests of the decisions columns read": decisions,
                       "digests of the scores' source_digest column read": scored,
                       "each exported row's source digest checked": rows_checked,
                       "the xxh3 of each part's bytes": file_digests,
                       "each Parquet part's stamp": stamps},
            "load_1m": load,
        })
    return {"arms": results}


def _exported_texts(path: Path, fmt_name: str):
    """The text column of an exported part (what the export checked each row's digest of)."""
    import polars as pl
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["text"])["text"] if fmt_name == "parquet" else pl.read_ndjson(path).to_arrow()["text"]


# ---- report ----------------------------------------------------------------------------------------------------


def render(report: dict) -> str:
    rows = [[a["stage"], f"{a['rows']:,}", a["parts"], fmt(a["wall_s"], ".2f"), fmt(a["contract_s"], ".3f"),
             fmt(100 * a["contract_s"] / a["wall_s"], ".2f") + "%", fmt(a["load_1m"], ".2f")] for a in report["arms"]]
    pieces = [[a["stage"], name, fmt(seconds, ".4f"), fmt(100 * seconds / a["wall_s"], ".3f") + "%"]
              for a in report["arms"] for name, seconds in a["pieces"].items()]
    m = report["machine"]
    return "\n".join([
        "# What the part contract costs each stage",
        "",
        f"Measured {report['date']} ({report['minutes']:.1f} min in all), hardfocus {report['code']}.",
        "",
        "`" + report["command"] + "`",
        "",
        "Each stage ran once, for real, in this process; its wall time is the base. The work the contract added to it",
        "(digests and stamps) was then timed alone on the data that run read and wrote (the median of three). Before",
        "the contract the stages did none of it, so the share is the contract's cost.",
        "",
        markdown_table(["stage", "rows", "parts", "wall s", "contract s", "share", "load (1 min)"], rows, "lr"),
        "",
        markdown_table(["stage", "work", "s", "share"], pieces, "llr"),
        "",
        "## Reading",
        "",
        *report["reading"],
        "",
        "## Machine",
        "",
        *machine_lines(m, report["versions"]),
    ]) + "\n"


def reading(arms: list[dict]) -> list[str]:
    lines = []
    for a in arms:
        share = a["contract_s"] / a["wall_s"]
        biggest = max(a["pieces"].items(), key=lambda kv: kv[1])
        lines.append(f"- {a['stage']}: {100 * share:.2f}% of its wall time ({'under' if share < 0.01 else 'over'} 1%); "
                     f"the most of it: {biggest[0]} ({biggest[1]:.3f} s).")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=160, help="documents scored by SmolLM2-135M")
    ap.add_argument("--select-rows", type=float, default=1e6, help="rows of synthetic scores selected")
    ap.add_argument("--export-rows", type=int, default=60_000, help="rows of the exported corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hf-contract"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/contract_cost.md"))
    ap.add_argument("--only", choices=["score", "select", "export"], help="measure one stage")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    from benchmarks.harness import code_version

    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    arms = []
    if args.only in (None, "score"):
        arms.append(measure_score(args.workdir, args.docs, args.seed))
    if args.only in (None, "select"):
        arms.append(measure_select(args.workdir, int(args.select_rows), args.seed))
    if args.only in (None, "export"):
        arms += measure_export(args.workdir, args.export_rows, args.seed)["arms"]
    report = {"command": command_line(argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "minutes": (time.perf_counter() - started) / 60, "code": code_version(), "machine": machine_info(),
              "versions": library_versions(), "arms": arms, "reading": reading(arms)}
    write_report(args.out, report, render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
