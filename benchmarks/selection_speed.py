"""Selection speed and peak memory: ``hardfocus select`` against a straightforward pandas version, same run.

    python benchmarks/selection_speed.py [--sizes 1e6,1e7] [--workdir /tmp/hardfocus-selection-speed] \
        [--out benchmarks/results/selection_speed.md] [--rows-per-part 2000] [--seed 0] \
        [--mem-limit-gb 16] [--skip-pandas] [--keep-outputs]

For every size N:

1. synthetic scores/ of N rows as ``hardfocus score`` writes them with its defaults, ``input_ids`` included
   (``selection_data``: about 600 tokens and 1.1 KB of zstd Parquet per row, so 10^8 rows need ~110 GB of
   disk), in part files of ``--rows-per-part`` rows (scoring's ``rows_per_unit``), seeded, and reused from
   ``--workdir`` when a previous run made it with the same parameters;
2. ``hardfocus select <scores> -o <out> --no-report``: the real CLI with its defaults (global ranking,
   drop_top 0.1, keep 0.5, IR-DRO at temperature 1), in a fresh subprocess;
3. the pandas baseline (``_pandas`` below): read the parquet parts, keep status ok & finite loss, sort by
   loss descending then sample_id, take the band, loss_rank = (rows with a higher loss) / (n - 1),
   log-sum-exp softmax weights with mean 1, write parquet;
   also a fresh subprocess. Skipped when the peak of its largest successful run so far, scaled by N,
   would exceed ``--mem-limit-gb``, or once it ran out of memory;
4. both outputs compared: the same set of sample ids, and the same weights and loss ranks per id.

Each subprocess is timed by wall clock; its peak RSS is ``ru_maxrss`` from ``os.wait4`` on that one child
(the kernel's own high-water mark of that process, exact, not sampled). A watchdog kills a child whose RSS
(polled every 50 ms) exceeds ``--mem-limit-gb`` (reported as "out of memory"), so neither arm can take the
shared machine down. "other load" is the CPU-seconds per second that *other* processes used meanwhile.

Targets (the issue): 100M rows in under 120 s and under 8 GB peak RSS on the 2-core machine.
Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

# this folder is sys.path[0]
from harness import (
    GB,
    code_version,
    command_line,
    load_average,
    load_cell,
    machine_info,
    markdown_table,
    run_measured,
    write_report,
)
from selection_data import (
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
    """The shared machine facts, with memory, the load average and the libraries selection runs on."""
    import pandas
    import polars

    info = machine_info() | {"load_average_1m": load_average(), "hardfocus_code": code_version()}
    info["polars"], info["polars_threads"] = polars.__version__, polars.thread_pool_size()
    info["pandas"], info["pyarrow"], info["numpy"] = pandas.__version__, pa.__version__, np.__version__
    return info


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def bench_size(n: int, args, workdir: Path, history: list[dict]) -> dict:
    scores, data = ensure_scores(workdir, n, args.rows_per_part, args.seed)
    result: dict = {"rows": n, "data": {k: data[k] for k in ("dir", "parts", "bytes", "seconds", "reused", "rows_by_status")}}
    mem_limit = args.mem_limit_gb * GB

    hf_out = workdir / f"out-hardfocus-n{n}"
    shutil.rmtree(hf_out, ignore_errors=True)
    log.info(f"N={n:,}: hardfocus select ...")
    hf = run_measured([*hardfocus_cmd(), "select", str(scores), "-o", str(hf_out), "--no-report"],
                      workdir / "logs" / f"hardfocus-n{n}.log", mem_limit)
    hf["ok"] = hf["returncode"] == 0 and (hf_out / "summary.json").is_file()
    if hf["ok"]:
        summary = json.loads((hf_out / "summary.json").read_text())
        result["eligible"], result["kept"] = summary["eligible"], summary["bands"].get("kept", 0)
        result["excluded"] = summary["excluded"]
    hf["output_bytes"] = sum(p.stat().st_size for p in hf_out.glob("part-*.parquet"))
    log.info(f"N={n:,}: hardfocus {'ok' if hf['ok'] else 'FAILED'} {hf['seconds']:.1f} s, peak {hf['peak_rss_gb']:.2f} GB, "
        f"selected/ {hf['output_bytes'] / GB:.2f} GB")
    result["hardfocus"] = hf

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
        p = run_measured([sys.executable, str(Path(__file__).resolve()), "_pandas", str(scores), str(pd_out)],
                         workdir / "logs" / f"pandas-n{n}.log", mem_limit)
        p["ok"] = p["returncode"] == 0 and (pd_out / "part-00000.parquet").is_file()
        if not p["ok"] and ("MemoryError" in p["log_tail"] or "bad_alloc" in p["log_tail"]):
            p["oom"] = True
        log.info(f"N={n:,}: pandas {'ok' if p['ok'] else 'out of memory' if p['oom'] else 'FAILED'} "
            f"{p['seconds']:.1f} s, peak {p['peak_rss_gb']:.2f} GB")
        result["pandas"] = p
    if predicted is not None:
        result["pandas"]["predicted_peak_rss_gb"] = predicted

    if hf["ok"] and result["pandas"].get("ok"):
        result["agreement"] = compare_outputs(hf_out, pd_out)
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


def results_table(results: list[dict]) -> str:
    return markdown_table(["N", "scores on disk", "selected/ on disk", "hardfocus s", "hardfocus peak RSS GB", "hardfocus CPU s",
                           "other load", "pandas s", "pandas peak RSS GB", "pandas ÷ hardfocus (time, RSS)", "same selection",
                           "targets (100M: <120 s, <8 GB)"], map(_result_row, results), "rrrrrrrrrrll")


def _result_row(r: dict) -> list[str]:
    hf, p, agree = r["hardfocus"], r["pandas"], r.get("agreement")
    hf_s = f"{hf['seconds']:.1f}" if hf["ok"] else (f"out of memory (killed after {hf['seconds']:.0f} s)" if hf["oom"] else "failed")
    if p.get("ok"):
        p_s, p_rss = f"{p['seconds']:.1f}", f"{p['peak_rss_gb']:.2f}"
        ratio = f"{p['seconds'] / hf['seconds']:.1f}×, {p['peak_rss_gb'] / hf['peak_rss_gb']:.1f}×" if hf["ok"] else "—"
    elif "skipped" in p:
        p_s, p_rss, ratio = "skipped", f"skipped: {p['skipped']}", "—"
    else:
        p_s = "out of memory" if p.get("oom") else "failed"
        p_rss, ratio = f"> {p['peak_rss_gb']:.1f} (killed)" if p.get("oom") else f"{p['peak_rss_gb']:.2f}", "—"
    if agree is None:
        same = "—"
    elif agree["same_set"]:
        same = (f"yes ({agree['hardfocus_rows']:,} ids; max rel. weight diff {agree['max_rel_weight_diff']:.1e}, "
                f"max loss_rank diff {agree['max_loss_rank_diff']:.1e})")
    else:
        same = f"**no** ({agree['only_hardfocus']:,} only in hardfocus, {agree['only_pandas']:,} only in pandas)"
    return [f"{r['rows']:,}", f"{r['data']['bytes'] / 1e6:,.0f} MB, {r['data']['parts']:,} parts",
            f"{hf.get('output_bytes', 0) / 1e6:,.0f} MB", hf_s,
            f"> {hf['peak_rss_gb']:.1f} (killed)" if hf["oom"] else f"{hf['peak_rss_gb']:.2f}", f"{hf['cpu_seconds']:.1f}",
            load_cell(hf["other_load"]), p_s, p_rss, ratio, same, verdict(r)]


def render_markdown(report: dict) -> str:
    m, results = report["machine"], report["results"]
    counts = "\n".join(
        f"- N={r['rows']:,}: eligible {r.get('eligible', 0):,}, kept {r.get('kept', 0):,}, excluded "
        f"{', '.join(f'{k} {v:,}' for k, v in (r.get('excluded') or {}).items()) or '—'}; data "
        f"{'reused' if r['data']['reused'] else 'generated'} ({r['data']['seconds']:.0f} s to generate)"
        for r in results
    )
    failures = "\n".join(
        f"- {arm} at N={r['rows']:,}: rc {r[arm]['returncode']}, log `{r[arm]['log']}`:\n\n```\n{r[arm]['log_tail']}\n```"
        for r in results for arm in ("hardfocus", "pandas") if "returncode" in r[arm] and not r[arm]["ok"]
    )
    notes = "".join(f"\n- {a}\n" for a in report.get("annotations", []))  # added after the run, kept in the JSON
    notes = f"\n## Notes added after the run\n{notes}" if notes else ""
    return f"""# Selection speed: `hardfocus select` vs plain pandas

Measured {report['finished']} ({report['wall_s'] / 60:.1f} min in all), hardfocus {m.get('hardfocus_code')}.

{headline(results)}
{notes}
{results_table(results)}

- **hardfocus**: `hardfocus select <scores> -o <out> --no-report`, the real CLI with its defaults (global
  ranking, drop_top {DROP_TOP}, keep {KEEP}, IR-DRO temperature {TEMPERATURE}), a fresh process per run. Its
  figures include the CLI's start-up: `hardfocus --help` alone takes {report['startup']['seconds']:.1f} s and
  {report['startup']['peak_rss_gb']:.2f} GB (imports).
- **pandas**: `python benchmarks/selection_speed.py _pandas <scores> <out>`: read the parts with
  `pd.read_parquet` + `pd.concat`, keep status ok & finite loss, `sort_values(["loss", "sample_id"],
  ascending=[False, True])`, take the band, `loss_rank` from `rank(method="min", ascending=False)`,
  log-sum-exp softmax weights (mean 1), `to_parquet`. Skipped at a size where the peak RSS of its
  largest successful run, scaled by N, exceeds the {report['args']['mem_limit_gb']:g} GB limit.
- Peak RSS: `ru_maxrss` of that one child (`os.wait4`), in GB = 10^9 bytes. A watchdog kills a child past
  {report['args']['mem_limit_gb']:g} GB. "other load": CPU-seconds per second other processes used during the run
  (the machine is shared; > 0.2 means the figure is pessimistic). "CPU s" / "s" > 1 means several cores worked.
- Same selection: both outputs sorted by sample_id; the id sets must be equal (ties in float32 loss are
  broken by sample_id in both), then weights and loss ranks compared per id (a loss_rank difference of
  ~6e-8 is one float32 ulp: rank × float32(1/(n-1)) against rank / (n-1)).
- Score files were generated or read shortly before each run; whether they were still in the page cache
  is not checked (at 10^7 rows with `input_ids` they are 11 GB), so a figure may include disk reads.

Rows:

{counts}

Synthetic scores as `hardfocus score` writes them (`benchmarks/selection_data.py`): ids
`shard-NNNNN.jsonl.zst#row`, {ROWS_PER_SHARD:,} rows per shard, one group per shard
({', '.join(f'{g or "null"} {p:.0%}' for g, p in GROUPS)}), losses lognormal/gamma per group plus
{NOISE_RATE:.0%} noise at 6-11 nats, {NON_OK_RATE:.1%} rows with a non-ok status, NaN/inf loss on
{NAN_RATE + INF_RATE:.3%} of ok rows; `input_ids` of every row (lognormal lengths, median 400 tokens, cut at
{MAX_TOKENS:,}; Zipf-distributed ids over a {VOCAB:,}-token vocabulary), which `select` carries into
`selected/`; zstd part files of {report['args']['rows_per_part']:,} rows (scoring's default `rows_per_unit`).

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
        scores, output = argv[1], argv[2]
        pandas_select(scores, output, DROP_TOP, KEEP, TEMPERATURE)
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
    ok = all(r["hardfocus"]["ok"] and r.get("agreement", {"same_set": True})["same_set"] for r in report["results"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
