"""Scoring speed on the real SmolLM2-135M: four ways to compute per-document loss, side by side in one run.

    python benchmarks/scoring_speed.py [--docs 300] [--ref-docs 80] [--seed 0] \
        [--out benchmarks/results/scoring_speed.md]

Arms (DESIGN.md, "Measuring speed" and "Fast scoring"):

(0)  the machine's fp32 and bf16 matmul peak (square torch matmuls, best of a few reps, all threads);
(a)  reference: one document at a time, fp32, ``model(input_ids=ids, labels=ids).loss``;
(b)  plain padded batches of a fixed size, in input order, bf16, full logits, fp32 masked cross entropy;
(c1) hardfocus in-process: ``scoring.Scorer(...).score`` (token-budget batches, chunked fp32 loss);
(c2) hardfocus through Ray: ``scoring.score(ScoreConfig(executor="ray"))`` on a JSONL shard of the same texts.

The documents are real text found on this machine (``/usr/share/common-licenses``, the Python standard
library, ``/usr/share/doc/*/copyright``), cut at seeded log-uniform token lengths between 30 and 1024.
(a) is slow, so it runs on a length-stratified subset of ``--ref-docs`` documents; its tokens/s stands
for the whole set, and its per-document losses are the reference for the correctness check of the others.

Writes a Markdown report (``--out``) and the raw numbers as JSON beside it (same stem, ``.json``).
Exits 1 if a correctness check fails (after writing both files). ``--skip-ray`` leaves out (c2).

Run it on a quiet machine: other work on the same cores changes every figure (the report records the
load average before and after). At the defaults it takes several minutes on 2 cores, most of it in (b).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

log = logging.getLogger("scoring_speed")

MODEL_SPEC = "smollm2-135m"
MIN_TOKENS, MAX_TOKENS = 30, 1024  # document lengths (tokens, incl. the first, unpredicted one)
MAX_FILE_CHARS = 200_000  # only the beginning of a very long source file is tokenised
PADDED_BATCH_SIZE = 8
MATMUL_SIZES = (2048, 4096)
MATMUL_REPS = 3
MATMUL_MIN_SECONDS = 1.0
# bf16 forward vs fp32 forward, per-document mean loss: measured differences are ~0.01 nats.
TOLERANCE_BF16_MAX_NATS = 0.1
TOLERANCE_BF16_MEAN_NATS = 0.03
# (c2) runs the same Scorer on the same token ids as (c1): only thread-count effects may differ.
TOLERANCE_SAME_CODE_NATS = 1e-3


@dataclass
class Doc:
    """One benchmark document: its text (what the Ray job reads) and its token ids (what the others get)."""

    text: str
    ids: np.ndarray  # int32, exactly what the tokenizer gives for ``text``
    source: str


@dataclass
class ArmResult:
    """What one approach did: per-document NLL sums over ``indices`` of the corpus, and how long it took."""

    key: str
    title: str
    indices: list[int]
    nll_sum: np.ndarray  # float64, one per index
    n_tokens: np.ndarray  # int64, predicted positions per index
    seconds: float
    positions: int | None = None  # forward positions computed, padding included (None: not known)
    extra: dict = field(default_factory=dict)

    @property
    def scored_tokens(self) -> int:
        return int(self.n_tokens.sum())

    @property
    def tokens_per_s(self) -> float:
        return self.scored_tokens / self.seconds

    @property
    def mean_loss(self) -> np.ndarray:
        return self.nll_sum / np.maximum(self.n_tokens, 1)


# ---- machine ---------------------------------------------------------------------------------


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set(cpuinfo.split())
    return {
        "cpu_model": _lscpu_field("Model name") or platform.processor(),
        "cpus": os.cpu_count(),
        "cores_per_socket": _lscpu_field("Core(s) per socket"),
        "threads_per_core": _lscpu_field("Thread(s) per core"),
        "hypervisor": _lscpu_field("Hypervisor vendor"),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> float:
    """1-minute load average; other work on the machine skews every figure of the run."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def _lscpu_field(name: str) -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "transformers", "ray", "numpy", "hardfocus"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def matmul_gflops(dtype: torch.dtype, n: int, reps: int, min_seconds: float = MATMUL_MIN_SECONDS) -> float:
    """GFLOP/s of the fastest (n x n) @ (n x n) matmul of at least ``reps`` timed ones, after one warm-up.

    Fast matmuls repeat until ``min_seconds`` have passed, so a short burst of other work does not set the peak.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.matmul(a, b, out=out)
    best, spent, done = math.inf, 0.0, 0
    while done < reps or spent < min_seconds:
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        elapsed = time.perf_counter() - t0
        best, spent, done = min(best, elapsed), spent + elapsed, done + 1
    return 2 * n**3 / best / 1e9


def matmul_peak(dtype: torch.dtype) -> dict:
    by_size = {n: matmul_gflops(dtype, n, MATMUL_REPS) for n in MATMUL_SIZES}
    log.info("%s matmul: %s", dtype, ", ".join(f"{n}: {g:.0f} GFLOP/s" for n, g in by_size.items()))
    return {"gflops": max(by_size.values()), "by_size": by_size}


def matmul_peaks() -> dict[str, dict]:
    return {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}


def combine_peaks(start: dict[str, dict], end: dict[str, dict]) -> dict:
    """The peak of each dtype is the better of its two measurements (before and after the arms)."""
    fp32 = max(start["fp32"]["gflops"], end["fp32"]["gflops"])
    bf16 = max(start["bf16"]["gflops"], end["bf16"]["gflops"])
    return {"start": start, "end": end, "fp32_peak": fp32, "bf16_peak": bf16, "bf16_over_fp32": bf16 / fp32}


# ---- corpus ----------------------------------------------------------------------------------


def source_files() -> dict[str, list[Path]]:
    """Real text on this machine, by kind; kinds with no files are left out."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    kinds = {
        "license": sorted(p for p in Path("/usr/share/common-licenses").glob("*") if p.is_file()),
        "python": sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts and p.is_file()),
        "copyright": sorted(p for p in Path("/usr/share/doc").glob("*/copyright") if p.is_file()),
    }
    kinds = {k: v for k, v in kinds.items() if v}
    if not kinds:
        raise SystemExit("no source text found on this machine")
    log.info("source files: %s", ", ".join(f"{k} {len(v)}" for k, v in kinds.items()))
    return kinds


class TokenizedFiles:
    """Each source file read and tokenised (with character offsets) once, on demand."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[Path, tuple[str, list[tuple[int, int]]]] = {}

    def get(self, path: Path) -> tuple[str, list[tuple[int, int]]]:
        if path not in self._cache:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")[:MAX_FILE_CHARS]
            except OSError:
                text = ""
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            self._cache[path] = (text, enc["offset_mapping"])
        return self._cache[path]


def make_corpus(tokenizer, n_docs: int, seed: int) -> list[Doc]:
    """``n_docs`` windows of real text whose token counts are log-uniform in [MIN_TOKENS, MAX_TOKENS]."""
    rng = np.random.default_rng(seed)
    kinds = source_files()
    files = TokenizedFiles(tokenizer)
    docs: list[Doc] = []
    while len(docs) < n_docs:
        want = int(round(math.exp(rng.uniform(math.log(MIN_TOKENS), math.log(MAX_TOKENS)))))
        doc = _draw_window(rng, kinds, files, want, tokenizer)
        if doc is not None:
            docs.append(doc)
    lengths = np.array([len(d.ids) for d in docs])
    log.info(
        "corpus: %d docs, %d tokens, length min %d / median %d / mean %.0f / max %d",
        len(docs), lengths.sum(), lengths.min(), np.median(lengths), lengths.mean(), lengths.max(),
    )
    return docs


def _draw_window(
    rng: np.random.Generator, kinds: dict[str, list[Path]], files: TokenizedFiles, want: int, tokenizer
) -> Doc | None:
    """A random ``want``-token window of a random file long enough for it; None if this draw fails."""
    kind = list(kinds)[rng.integers(len(kinds))]
    for _ in range(50):
        path = kinds[kind][rng.integers(len(kinds[kind]))]
        text, offsets = files.get(path)
        if len(offsets) >= want:
            break
    else:
        return None
    start = int(rng.integers(len(offsets) - want + 1))
    while want >= MIN_TOKENS:
        piece = text[offsets[start][0] : offsets[start + want - 1][1]]
        ids = tokenizer(piece, add_special_tokens=True)["input_ids"]  # exactly what the Ray job will see
        if len(ids) <= MAX_TOKENS:
            break
        want -= len(ids) - MAX_TOKENS
    else:
        return None
    if len(ids) < 2 or not piece.strip():
        return None
    return Doc(text=piece, ids=np.asarray(ids, dtype=np.int32), source=f"{kind}:{path.name}")


def stratified_subset(lengths: Sequence[int], k: int) -> list[int]:
    """``k`` indices spread evenly over the documents sorted by length: same length mix as the whole."""
    if k >= len(lengths):
        return list(range(len(lengths)))
    order = np.argsort(lengths, kind="stable")
    picks = np.linspace(0, len(order) - 1, k).round().astype(int)
    return sorted(int(order[p]) for p in picks)


# ---- arms ------------------------------------------------------------------------------------


def load_model(path: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def count_params(model: torch.nn.Module) -> int:
    """Parameters, shared (tied) tensors counted once: ``parameters()`` yields each tensor once."""
    return sum(p.numel() for p in model.parameters())


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


@torch.inference_mode()
def reference_nll(model: torch.nn.Module, ids: np.ndarray) -> float:
    """The model's own mean loss of one unpadded document, times its predicted positions."""
    t = torch.from_numpy(ids.astype(np.int64)).unsqueeze(0)
    return float(model(input_ids=t, labels=t).loss) * (len(ids) - 1)


def run_reference(path: str, docs: list[Doc], indices: list[int]) -> ArmResult:
    model = load_model(path, torch.float32)
    reference_nll(model, docs[indices[0]].ids)  # warm-up
    log.info("(a) reference: %d docs one at a time, fp32", len(indices))
    sums, seconds = timed(lambda: [reference_nll(model, docs[i].ids) for i in indices])
    n_tokens = np.array([len(docs[i].ids) - 1 for i in indices], dtype=np.int64)
    return ArmResult(
        key="a", title="(a) reference: 1 doc at a time, fp32, model(labels=ids).loss",
        indices=indices, nll_sum=np.array(sums, dtype=np.float64), n_tokens=n_tokens, seconds=seconds,
        positions=int(sum(len(docs[i].ids) for i in indices)),
    )


@torch.inference_mode()
def padded_batch_nll(model: torch.nn.Module, batch: list[np.ndarray], pad_id: int) -> np.ndarray:
    """Right-pad, full (B, T, V) logits in the model's dtype, fp32 cross entropy, masked sum per row."""
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
        mask[row, : len(seq)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return (nll.view(len(batch), width - 1) * mask[:, 1:]).sum(dim=1, dtype=torch.float64).numpy()


def run_padded(path: str, docs: list[Doc], pad_id: int, batch_size: int) -> ArmResult:
    model = load_model(path, torch.bfloat16)
    batches = [list(range(i, min(i + batch_size, len(docs)))) for i in range(0, len(docs), batch_size)]
    padded_batch_nll(model, [docs[i].ids for i in batches[0]], pad_id)  # warm-up
    log.info("(b) padded batches: %d batches of %d in input order, bf16", len(batches), batch_size)

    def score_all() -> np.ndarray:
        return np.concatenate([padded_batch_nll(model, [docs[i].ids for i in b], pad_id) for b in batches])

    sums, seconds = timed(score_all)
    return ArmResult(
        key="b", title=f"(b) padded batches of {batch_size}, bf16, full logits",
        indices=list(range(len(docs))), nll_sum=sums, n_tokens=np.array([len(d.ids) - 1 for d in docs]),
        seconds=seconds, positions=sum(len(b) * max(len(docs[i].ids) for i in b) for b in batches),
    )


def run_hardfocus(path: str, docs: list[Doc]) -> ArmResult:
    from scoring.loss import token_budget_batches
    from scoring.scorer import Scorer

    threads = os.cpu_count() or 1
    scorer, load_s = timed(lambda: Scorer(path, dtype="bfloat16", torch_threads=threads))
    sequences = [d.ids for d in docs]
    scorer.score(sequences[:PADDED_BATCH_SIZE])  # warm-up
    log.info("(c1) hardfocus Scorer: token budget %d, chunk %d, bf16", scorer.token_budget, scorer.chunk_tokens)
    (sums, counts), seconds = timed(lambda: scorer.score(sequences))
    lengths = [len(s) for s in sequences]
    batches = token_budget_batches(lengths, scorer.token_budget)
    return ArmResult(
        key="c1", title="(c1) hardfocus Scorer in-process, bf16",
        indices=list(range(len(docs))), nll_sum=sums, n_tokens=counts, seconds=seconds,
        positions=sum(len(b) * max(lengths[i] for i in b) for b in batches),
        extra={"load_and_self_check_s": load_s, "batches": len(batches), "token_budget": scorer.token_budget},
    )


def run_ray(docs: list[Doc]) -> ArmResult:
    import scoring

    with tempfile.TemporaryDirectory(prefix="hardfocus-bench-") as tmp:
        shard = Path(tmp) / "shard.jsonl"
        with open(shard, "w", encoding="utf-8") as f:
            for i, d in enumerate(docs):
                f.write(json.dumps({"id": str(i), "text": d.text}) + "\n")
        cfg = scoring.ScoreConfig(
            inputs=[str(shard)], output=str(Path(tmp) / "scores"), model=MODEL_SPEC, dtype="bfloat16",
            executor="ray", id_column="id",
        )
        log.info("(c2) hardfocus through Ray: scoring.score(executor='ray'), whole call timed")
        result, seconds = timed(lambda: scoring.score(cfg, progress=False))
        parts = sorted(Path(cfg.output).glob("part-*.parquet"))
        table = pq.read_table(parts, columns=["sample_id", "nll_sum", "n_tokens", "status"])
    rows = table.to_pylist()
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        log.warning("(c2): %d rows not ok, e.g. %s", len(bad), bad[0])
    by_id = {int(r["sample_id"]): r for r in rows}
    run = result.manifest.runs[-1]
    return ArmResult(
        key="c2", title="(c2) hardfocus via Ray, whole score() call",
        indices=list(range(len(docs))),
        nll_sum=np.array([np.nan if by_id[i]["nll_sum"] is None else by_id[i]["nll_sum"] for i in range(len(docs))]),
        n_tokens=np.array([by_id[i]["n_tokens"] for i in range(len(docs))], dtype=np.int64),
        seconds=seconds,
        extra={"manifest_run": run.model_dump(), "manifest_tokens": result.manifest.tokens},
    )


# ---- checks and report -----------------------------------------------------------------------


def loss_difference(arm: ArmResult, ref: ArmResult) -> dict:
    """Max and mean |mean loss - reference mean loss| (nats) over the documents both scored."""
    pos = {doc: k for k, doc in enumerate(arm.indices)}
    common = [(k, pos[doc]) for k, doc in enumerate(ref.indices) if doc in pos]
    ref_loss = np.array([ref.mean_loss[k] for k, _ in common])
    arm_loss = np.array([arm.mean_loss[j] for _, j in common])
    diff = np.abs(arm_loss - ref_loss)
    tokens_ok = all(arm.n_tokens[j] == ref.n_tokens[k] for k, j in common)
    return {"docs": len(common), "max_abs_nats": float(np.nanmax(diff)), "mean_abs_nats": float(np.nanmean(diff)),
            "nan": int(np.isnan(diff).sum()), "n_tokens_equal": tokens_ok}


def correctness(arms: dict[str, ArmResult]) -> list[dict]:
    checks = []
    for key in ("b", "c1", "c2"):
        if key in arms:
            d = loss_difference(arms[key], arms["a"])
            d |= {"arm": key, "against": "a", "tol_max": TOLERANCE_BF16_MAX_NATS, "tol_mean": TOLERANCE_BF16_MEAN_NATS}
            checks.append(d)
    if "c1" in arms and "c2" in arms:
        d = loss_difference(arms["c2"], arms["c1"])
        d |= {"arm": "c2", "against": "c1", "tol_max": TOLERANCE_SAME_CODE_NATS, "tol_mean": TOLERANCE_SAME_CODE_NATS}
        checks.append(d)
    for c in checks:
        within = c["max_abs_nats"] <= c["tol_max"] and c["mean_abs_nats"] <= c["tol_mean"]
        c["passed"] = bool(c["nan"] == 0 and c["n_tokens_equal"] and within)
        log.info(
            "check %s vs %s over %d docs: max |diff| %.5f, mean %.5f nats, tokens equal %s -> %s",
            c["arm"], c["against"], c["docs"], c["max_abs_nats"], c["mean_abs_nats"], c["n_tokens_equal"],
            "ok" if c["passed"] else "FAILED",
        )
    return checks


def arm_row(arm: ArmResult, n_params: int, bf16_peak: float, ref_tps: float) -> dict:
    useful_gflops = 2 * n_params * arm.tokens_per_s / 1e9
    return {
        "arm": arm.key, "title": arm.title, "docs": len(arm.indices), "scored_tokens": arm.scored_tokens,
        "positions": arm.positions, "seconds": arm.seconds, "tokens_per_s": arm.tokens_per_s,
        "useful_gflops": useful_gflops, "utilisation_bf16_peak": useful_gflops / bf16_peak,
        "speedup_vs_a": arm.tokens_per_s / ref_tps, "extra": arm.extra,
    }


def results_table(rows: list[dict]) -> str:
    lines = [
        "| arm | docs | scored tokens | positions computed (incl. padding) | seconds | tokens/s | useful GFLOP/s "
        "| util. of bf16 peak | speed-up vs (a) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        positions = "n/a" if r["positions"] is None else f"{r['positions']:,}"
        lines.append(
            f"| {r['title']} | {r['docs']} | {r['scored_tokens']:,} | {positions} | {r['seconds']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {r['useful_gflops']:.1f} | {100 * r['utilisation_bf16_peak']:.2f}% | "
            f"{r['speedup_vs_a']:.1f}x |"
        )
    return "\n".join(lines)


def checks_table(checks: list[dict]) -> str:
    lines = [
        "| arm | against | docs | max abs diff (nats) | mean abs diff (nats) | tolerance max / mean | n_tokens equal "
        "| result |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for c in checks:
        lines.append(
            f"| ({c['arm']}) | ({c['against']}) | {c['docs']} | {c['max_abs_nats']:.5f} | {c['mean_abs_nats']:.5f} | "
            f"{c['tol_max']:g} / {c['tol_mean']:g} | {c['n_tokens_equal']} | {'ok' if c['passed'] else 'FAILED'} |"
        )
    return "\n".join(lines)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def render_markdown(report: dict) -> str:
    sections = [
        _header_section(report),
        _machine_section(report),
        _peaks_section(report["peaks"], report["machine"]["torch_threads"]),
        _corpus_section(report["corpus"]),
        "## Results\n\n"
        "Useful FLOP/s = 2 x parameters x scored tokens / seconds (scored tokens = predicted positions, "
        "sum of len-1; attention FLOPs and padding are not counted as useful).\n\n" + results_table(report["arms"]),
        "## Correctness\n\n"
        "Per-document mean loss of each arm against the fp32 reference (a), over the documents (a) scored; "
        "(c2) also against (c1) over all documents (same code, same token ids).\n\n" + checks_table(report["checks"]),
        _notes_section({r["arm"]: r for r in report["arms"]}),
        "Absolute speeds on shared CPU machines vary by 2x or more between runs; compare only figures from the "
        "same run.",
    ]
    return "\n\n".join(sections) + "\n"


def _header_section(report: dict) -> str:
    return (
        "# Scoring speed: reference vs padded batches vs hardfocus\n\n"
        f"Command: `{report['command']}`  \n"
        f"Date: {report['date']}  \n"
        f"Model: SmolLM2-135M ({report['model_path']}), {report['n_params']:,} parameters "
        "(tied embeddings counted once)"
    )


def _machine_section(report: dict) -> str:
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "torch")
    return "\n".join([
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['cpus']} logical CPUs ({m['cores_per_socket']} cores/socket, "
        f"{m['threads_per_core']} thread/core), hypervisor: {m['hypervisor'] or 'none'}",
        f"- /proc/cpuinfo: avx512_bf16 {_yes_no(m['avx512_bf16'])}, amx_bf16 {_yes_no(m['amx_bf16'])}",
        f"- torch {m['torch']}, torch.get_num_threads() = {m['torch_threads']}; {versions}",
        f"- 1-minute load average: {m['load_avg_start']:.2f} at the start, {m['load_avg_end']:.2f} after the last "
        "arm (the run itself adds about its thread count; much more means other work shared the CPUs)",
    ])


def _peaks_section(p: dict, threads: int) -> str:
    lines = [
        f"## Matmul peak (square matmuls, fastest of >= {MATMUL_REPS} reps and >= {MATMUL_MIN_SECONDS:g} s, "
        f"{threads} threads, GFLOP/s)",
        "",
        "| dtype | " + " | ".join(f"n={n}" for n in MATMUL_SIZES) + " | peak |",
        "|---|" + "---:|" * (len(MATMUL_SIZES) + 1),
    ]
    for when in ("start", "end"):
        for dtype in ("fp32", "bf16"):
            cells = " | ".join(f"{p[when][dtype]['by_size'][n]:.0f}" for n in MATMUL_SIZES)
            label = f"{dtype} ({'before' if when == 'start' else 'after'} the arms)"
            lines.append(f"| {label} | {cells} | {p[when][dtype]['gflops']:.0f} |")
    lines += [
        "",
        f"Peaks (the better of the two measurements): fp32 {p['fp32_peak']:.0f}, bf16 {p['bf16_peak']:.0f} GFLOP/s; "
        f"bf16 peak / fp32 peak = **{p['bf16_over_fp32']:.1f}x**. Utilisation below is against the bf16 peak.",
    ]
    return "\n".join(lines)


def _corpus_section(c: dict) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in c["by_kind"].items())
    return (
        "## Corpus\n\n"
        f"{c['docs']} documents of real text from this machine ({kinds}), cut at seeded (seed {c['seed']}) "
        f"log-uniform token lengths in [{MIN_TOKENS}, {MAX_TOKENS}]: {c['tokens']:,} tokens, length min {c['min']} / "
        f"median {c['median']:.0f} / mean {c['mean']:.0f} / max {c['max']}. (a) runs on a length-stratified subset "
        f"of {c['ref_docs']} documents ({c['ref_tokens']:,} tokens); its tokens/s stands for the whole set."
    )


def _notes_section(arms: dict[str, dict]) -> str:
    c1 = arms["c1"]["extra"]
    lines = [
        "## What each arm includes",
        "",
        "- (0) peak: one warm-up matmul per size, then the fastest of the timed reps; tensors preallocated; "
        "measured before the arms and again after them.",
        "- (a) `model(input_ids=ids, labels=ids).loss` per document, fp32, `torch.inference_mode`; model load and "
        "one warm-up document excluded.",
        f"- (b) batches of {PADDED_BATCH_SIZE} in input order, right-padded with an attention mask, bf16, "
        "`model(...).logits` (the full batch x seq x vocab tensor) then fp32 cross entropy, masked; model load and "
        "one warm-up batch excluded.",
        "- (c1) `Scorer(path, dtype='bfloat16', torch_threads=os.cpu_count()).score(ids)`: sorted token-budget "
        f"batches ({c1['batches']} batches under a {c1['token_budget']}-token budget), chunked fp32 loss from the "
        f"last hidden states. Excluded: construction (load + self-check, {c1['load_and_self_check_s']:.1f} s) and "
        "one warm-up call.",
    ]
    if "c2" in arms:
        run = arms["c2"]["extra"]["manifest_run"]
        lines.append(
            "- (c2) the whole `scoring.score(ScoreConfig(executor='ray', dtype='bfloat16'))` call on a JSONL shard "
            "of the same texts: model resolution and fingerprint, counting rows, starting a local Ray, tokenising "
            "(a Ray task), starting the actor, loading the model and its self-check, scoring, writing the Parquet "
            "part and the manifest, and shutting Ray down. Its tokens/s in the table is scored tokens / that wall "
            f"time ({arms['c2']['seconds']:.1f} s). The job's own record, `manifest.runs[-1]`, says "
            f"`wall_s` = {run['wall_s']:.1f} s and `tokens_per_s` = {run['tokens_per_s']:,.0f} "
            f"(`tokens_scored / wall_s` = {run['tokens_scored'] / run['wall_s']:,.0f}); its clock stops before the "
            "manifest is written. Neither figure is a scoring-only throughput: that is (c1)."
        )
    return "\n".join(lines)


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=300, help="documents in the corpus (default 300)")
    parser.add_argument("--ref-docs", type=int, default=80,
                        help="length-stratified subset that the slow reference (a) scores (default 80)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scoring_speed.md"))
    parser.add_argument("--skip-ray", action="store_true", help="leave out (c2)")
    return parser.parse_args(argv)


def corpus_summary(docs: list[Doc], ref_indices: list[int], seed: int) -> dict:
    lengths = np.array([len(d.ids) for d in docs])
    kinds: dict[str, int] = {}
    for d in docs:
        kind = d.source.split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "docs": len(docs), "seed": seed, "tokens": int(lengths.sum()), "min": int(lengths.min()),
        "median": float(np.median(lengths)), "mean": float(lengths.mean()), "max": int(lengths.max()),
        "by_kind": kinds, "ref_docs": len(ref_indices), "ref_tokens": int(lengths[ref_indices].sum()),
        "lengths": lengths.tolist(), "sources": [d.source for d in docs], "ref_indices": ref_indices,
    }


def run_arms(path: str, docs: list[Doc], ref_indices: list[int], pad_id: int, with_ray: bool) -> dict[str, ArmResult]:
    arms: dict[str, ArmResult] = {}
    arms["a"] = run_reference(path, docs, ref_indices)
    gc.collect()
    arms["b"] = run_padded(path, docs, pad_id, PADDED_BATCH_SIZE)
    gc.collect()
    arms["c1"] = run_hardfocus(path, docs)
    gc.collect()
    if with_ray:
        arms["c2"] = run_ray(docs)
    for arm in arms.values():
        log.info("%s: %d tokens in %.2f s, %.0f tokens/s", arm.title, arm.scored_tokens, arm.seconds, arm.tokens_per_s)
    return arms


def measure(args: argparse.Namespace, command: str) -> dict:
    """Everything, in one run: peaks, corpus, the arms, the checks; returns the report as plain data."""
    from scoring.model import load_tokenizer, pad_token_id, resolve_model

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = load_average()
    if load_start > 0.5:
        log.warning("1-minute load average is %.2f before the run: other work will skew the figures", load_start)
    peaks_start = matmul_peaks()

    path = resolve_model(MODEL_SPEC).path
    tokenizer = load_tokenizer(path)
    docs = make_corpus(tokenizer, args.docs, args.seed)
    ref_indices = stratified_subset([len(d.ids) for d in docs], args.ref_docs)
    n_params = count_params(load_model(path, torch.float32))
    arms = run_arms(path, docs, ref_indices, pad_token_id(tokenizer), not args.skip_ray)

    load_end = load_average()
    peaks = combine_peaks(peaks_start, matmul_peaks())
    log.info("peaks: fp32 %.0f, bf16 %.0f GFLOP/s, bf16/fp32 = %.1fx",
             peaks["fp32_peak"], peaks["bf16_peak"], peaks["bf16_over_fp32"])
    return {
        "command": command,
        "date": started,
        "machine": machine_info() | {"load_avg_start": load_start, "load_avg_end": load_end},
        "versions": library_versions(),
        "model_path": path,
        "n_params": n_params,
        "peaks": peaks,
        "corpus": corpus_summary(docs, ref_indices, args.seed),
        "arms": [arm_row(a, n_params, peaks["bf16_peak"], arms["a"].tokens_per_s) for a in arms.values()],
        "checks": correctness(arms),
        "per_doc_loss": {k: {"indices": a.indices, "loss": a.mean_loss.tolist()} for k, a in arms.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    command = shlex.join(["python", *(sys.argv if argv is None else [sys.argv[0], *argv])])
    torch.set_num_threads(os.cpu_count() or 1)
    report = measure(args, command)
    write_outputs(report, args.out)
    p = report["peaks"]
    sys.stdout.write(
        f"matmul peak: fp32 {p['fp32_peak']:.0f} GFLOP/s, bf16 {p['bf16_peak']:.0f} GFLOP/s, "
        f"bf16/fp32 = {p['bf16_over_fp32']:.1f}x\n\n"
        + results_table(report["arms"]) + "\n\n" + checks_table(report["checks"]) + "\n"
    )
    return 0 if all(c["passed"] for c in report["checks"]) else 1


def write_outputs(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(report))
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    log.info("wrote %s and %s", out, out.with_suffix(".json"))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    raise SystemExit(main())
