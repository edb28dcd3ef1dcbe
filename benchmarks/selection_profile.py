"""Where `hardfocus select` spends its time and memory: its steps run by hand, one after another, in one process.

    python benchmarks/selection_profile.py SCORES_DIR [--out PROFILE.json] [--alternatives]
        [--scenarios select,rank-pieces] [--mem-limit-gb 16] [--only SCENARIO]

Scenario ``select`` mirrors ``selection.job.select`` (global ranking, the CLI defaults, no report) step by
step, with the wall and CPU seconds of each step, the process RSS after it and the peak RSS during it
(sampled every 10 ms), so the step that dominates is plain. Further scenarios, each in a fresh process
(peak RSS from wait4, killed past ``--mem-limit-gb``):

- ``rank-pieces``: the numpy pieces of ranking one float column, timed apart: ``np.argsort`` (default and
  stable), one sort of a packed u64 key (loss bits, position), the gather of the sorted losses, the
  competition rank and the scatter back to row order.

Make SCORES_DIR with ``benchmarks/selection_speed.py`` (it leaves it under its ``--workdir``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import psutil

# run as `python benchmarks/selection_profile.py`: this folder is sys.path[0]
from harness import GB, run_measured


class Meter:
    def __init__(self) -> None:
        self.proc = psutil.Process(os.getpid())
        self.steps: list[dict] = []
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    @contextmanager
    def step(self, name: str):
        gc.collect()
        before = self.proc.memory_info().rss
        self.peak = before
        t0 = time.perf_counter()
        cpu0 = sum(os.times()[:2])
        yield
        seconds = time.perf_counter() - t0
        after = self.proc.memory_info().rss
        row = {"step": name, "seconds": seconds, "cpu_seconds": sum(os.times()[:2]) - cpu0,
               "rss_before_gb": before / GB, "peak_rss_gb": max(self.peak, after) / GB, "rss_after_gb": after / GB}
        self.steps.append(row)
        print(f"{name:<48} {seconds:7.2f} s  cpu {row['cpu_seconds']:7.2f} s  peak {row['peak_rss_gb']:6.2f} GB  "
              f"after {row['rss_after_gb']:6.2f} GB", flush=True)

    def close(self) -> None:
        self._stop.set()


def _eligible(parts) -> tuple[dict[str, int], pl.DataFrame]:
    """Excluded counts and the eligible (_row, group, loss), as ``selection.job._rank`` gets them."""
    if hasattr(parts, "eligible"):  # from d46d5f9
        return parts.eligible()
    from selection.job import _eligible as job_eligible

    return job_eligible(parts)


def profile_select(scores: str, m: Meter) -> None:
    """``selection.job.select`` (global, defaults, no report), one step at a time."""
    from selection.bands import KEPT, band_weights, rank_bands
    from selection.scores import open_scores
    from selection.summary import group_counts, loss_quantiles, thresholds, weight_stats
    from selection.writer import write_shards

    with m.step("open_scores (manifests, part metadata)"):
        parts = open_scores([scores])
    with m.step("eligible: excluded counts + (_row, group, loss)"):
        _, eligible = _eligible(parts)
    with m.step("rank_bands (argsort, boundary ties, rank, band)"):
        ranked = rank_bands(eligible, 0.1, 0.5, False, parts.sample_ids)
    del eligible
    print(f"    ranked frame: {ranked.estimated_size() / GB:.2f} GB estimated, {ranked.height:,} rows", flush=True)
    with m.step("kept = ranked.filter(band == kept)"):
        kept = ranked.filter(pl.col("band") == KEPT)
    with m.step("band_weights (numpy IR-DRO)"):
        kept = kept.with_columns(weight=pl.Series(band_weights(kept, False, "irdro", 1.0, None)))
    out = tempfile.mkdtemp(prefix="selection-profile-")
    try:
        with m.step("write_shards (per part: read, take, check, write)"):
            write_shards(parts, kept, out, progress=False)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    with m.step("summary: band counts"):
        {str(b): int(n) for b, n in ranked.group_by("band").len().sort("band").iter_rows()}
    with m.step("summary: group_counts"):
        group_counts(ranked, kept)
    with m.step("summary: thresholds"):
        thresholds(ranked, False)
    with m.step("summary: loss_quantiles"):
        loss_quantiles(ranked)
    with m.step("summary: weight_stats"):
        weight_stats(kept["weight"].to_numpy())
    del ranked, kept


def alt_rank_pieces(scores: str, m: Meter) -> None:
    from selection.scores import open_scores

    _, eligible = _eligible(open_scores([scores]))
    loss = eligible["loss"].to_numpy()
    n = loss.size
    del eligible
    with m.step("np.argsort(loss) (introsort, not stable)"):
        order = np.argsort(loss)[::-1]
    with m.step("np.argsort(loss, kind='stable')"):
        np.argsort(loss, kind="stable")
    with m.step("one sort of a u64 key (loss bits desc, position)"):
        key = (np.uint64(0xFFFFFFFF) - loss.view(np.uint32).astype(np.uint64)) << np.uint64(32)
        key |= np.arange(n, dtype=np.uint64)
        key.sort()
        pos = (key & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        del key, pos
    with m.step("gather: sorted_loss = loss[order]"):
        sorted_loss = loss[order]
    with m.step("competition rank (maximum.accumulate)"):
        rank = np.arange(n, dtype=np.uint32)
        rank[1:][sorted_loss[1:] == sorted_loss[:-1]] = 0
        np.maximum.accumulate(rank, out=rank)
    with m.step("scatter: loss_rank[order] = rank / (n - 1)"):
        loss_rank = np.empty(n, dtype=np.float32)
        loss_rank[order] = rank.astype(np.float32) * np.float32(1 / max(n - 1, 1))


ALTERNATIVES = {"rank-pieces": alt_rank_pieces}


def run_child(args: list[str], mem_limit_gb: float) -> dict:
    """This script in a fresh process: wall and CPU seconds, peak RSS (wait4), killed past ``mem_limit_gb``."""
    log_path = Path(tempfile.mkdtemp(prefix="selection-profile-")) / "child.log"
    run = run_measured([sys.executable, os.path.abspath(__file__), *args], log_path, mem_limit_gb * GB)
    print(log_path.read_text(errors="replace"), end="", flush=True)
    shutil.rmtree(log_path.parent, ignore_errors=True)
    return {k: run[k] for k in ("cmd", "returncode", "seconds", "peak_rss_gb", "cpu_seconds", "other_load", "oom")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scores")
    ap.add_argument("--out", default=None, help="write the steps as JSON here")
    ap.add_argument("--alternatives", action="store_true", help="then each alternative in a fresh process")
    ap.add_argument("--scenarios", default=None, help="comma-separated scenarios to run (instead of select [+ all])")
    ap.add_argument("--mem-limit-gb", type=float, default=16.0, help="kill a scenario past this RSS")
    ap.add_argument("--only", choices=["select", *ALTERNATIVES], help="run this one scenario, in this process")
    args = ap.parse_args()
    if args.only:
        m = Meter()
        print(f"== {args.only}: polars {pl.__version__}, {pl.thread_pool_size()} threads; {args.scores}", flush=True)
        (profile_select if args.only == "select" else ALTERNATIVES[args.only])(args.scores, m)
        m.close()
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"scenario": args.only, "scores": args.scores, "steps": m.steps}, f, indent=2)
        return 0
    runs = []
    names = args.scenarios.split(",") if args.scenarios else ["select", *(ALTERNATIVES if args.alternatives else [])]
    for name in names:
        tmp = tempfile.mktemp(suffix=".json")
        run = run_child([args.scores, "--only", name, "--out", tmp], args.mem_limit_gb)
        if os.path.exists(tmp):
            with open(tmp) as f:
                run["steps"] = json.load(f)["steps"]
            os.remove(tmp)
        print(f"   -> {name}: {run['seconds']:.1f} s, cpu {run['cpu_seconds']:.1f} s, "
              f"peak RSS {run['peak_rss_gb']:.2f} GB (whole process, wait4), other load {run['other_load']:.2f}"
              + (" KILLED: out of memory" if run["oom"] else "" if run["returncode"] == 0 else f" rc {run['returncode']}"),
              flush=True)
        runs.append({"scenario": name, **run})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"scores": args.scores, "polars": pl.__version__, "runs": runs}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
