"""Selection speed and peak memory: ``hardfocus select`` against a plain single-threaded pyarrow loop doing the
same writes, and a straightforward pandas version, same run.

    python -m benchmarks.selection_speed [--sizes 1e6,1e7] [--workdir /tmp/hardfocus-selection-speed] \
        [--out benchmarks/results/selection_speed.md] [--rows-per-part 2000] [--seed 0] \
        [--mem-limit-gb 16] [--skip-pandas] [--keep-outputs] [--rounds 2] [--quiet-wait-s 900] [--quiet-threshold 0.3]

For every size N:

1. synthetic scores/ of N rows as ``hardfocus score`` writes them with its defaults, ``input_ids`` included
   (``selection_data``: about 600 tokens and 1.1 KB of zstd Parquet per row, so 10^8 rows need ~110 GB of
   disk), in part files of ``--rows-per-part`` rows (scoring's ``rows_per_unit``), seeded, and reused from
   ``--workdir`` when a previous run made it with the same parameters;
2. ``hardfocus select <scores> -o <out> --no-report``: the real CLI with its defaults (global ranking,
   drop_top 0.1, keep 0.5, IR-DRO at temperature 1; the write pass on min(4, CPUs) threads), in a fresh
   subprocess; its write pass (each score part read once, its decisions part and its training part written)
   is timed by the line it logs;
3. the same ``select`` with the write pass on one thread (``_select``: ``selection.job.select`` in a fresh
   process, ``write_selection(workers=1)``): the thread pool's gain is its write pass over the CLI's;
4. the plain pyarrow loop (``_plain``), single-threaded, in a fresh subprocess: for each score part
   ``pq.read_table`` of the columns a training part holds (sample_id, shard, row, group, loss, input_ids),
   ``take`` of the kept rows (given: the hardfocus selection's own, from its decisions), ``pq.write_table``
   (zstd); the same write work as hardfocus's training parts, without the decisions. Timed as a whole process
   and its loop alone; its output must hold the rows of hardfocus's training parts, in order;
5. the plain loop writing also each part's decisions (``_plain --decisions``: hardfocus's own decisions tables,
   read before its loop starts, written as hardfocus writes them): the plain loop plus the decisions' share,
   the bar for hardfocus's single-threaded write pass;
6. the pandas baseline (``_pandas`` below): read the parquet parts, keep status ok & finite loss, sort by
   loss descending then sample_id, take the band, loss_rank = (rows with a higher loss) / (n - 1),
   log-sum-exp softmax weights with mean 1, write parquet; it writes no ``input_ids`` (not the same work);
   also a fresh subprocess. Skipped when the peak of its largest successful run so far, scaled by N,
   would exceed ``--mem-limit-gb``, or once it ran out of memory; its output compared with hardfocus's: the
   same set of sample ids, and the same weights and loss ranks per id.

Arms 2-5 run ``--rounds`` times, interleaved (2, 3, 4, 5, then again), and each reports its best round (the
smallest timed part): on a shared VM the same arm's time moves by 15% from one run to the next even with no
other process on the machine, so a single round compares the machine's moods as much as the arms.
Before each arm the benchmark flushes what the arm before wrote (``os.sync()``: no arm runs while the kernel
writes back another's GBs), reads the scores whole (back into the page cache, where they fit), and waits (up to
``--quiet-wait-s``) until other processes took at most ``--quiet-threshold`` CPU-seconds per second over 5 s. Each subprocess is timed by wall clock; its peak RSS is
``ru_maxrss`` from ``os.wait4`` on that one child (the kernel's own high-water mark of that process, exact, not
sampled). A watchdog kills a child whose RSS (polled every 50 ms) exceeds ``--mem-limit-gb`` (reported as "out
of memory"), so no arm can take the shared machine down. "other load" is the CPU-seconds per second that
*other* processes used meanwhile.

Targets (the issue): 100M rows in under 120 s and under 8 GB peak RSS on the 2-core machine; the write pass at
least as fast as the plain loop plus the decisions' share.
Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.harness import (
    GB,
    code_version,
    command_line,
    fmt,
    load_average,
    load_cell,
    machine_info,
    markdown_table,
    other_load_now,
    ratio,
    run_measured,
    write_report,
)
from benchmarks.selection_data import (
    GROUPS,
    INF_RATE,
    MAX_TOKENS,
    NAN_RATE,
    NOISE_RATE,
    NON_OK_RATE,
    ROWS_PER_PART,
    ROWS_PER_SHARD,
    VOCAB,
    ensure_scores,
)

log = logging.getLogger("selection_speed")

DROP_TOP, KEEP, TEMPERATURE = 0.1, 0.5, 1.0  # `hardfocus select` defaults; the pandas arm uses the same

TARGET_ROWS = 100_000_000
TARGET_SECONDS = 120.0
TARGET_RSS_GB = 8.0

TRAINING_COLUMNS = ["sample_id", "shard", "row", "group", "loss", "input_ids"]  # what a training part holds of a part
QUIET_PROBE_S = 5.0
WRITE_PASS_LINE = re.compile(r"wrote \d+ decisions parts and \d+ training parts in ([0-9.]+) s \((\d+) threads\)")

# ------------------------------------------------------------------------------------- pandas baseline

def pandas_select(scores: str, output: str, drop_top: float, keep: float, temperature: float) -> None:
    """The same global MidRanking + IR-DRO selection, the way one would write it in plain pandas."""
    import pandas as pd

    files = sorted(glob.glob(os.path.join(scores, "part-*.parquet")))
    df = pd.concat(
        [pd.read_parquet(f, columns=["sample_id", "group", "loss", "status"]) for f in files], ignore_index=True
    )
    ok = df[(df["status"] == "ok") & np.isfinite(df["loss"])]
    del df
    ok = ok.sort_values(["loss", "sample_id"], ascending=[False, True])
    n = len(ok)
    n_drop, n_keep = math.floor(n * drop_top), math.floor(n * keep)
    # loss_rank: the share of eligible rows with a higher loss (tied rows share it: competition rank)
    higher = ok["loss"].rank(method="min", ascending=False).to_numpy() - 1
    kept = ok.iloc[n_drop : n_drop + n_keep][["sample_id", "group", "loss"]].copy()
    del ok
    kept["loss_rank"] = (higher[n_drop : n_drop + n_keep] / max(n - 1, 1)).astype(np.float32)
    losses = kept["loss"].to_numpy(np.float64)
    z = (losses - losses.max()) / temperature  # log-sum-exp: subtract the maximum first
    w = np.exp(z)
    kept["weight"] = (w * (len(w) / w.sum())).astype(np.float32)
    os.makedirs(output, exist_ok=True)
    kept.to_parquet(os.path.join(output, "part-00000.parquet"), index=False)


# --------------------------------------------------------------------------------- plain pyarrow loop

def save_kept_rows(selected: Path, kept_file: Path) -> None:
    """The kept rows of each score part, from a selection's decisions, saved as (rows, bounds): part i's in
    ``rows[bounds[i]:bounds[i + 1]]`` (part-local row indices, ascending)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows, bounds = [], [0]
    for part in sorted((selected / "decisions").glob("part-*.parquet")):
        band = pq.read_table(part, columns=["band"])["band"].combine_chunks()
        kept = np.flatnonzero(pc.equal(band.dictionary, "kept").to_numpy(zero_copy_only=False)[band.indices.to_numpy()])
        rows.append(kept.astype(np.int32))
        bounds.append(bounds[-1] + len(kept))
    np.savez(kept_file, rows=np.concatenate(rows) if rows else np.zeros(0, np.int32), bounds=np.asarray(bounds, np.int64))


def plain_loop(scores: str, kept_file: str, output: str, result: str, decisions: str | None = None) -> None:
    """The baseline: for each score part, read the columns a training part holds, take the kept rows (given), write
    them; one thread, pyarrow only. With ``decisions`` (a selection's decisions/), also write each part's decisions
    table as hardfocus writes it, read beforehand. Writes the loop's own seconds to ``result`` (JSON)."""
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(scores, "part-*.parquet")))
    given = np.load(kept_file)
    rows, bounds = given["rows"], given["bounds"]
    tables = None
    if decisions is not None:
        from selection.writer import DECISIONS_DICTIONARY_COLUMNS

        tables = [pq.read_table(p) for p in sorted(glob.glob(os.path.join(decisions, "part-*.parquet")))]
        assert len(tables) == len(files), (len(tables), len(files))
        os.makedirs(os.path.join(output, "decisions"), exist_ok=True)
    os.makedirs(output, exist_ok=True)
    t0, written = time.perf_counter(), 0
    for i, path in enumerate(files):
        if tables is not None:
            pq.write_table(tables[i], os.path.join(output, "decisions", f"part-{i:05d}.parquet"), compression="zstd",
                           use_dictionary=[c for c in DECISIONS_DICTIONARY_COLUMNS if c in tables[i].column_names])
        table = pq.read_table(path, columns=TRAINING_COLUMNS)
        kept = rows[bounds[i] : bounds[i + 1]]
        if len(kept):
            pq.write_table(table.take(pa.array(kept)), os.path.join(output, f"part-{written:05d}.parquet"),
                           compression="zstd")
            written += 1
    Path(result).write_text(json.dumps({"loop_seconds": time.perf_counter() - t0, "parts_written": written}))


def same_kept_rows(hf_dir: Path, plain_dir: Path) -> bool:
    """The plain loop wrote the rows of hardfocus's training parts, in the same order."""
    import polars as pl

    def ids(d: Path) -> pl.Series:
        return pl.scan_parquet(str(d / "part-*.parquet")).select("sample_id").collect()["sample_id"]

    return bool(ids(hf_dir).equals(ids(plain_dir)))


# ----------------------------------------------------------------------------- select on one write thread

def select_with_workers(scores: str, output: str, workers: int, result: str) -> None:
    """``selection.job.select`` as the CLI runs it (defaults, no report), its write pass on ``workers`` threads and
    timed; writes {"write_pass_seconds", "select_seconds"} to ``result``."""
    import selection.job as job
    from selection import SelectConfig

    os.environ.pop("RAY_ADDRESS", None)  # the thread pool, as on this machine
    real, timing = job.write_selection, {}

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        written = real(*args, **{**kwargs, "workers": workers})
        timing["write_pass_seconds"] = time.perf_counter() - t0
        return written

    job.write_selection = timed
    t0 = time.perf_counter()
    job.select(SelectConfig(scores=[scores], output=output, report=False), progress=False)
    Path(result).write_text(json.dumps({**timing, "select_seconds": time.perf_counter() - t0}))


# -------------------------------------------------------------------------------------- measuring

def hardfocus_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "hardfocus"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "pipelines.cli"]


def compare_outputs(hf_dir: Path, pd_dir: Path) -> dict:
    import polars as pl

    cols = ["sample_id", "loss_rank", "weight"]
    hf = pl.scan_parquet(str(hf_dir / "part-*.parquet")).select(cols).sort("sample_id").collect()
    pdf = pl.scan_parquet(str(pd_dir / "part-*.parquet")).select(cols).sort("sample_id").collect()
    same_set = hf.height == pdf.height and hf["sample_id"].equals(pdf["sample_id"])
    out = {"hardfocus_rows": hf.height, "pandas_rows": pdf.height, "same_set": bool(same_set)}
    if same_set:
        w1, w2 = hf["weight"].to_numpy().astype(np.float64), pdf["weight"].to_numpy().astype(np.float64)
        r1, r2 = hf["loss_rank"].to_numpy().astype(np.float64), pdf["loss_rank"].to_numpy().astype(np.float64)
        out["max_rel_weight_diff"] = float(np.max(np.abs(w1 - w2) / np.maximum(np.abs(w2), 1e-30))) if len(w1) else 0.0
        out["max_loss_rank_diff"] = float(np.max(np.abs(r1 - r2))) if len(r1) else 0.0
    else:
        a, b = set(hf["sample_id"].to_list()), set(pdf["sample_id"].to_list())
        out["only_hardfocus"], out["only_pandas"] = len(a - b), len(b - a)
    return out


# -------------------------------------------------------------------------------------- the benchmark

def machine_facts() -> dict:
    """The shared machine facts, with memory, the load average and the libraries selection runs on (looked up
    without importing them here: this process stays small, see :func:`helper`)."""
    from importlib.metadata import version

    info = machine_info() | {"load_average_1m": load_average(), "hardfocus_code": code_version()}
    threads = subprocess.run([sys.executable, "-c", "import polars; print(polars.thread_pool_size())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    info["polars"], info["polars_threads"] = version("polars"), int(threads)
    info["pandas"], info["pyarrow"], info["numpy"] = version("pandas"), pa.__version__, np.__version__
    return info


def helper(name: str, *args: str) -> dict:
    """This script's ``name`` subcommand in a child process, its JSON result returned. The work that reads
    outputs (or makes data) runs there, not here: a child's peak RSS (``ru_maxrss``) starts at this process's RSS
    when it is spawned, so this process must stay small for the arms' figures to be their own."""
    with tempfile.TemporaryDirectory(prefix="selection-speed-") as tmp:
        result = Path(tmp) / "result.json"
        subprocess.run([sys.executable, "-m", "benchmarks.selection_speed", name, *args, str(result)], check=True)
        return json.loads(result.read_text())


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def warm_page_cache(scores: Path) -> dict:
    """Read every score part once, whole, so that no arm pays the disk reads the one before it saved."""
    t0, size = time.perf_counter(), 0
    for path in sorted(scores.glob("part-*.parquet")):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 23):
                size += len(chunk)
    return {"seconds": time.perf_counter() - t0, "bytes": size}


def steal_seconds() -> float:
    """CPU-seconds the hypervisor gave to other guests since boot (/proc/stat "steal"; NaN where there is none):
    load no "other load" figure of this machine shows."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def wait_quiet(max_wait_s: float, threshold: float) -> tuple[float, float]:
    """Wait (up to ``max_wait_s``) until other processes took at most ``threshold`` CPU-seconds per second over a
    whole probe of :data:`QUIET_PROBE_S` (the machine's other work comes in bursts: a 1 s probe often falls
    between two); returns (seconds waited, the last probe's load)."""
    t0 = time.perf_counter()
    while True:
        load = other_load_now(QUIET_PROBE_S)
        if load <= threshold or time.perf_counter() - t0 >= max_wait_s:
            return time.perf_counter() - t0 - QUIET_PROBE_S, load


def run_arm(name: str, cmd: list[str], workdir: Path, args, scores: Path, result_file: Path | None = None) -> dict:
    """One arm in a fresh process, its scores read once before (back into the page cache, where the arms before
    pushed them out), after waiting for a quiet machine: its figures (run_measured), the load before it, and what
    it wrote to ``result_file``."""
    t0 = time.perf_counter()
    os.sync()  # the arm before wrote GBs: flushed now, not while this one runs (the kernel throttles writers meanwhile)
    synced = time.perf_counter() - t0
    warm = warm_page_cache(scores)
    waited, before = wait_quiet(args.quiet_wait_s, args.quiet_threshold)
    if waited > 1:
        log.info(f"waited {waited:.0f} s for other processes to leave the CPUs")
    if result_file is not None:
        result_file.unlink(missing_ok=True)
    steal = steal_seconds()
    run = run_measured(cmd, workdir / "logs" / f"{name}.log", args.mem_limit_gb * GB)
    run |= {"waited_for_quiet_s": waited, "other_load_before": before, "sync_seconds": synced, "warm_read": warm,
            "steal_seconds": steal_seconds() - steal}
    if result_file is not None and result_file.is_file():
        run |= json.loads(result_file.read_text())
    return run


def _done(name: str, n: int, run: dict, extra: str = "") -> None:
    state = "ok" if run["ok"] else "out of memory" if run["oom"] else "FAILED"
    log.info(f"N={n:,}: {name} {state} {run['seconds']:.1f} s, peak {run['peak_rss_gb']:.2f} GB, "
             f"other load {run['other_load']:.2f} (before: {run['other_load_before']:.2f}){extra}")


TIMED = {"hardfocus": "write_pass_seconds", "hardfocus_1_thread": "write_pass_seconds", "plain": "loop_seconds",
         "plain_decisions": "loop_seconds"}  # an arm's figure compared, of which its best round is reported


def hardfocus_arm(n: int, round_: int, scores: Path, out: Path, workdir: Path, args) -> dict:
    """The real CLI; its write pass read from the line it logs."""
    shutil.rmtree(out, ignore_errors=True)
    log.info(f"N={n:,}, round {round_ + 1}: hardfocus select ...")
    hf = run_arm(f"hardfocus-n{n}-r{round_}", [*hardfocus_cmd(), "select", str(scores), "-o", str(out), "--no-report"],
                 workdir, args, scores)
    hf["ok"] = hf["returncode"] == 0 and (out / "summary.json").is_file()
    hf["output_bytes"] = sum(p.stat().st_size for p in out.glob("part-*.parquet"))
    hf["decisions_bytes"] = sum(p.stat().st_size for p in out.glob("decisions/part-*.parquet"))
    found = WRITE_PASS_LINE.search(Path(hf["log"]).read_text(errors="replace"))
    hf["write_pass_seconds"] = float(found.group(1)) if found else None
    hf["write_threads"] = int(found.group(2)) if found else None
    _done("hardfocus", n, hf, f", write pass {fmt(hf['write_pass_seconds'], '.1f')} s, selected/ "
          f"{hf['output_bytes'] / GB:.2f} GB + decisions {hf['decisions_bytes'] / GB:.2f} GB")
    return hf


def best_round(runs: list[dict], timed: str) -> dict:
    """The round whose ``timed`` figure is the smallest (the least disturbed), with every round's figures."""
    ok = [r for r in runs if r.get("ok") and r.get(timed) is not None]
    best = dict(min(ok, key=lambda r: r[timed]) if ok else runs[-1])
    best["rounds"] = [{"seconds": r.get("seconds"), timed: r.get(timed), "other_load": r.get("other_load"), "ok": r.get("ok")}
                      for r in runs]
    return best


def bench_size(n: int, args, workdir: Path, history: list[dict]) -> dict:
    data = helper("_data", str(workdir), str(n), str(args.rows_per_part), str(args.seed))
    scores = Path(data["dir"])
    result: dict = {"rows": n, "data": {k: data[k] for k in ("dir", "parts", "bytes", "seconds", "reused", "rows_by_status")}}
    script = [sys.executable, "-m", "benchmarks.selection_speed"]
    runs: dict[str, list[dict]] = {arm: [] for arm in TIMED}

    hf_out = workdir / f"out-hardfocus-n{n}"  # the first round's: the plain loops' kept rows, pandas' comparison
    kept_file = workdir / f"kept-n{n}.npz"
    for round_ in range(args.rounds):
        out = hf_out if round_ == 0 else workdir / f"out-hardfocus-n{n}-r{round_}"
        hf = hardfocus_arm(n, round_, scores, out, workdir, args)
        runs["hardfocus"].append(hf)
        if round_ == 0:
            if not hf["ok"]:
                result |= {arm: {"ok": False, "skipped": "hardfocus failed"} for arm in TIMED if arm != "hardfocus"}
                break
            summary = json.loads((hf_out / "summary.json").read_text())
            result["eligible"], result["kept"] = summary["eligible"], summary["bands"].get("kept", 0)
            result["excluded"] = summary["excluded"]
            helper("_kept", str(hf_out), str(kept_file))
        else:
            shutil.rmtree(out, ignore_errors=True)
        for arm, extra in (("plain", []), ("plain_decisions", ["--decisions", str(hf_out / "decisions")])):
            out = workdir / f"out-{arm}-n{n}"
            shutil.rmtree(out, ignore_errors=True)
            log.info(f"N={n:,}, round {round_ + 1}: {arm} loop ...")
            p = run_arm(f"{arm}-n{n}-r{round_}", [*script, "_plain", str(scores), str(kept_file), str(out),
                                                  str(workdir / "result.json"), *extra], workdir, args, scores,
                        workdir / "result.json")
            p["ok"] = p["returncode"] == 0 and "loop_seconds" in p
            p["same_rows"] = helper("_same", str(hf_out), str(out))["same"] if p["ok"] else None
            _done(arm, n, p, f", loop {fmt(p.get('loop_seconds'), '.1f')} s, same rows as hardfocus: {p['same_rows']}")
            runs[arm].append(p)
            shutil.rmtree(out, ignore_errors=True)
        one_out = workdir / f"out-hardfocus-1-n{n}"
        shutil.rmtree(one_out, ignore_errors=True)
        log.info(f"N={n:,}, round {round_ + 1}: hardfocus select, write pass on 1 thread ...")
        one = run_arm(f"hardfocus-1-thread-n{n}-r{round_}", [*script, "_select", str(scores), str(one_out), "1",
                                                             str(workdir / "result.json")], workdir, args, scores,
                      workdir / "result.json")
        one["ok"] = one["returncode"] == 0 and "write_pass_seconds" in one
        _done("hardfocus (1 write thread)", n, one, f", write pass {fmt(one.get('write_pass_seconds'), '.1f')} s")
        runs["hardfocus_1_thread"].append(one)
        shutil.rmtree(one_out, ignore_errors=True)
    kept_file.unlink(missing_ok=True)
    for arm, timed in TIMED.items():
        if runs[arm]:
            result[arm] = best_round(runs[arm], timed)
    if result["plain"].get("ok"):
        result["plain"]["same_rows"] = all(r["same_rows"] for r in runs["plain"] + runs["plain_decisions"])
    hf = result["hardfocus"]

    pd_out = workdir / f"out-pandas-n{n}"
    shutil.rmtree(pd_out, ignore_errors=True)
    predicted = None
    measured = [r for r in history if r["pandas"].get("ok") and r["rows"] <= n]
    failed = [r for r in history if r["pandas"].get("oom") and r["rows"] <= n]
    if measured:  # scale the largest successful pandas run by N
        base = max(measured, key=lambda r: r["rows"])
        predicted = base["pandas"]["peak_rss_gb"] * n / base["rows"]
    if args.skip_pandas:
        result["pandas"] = {"ok": False, "skipped": "--skip-pandas"}
    elif failed:
        result["pandas"] = {"ok": False, "skipped": f"out of memory at N={failed[0]['rows']:,} already"}
    elif predicted is not None and predicted > args.mem_limit_gb:
        result["pandas"] = {"ok": False, "skipped": f"predicted peak {predicted:.0f} GB (N-scaled from "
                            f"N={base['rows']:,}) > the {args.mem_limit_gb:g} GB limit"}
    else:
        log.info(f"N={n:,}: pandas baseline ...")
        p = run_arm(f"pandas-n{n}", [*script, "_pandas", str(scores), str(pd_out)], workdir, args, scores)
        p["ok"] = p["returncode"] == 0 and (pd_out / "part-00000.parquet").is_file()
        if not p["ok"] and ("MemoryError" in p["log_tail"] or "bad_alloc" in p["log_tail"]):
            p["oom"] = True
        _done("pandas", n, p)
        result["pandas"] = p
    if predicted is not None:
        result["pandas"]["predicted_peak_rss_gb"] = predicted

    if hf["ok"] and result["pandas"].get("ok"):
        result["agreement"] = helper("_compare", str(hf_out), str(pd_out))
        log.info(f"N={n:,}: agreement {result['agreement']}")
    if not args.keep_outputs:
        shutil.rmtree(hf_out, ignore_errors=True)
        shutil.rmtree(pd_out, ignore_errors=True)
    return result


def startup(args, workdir: Path) -> dict:
    """`hardfocus --help`: the fixed cost (imports) inside every CLI figure."""
    r = run_measured([*hardfocus_cmd(), "--help"], workdir / "logs" / "hardfocus-help.log", args.mem_limit_gb * GB)
    return {"seconds": r["seconds"], "peak_rss_gb": r["peak_rss_gb"]}


# ----------------------------------------------------------------------------------------- report

def verdict(r: dict) -> str:
    hf = r["hardfocus"]
    if not hf["ok"]:
        return "**fail** (out of memory)" if hf["oom"] else "**fail** (error)"
    fast, small = hf["seconds"] < TARGET_SECONDS, hf["peak_rss_gb"] < TARGET_RSS_GB
    if r["rows"] != TARGET_ROWS:
        return "n/a (target is for 100M)" if fast and small else f"n/a ({'slow' if not fast else 'large'} already)"
    if fast and small:
        return "**pass**"
    misses = ([f"{hf['seconds']:.0f} s ≥ {TARGET_SECONDS:.0f} s"] if not fast else []) + (
        [f"{hf['peak_rss_gb']:.1f} GB ≥ {TARGET_RSS_GB:g} GB"] if not small else [])
    return "**fail** (" + ", ".join(misses) + ")"


def headline(results: list[dict]) -> str:
    big = [r for r in results if r["rows"] == TARGET_ROWS]
    if not big:
        return f"No {TARGET_ROWS:,}-row run here: the targets (< {TARGET_SECONDS:.0f} s, < {TARGET_RSS_GB:g} GB) are not judged."
    hf = big[-1]["hardfocus"]
    met = hf["ok"] and hf["seconds"] < TARGET_SECONDS and hf["peak_rss_gb"] < TARGET_RSS_GB
    figures = (f"{hf['seconds']:.1f} s and {hf['peak_rss_gb']:.2f} GB peak RSS" if hf["ok"]
               else f"{'killed past the memory limit' if hf['oom'] else 'failed'} after {hf['seconds']:.0f} s")
    contended = (f" Other processes used {hf['other_load']:.2f} CPU-seconds per second meanwhile (of {os.cpu_count()} "
                 "cores), so on a quiet machine it is faster." if hf["other_load"] > 0.2 else "")
    return (f"**{TARGET_ROWS:,} rows: {figures}: targets (< {TARGET_SECONDS:.0f} s, < {TARGET_RSS_GB:g} GB) "
            f"{'met' if met else 'NOT met'}.**{contended}")


def write_pass_line(r: dict) -> str:
    """The write pass against the plain loop at one size, in words."""
    hf, one, plain, both = r["hardfocus"], r["hardfocus_1_thread"], r["plain"], r["plain_decisions"]
    if not (one.get("ok") and plain.get("ok") and both.get("ok")):
        return f"- N={r['rows']:,}: not all arms ran."
    bar = both["loop_seconds"]
    return (f"- N={r['rows']:,}: hardfocus's write pass on one thread took {one['write_pass_seconds']:.1f} s, the plain "
            f"loop {plain['loop_seconds']:.1f} s and the plain loop with the decisions {bar:.1f} s (the decisions' share: "
            f"{bar - plain['loop_seconds']:.1f} s): {ratio(one['write_pass_seconds'], bar)} of the bar, "
            f"{'**met**' if one['write_pass_seconds'] <= bar else '**NOT met**'}; on "
            f"{hf.get('write_threads', 'the default')} threads the write pass took {fmt(hf.get('write_pass_seconds'), '.1f')} s "
            f"(the thread pool's gain: {ratio(one['write_pass_seconds'], hf.get('write_pass_seconds'))}).")


def _process(run: dict, loop_key: str | None = None) -> str:
    """An arm's cell: its whole process (wall s, peak RSS), the timed part inside it, the other load."""
    if "skipped" in run:
        return f"skipped: {run['skipped']}"
    if not run["ok"]:
        return f"out of memory (killed after {run['seconds']:.0f} s)" if run.get("oom") else "failed"
    inner = f" ({loop_key[0]} {fmt(run.get(loop_key[1]), '.1f')} s)" if loop_key else ""
    cell = f"{run['seconds']:.1f} s{inner}, {run['peak_rss_gb']:.2f} GB, load {load_cell(run['other_load'])}"
    if loop_key and len(run.get("rounds", [])) > 1:  # the best round's figures, and every round's timed part
        cell += "; rounds: " + ", ".join(f"{fmt(r.get(loop_key[1]), '.1f')} s" for r in run["rounds"])
    return cell


def results_table(results: list[dict]) -> str:
    return markdown_table(
        ["N", "scores on disk", "selected/ on disk (training + decisions)", "hardfocus select", "hardfocus, 1 write thread",
         "plain pyarrow loop", "plain loop + decisions", "hardfocus ÷ plain (processes; write pass on 1 thread ÷ loop)",
         "thread-pool gain (write pass)", "pandas (writes no input_ids)", "same selection (pandas)", "targets (100M: <120 s, <8 GB)"],
        map(_result_row, results), "rrrllllrrlll")


def _result_row(r: dict) -> list[str]:
    hf, one, plain, both, p, agree = (r["hardfocus"], r["hardfocus_1_thread"], r["plain"], r["plain_decisions"],
                                      r["pandas"], r.get("agreement"))
    if agree is None:
        same = "—"
    elif agree["same_set"]:
        same = (f"yes ({agree['hardfocus_rows']:,} ids; max rel. weight diff {agree['max_rel_weight_diff']:.1e}, "
                f"max loss_rank diff {agree['max_loss_rank_diff']:.1e})")
    else:
        same = f"**no** ({agree['only_hardfocus']:,} only in hardfocus, {agree['only_pandas']:,} only in pandas)"
    whole = ratio(hf["seconds"], plain.get("seconds")) if hf["ok"] and plain.get("ok") else "—"
    inner = ratio(one.get("write_pass_seconds"), plain.get("loop_seconds")) if one.get("ok") and plain.get("ok") else "—"
    gain = ratio(one.get("write_pass_seconds"), hf.get("write_pass_seconds")) if one.get("ok") and hf["ok"] else "—"
    plain_cell = _process(plain, ("loop", "loop_seconds")) + (
        "" if plain.get("same_rows") in (True, None) else "; **not the rows of hardfocus's training parts**")
    return [f"{r['rows']:,}", f"{r['data']['bytes'] / 1e6:,.0f} MB, {r['data']['parts']:,} parts",
            f"{hf.get('output_bytes', 0) / 1e6:,.0f} + {hf.get('decisions_bytes', 0) / 1e6:,.0f} MB",
            _process(hf, ("write pass", "write_pass_seconds")), _process(one, ("write pass", "write_pass_seconds")),
            plain_cell, _process(both, ("loop", "loop_seconds")), f"{whole}; {inner}", gain, _process(p), same, verdict(r)]


def render_markdown(report: dict) -> str:
    m, results = report["machine"], report["results"]
    arms = ("hardfocus", "hardfocus_1_thread", "plain", "plain_decisions", "pandas")
    counts = "\n".join(
        f"- N={r['rows']:,}: eligible {r.get('eligible', 0):,}, kept {r.get('kept', 0):,}, excluded "
        f"{', '.join(f'{k} {v:,}' for k, v in (r.get('excluded') or {}).items()) or '—'}; data "
        f"{'reused' if r['data']['reused'] else 'generated'} ({r['data']['seconds']:.0f} s to generate); read whole "
        f"before each arm in " + ", ".join(f"{r[arm]['warm_read']['seconds']:.1f}" for arm in arms if "warm_read" in r[arm])
        + " s"
        for r in results
    )
    loads = "\n".join(
        f"- N={r['rows']:,}: " + "; ".join(
            f"{arm} {r[arm]['other_load_before']:.2f} before, {r[arm]['other_load']:.2f} during"
            + (f" (waited {r[arm]['waited_for_quiet_s']:.0f} s for it)" if r[arm]["waited_for_quiet_s"] > 2 else "")
            + f", steal {fmt(r[arm].get('steal_seconds'), '.1f')} s"
            for arm in arms if "other_load" in r[arm])
        for r in results
    )
    failures = "\n".join(
        f"- {arm} at N={r['rows']:,}: rc {r[arm]['returncode']}, log `{r[arm]['log']}`:\n\n```\n{r[arm]['log_tail']}\n```"
        for r in results for arm in arms if "returncode" in r[arm] and not r[arm]["ok"]
    )
    notes = "".join(f"\n- {a}\n" for a in report.get("annotations", []))  # added after the run, kept in the JSON
    notes = f"\n## Notes added after the run\n{notes}" if notes else ""
    a = report["args"]
    return f"""# Selection speed: `hardfocus select` vs a plain pyarrow loop (and plain pandas)

Measured {report['finished']} ({report['wall_s'] / 60:.1f} min in all), hardfocus {m.get('hardfocus_code')}.

{headline(results)}

The write pass against the plain single-threaded pyarrow loop that does the same writes (target: hardfocus's
write pass on one thread at most the plain loop plus the decisions' share):

{chr(10).join(write_pass_line(r) for r in results)}
{notes}
{results_table(results)}

Each cell: the whole process's wall seconds (the timed part inside it in brackets), its peak RSS, and the
CPU-seconds per second other processes took meanwhile ("contended" above 0.2), of the best of
{a.get('rounds', 1)} round(s) (the smallest timed part; every round's is listed) for the arms compared.

- **hardfocus select**: `hardfocus select <scores> -o <out> --no-report`, the real CLI with its defaults (global
  ranking, drop_top {DROP_TOP}, keep {KEEP}, IR-DRO temperature {TEMPERATURE}; the write pass on min(4, CPUs)
  threads), a fresh process per run. The write pass (each score part read once; its decisions part and, with
  kept rows, its training part written) is timed by the line the CLI logs. Its figures include the CLI's
  start-up: `hardfocus --help` alone takes {report['startup']['seconds']:.1f} s and
  {report['startup']['peak_rss_gb']:.2f} GB (imports).
- **hardfocus, 1 write thread**: `python -m benchmarks.selection_speed _select <scores> <out> 1 <result>`:
  `selection.job.select` in a fresh process, its `write_selection` given `workers=1`. The thread-pool gain is
  its write pass ÷ the CLI's.
- **plain pyarrow loop**: `python -m benchmarks.selection_speed _plain <scores> <kept.npz> <out> <result>`: one
  thread; for each score part `pq.read_table(part, columns=[{', '.join(TRAINING_COLUMNS)}])`, `.take(kept rows)`
  (the hardfocus selection's own, from its decisions, loaded before the loop), `pq.write_table(...,
  compression="zstd")`. Its output holds the rows of hardfocus's training parts, in order (checked).
  The ratio "hardfocus ÷ plain" compares the two whole processes (hardfocus also ranks, weighs and writes the
  decisions) and then hardfocus's one-thread write pass with the loop alone.
- **plain loop + decisions**: the same loop writing also each part's decisions table (hardfocus's own, read
  before the loop; written with hardfocus's Parquet settings): the plain loop plus the decisions' share.
- **pandas**: `python -m benchmarks.selection_speed _pandas <scores> <out>`: read the parts with
  `pd.read_parquet` + `pd.concat`, keep status ok & finite loss, `sort_values(["loss", "sample_id"],
  ascending=[False, True])`, take the band, `loss_rank` from `rank(method="min", ascending=False)`,
  log-sum-exp softmax weights (mean 1), `to_parquet`. It writes no `input_ids` and no decisions: not the same
  work (the selection only). Skipped at a size where the peak RSS of its largest successful run, scaled by N,
  exceeds the {a['mem_limit_gb']:g} GB limit.
- Peak RSS: `ru_maxrss` of that one child (`os.wait4`), in GB = 10^9 bytes. A watchdog kills a child past
  {a['mem_limit_gb']:g} GB. Before each arm the benchmark waited (up to {a['quiet_wait_s']:g} s) for other processes
  to take at most {a['quiet_threshold']:g} CPU-seconds per second over {QUIET_PROBE_S:g} s.
- Same selection: both outputs sorted by sample_id; the id sets must be equal (ties in float32 loss are
  broken by sample_id in both), then weights and loss ranks compared per id (a loss_rank difference of
  ~6e-8 is one float32 ulp: rank × float32(1/(n-1)) against rank / (n-1)).

Other load (CPU-seconds per second of other processes) over the {QUIET_PROBE_S:g} s before each arm and over the arm, and
the CPU-seconds the hypervisor gave other guests during the arm ("steal"). Each arm started after `os.sync()`: the
GBs the arm before wrote were on disk, not being written back meanwhile.

{loads}

Rows:

{counts}

Synthetic scores as `hardfocus score` writes them (`benchmarks/selection_data.py`): ids
`shard-NNNNN.jsonl.zst#row`, {ROWS_PER_SHARD:,} rows per shard, one group per shard
({', '.join(f'{g or "null"} {p:.0%}' for g, p in GROUPS)}), losses lognormal/gamma per group plus
{NOISE_RATE:.0%} noise at 6-11 nats, {NON_OK_RATE:.1%} rows with a non-ok status, NaN/inf loss on
{NAN_RATE + INF_RATE:.3%} of ok rows; `input_ids` of every row (lognormal lengths, median 400 tokens, cut at
{MAX_TOKENS:,}; Zipf-distributed ids over a {VOCAB:,}-token vocabulary), which `select` carries into
`selected/`; zstd part files of {a['rows_per_part']:,} rows (scoring's default `rows_per_unit`).

## Machine

{chr(10).join(f'- {k}: {v:.1f}' if isinstance(v, float) else f'- {k}: {v}' for k, v in m.items())}

## Command

```
{report['command']}
```
{('## Failures' + chr(10) + chr(10) + failures) if failures else ''}"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_pandas":
        pandas_select(argv[1], argv[2], DROP_TOP, KEEP, TEMPERATURE)
        return 0
    if argv and argv[0] == "_plain":  # scores kept.npz output result.json [--decisions DIR]
        plain_loop(*argv[1:5], decisions=argv[6] if argv[5:6] == ["--decisions"] else None)
        return 0
    if argv and argv[0] == "_select":  # scores output workers result.json
        select_with_workers(argv[1], argv[2], int(argv[3]), argv[4])
        return 0
    helpers = {  # helper(name, *args): the last argument is where the JSON result goes
        "_data": lambda workdir, n, per_part, seed: {
            k: v for k, v in ensure_scores(Path(workdir), int(n), int(per_part), int(seed))[1].items() if k != "params"},
        "_kept": lambda selected, kept_file: save_kept_rows(Path(selected), Path(kept_file)) or {},
        "_same": lambda hf_dir, plain_dir: {"same": same_kept_rows(Path(hf_dir), Path(plain_dir))},
        "_compare": lambda hf_dir, pd_dir: compare_outputs(Path(hf_dir), Path(pd_dir)),
    }
    if argv and argv[0] in helpers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
        Path(argv[-1]).write_text(json.dumps(helpers[argv[0]](*argv[1:-1])))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7", help="comma-separated row counts, e.g. 1e6,1e7,1e8")
    ap.add_argument("--workdir", default="/tmp/hardfocus-selection-speed", help="generated data, outputs and logs")
    ap.add_argument("--out", default="benchmarks/results/selection_speed.md", help="Markdown report; JSON beside it")
    ap.add_argument("--rows-per-part", type=int, default=ROWS_PER_PART)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mem-limit-gb", type=float, default=None,
                    help="kill a run past this RSS  [default: 65%% of MemTotal, at most 16]")
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the selected/ outputs in --workdir")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of the arms compared (the CLI, the plain loops, one write thread); the best is reported")
    ap.add_argument("--quiet-wait-s", type=float, default=900.0,
                    help="before each arm, wait up to this long for other processes to leave the CPUs")
    ap.add_argument("--quiet-threshold", type=float, default=0.3,
                    help="... until they take at most this many CPU-seconds per second")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    machine = machine_facts()
    if args.mem_limit_gb is None:
        args.mem_limit_gb = round(min(16.0, 0.65 * machine.get("memtotal_gb", 24.0)), 1)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report = {
        "command": command_line(argv), "args": vars(args),
        "machine": machine, "startup": startup(args, workdir), "results": [],
    }
    for n in parse_sizes(args.sizes):
        report["results"].append(bench_size(n, args, workdir, report["results"]))
        report["finished"], report["wall_s"] = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", time.perf_counter() - t0
        write_report(Path(args.out), report, render_markdown(report))  # after every size: a long run leaves its figures so far
    ok = all(r["hardfocus"]["ok"] and r.get("agreement", {"same_set": True})["same_set"]
             and r["plain"].get("same_rows") is not False for r in report["results"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
