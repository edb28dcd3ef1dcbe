"""What a scoring job of 10^5-10^6 units (part files) costs the driver: planning, the Ray pipeline, the final check.

    python -m benchmarks.scoring_units [--units 1e5,1e6] [--pipeline-units 1e3,1e4] [--shards 1000] \
        [--workdir /tmp/hf-units] [--reuse-pipeline EARLIER.json] [--out benchmarks/results/scoring_units.md]

10^9 rows at the default 2,000 rows per unit are 500,000 units, each scored into its own part file. The model's
time per unit grows with the unit; what the driver spends per unit does not, so this script measures the latter
alone, on the real library functions, with no model:

- ``listing``: ``ScoresDir.parts()`` (the listing every plan and the final check starts with) on a directory of N
  tiny part files (a smallest real Parquet file each: planning reads no rows) and one ``done/`` marker per shard;
- ``plan, rerun of a complete job``: ``scoring.job.plan_shards`` with every shard's marker (the no-op rerun: it
  checks each finished part, its size against the marker's record and, locally, the Parquet footer at its end);
- ``plan, resume``: the same without markers, so every shard is pending with all its parts to skip (a resume
  after a kill at the very end: the most names the plan hands to the tasks);
- ``final check``: ``scoring.job.check_parts`` (the listing against the names the markers imply, and the sum of
  the markers' counts);
- ``pipeline``: the driver loop ``scoring.job.score_pending`` through the real executor (``--executor ray``:
  ``run_ray`` on a local Ray, its one-actor job since 5928fab, a Ray Data job of two ``flat_map`` stages before;
  and ``local``) with the shard reader and the scorer replaced (``scoring.executors.UnitWork``) by functions that
  emit one empty unit record each: the fixed cost of a unit in
  flight (scheduling, a block, the driver's bookkeeping, one ``done/`` marker per shard), not the transfer of its
  tokens.

Each phase runs in a fresh child process (``--phase``) that reports its seconds and its own peak RSS (VmHWM);
``imports only`` is the child's RSS before any phase, so the growth with N is visible. The ratio of the 10^6 to
the 10^5 figure says whether a cost is linear (~10x) or worse.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import command_line, library_versions, load_average, machine_info, write_report

log = logging.getLogger("scoring_units")

ROOT = Path(__file__).resolve().parent.parent
ROWS_PER_UNIT = 2000
PHASES = ("imports", "listing", "plan-noop", "plan-resume", "check")
LABELS = {
    "imports": "imports only (baseline RSS)",
    "listing": "listing the parts",
    "plan-noop": "plan, rerun of a complete job",
    "plan-resume": "plan, resume (no markers)",
    "check": "final check",
    "pipeline-ray": "pipeline, local Ray (run_ray)",
    "pipeline-local": "pipeline, in-process (run_local)",
}


# ---- the child: one phase on one directory ------------------------------------------------------------------


def _shards(n_shards: int, units: int) -> list:
    """Shards of ``units // n_shards`` units each; ``size`` carries the unit count to the fake reader."""
    from hardfocus.readers import Shard

    per = units // n_shards
    return [Shard(url=f"/data/shard-{i:06d}.jsonl.zst", rel=f"shard-{i:06d}.jsonl.zst", format="jsonl",
                  compression="zstd", size=per) for i in range(n_shards)]


def _config(workdir: Path, **kw):
    from scoring.config import ScoreConfig

    return ScoreConfig(inputs=["/data"], output=str(workdir), rows_per_unit=ROWS_PER_UNIT, compile="off", **kw)


def _marker(shard, part_bytes: int) -> dict:
    rows = shard.size * ROWS_PER_UNIT
    counts = {"rows": rows, "rows_by_status": {"ok": rows}, "error_examples": [], "tokens": rows * 100, "truncated": 0}
    return {"rel": shard.rel, "url": shard.url, "size": shard.size, "rows": rows, "rows_per_unit": ROWS_PER_UNIT,
            "counts": counts, "part_bytes": [part_bytes] * shard.size}


def _tiny_part() -> bytes:
    """The bytes of a smallest real Parquet file: what a rerun checks of each part (its size, its footer's tail)
    is there, as in a real directory; the rows are not (planning never reads them)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": pa.array([], pa.int8())}), buffer)
    return buffer.getvalue()


def make_directory(workdir: Path, n_shards: int, units: int) -> None:
    """N tiny part files with the names the job would write, and a done marker per shard."""
    from hardfocus.contracts.scores import DONE_DIR
    from scoring.job import SCORES_JOB_FILE
    from scoring.output import ScoresDir
    from scoring.units import expected_parts, shard_digest

    out = ScoresDir(str(workdir))
    out.create()
    part = _tiny_part()
    for shard in _shards(n_shards, units):
        for name in expected_parts(shard, shard.size * ROWS_PER_UNIT, ROWS_PER_UNIT):
            (workdir / name).write_bytes(part)
        (workdir / DONE_DIR / f"{shard_digest(shard)}.json").write_text(json.dumps(_marker(shard, len(part))))
    out.write_json(SCORES_JOB_FILE, {"identity": {"benchmark": "scoring_units"}, "runs": []})


def _fake_reader(row: dict, cfg, model_fingerprint: str, job: str = ""):
    """One empty ``score`` record per unit of the shard, then its ``end``: the records' shape, not their payload."""
    from scoring.units import EMPTY_COUNTS, ShardTask

    task = ShardTask.from_json(row["task"])
    units, n = task.shard.size, cfg.rows_per_unit
    counts = json.dumps(EMPTY_COUNTS)
    for k in range(units):
        yield {"task": row["task"], "kind": "score", "start": k * n, "stop": (k + 1) * n, "begin": k / units,
               "consumed": (k + 1) / units, "tokenized": b"", "counts": counts, "error": None}
    yield {"task": row["task"], "kind": "end", "start": 0, "stop": units * n, "begin": 1.0, "consumed": 1.0,
           "tokenized": b"", "counts": counts, "error": None}


class _FakeScorer:
    """The summary a scorer returns for a unit (n rows, 100 tokens each), without a model."""

    def __init__(self, cfg, model_fingerprint: str, torch_threads: int | None, compiled: bool = False, fence=None,
                 job: str = ""):
        self.n = cfg.rows_per_unit

    def __call__(self, record: dict):
        counts = {"rows": self.n, "rows_by_status": {"ok": self.n}, "error_examples": [], "tokens": 100 * self.n,
                  "truncated": 0} if record["kind"] == "score" else json.loads(record["counts"])
        yield {k: record[k] for k in ("task", "kind", "start", "stop", "consumed", "error")} | {
            "counts": json.dumps(counts), "scored": self.n if record["kind"] == "score" else 0, "seconds": 0.0,
            "node": "bench"}


def _pipeline(workdir: Path, n_shards: int, units: int, executor: str) -> dict:
    from hardfocus.models import ResolvedModel
    from scoring.executors import UnitWork
    from scoring.job import Plan, score_pending
    from scoring.output import ScoresDir
    from scoring.units import ShardTask

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "done").mkdir(exist_ok=True)
    cfg = _config(workdir, executor=executor)
    plan = Plan(tasks=[ShardTask(s) for s in _shards(n_shards, units)])
    tally = score_pending(plan, ScoresDir(str(workdir)), cfg, ResolvedModel("bench", "/nonexistent", "bench"),
                           compiled=False, progress=False, work=UnitWork(read=_fake_reader, scorer=_FakeScorer))
    if tally.units != units or len(plan.done) != n_shards:
        raise RuntimeError(f"the pipeline returned {tally.units} units and {len(plan.done)} shards, not {units} and "
                           f"{n_shards}")
    return {"units_seen": tally.units}


def run_phase(phase: str, workdir: Path, n_shards: int, units: int) -> dict:
    from hardfocus.contracts.scores import DONE_DIR
    from scoring.job import check_parts, plan_shards
    from scoring.output import ScoresDir

    out, shards, result = ScoresDir(str(workdir)), _shards(n_shards, units), {}
    t0 = time.perf_counter()
    if phase == "make":
        make_directory(workdir, n_shards, units)
    elif phase == "listing":
        result["parts"] = len(out.parts())
    elif phase == "plan-noop":
        plan = plan_shards(out, shards, _config(workdir), job="bench")
        result["pending"], result["done"] = len(plan.tasks), len(plan.done)
    elif phase == "plan-resume":
        hidden = workdir / "done-hidden"
        (workdir / DONE_DIR).rename(hidden)
        (workdir / DONE_DIR).mkdir()
        try:
            t0 = time.perf_counter()
            plan = plan_shards(out, shards, _config(workdir), job="bench")
            seconds = time.perf_counter() - t0
        finally:
            shutil.rmtree(workdir / DONE_DIR)
            hidden.rename(workdir / DONE_DIR)
        result["pending"], result["parts_to_skip"] = len(plan.tasks), sum(len(t.done) for t in plan.tasks)
        result["seconds"] = seconds
    elif phase == "check":
        parts, counts = check_parts(out, shards, out.shard_done_markers(), ROWS_PER_UNIT)
        result["parts"], result["rows"] = len(parts), counts["rows"]
    elif phase.startswith("pipeline-"):
        result |= _pipeline(workdir, n_shards, units, phase.removeprefix("pipeline-"))
    elif phase != "imports":
        raise ValueError(f"unknown phase {phase}")
    result.setdefault("seconds", time.perf_counter() - t0)
    result["peak_rss_mb"] = _vm_hwm_mb()
    return result


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- the parent: every phase at every size, then the report ------------------------------------------------


def child(phase: str, workdir: Path, n_shards: int, units: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scoring_units", "--phase", phase, "--workdir", str(workdir), "--shards", str(n_shards),
           "--units", str(units)]
    load = load_average()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise RuntimeError(f"{phase} at {units} units failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1]) | {"load": load}
    log.info("%s @ %d units: %.2f s, peak RSS %.0f MB", phase, units, result["seconds"], result["peak_rss_mb"])
    return result


def measure(args) -> dict:
    results: dict[str, dict[str, dict]] = {}
    for units in args.units:
        workdir = args.workdir / f"units-{units}"
        if not (workdir / "job.json").exists():
            shutil.rmtree(workdir, ignore_errors=True)
            results.setdefault("make", {})[str(units)] = child("make", workdir, args.shards, units)
        for phase in PHASES:
            results.setdefault(phase, {})[str(units)] = child(phase, workdir, args.shards, units)
    if args.reuse_pipeline:
        earlier = json.loads(args.reuse_pipeline.read_text())
        results |= {k: v for k, v in earlier["results"].items() if k.startswith("pipeline-")}
        args.pipeline_units = earlier["pipeline_units"]
        return results
    for units in args.pipeline_units:
        for executor in ("ray", "local"):
            workdir = args.workdir / f"pipeline-{executor}-{units}"
            shutil.rmtree(workdir, ignore_errors=True)
            results.setdefault(f"pipeline-{executor}", {})[str(units)] = child(
                f"pipeline-{executor}", workdir, min(args.shards, units), units)
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def render(report: dict) -> str:
    r, sizes, psizes = report["results"], report["units"], report["pipeline_units"]
    lines = [
        "# What a scoring job of many units costs the driver",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}; commit {report['commit']}; load average {report['load_start']:.2f} at the start, "
        f"{report['load_end']:.2f} at the end  ",
        f"Machine: {report['machine']['cpu_model']}, {report['machine']['cpus']} CPUs; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        f"{report['shards']} shards, {ROWS_PER_UNIT} rows per unit (10^6 units = 2x10^9 rows); local disk. "
        "Seconds of the phase alone (its child's imports excluded) and the child process's peak RSS.",
        "",
    ]

    def table(phases: list[str], ns: list[int]) -> list[str]:
        head = "| phase | " + " | ".join(f"{n:,} units: s | MB" for n in ns) + " | s ratio, last / first |"
        rows = [head, "|---|" + "---:|---:|" * len(ns) + "---:|"]
        for phase in phases:
            got = [r.get(phase, {}).get(str(n)) for n in ns]
            cells = " | ".join("not run | not run" if g is None else f"{g['seconds']:.2f} | {g['peak_rss_mb']:.0f}" for g in got)
            first, last = got[0], got[-1]
            ratio = (f"{last['seconds'] / first['seconds']:.1f}x for {ns[-1] / ns[0]:.0f}x the units"
                     if first and last and first["seconds"] > 0 and len(ns) > 1 else "")
            rows.append(f"| {LABELS.get(phase, phase)} | {cells} | {ratio} |")
        return rows

    lines += table(["make", *PHASES], sizes) if "make" in r else table(list(PHASES), sizes)
    if psizes:
        lines += ["", "The driver loop with the model replaced (one empty record per unit, one `done/` marker per shard)"
                  + (f", from `{report['pipeline_from']}`" if report.get("pipeline_from") else "") + ":", ""]
        lines += table(["pipeline-ray", "pipeline-local"], psizes)
        ray = [r.get("pipeline-ray", {}).get(str(n)) for n in psizes]
        if len(psizes) > 1 and ray[0] and ray[-1]:
            ms = 1000 * (ray[-1]["seconds"] - ray[0]["seconds"]) / (psizes[-1] - psizes[0])
            lines += ["", f"Marginal cost of a unit through Ray Data ({psizes[0]:,} -> {psizes[-1]:,} units, so Ray's "
                      f"start-up cancels): **{ms:.1f} ms**, so this driver passes at most {1000 / ms:.0f} units/s to the actors "
                      f"({1000 / ms * ROWS_PER_UNIT:,.0f} rows/s at {ROWS_PER_UNIT} rows per unit); the 500,000 units "
                      f"of 10^9 rows take {500_000 * ms / 1000 / 60:.0f} min of it, overlapped with the scoring."]
    lines += ["", *report.get("reading", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", default="1e5,1e6", help="unit counts (comma-separated; one with --phase)")
    p.add_argument("--pipeline-units", default="1e3,1e4", help="unit counts for the pipeline phases ('' = none)")
    p.add_argument("--shards", type=int, default=1000)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/hf-units"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scoring_units.md")
    p.add_argument("--reuse-pipeline", type=Path, default=None,
                   help="take the pipeline phases from this earlier results JSON (their code unchanged) instead of running them")
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # the child's
    p.add_argument("--reading", action="append", default=[], help="a paragraph of reading for the report")
    args = p.parse_args()
    if args.phase:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(run_phase(args.phase, args.workdir, args.shards, int(float(args.units)))))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.units = [int(float(u)) for u in args.units.split(",") if u]
    args.pipeline_units = [int(float(u)) for u in args.pipeline_units.split(",") if u]
    from benchmarks.harness import code_version

    report = {"command": command_line(), "date": time.strftime("%Y-%m-%dT%H:%M%z"), "commit": code_version(),
              "machine": machine_info(), "versions": library_versions(("ray", "pyarrow", "fsspec")),
              "units": args.units, "pipeline_units": args.pipeline_units, "shards": args.shards,
              "load_start": load_average(), "reading": args.reading}
    report["results"] = measure(args)
    report["pipeline_units"], report["pipeline_from"] = args.pipeline_units, args.reuse_pipeline
    report["load_end"] = load_average()
    write_report(args.out, report, render(report))


if __name__ == "__main__":
    main()
