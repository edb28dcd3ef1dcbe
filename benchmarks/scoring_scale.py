"""How scoring's orchestration scales (planning, reading, resuming), not model speed: the real CLI on a tiny model.

    python -m benchmarks.scoring_scale [--sizes 1e4,1e5,1e6] [--workdir /tmp/hf-scale] [--repo PATH] [--label now] \
        [--timeout-per-arm 1200] [--skip ARM[=REASON] ...] [--reuse EARLIER.json] [--out results/scoring_scale-LABEL.md]
    python -m benchmarks.scoring_scale --compare before.json after.json [--out benchmarks/results/scoring_scale.md]
    python -m benchmarks.scoring_scale --render results/scoring_scale-LABEL.json [--out ...]  # Markdown again, no runs

Every arm is a subprocess ``python -m pipelines.cli ...`` run in ``--repo`` (PYTHONPATH and cwd), so one script
measures any checkout. The model is a 1-layer Llama (hidden 16) with a 300-token BPE trained here on the corpus
text, saved once under the workdir with the corpora (real sentences from this machine, 50-300 characters, seed 0);
``--max-tokens 32 --compile off`` keep the model's share of the time small. Arms:

- ``LAYOUT@N``: rows/s of the whole ``score`` command (start-up included) for N rows laid out as one JSONL.zst
  shard (jsonl-1), 1,000 JSONL.zst shards (jsonl-1000), 10 Parquet files in 10k-row row groups (parquet-10), or
  one Parquet file in one row group (parquet-1rg); with the driver's peak RSS (VmHWM of the CLI process polled
  every 0.1 s; Ray's processes not included) and a check of one output row per input row. Between two sizes of a
  layout, the marginal (steady-state) rate: rows added / seconds added, which cancels the fixed start-up (Python,
  Ray, model load: 35-45 s here) that makes the whole command's rows/s grow with size whatever the scaling. The
  target compares the marginal rate 1e5->1e6 with 1e4->1e5: a cost linear in rows keeps it at ~1.0; re-reading a
  shard per unit makes it fall.
- ``planning``: seconds from start until the driver logs its planning line, on 10,000 JSONL.zst shards.
- ``noop``, ``select``, ``resume``: on parquet-10 at the largest size: the same command again on the complete
  directory; ``select``; a fresh run SIGKILLed (its process group) once half the parts exist, then rerun, and the
  output checked for exactly one row per input row (the script exits 1 if not).

An arm over ``--timeout-per-arm`` is killed and recorded as a timeout with the parts and rows it wrote. ``--skip``
records an arm as not run, with a reason; ``--reuse`` takes the arms an earlier run of the same commit measured.
Writes Markdown (``--out``) and JSON beside it (every raw number, machine, commit, load averages); ``--render``
writes the Markdown of a results JSON again (targets recomputed from its raw numbers), measuring nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from benchmarks.harness import command_line, library_versions, load_average, machine_info, write_report
from benchmarks.scoring_scale_report import LAYOUTS, compare, headline, render, size_name
from benchmarks.speed_corpus import source_files

log = logging.getLogger("scoring_scale")

EXTRAS_LAYOUT, PLAN_LAYOUT, PLAN_ROWS = "parquet-10", "jsonl-10000", 1_000_000
PLANNED = re.compile(r": (planned\b|\d+ shards, \d+ rows in \d+ units)", re.IGNORECASE)  # old and new wording
SCORE_FLAGS = ["--model", None, "--dtype", "float32", "--device", "cpu", "--max-tokens", "32", "--compile", "off"]


def sentence_pool() -> list[str]:
    """Sentences of the licences and of a fixed spread of stdlib sources, whitespace collapsed, 50-300 chars."""
    kinds = source_files()
    python = kinds.get("python", [])
    files = kinds.get("license", []) + python[:: max(len(python) // 300, 1)]
    pool = []
    for path in files:
        for piece in re.split(r"(?<=[.!?:;])\s+|\n\s*\n", path.read_text(errors="replace")[:200_000]):
            piece = " ".join(piece.split())
            if len(piece) >= 50:
                pool.append(piece[:300])
    log.info("sentence pool: %d sentences from %d files", len(pool), len(files))
    return pool


def write_shard(path: Path, texts: list[str], row_group: int | None = None) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"text": texts}), path, row_group_size=row_group or len(texts))
    else:
        data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(data))


def corpus(workdir: Path, layout: str, n: int, pool: list[str]) -> Path:
    """``n`` rows in ``layout`` (jsonl-K: K JSONL.zst shards; parquet-K: K files, 10k-row groups; parquet-1rg)."""
    d = workdir / "corpora" / f"{layout}-{n}"
    done = d.with_name(d.name + ".done")
    if done.exists():
        return d
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    texts = [pool[i] for i in rng.integers(len(pool), size=n)]
    kind, k = layout.split("-")
    files = 1 if k == "1rg" else int(k)
    for i in range(files):
        chunk = texts[i * n // files : (i + 1) * n // files]
        name = f"shard-{i:05d}.parquet" if kind == "parquet" else f"shard-{i:05d}.jsonl.zst"
        write_shard(d / name, chunk, None if k == "1rg" else 10_000)
    done.touch()
    log.info("wrote corpus %s", d)
    return d


def tiny_model(workdir: Path, pool: list[str]) -> Path:
    """A 1-layer Llama (hidden 16) with a byte-level BPE of ~300 tokens trained on the pool (tests/conftest.py)."""
    path = workdir / "model"
    if (path / "config.json").exists():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(pool[:20_000], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    tmp = workdir / "model.tmp"
    LlamaForCausalLM(config).save_pretrained(tmp)
    fast.save_pretrained(tmp)
    tmp.rename(path)
    return path


def vm_hwm_kb(pid: int) -> int:
    m = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(errors="replace"))
    return int(m.group(1)) if m else 0  # 0 once it is a zombie


def kill_session(pid: int) -> None:
    """SIGKILL the process group, then anything else left in the session the CLI started (by pid)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == pid:  # field 6: session id
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def run_cli(args: list[str], repo: Path, log_path: Path, timeout: float, stop=None) -> dict:
    """Run the CLI in its own session; record wall time, driver VmHWM, when it logged its plan; kill it on
    timeout or once ``stop(state)`` is true."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(repo)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    state: dict = {"planned_s": None}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=repo, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def read() -> None:
        with open(log_path, "w", buffering=1) as f:
            for line in p.stdout:
                f.write(line)
                if state["planned_s"] is None and PLANNED.search(line):
                    state["planned_s"] = time.perf_counter() - t0

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    hwm, outcome, load = 0, None, load_average()
    while outcome is None:
        try:
            p.wait(timeout=0.1)
            outcome = "ok" if p.returncode == 0 else f"failed (exit {p.returncode}, see {log_path})"
        except subprocess.TimeoutExpired:
            hwm = max(hwm, vm_hwm_kb(p.pid))  # the driver is alive until wait() returns: /proc is readable
            if time.perf_counter() - t0 > timeout:
                outcome = f"timeout after {timeout:.0f} s"
            elif stop is not None and stop(state):
                outcome = "killed"
    wall = time.perf_counter() - t0
    kill_session(p.pid)
    p.wait()
    reader.join(5)
    return {"outcome": outcome, "wall_s": wall, "driver_peak_rss_mb": hwm / 1024, "planned_s": state["planned_s"],
            "load_avg_start": load, "load_avg_end": load_average(), "log": str(log_path)}


def parts_of(scores: Path) -> list[Path]:
    return sorted(scores.glob("part-*.parquet"))


def rows_check(scores: Path, n: int | None = None) -> dict:
    """Parts and rows written; with ``n``, also distinct sample ids and whether both are exactly ``n``."""
    parts = parts_of(scores)
    if n is None or not parts:
        return {"parts": len(parts), "rows": sum(pq.ParquetFile(p).metadata.num_rows for p in parts)} | (
            {} if n is None else {"unique_ids": 0, "rows_ok": False})
    ids = pq.read_table(parts, columns=["sample_id"])["sample_id"]
    unique = pc.count_distinct(ids).as_py()
    ok = ids.length() == unique == n and (scores / "manifest.json").exists()
    return {"parts": len(parts), "rows": ids.length(), "unique_ids": unique, "rows_ok": ok}


class Bench:
    """The measured checkout, the model flags, the runs folder and the per-arm timeout that every arm shares."""

    def __init__(self, args: argparse.Namespace, pool: list[str]):
        self.repo, self.timeout = args.repo.resolve(), args.timeout_per_arm
        self.runs = args.workdir / "runs" / args.label
        self.flags = [str(tiny_model(args.workdir, pool)) if f is None else f for f in SCORE_FLAGS]
        env = os.environ | {"PYTHONPATH": str(self.repo)}
        where = subprocess.run([sys.executable, "-c", "import scoring; print(scoring.__file__)"], cwd=self.repo, env=env,
                               capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(self.repo)):
            raise SystemExit(f"the CLI would import scoring from {where or 'nowhere'}, not from {self.repo}")

    def fresh(self, name: str) -> Path:
        shutil.rmtree(self.runs / name, ignore_errors=True)
        return self.runs / name

    def score(self, inputs: Path, out: Path, log_name: str, stop=None) -> dict:
        args = ["score", str(inputs), "-o", str(out), *self.flags]
        return run_cli(args, self.repo, out.parent / log_name, self.timeout, stop)

    def scaling(self, key: str, inputs: Path, n: int, keep: bool) -> dict:
        out = self.fresh(key) / "scores"
        log.info("%s: scoring %s", key, inputs)
        r = self.score(inputs, out, "score.log")
        r |= rows_check(out, n if r["outcome"] == "ok" else None)
        r["rows_per_s"] = r["rows"] / r["wall_s"]  # a partial rate where it did not finish
        log.info("%s: %s, %.1f s, %.0f rows/s, driver peak RSS %.0f MB", key, r["outcome"], r["wall_s"],
                 r["rows_per_s"], r["driver_peak_rss_mb"])
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
        return r | {"rows_expected": n}

    def resume(self, inputs: Path, n: int, parts: int) -> dict:
        out, half = self.fresh("resume") / "scores", math.ceil(parts / 2)
        first = self.score(inputs, out, "first.log", stop=lambda _: len(parts_of(out)) >= half)
        at_kill = rows_check(out)
        log.info("resume: %s at %.1f s with %d of %d parts; rerunning", first["outcome"], first["wall_s"],
                 at_kill["parts"], parts)
        rerun = self.score(inputs, out, "rerun.log")
        r = {"outcome": rerun["outcome"], "first_outcome": first["outcome"], "killed_at_s": first["wall_s"],
             "parts_at_kill": at_kill["parts"], "rows_at_kill": at_kill["rows"], "parts_expected": parts, "rerun": rerun,
             "wall_s": rerun["wall_s"], "driver_peak_rss_mb": rerun["driver_peak_rss_mb"]} | rows_check(out, n)
        shutil.rmtree(out, ignore_errors=True)
        return r

    def planning(self, inputs: Path) -> dict:
        out = self.fresh("planning") / "scores"
        log.info("planning: %s until the planning line", inputs)
        r = self.score(inputs, out, "score.log", stop=lambda s: s["planned_s"] is not None)
        shutil.rmtree(out, ignore_errors=True)
        return r | {"shards": int(PLAN_LAYOUT.split("-")[1]), "rows": PLAN_ROWS}


def measure(args: argparse.Namespace, command: str) -> dict:
    pool = sentence_pool()
    bench, workdir, skips = Bench(args, pool), args.workdir, dict(s.partition("=")[::2] for s in args.skip)
    reuse = json.loads(args.reuse.read_text()) if args.reuse else {"scaling": {}, "extras": {}}
    commit = git(bench.repo, "rev-parse", "HEAD")
    if args.reuse and reuse["commit"] != commit:
        raise SystemExit(f"--reuse {args.reuse} measured commit {reuse['commit']}, not {commit}")

    def skipped(key: str, size: int | None = None) -> dict | None:
        """An arm not to run: measured already in --reuse (extras: at this size, or at another if --skip names it),
        or skipped."""
        old = reuse["scaling"].get(key) or reuse["extras"].get(key)
        if old and not old["outcome"].startswith("not run") and (old.get("size", size) == size or key in skips):
            log.info("%s: reusing %s", key, args.reuse)
            return old | {"reused_from": str(args.reuse), "measured_by": old.get("measured_by", reuse["command"])} | (
                {"skip_reason": skips[key]} if key in skips else {})
        return {"outcome": f"not run: {skips[key] or 'skipped'}"} if key in skips else None

    report = {"command": command, "label": args.label, "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "repo": str(bench.repo), "commit": commit, "dirty": bool(git(bench.repo, "status", "--porcelain")),
              "machine": machine_info() | {"load_avg_start": load_average()}, "versions": library_versions(),
              "settings": {"sizes": args.sizes, "score_flags": bench.flags, "timeout_per_arm_s": args.timeout_per_arm},
              "scaling": {}, "extras": {}}
    big = max(args.sizes)
    for n in args.sizes:
        for layout in LAYOUTS:
            key = f"{layout}@{size_name(n)}"
            too_small = {"outcome": "not run: fewer rows than shards"} if layout == "jsonl-1000" and n < 1000 else None
            r = skipped(key, n) or too_small
            if r is None:
                r = bench.scaling(key, corpus(workdir, layout, n, pool), n, keep=layout == EXTRAS_LAYOUT and n == big)
            report["scaling"][key] = r | {"layout": layout, "n": n}
    ex, key = report["extras"], f"{EXTRAS_LAYOUT}@{size_name(big)}"
    main, inputs = bench.runs / key / "scores", workdir / "corpora" / f"{EXTRAS_LAYOUT}-{big}"
    for arm in ("noop", "select", "resume"):
        r = skipped(arm, big)
        if r is None and not (report["scaling"][key].get("rows_ok") and main.is_dir()):
            r = {"outcome": f"not run: no complete {key} directory"}
        ex[arm] = {"size": big} | (r or {
            "noop": lambda: bench.score(inputs, main, "noop.log"),
            "select": lambda: run_cli(["select", str(main), "-o", str(bench.fresh("selected") / "out")],
                                      bench.repo, bench.runs / "selected" / "select.log", bench.timeout),
            "resume": lambda: bench.resume(inputs, big, len(parts_of(main))),
        }[arm]())  # a reused arm keeps the size it ran at
    ex["planning"] = skipped("planning") or bench.planning(corpus(workdir, PLAN_LAYOUT, PLAN_ROWS, pool))
    report["machine"]["load_avg_end"] = load_average()
    report["headline"] = headline(report)
    return report


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(float(x)) for x in s.split(",")], default=[10**4, 10**5, 10**6])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/hf-scale"))
    p.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    p.add_argument("--label", default="now")
    p.add_argument("--timeout-per-arm", type=float, default=1200.0)
    p.add_argument("--skip", action="append", default=[], metavar="ARM[=REASON]",
                   help="record an arm (e.g. jsonl-1@1e6, planning, noop, select, resume) as not run")
    p.add_argument("--reuse", type=Path, metavar="RESULTS_JSON",
                   help="take arms already measured there (same commit) instead of running them again")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE_JSON", "AFTER_JSON"))
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="write the Markdown of a results JSON again (default: beside it); measures nothing")
    p.add_argument("--out", type=Path, help="Markdown file; JSON beside it")
    args = p.parse_args(argv)
    command = command_line(argv)
    if args.compare or args.render:
        text = (compare(*(json.loads(f.read_text()) for f in args.compare), command=command) if args.compare
                else render(json.loads(args.render.read_text())))
        out = args.out or (Path("benchmarks/results/scoring_scale.md") if args.compare else args.render.with_suffix(".md"))
        out.write_text(text)
        sys.stdout.write(text)
        return 0
    report = measure(args, command)
    write_report(args.out or Path(f"benchmarks/results/scoring_scale-{args.label}.md"), report, render(report))
    sys.stdout.write(render(report))
    arms = [*report["scaling"].items(), *report["extras"].items()]
    lost = [k for k, r in arms if r.get("outcome") == "ok" and r.get("rows_ok") is False]
    if lost:
        log.error("rows lost or duplicated in: %s", ", ".join(lost))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
