"""Training's memory: the stream (``training.stream``) against the table every token id was held in before.

    python -m benchmarks.training_memory [--sizes 1e6,1e7] [--shuffle-buffer 65536] [--out benchmarks/results/training_memory.md]

For each size, a synthetic token directory (``part-*.parquet`` of ``input_ids`` and ``weight``, 10^5 rows a part,
lengths 4 to 128 tokens, median ~24) is written once under ``outputs/bench-training-memory/``; then, each in a
fresh process whose peak RSS the kernel records (``benchmarks.harness.run_measured``):

stream   ``TrainingStream(PartWindows(...)).batch_rows()`` over one whole epoch, batches of 8, ``--shuffle-buffer``
         rows a window: what ``hardfocus train`` holds of its data (every row is read, checked, grouped and
         handed over as the collator takes it);
table    ``training.data.load_training_data`` + ``TokenDataset``: every token id in memory, as training held them
         before the stream (and as held-out data still is).

Both processes import the same libraries first; ``import`` is the RSS of a process that imports them and stops,
so the data's share is the peak less that. The verdict: the stream's share stays flat from size to size (bounded
by the window), the table's grows with the data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    command_line,
    fmt,
    library_versions,
    machine_info,
    machine_lines,
    markdown_table,
    run_measured,
    write_report,
)

log = logging.getLogger("training_memory")
ROWS_PER_PART = 100_000
CHILD = """
import resource, sys, time
from training.data import TokenDataset, load_training_data
from training.sources import find_sources
from training.stream import PartWindows, TrainingStream
arm, path, buffer = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
rows = tokens = 0
if arm == "stream":
    stream = TrainingStream(PartWindows(find_sources([path]), 0), lambda r: r, 8, buffer, 0, "grouped", 512)
    batches = stream.batch_rows()
    epoch = find_sources([path]).rows
    while rows < epoch:
        batch = next(batches)
        rows += len(batch)
        tokens += sum(len(r["input_ids"]) for r in batch)
elif arm == "table":
    data = TokenDataset(load_training_data([path]).table)
    rows = len(data)
    tokens = sum(len(data[i]["input_ids"]) for i in range(0, rows, 1000))
print("RESULT", rows, tokens, time.perf_counter() - t, flush=True)
"""


def synthetic_tokens(root: Path, rows: int, seed: int = 0) -> Path:
    """A token directory of ``rows`` rows (reused when it is there and whole)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = root / f"tokens-{rows}"
    done = out / "rows.json"
    if done.exists() and json.loads(done.read_text()) == rows:
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for p, start in enumerate(range(0, rows, ROWS_PER_PART)):
        n = min(ROWS_PER_PART, rows - start)
        lengths = np.clip(rng.lognormal(np.log(24), 0.6, n).astype(np.int32), 4, 128)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(3, 49000, offsets[-1], dtype=np.int32)))
        pq.write_table(pa.table({"input_ids": ids, "weight": pa.array(rng.uniform(0.5, 1.5, n).astype(np.float32))}),
                       out / f"part-{p:05d}.parquet")
    done.write_text(json.dumps(rows))  # not a part: the directory stays a token directory
    return out


def measure(arm: str, path: Path, buffer: int, logs: Path) -> dict:
    code = CHILD if arm != "import" else CHILD.split("arm, path")[0]
    run = run_measured([sys.executable, "-c", code, arm, str(path), str(buffer)], logs / f"{arm}-{path.name}.log",
                       mem_limit_bytes=20e9)
    result = {"arm": arm, "seconds": run["seconds"], "peak_rss_gb": run["peak_rss_gb"], "other_load": run["other_load"],
              "returncode": run["returncode"], "oom": run["oom"]}
    for line in run["log_tail"].splitlines():
        if line.startswith("RESULT"):
            rows, tokens, loop_s = line.split()[1:]
            result |= {"rows": int(rows), "loop_seconds": float(loop_s)}
    if run["returncode"] != 0:
        log.warning("%s on %s failed: %s", arm, path, run["log_tail"][-500:])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--shuffle-buffer", type=int, default=65536)
    parser.add_argument("--work", type=Path, default=Path("outputs/bench-training-memory"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training_memory.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    results = []
    for rows in sizes:
        path = synthetic_tokens(args.work, rows)
        on_disk = sum(p.stat().st_size for p in path.glob("part-*.parquet")) / 1e9
        base = measure("import", path, args.shuffle_buffer, args.work / "logs")
        for arm in ("stream", "table"):
            r = measure(arm, path, args.shuffle_buffer, args.work / "logs")
            r |= {"size": rows, "parquet_gb": on_disk, "import_rss_gb": base["peak_rss_gb"],
                  "data_rss_gb": r["peak_rss_gb"] - base["peak_rss_gb"]}
            log.info("%s %d rows: peak %.2f GB (%.2f GB over the imports), %.0f s", arm, rows, r["peak_rss_gb"],
                     r["data_rss_gb"], r["seconds"])
            results.append(r)
    report = {"command": command_line(argv), "machine": machine_info(), "versions": library_versions(),
              "shuffle_buffer": args.shuffle_buffer, "results": results}
    write_report(args.out, report, render_markdown(report))


def render_markdown(report: dict) -> str:
    rows = [[f"{r['size']:.0e}", r["arm"], fmt(r["parquet_gb"], ".2f"), fmt(r["peak_rss_gb"], ".2f"),
             fmt(r["data_rss_gb"], ".2f"), fmt(r.get("loop_seconds"), ".0f"),
             fmt(r["rows"] / r["loop_seconds"] if r.get("loop_seconds") else None, ",.0f"), fmt(r["other_load"], ".2f")]
            for r in report["results"]]
    return "\n".join([
        "# Training's memory: the stream against the table",
        "",
        f"Command: `{report['command']}`",
        "",
        *machine_lines(report["machine"], report["versions"]),
        "",
        f"Windows of {report['shuffle_buffer']} rows, batches of 8 (grouped); peak RSS from the kernel (`wait4`), "
        "the data's share is the peak less a process that only imports the same modules.",
        "",
        markdown_table(["rows", "arm", "parquet GB", "peak RSS GB", "over the imports GB", "epoch s", "rows/s",
                        "other load"], rows, align="llrrrrrr"),
        "",
    ])


if __name__ == "__main__":
    main()
