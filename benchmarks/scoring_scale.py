"""How scoring's orchestration scales (planning, reading, resuming), not model speed: the real CLI on a tiny model.

    python benchmarks/scoring_scale.py [--sizes 1e4,1e5,1e6] [--workdir /tmp/hf-scale] [--repo PATH] [--label now] \
        [--timeout-per-arm 1200] [--skip ARM[=REASON] ...] [--reuse EARLIER.json] [--out results/scoring_scale-LABEL.md]
    python benchmarks/scoring_scale.py --compare before.json after.json [--out benchmarks/results/scoring_scale.md]
    python benchmarks/scoring_scale.py --render results/scoring_scale-LABEL.json [--out ...]  # Markdown again, no runs

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
import shlex
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

# run as `python benchmarks/scoring_scale.py`: this folder is sys.path[0]
from speed_corpus import source_files
from speed_machine import library_versions, load_average, machine_info

log = logging.getLogger("scoring_scale")

LAYOUTS = ("jsonl-1", "jsonl-1000", "parquet-10", "parquet-1rg")
EXTRAS_LAYOUT, PLAN_LAYOUT, PLAN_ROWS = "parquet-10", "jsonl-10000", 1_000_000
PLANNED = re.compile(r": (planned\b|\d+ shards, \d+ rows in \d+ units)", re.IGNORECASE)  # old and new wording
SCORE_FLAGS = ["--model", None, "--dtype", "float32", "--device", "cpu", "--max-tokens", "32", "--compile", "off"]
TARGET_RATIO, TARGET_RSS_MB, TARGET_PLAN_S, TARGET_NOOP_S = 0.8, 2048, 30.0, 10.0


def size_name(n: int) -> str:
    exp = round(math.log10(n))
    return f"1e{exp}" if 10**exp == n else str(n)


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


def complete(r: dict) -> bool:
    return r.get("outcome") == "ok" and r.get("rows_ok", True) and r.get("wall_s") is not None


def marginal(scaling: dict, layout: str, lo: int, hi: int) -> float | None:
    """Rows added / seconds added from ``lo`` to ``hi`` rows of one layout (both runs complete): the steady-state
    rate, the fixed start-up cancelled out. None where either run is missing or ``hi`` was not the slower."""
    a, b = (scaling.get(f"{layout}@{size_name(n)}", {}) for n in (lo, hi))
    if not (complete(a) and complete(b)) or b["wall_s"] <= a["wall_s"]:
        return None
    return (hi - lo) / (b["wall_s"] - a["wall_s"])


def headline(report: dict) -> list[dict]:
    """Each target: the figure, and met (True) / not met (False) / not measured (None)."""
    s, ex, out = report["scaling"], report["extras"], []
    lo, mid, hi = 10**4, 10**5, 10**6
    for layout in LAYOUTS:
        early, late = marginal(s, layout, lo, mid), marginal(s, layout, mid, hi)
        a, b = s.get(f"{layout}@1e5", {}), s.get(f"{layout}@1e6", {})
        value, met = "not measured", None
        if early and late:
            ratio = late / early
            value = (f"{ratio:.2f}x: {late:,.0f} vs {early:,.0f} rows/s added; whole command "
                     f"{b['rows_per_s']:,.0f} vs {a['rows_per_s']:,.0f} rows/s")
            met = ratio >= TARGET_RATIO
        elif complete(a) and "wall_s" in b and not complete(b):  # 1e6 timed out or failed: too slow or broken
            value, met = f"1e6 {b['outcome']} with {b.get('rows', 0):,} rows", False
        out.append({"target": f"{layout}: marginal rows/s 1e5->1e6 >= {TARGET_RATIO:g} x marginal rows/s 1e4->1e5",
                    "value": value, "met": met})
    rss = max((r.get("driver_peak_rss_mb") or 0 for r in [*s.values(), *ex.values()]), default=0)
    out.append({"target": f"driver peak RSS < {TARGET_RSS_MB} MB", "value": f"{rss:,.0f} MB, the most of any arm",
                "met": rss < TARGET_RSS_MB if rss else None})
    plan = ex.get("planning", {}).get("planned_s")
    out.append({"target": f"planning 10,000 shards < {TARGET_PLAN_S:g} s", "value": "NA" if plan is None else f"{plan:.1f} s",
                "met": None if plan is None else plan < TARGET_PLAN_S})
    noop = ex.get("noop", {})
    ok = noop.get("outcome") == "ok"
    out.append({"target": f"no-op rerun < {TARGET_NOOP_S:g} s", "met": noop["wall_s"] < TARGET_NOOP_S if ok else None,
                "value": f"{noop['wall_s']:.1f} s at {size_name(noop['size'])} rows" if ok else noop.get("outcome", "-")})
    return out


def verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**NOT met**", None: "not measured"}[met]


def cell(r: dict) -> str:
    if "wall_s" not in r:
        return r.get("outcome", "").split(":")[0]  # the reason is given once, below the table
    text = f"{r['rows_per_s']:,.0f} rows/s ({r['wall_s']:.0f} s, {r['driver_peak_rss_mb']:,.0f} MB)"
    return text if r["outcome"] == "ok" and r.get("rows_ok", True) else f"{r['outcome']}: {r.get('rows', 0):,} rows, {text}"


def render(report: dict) -> str:
    m, ex = report["machine"], report["extras"]
    sizes = sorted({r["n"] for r in report["scaling"].values()})
    lines = [f"# Scoring orchestration at scale: {report['label']}", "", f"Command: `{report['command']}`  ",
             f"Measured: {report['repo']} at {report['commit'][:12]}{' (dirty)' if report['dirty'] else ''}, "
             f"{report['date']}  ", f"Machine: {m['cpu_model']}, {m['cpus']} CPUs; load average {m['load_avg_start']:.2f} "
             f"at the start, {m['load_avg_end']:.2f} at the end  ",
             f"Score flags: `{shlex.join(report['settings']['score_flags'])}` (1-layer Llama, hidden 16), Ray local",
             "", "## Targets", ""]
    lines += [f"- {h['target']}: {verdict(h['met'])} ({h['value']})" for h in headline(report)]
    lines += ["", "## Rows/s of the whole `score` command (wall s, driver peak RSS)", "",
              "| layout | " + " | ".join(size_name(n) for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for layout in LAYOUTS:
        cells = [cell(report["scaling"].get(f"{layout}@{size_name(n)}", {})) for n in sizes]
        lines.append(f"| {layout} | " + " | ".join(cells) + " |")
    loads = [f"{k} {r['load_avg_start']:.1f}" for k, r in [*report["scaling"].items(), *ex.items(),
                                                          *(("resume rerun", ex["resume"].get("rerun", {})),)]
             if "load_avg_start" in r]
    reasons: dict[str, list[str]] = {}
    for k, r in report["scaling"].items():
        if "wall_s" not in r:
            reasons.setdefault(r["outcome"], []).append(k)
    lines += [f"\n{', '.join(keys)}: {why}" for why, keys in reasons.items()]
    lines += ["", "Rows/s = rows / wall time of the whole command: Python and Ray start-up, model load and planning "
              "included, so the smaller sizes read low. A timed-out arm's figure is the rows it wrote by then."]
    pairs = list(zip(sizes, sizes[1:]))
    if pairs:
        lines += ["", "## Marginal (steady-state) rate between sizes", "",
                  "Rows added / seconds added, (N2 - N1) / (wall(N2) - wall(N1)), both runs complete: the fixed start-up "
                  "cancels out. A cost linear in rows keeps the ratio of the later to the earlier rate at ~1.0.", "",
                  "| layout | " + " | ".join(f"{size_name(a)}->{size_name(b)}" for a, b in pairs)
                  + "".join(f" | ratio {size_name(b)}->{size_name(c)} / {size_name(a)}->{size_name(b)}"
                            for (a, b), (_, c) in zip(pairs, pairs[1:])) + " |",
                  "|---|" + "---:|" * (2 * len(pairs) - 1)]
        for layout in LAYOUTS:
            rates = [marginal(report["scaling"], layout, a, b) for a, b in pairs]
            cells = ["NA" if r is None else f"{r:,.0f} rows/s" for r in rates]
            cells += ["NA" if not (r1 and r2) else f"{r2 / r1:.2f}x" for r1, r2 in zip(rates, rates[1:])]
            lines.append(f"| {layout} | " + " | ".join(cells) + " |")
    lines += ["", f"1-minute load average as each arm started ({m['cpus']} CPUs; a run adds about 2 of its own): "
              + ", ".join(loads) + "."]
    lines += ["", "## Other arms", "", "| arm | outcome | seconds | driver peak RSS MB | notes |", "|---|---|---:|---:|---|"]
    notes = {
        "planning": lambda r: f"until the planning line, {r.get('shards', 0):,} shards; "
                              + ("line not seen: NA" if r.get("planned_s") is None else f"{r['planned_s']:.1f} s"),
        "noop": lambda r: f"rerun on the complete {size_name(r.get('size', 1))}-row directory",
        "select": lambda r: f"`hardfocus select` on the {size_name(r.get('size', 1))}-row scores",
        "resume": lambda r: "" if "rows_ok" not in r else (
            f"at {size_name(r['size'])} rows: killed at {r['killed_at_s']:.0f} s with {r['parts_at_kill']}/"
            f"{r['parts_expected']} parts; rerun: {r['rows']:,} rows, {r['unique_ids']:,} distinct ids -> "
            + ("ok" if r["rows_ok"] else "**ROWS LOST OR DUPLICATED**")),
    }
    for key, r in ex.items():
        secs = r.get("planned_s") if key == "planning" else r.get("wall_s")
        rss, note = r.get("driver_peak_rss_mb"), "; ".join(filter(None, [notes[key](r), r.get("skip_reason")]))
        lines.append(f"| {key} | {r['outcome']} | {'NA' if secs is None else f'{secs:.1f}'} | "
                     f"{'' if rss is None else f'{rss:,.0f}'} | {note} |")
    earlier: dict[str, list[str]] = {}
    for k, r in [*report["scaling"].items(), *ex.items()]:
        if "reused_from" in r:
            earlier.setdefault(r.get("measured_by", r["reused_from"]), []).append(k)
    lines += [f"\nMeasured by an earlier run of the same commit (`--reuse`): {', '.join(keys)} by `{cmd}`"
              for cmd, keys in earlier.items()]
    return "\n".join(lines) + "\n"


def compare(before: dict, after: dict, command: str = "") -> str:
    """One before/after table of every arm's figure (whole-command and marginal rows/s per layout, the other arms),
    the load each arm started under, and the targets on both sides (recomputed from the raw numbers)."""
    rate = lambda r: r.get("rows_per_s") if r.get("outcome") == "ok" else None  # noqa: E731
    wall = lambda r: r.get("wall_s") if r.get("outcome") == "ok" else None  # noqa: E731
    arm = lambda key: lambda rep: rep["scaling"].get(key) or rep["extras"].get(key) or {}  # noqa: E731
    rows = [(k, "rows/s, whole command", arm(k), rate) for k in {**before["scaling"], **after["scaling"]}]
    sizes = sorted({r["n"] for rep in (before, after) for r in rep["scaling"].values()})
    for layout in LAYOUTS:
        for lo, hi in zip(sizes, sizes[1:]):
            rows.append((f"{layout} {size_name(lo)}->{size_name(hi)}", "marginal rows/s (rows added / s added)",
                         lambda rep, ly=layout, a=lo, b=hi: {"value": marginal(rep["scaling"], ly, a, b)},
                         lambda r: r["value"]))
    rows += [("planning", "s to the planning line", arm("planning"), lambda r: r.get("planned_s")),
             ("noop", "s", arm("noop"), wall), ("resume", "rerun s", arm("resume"), wall),
             ("select", "s", arm("select"), wall)]

    def side(name: str, rep: dict) -> list[str]:
        earlier = dict.fromkeys(r["measured_by"] for r in [*rep["scaling"].values(), *rep["extras"].values()]
                                if r.get("measured_by") and r["measured_by"] != rep["command"])
        return [f"{name}: `{rep['command']}` on {rep['repo']} at {rep['commit'][:12]}{' (dirty)' if rep['dirty'] else ''}, "
                f"{rep['date']}, load average {rep['machine']['load_avg_start']:.2f} at the start  ",
                *(f"{name}, arms reused from an earlier run of the same commit: `{c}`  " for c in earlier)]

    lines = ["# Scoring orchestration at scale: before / after", "",
             *([f"Written by: `{command}`  "] if command else []), *side("Before", before), *side("After", after),
             "", "| arm | figure | before | after | after / before | load at start, before / after |",
             "|---|---|---:|---:|---:|---|"]
    load = lambda r: (r.get("load_avg_start") or r.get("rerun", {}).get("load_avg_start"))  # noqa: E731
    for key, what, pick, get in rows:
        b, a = pick(before), pick(after)
        vb, va = get(b), get(a)
        at = lambda r: f" at {size_name(r['size'])} rows" if "size" in r else ""  # noqa: E731
        fb, fa = ((r.get("outcome", "NA").split(":")[0] if v is None else f"{v:,.1f}{at(r)}")
                  for v, r in ((vb, b), (va, a)))
        same = vb and va and b.get("size") == a.get("size")
        loads = " / ".join("-" if load(r) is None else f"{load(r):.1f}" for r in (b, a))
        lines.append(f"| {key} | {what} | {fb} | {fa} | {f'{va / vb:.2f}x' if same else '-'} | "
                     f"{'' if loads == '- / -' else loads} |")
    lines += ["", "Whole-command rows/s include 35-45 s of fixed start-up; the marginal rates cancel it. NA: not run, "
              "or not complete at one of the two sizes. Load: 1-minute load average as the arm started (2 CPUs; a run "
              "adds about 2 of its own).", "", "| target | before | after |", "|---|---|---|"]
    for hb, ha in zip(headline(before), headline(after)):
        lines.append(f"| {ha['target']} | {verdict(hb['met'])} ({hb['value']}) | {verdict(ha['met'])} ({ha['value']}) |")
    return "\n".join(lines) + "\n"


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
    command = shlex.join(["python", *(sys.argv if argv is None else [sys.argv[0], *argv])])
    if args.compare or args.render:
        text = (compare(*(json.loads(f.read_text()) for f in args.compare), command=command) if args.compare
                else render(json.loads(args.render.read_text())))
        out = args.out or (Path("benchmarks/results/scoring_scale.md") if args.compare else args.render.with_suffix(".md"))
        out.write_text(text)
        sys.stdout.write(text)
        return 0
    report = measure(args, command)
    out = args.out or Path(f"benchmarks/results/scoring_scale-{args.label}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.write_text(render(report))
    log.info("wrote %s and %s", out, out.with_suffix(".json"))
    sys.stdout.write(render(report))
    arms = [*report["scaling"].items(), *report["extras"].items()]
    lost = [k for k, r in arms if r.get("outcome") == "ok" and r.get("rows_ok") is False]
    if lost:
        log.error("rows lost or duplicated in: %s", ", ".join(lost))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
