"""Training overhead of hardfocus's weighting: a stock ``transformers.Trainer`` vs ``training.WeightedTrainer``.

    python benchmarks/training_overhead.py [--rounds 4] [--warmup-steps 1] [--steps 3] [--batch-size 8] \
        [--seq-len 256] [--seed 0] [--threads 0] [--max-wait 120] [--arms none,static,...] [--no-candidate] \
        [--fp32] [--out benchmarks/results/training_overhead.md] [--quick]

Arms, all on SmolLM2-135M (fp32 master weights, bf16 autocast where the CPU has it), the same
``TrainingArguments`` (``training.build.training_arguments``: AdamW, lr 2e-5 cosine, clipping 1.0, batch 8,
no eval, no checkpoints) and the same batches in the same order:

plain          a stock ``transformers.Trainer``: ``model(input_ids, attention_mask, labels).loss``
none           ``WeightedTrainer`` (``training.build.build_trainer``), ``--weighting none``
static         ... ``--weighting static`` (static weights from the data's ``weight`` column)
online         ... ``--weighting online`` (IR-DRO softmax of the micro-batch's losses)
static+online  ... ``--weighting static+online``
static+online/shift-labels
               static+online with ``per_sample_nll`` swapped, in this process only, for a candidate
               (``per_sample_nll_shifted``: the labels shifted instead of the logits sliced); ``--no-candidate``
               leaves it out

Samples are real text from this machine (``pipelines.demo_corpus``), tokenised and packed into windows of
exactly ``--seq-len`` tokens, so no batch has padding and both objectives see the same tokens. Every arm
loads a fresh model in each round and trains ``--warmup-steps + --steps`` optimiser steps; the warm-up steps
are discarded. Arms are interleaved in rounds with the order rotated each round, so drift in the machine's
load hits every arm alike. Each step records how much CPU other processes took meanwhile; before each run the
benchmark waits (up to ``--max-wait`` s) for a quiet machine, and the verdict uses the quiet steps' medians
(all steps where too few were quiet): with torch's threads on every core, a step that shares the CPUs is several
times slower. An arm's ratio is its median step time over the plain arm's (target: weighting costs at most 5%).

Also measured, apart from training: the loss head alone (the only computation the arms do differently):
the Trainer's ``model.loss_function`` vs ``per_sample_nll`` + ``StepWeighter.plan`` (and the candidate),
forward and backward on one batch of real logits, with a torch.profiler table of the top ops.

``--quick``: a tiny configuration for a smoke run (written to a temporary folder unless ``--out`` is given).
Writes Markdown (``--out``) and JSON beside it. About 9 minutes at the defaults on 2 quiet cores (plus any
waiting for other processes to leave the CPUs).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# run as `python benchmarks/training_overhead.py`: this folder is sys.path[0]
from speed_machine import cpu_busy_seconds, library_versions, load_average, machine_info, own_cpu_seconds
from transformers import Trainer, TrainerCallback

log = logging.getLogger("training_overhead")

MODEL_SPEC = "smollm2-135m"
ARMS = ("plain", "none", "static", "online", "static+online")
# static+online with training.weighting.per_sample_nll replaced (in this process only) by per_sample_nll_shifted:
# the change this benchmark suggests, measured on the same batches
CANDIDATE_ARM = "static+online/shift-labels"
TARGET_OVERHEAD = 0.05
# plain and none train the same objective on unpadded equal-length samples: their first logged loss differs
# only by bf16 rounding in a different reduction order
SAME_LOSS_TOLERANCE = 0.02
# CPU-s/s other processes may take before a step counts as contended: 0.2 when torch's threads fill every core
# (quiet_threshold adds the cores torch leaves free, e.g. 1.2 with --threads 1 on 2 cores)
CONTENDED_OTHER_LOAD = 0.2
MIN_QUIET_STEPS = 3
QUIET_PROBE_S = 1.0
LOSS_HEAD_REPS = 5
PROFILE_TOP_OPS = 6
MATERIAL_HEAD_SHARE = 0.02  # a loss-head difference from this share of a step on is called material
CLONE = "clone of the logits (subtracted)"


# ---- data ------------------------------------------------------------------------------------


@dataclass
class Samples:
    ids: np.ndarray  # (n, seq_len) int32
    weights: np.ndarray  # (n,) float32, mean 1
    groups: dict[str, int]  # documents used per demo-corpus group
    documents: int


def make_samples(tokenizer, n: int, seq_len: int, seed: int) -> Samples:
    """``n`` windows of ``seq_len`` tokens cut from the demo corpus's documents (seeded order, EOS between),
    and seeded log-uniform static weights in [0.25, 4] normalised to mean 1."""
    from pipelines.demo_corpus import build_demo_corpus

    with tempfile.TemporaryDirectory(prefix="hf-overhead-corpus-") as tmp:
        build_demo_corpus(tmp, docs_per_group=150, max_chars=4000, seed=seed)
        docs = [json.loads(line) for p in sorted(Path(tmp).rglob("*.jsonl")) for line in p.read_text().splitlines()]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(docs))
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stream: list[int] = []
    groups: dict[str, int] = {}
    used = 0
    for i in order:
        if len(stream) >= n * seq_len:
            break
        stream += tokenizer(docs[i]["text"], add_special_tokens=False)["input_ids"] + [eos]
        groups[docs[i]["group"]] = groups.get(docs[i]["group"], 0) + 1
        used += 1
    if len(stream) < n * seq_len:
        raise SystemExit(f"the demo corpus has {len(stream)} tokens; {n} samples of {seq_len} need {n * seq_len}")
    ids = np.asarray(stream[: n * seq_len], dtype=np.int32).reshape(n, seq_len)
    weights = np.exp(rng.uniform(np.log(0.25), np.log(4.0), n)).astype(np.float32)
    return Samples(ids=ids, weights=weights / weights.mean(), groups=groups, documents=used)


def token_table(samples: Samples):
    import pyarrow as pa

    n, seq_len = samples.ids.shape
    offsets = pa.array(np.arange(0, (n + 1) * seq_len, seq_len, dtype=np.int32))
    ids = pa.ListArray.from_arrays(offsets, pa.array(samples.ids.reshape(-1)))
    return pa.table({"input_ids": ids, "weight": pa.array(samples.weights)})


class FingerprintCollator:
    """Wraps a collator: records a CRC of every batch's ``input_ids`` (so the arms can be shown to see the same
    batches in the same order); ``drop_weight`` removes the ``weight`` tensor (the stock Trainer's batches)."""

    def __init__(self, inner, drop_weight: bool):
        self.inner, self.drop_weight = inner, drop_weight
        self.crcs: list[int] = []

    def __call__(self, rows):
        batch = self.inner(rows)
        self.crcs.append(zlib.crc32(batch["input_ids"].numpy().tobytes()))
        if self.drop_weight:
            batch.pop("weight")
        return batch


# ---- timing ----------------------------------------------------------------------------------


class StepClock(TrainerCallback):
    """Wall clock at each optimiser step's end: step i took ``end[i] - end[i-1]`` (``end[-1]`` = train begin).

    That interval is everything the Trainer does per step: fetching and collating the batch, forward, loss,
    backward, clipping, the optimiser, the scheduler, the callbacks and the previous step's logging.
    ``begin[i]`` (on_step_begin, after the batch is fetched) to ``end[i]`` is the step's compute alone.
    Each step's other load is the CPU-seconds per second other processes used meanwhile (/proc/stat less this
    process): a step that shared the cores with other work shows it there.
    """

    def __init__(self):
        self.start = 0.0
        self.begins: list[float] = []
        self.ends: list[float] = []
        self.cpu: list[tuple[float, float]] = []  # (all processes busy, this process) CPU-seconds at train begin, step ends
        self.logs: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.cpu = [(cpu_busy_seconds(), own_cpu_seconds())]
        self.start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.begins.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.cpu.append((cpu_busy_seconds(), own_cpu_seconds()))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.logs.append({"step": state.global_step, **logs})

    def step_seconds(self) -> list[float]:
        return [float(s) for s in np.diff([self.start, *self.ends])]

    def compute_seconds(self) -> list[float]:
        return [e - b for b, e in zip(self.begins, self.ends)]

    def other_loads(self) -> list[float]:
        out = []
        for (busy0, own0), (busy1, own1), dt in zip(self.cpu, self.cpu[1:], self.step_seconds()):
            out.append(max((busy1 - busy0) - (own1 - own0), 0.0) / dt)
        return out


@dataclass
class Run:
    """One arm trained once from a freshly loaded model."""

    arm: str
    round: int
    position: int  # place of the arm in its round's order
    step_s: list[float]  # every step, warm-up included
    compute_s: list[float]
    step_other_load: list[float]  # per step: CPU-seconds per second other processes used
    load_s: float
    train_s: float
    other_load: float  # CPU-seconds per second other processes used during train()
    waited_s: float  # waited for a quiet machine before train()
    batch_crcs: list[int]
    first_loss: float | None
    logs: list[dict] = field(default_factory=list)


def log_every(args: argparse.Namespace) -> int:
    """logging_steps of every arm: twice per run, so one log (where the weighted arms add weight statistics) falls
    inside the timed steps and the first logged loss can be compared between arms."""
    return max(1, (args.warmup_steps + args.steps) // 2)


def weighting_of(arm: str) -> str:
    return {"plain": "none", CANDIDATE_ARM: "static+online"}.get(arm, arm)


def train_config(arm: str, output: Path, args: argparse.Namespace):
    from training import TrainConfig

    return TrainConfig(
        data=["unused"], output=str(output), weighting=weighting_of(arm),
        max_steps=args.warmup_steps + args.steps, batch_size=args.batch_size, max_seq_len=args.seq_len,
        seed=args.seed, precision="bf16" if args.bf16 else "fp32", logging_steps=log_every(args),
    )


def build_arm(arm: str, model_path: str, dataset, work: Path, args: argparse.Namespace) -> tuple[Trainer, StepClock]:
    from training.build import build_trainer, load_base, pad_id, training_arguments
    from training.collator import WeightedCollator

    cfg = train_config(arm, work / arm.replace("+", "_").replace("/", "_"), args)
    targs = training_arguments(
        cfg, bf16=args.bf16, progress=False, with_eval=False, save_strategy="no", report_to="none", disable_tqdm=True,
        # transformers refuses bf16=True on a machine without a bf16 GPU unless told it trains on the CPU
        use_cpu=not torch.cuda.is_available(),
    )
    clock = StepClock()
    if arm == "plain":
        model, tokenizer = load_base(model_path)
        collator = WeightedCollator(pad_token_id=pad_id(tokenizer), max_seq_len=cfg.max_seq_len)
        trainer = Trainer(
            model=model, args=targs, train_dataset=dataset, data_collator=FingerprintCollator(collator, drop_weight=True),
            processing_class=tokenizer, callbacks=[clock],
        )
    else:
        trainer = build_trainer(cfg, model_path, targs, dataset, extra_callbacks=[clock])
        trainer.data_collator = FingerprintCollator(trainer.data_collator, drop_weight=False)
    return trainer, clock


def quiet_threshold() -> float:
    return CONTENDED_OTHER_LOAD + max((os.cpu_count() or 1) - torch.get_num_threads(), 0)


def other_load_now(seconds: float = QUIET_PROBE_S) -> float:
    """CPU-seconds per second other processes use, sampled over ``seconds`` while this process sleeps."""
    busy, own, t0 = cpu_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return max((cpu_busy_seconds() - busy) - (own_cpu_seconds() - own), 0.0) / (time.perf_counter() - t0)


def wait_for_quiet(max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until other processes leave the cores alone; returns the seconds waited.

    With torch's threads on every core, a step that shares the CPUs with other work is not a bit slower but
    several times slower (its threads wait for each other at every parallel region), so a run is only
    started on a quiet machine where possible."""
    t0 = time.perf_counter()
    while other_load_now() > quiet_threshold() and time.perf_counter() - t0 < max_wait_s:
        pass
    waited = time.perf_counter() - t0
    if waited > 2 * QUIET_PROBE_S:
        log.info("waited %.0f s for other processes to leave the CPUs", waited)
    return waited


def run_arm(arm: str, rnd: int, position: int, model_path: str, dataset, work: Path, args: argparse.Namespace) -> Run:
    t0 = time.perf_counter()
    trainer, clock = build_arm(arm, model_path, dataset, work, args)
    load_s = time.perf_counter() - t0
    waited = wait_for_quiet(args.max_wait)
    import training.trainer

    current = training.trainer.per_sample_nll
    if arm == CANDIDATE_ARM:
        training.trainer.per_sample_nll = per_sample_nll_shifted  # what WeightedTrainer.compute_loss calls
    try:
        busy, own, t1 = cpu_busy_seconds(), own_cpu_seconds(), time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t1
    finally:
        training.trainer.per_sample_nll = current
    other = max((cpu_busy_seconds() - busy) - (own_cpu_seconds() - own), 0.0) / train_s
    losses = [entry["loss"] for entry in clock.logs if "loss" in entry]
    run = Run(
        arm=arm, round=rnd, position=position, step_s=clock.step_seconds(), compute_s=clock.compute_seconds(),
        step_other_load=clock.other_loads(),
        load_s=load_s, train_s=train_s, other_load=other, waited_s=waited, batch_crcs=list(trainer.data_collator.crcs),
        first_loss=losses[0] if losses else None, logs=clock.logs,
    )
    measured = run.step_s[args.warmup_steps:]
    log.info("round %d %-26s median step %.3f s (warm-up %s), other load %.2f, load %.1f s",
             rnd, arm, statistics.median(measured), ", ".join(f"{s:.2f}" for s in run.step_s[: args.warmup_steps]),
             other, load_s)
    del trainer
    gc.collect()
    return run


def run_rounds(model_path: str, dataset, args: argparse.Namespace) -> list[Run]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="hf-overhead-train-") as tmp:
        for rnd in range(args.rounds):
            shift = rnd % len(args.arms)
            order = args.arms[shift:] + args.arms[:shift]
            log.info("round %d of %d: %s", rnd + 1, args.rounds, " -> ".join(order))
            for position, arm in enumerate(order):
                runs.append(run_arm(arm, rnd, position, model_path, dataset, Path(tmp) / f"round{rnd}", args))
    return runs


# ---- the loss head alone -----------------------------------------------------------------------


def per_sample_nll_shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate for ``training.weighting.per_sample_nll``: the same values, computed the way the Trainer's own loss
    (``ForCausalLMLoss``) does it: the labels are shifted (padded with -100) instead of the logits sliced, and the
    cross entropy runs on contiguous ``(B * T, V)`` rows instead of the transposed ``(B, V, T - 1)`` view. No
    ``logits[:, :-1]`` slice means no full-size zero-filled gradient buffer in its backward."""
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(shift_labels.shape)
    n_tokens = shift_labels.ne(-100).sum(1)
    return nll.sum(1) / n_tokens.clamp_min(1), n_tokens


def loss_head_timing(model_path: str, samples: Samples, args: argparse.Namespace) -> dict:
    """Seconds (median of reps, variants interleaved) of the loss's forward + backward to the logits, on one batch
    of real logits, and how far the candidate's per-sample losses and logit gradients are from the current ones.

    plain: ``model.loss_function(logits, labels, vocab_size, num_items_in_batch)``, as ``model(labels=...)`` runs it;
    hardfocus: ``per_sample_nll`` + ``StepWeighter.plan`` + ``(coef * losses).sum()``, as
    ``WeightedTrainer.compute_loss`` runs it (static+online: the most work ``plan`` does; the head is the same
    ``per_sample_nll`` for every weighting); candidate: the same with :func:`per_sample_nll_shifted`.
    """
    from training.build import load_base, make_weighter
    from training.config import TrainConfig
    from training.weighting import per_sample_nll

    model, _ = load_base(model_path)
    ids = torch.from_numpy(samples.ids[: args.batch_size].astype(np.int64))
    weight = torch.from_numpy(samples.weights[: args.batch_size])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        base = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.detach()
    labels = ids.clone()
    n_items = torch.tensor(int(labels[:, 1:].ne(-100).sum()))
    weighter = make_weighter(TrainConfig(data=["unused"], output="unused", weighting="static+online"))

    def plain() -> torch.Tensor:
        logits = base.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model.loss_function(logits, labels, vocab_size=model.config.vocab_size, num_items_in_batch=n_items)
        loss.backward()
        return logits.grad

    def weighted(head):
        def step() -> torch.Tensor:
            logits = base.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                losses, _ = head(logits, labels)
                weighter.start_step([len(ids)])
                plan = weighter.plan(losses.detach(), weight)
                loss = (plan.coef * losses).sum()
            loss.backward()
            return logits.grad

        return step

    def clone_only() -> torch.Tensor:
        return base.clone().requires_grad_(True)

    fns = {CLONE: clone_only, "plain": plain, "hardfocus": weighted(per_sample_nll),
           "candidate": weighted(per_sample_nll_shifted)}
    for fn in fns.values():
        fn()  # warm-up
    reps: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(LOSS_HEAD_REPS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            reps[name].append(time.perf_counter() - t0)
    clone = statistics.median(reps.pop(CLONE))
    seconds = {name: max(statistics.median(r) - clone, 0.0) for name, r in reps.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        current = per_sample_nll(base, labels)[0]
        candidate = per_sample_nll_shifted(base, labels)[0]
    grad_diff = float((fns["hardfocus"]() - fns["candidate"]()).abs().max())
    profiles = {name: top_ops(fns[name]) for name in ("plain", "hardfocus", "candidate")}
    log.info("loss head fwd+bwd: %s", ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in seconds.items()))
    return {
        "seconds": seconds, "clone_s": clone, "reps": LOSS_HEAD_REPS, "vocab": int(base.shape[-1]),
        "candidate_loss_max_abs_diff": float((current - candidate).abs().max()),
        "candidate_grad_max_abs_diff": grad_diff,
        "profiles": profiles,
    }


def top_ops(fn, n: int = PROFILE_TOP_OPS) -> list[dict]:
    """The ``n`` aten ops with the most self CPU time in one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3} for e in events[:n]]


# ---- summary ---------------------------------------------------------------------------------


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def summarise(runs: list[Run], args: argparse.Namespace) -> dict:
    """Per arm: median/IQR of all measured steps, of the quiet ones (other load <= CONTENDED_OTHER_LOAD) and the
    fastest one, each as a ratio to plain's. The verdict uses the quiet-step ratio when every arm has at least
    MIN_QUIET_STEPS quiet steps (steps that shared the cores with other work say little about either arm), else
    the all-steps ratio."""
    w = args.warmup_steps
    by_arm = {arm: [r for r in runs if r.arm == arm] for arm in args.arms}
    pooled = {arm: [s for r in rs for s in r.step_s[w:]] for arm, rs in by_arm.items()}
    threshold = quiet_threshold()
    quiet = {arm: [s for r in rs for s, o in zip(r.step_s[w:], r.step_other_load[w:]) if o <= threshold]
             for arm, rs in by_arm.items()}
    pooled_compute = {arm: [s for r in rs for s in r.compute_s[w:]] for arm, rs in by_arm.items()}
    round_medians = {arm: {r.round: statistics.median(r.step_s[w:]) for r in rs} for arm, rs in by_arm.items()}
    basis = "quiet" if all(len(q) >= MIN_QUIET_STEPS for q in quiet.values()) else "all"
    plain_median = statistics.median(pooled["plain"])
    plain_quiet = statistics.median(quiet["plain"]) if quiet["plain"] else float("nan")
    plain_min = min(pooled["plain"])
    plain_compute = statistics.median(pooled_compute["plain"])
    rows = []
    for arm in args.arms:
        q1, med, q3 = quartiles(pooled[arm])
        per_round = [round_medians[arm][k] / round_medians["plain"][k] for k in sorted(round_medians[arm])]
        quiet_median = statistics.median(quiet[arm]) if quiet[arm] else float("nan")
        ratio = {"all": med / plain_median, "quiet": quiet_median / plain_quiet}[basis]
        rows.append({
            "arm": arm, "weighting": weighting_of(arm), "steps": len(pooled[arm]), "median_s": med, "q1_s": q1,
            "q3_s": q3, "ratio": med / plain_median, "overhead": med / plain_median - 1,
            "quiet_steps": len(quiet[arm]), "quiet_median_s": quiet_median, "quiet_ratio": quiet_median / plain_quiet,
            "min_s": min(pooled[arm]), "min_ratio": min(pooled[arm]) / plain_min,
            "round_medians_s": [round_medians[arm][k] for k in sorted(round_medians[arm])],
            "round_ratios": per_round, "round_ratio_median": statistics.median(per_round),
            "compute_median_s": statistics.median(pooled_compute[arm]),
            "compute_ratio": statistics.median(pooled_compute[arm]) / plain_compute,
            "other_load_max": max(r.other_load for r in by_arm[arm]),
            "first_loss": [r.first_loss for r in by_arm[arm]],
            "verdict_ratio": ratio, "verdict_overhead": ratio - 1,
            "meets_target": bool(ratio - 1 <= TARGET_OVERHEAD),
        })
    return {"rows": rows, "checks": checks(runs, by_arm), "basis": basis, "quiet_threshold": threshold}


def first_loss_diff(by_arm: dict[str, list[Run]], a: str, b: str) -> float | None:
    pairs = zip((r.first_loss for r in by_arm.get(a, [])), (r.first_loss for r in by_arm.get(b, [])))
    diffs = [abs(x - y) for x, y in pairs if x is not None and y is not None]
    return max(diffs) if diffs else None


def checks(runs: list[Run], by_arm: dict[str, list[Run]]) -> dict:
    reference = runs[0].batch_crcs
    same_batches = all(r.batch_crcs == reference for r in runs)
    out = {
        "same_batches_all_runs": bool(same_batches),
        "batches_per_run": len(reference),
        "tolerance": SAME_LOSS_TOLERANCE,
        "first_loss_pairs": {},
    }
    pairs = [("plain", "none")] + ([("static+online", CANDIDATE_ARM)] if CANDIDATE_ARM in by_arm else [])
    for a, b in pairs:
        diff = first_loss_diff(by_arm, a, b)
        out["first_loss_pairs"][f"{a} vs {b}"] = {"max_abs_diff": diff,
                                                  "ok": diff is not None and diff <= SAME_LOSS_TOLERANCE}
    return out


# ---- report ----------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    cfg, summary = report["config"], report["summary"]
    rows = summary["rows"]
    weighted = [r for r in rows if r["arm"] in ARMS[1:]]
    missed = [r for r in weighted if not r["meets_target"]]
    lines = [
        "# Training overhead: stock Trainer vs hardfocus WeightedTrainer",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Model: SmolLM2-135M ({report['model_path']}), {report['n_params']:,} parameters (tied embeddings once)  ",
        f"Wall time of the whole benchmark: {report['wall_s'] / 60:.1f} min",
        "",
        "## Headline",
        "",
        "Median optimiser-step time of each `--weighting` over the same batches, as a ratio to a stock "
        "`transformers.Trainer` (plain, `model(labels=...).loss`) measured in the same run, over "
        + (f"the quiet steps (other processes took <= {summary['quiet_threshold']:g} CPU-s/s meanwhile; every arm has >= "
           f"{MIN_QUIET_STEPS} of them)" if summary["basis"] == "quiet" else
           "all measured steps (too few steps were quiet, i.e. free of other processes' load, to use only those)")
        + f". Target: weighting costs at most {TARGET_OVERHEAD:.0%} over plain.",
        "",
    ]
    for r in weighted:
        lines.append(f"- `--weighting {r['arm']}`: **{r['verdict_ratio']:.3f}x** plain ({r['verdict_overhead']:+.1%}); "
                     f"all steps {r['ratio']:.3f}x, fastest step {r['min_ratio']:.3f}x, per-round medians "
                     f"{', '.join(f'{x:.3f}' for x in r['round_ratios'])}x")
    lines += [""]
    worst = max(weighted, key=lambda r: r["verdict_overhead"])
    if missed:
        lines.append(f"Target **NOT met** by: {', '.join(r['arm'] for r in missed)} (worst {worst['arm']}, "
                     f"{worst['verdict_overhead']:+.1%}).")
    else:
        lines.append(f"Target **met** by every weighting (worst: {worst['arm']}, {worst['verdict_overhead']:+.1%}).")
    cand = next((r for r in rows if r["arm"] == CANDIDATE_ARM), None)
    if cand is not None:
        lines += ["", "With the candidate change below (`per_sample_nll` shifting the labels instead of slicing the logits, "
                      "cross entropy on contiguous rows), "
                      f"static+online runs at **{cand['verdict_ratio']:.3f}x** plain ({cand['verdict_overhead']:+.1%}; "
                      f"all steps {cand['ratio']:.3f}x, fastest step {cand['min_ratio']:.3f}x; arm `{CANDIDATE_ARM}`, "
                      "the same batches in the same run)."]
    lines += ["", *machine_section(report), "", *config_section(report), "", "## Results", "",
              "All steps: every measured step of every round. Quiet: the steps during which other processes took <= "
              f"{summary['quiet_threshold']:g} CPU-s/s. Fastest: the arm's quickest measured step (other work only ever adds "
              f"time). The verdict uses the {summary['basis']}-step ratio.",
              "",
              "| arm | steps | median step s | IQR (q1-q3) s | ratio vs plain | per-round ratio min-max | quiet steps "
              "| quiet median s | quiet ratio | fastest s | fastest ratio | overhead (verdict) | meets 5% |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        verdict = "-" if r["arm"] == "plain" else ("yes" if r["meets_target"] else "NO")
        lines.append(
            f"| {r['arm']} | {r['steps']} | {r['median_s']:.3f} | {r['q1_s']:.3f}-{r['q3_s']:.3f} | {r['ratio']:.3f} | "
            f"{min(r['round_ratios']):.3f}-{max(r['round_ratios']):.3f} | {r['quiet_steps']} | "
            f"{r['quiet_median_s']:.3f} | {r['quiet_ratio']:.3f} | {r['min_s']:.3f} | {r['min_ratio']:.3f} | "
            f"{r['verdict_overhead']:+.1%} | {verdict} |"
        )
    lines += ["", "Per-round median step seconds (round: arm order rotated by one each round):", "",
              "| arm | " + " | ".join(f"round {k + 1}" for k in range(cfg["rounds"])) + " |",
              "|---|" + "---:|" * cfg["rounds"]]
    lines += [f"| {r['arm']} | " + " | ".join(f"{x:.3f}" for x in r["round_medians_s"]) + " |" for r in rows]
    lines += ["", *checks_section(report), "", *loss_head_section(report), "", "## Reading", "", *reading(report), "",
              "Absolute seconds on a shared 2-core machine vary between runs; compare only ratios from the same run."]
    return "\n".join(lines) + "\n"


def machine_section(report: dict) -> list[str]:
    machine, rows = report["machine"], report["summary"]["rows"]
    return [
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['cpus']} logical CPUs ({machine['cores_per_socket']} cores/socket, "
        f"{machine['threads_per_core']} thread/core), hypervisor: {machine['hypervisor']}",
        f"- /proc/cpuinfo: avx512_bf16 {_yes_no(machine['avx512_bf16'])}, amx_bf16 {_yes_no(machine['amx_bf16'])}",
        f"- torch {machine['torch']}, torch.get_num_threads() = {machine['torch_threads']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "torch"),
        f"- 1-minute load average: {report['load_before']:.2f} before, {report['load_after']:.2f} after (this run "
        "itself adds about its thread count; much more means other work shared the CPUs).",
        "- Other load (CPU-seconds per second that other processes took, /proc/stat less this process, per training "
        f"run): median {report['other_load']['median']:.2f}, max {report['other_load']['max']:.2f}; "
        f"{report['other_load']['contended_runs']} of {report['other_load']['runs']} runs above {report['summary']['quiet_threshold']:g}, "
        "where absolute seconds are not reliable (the interleaved ratios suffer less). Highest per arm: "
        + ", ".join(f"{r['arm']} {r['other_load_max']:.2f}" for r in rows) + ".",
        f"- Quiet measured steps (other load <= {report['summary']['quiet_threshold']:g} during the step): "
        f"{sum(r['quiet_steps'] for r in rows)} of {sum(r['steps'] for r in rows)}. Time spent waiting for a quiet "
        f"machine before runs (up to {report['config']['max_wait']:g} s each): {report['other_load']['waited_s']:.0f} s.",
    ]


def config_section(report: dict) -> list[str]:
    cfg, data = report["config"], report["data"]
    return [
        "## Configuration",
        "",
        f"- {cfg['batch_size']} samples x {cfg['seq_len']} tokens per optimiser step (no gradient accumulation), "
        f"{'bf16 autocast (fp32 master weights)' if cfg['bf16'] else 'fp32'}, `training.build.training_arguments` "
        f"(optim {cfg['optim']}, lr {cfg['learning_rate']:g} {cfg['lr_scheduler']}, max_grad_norm "
        f"{cfg['max_grad_norm']:g}, `use_cpu=True`), logging every {cfg['logging_steps']} steps, "
        f"`save_strategy='no'`, no eval, seed {cfg['seed']}, `dataloader_num_workers=0`; torch intra-op threads: "
        f"{cfg['threads']} on {report['machine']['cpus']} CPUs"
        + (" (torch's default)." if cfg["threads"] == report["machine"]["cpus"] else " (`--threads`)."),
        f"- Data: {data['samples']} samples of exactly {cfg['seq_len']} tokens packed from {data['documents']} "
        f"demo-corpus documents ({', '.join(f'{g} {n}' for g, n in data['groups'].items())}), EOS between documents, "
        "so no batch is padded and the token-mean loss of plain equals the per-sample-mean loss of `none`; static "
        "weights seeded log-uniform in [0.25, 4], mean 1. One run is one epoch over them.",
        "- Arms: plain = stock `transformers.Trainer` (collator: `training.collator.WeightedCollator` with the "
        "`weight` tensor dropped, so the model gets the same input_ids / attention_mask / labels); the weightings = "
        "`training.build.build_trainer` (`WeightedTrainer` + `WeightedCollator` + its `JsonLogCallback`)"
        + (f"; `{CANDIDATE_ARM}` = static+online with `per_sample_nll` swapped, in this process only, for this "
           "benchmark's `per_sample_nll_shifted` (see below)" if CANDIDATE_ARM in cfg["arms"] else "") + ".",
        f"- {cfg['rounds']} rounds; in each, every arm loads a fresh model (`training.build.load_base`, fp32) and runs "
        f"one `trainer.train()` of {cfg['warmup_steps']} + {cfg['steps']} steps; the first {cfg['warmup_steps']} "
        "(optimiser-state allocation, first touch of buffers) are discarded. The arm order rotates by one each round, "
        "so load drift from other processes hits every arm alike. Before each run the benchmark waits (up to "
        "`--max-wait` s) until other processes take <= "
        f"{report['summary']['quiet_threshold']:g} CPU-s/s over a {QUIET_PROBE_S:g} s sample (0.2 plus the cores "
        "torch's threads leave free): with torch's threads on every core, "
        "a step that shares the CPUs is several times slower, not a bit slower.",
        "- Step time: wall time between consecutive `on_step_end` callbacks, i.e. everything the Trainer does per "
        "optimiser step (batch fetch and collation, forward, loss, backward, clipping, AdamW, scheduler, callbacks, "
        "logging); the JSON also has `on_step_begin` to `on_step_end` (the same without fetching the batch) and each "
        "step's other load. Medians and quartiles are over the measured steps of all rounds; ratio = arm median / "
        "plain median; the per-round ratio is the arm's median in a round over plain's median in the same round.",
    ]


def checks_section(report: dict) -> list[str]:
    chk, rows = report["summary"]["checks"], report["summary"]["rows"]
    lines = [
        "## Checks",
        "",
        "- Same batches in the same order in every run (CRC of each batch's input_ids): "
        f"**{'yes' if chk['same_batches_all_runs'] else 'NO'}** ({chk['batches_per_run']} batches per run).",
    ]
    for pair, c in chk["first_loss_pairs"].items():
        verdict = "not logged" if c["max_abs_diff"] is None else ("ok" if c["ok"] else "FAILED")
        lines.append(f"- First logged loss (mean of the first {report['config']['logging_steps']} steps), {pair} "
                     f"(the same objective), max abs diff over rounds: {_fmt(c['max_abs_diff'])} nats (tolerance "
                     f"{chk['tolerance']:g}): **{verdict}**.")
    lines.append("- First logged loss per arm, round 1 (the loss each arm reports is the unweighted mean): "
                 + ", ".join(f"{r['arm']} {_fmt(r['first_loss'][0])}" for r in rows) + ".")
    return lines


def loss_head_section(report: dict) -> list[str]:
    lh, cfg = report["loss_head"], report["config"]
    plain_step = report["summary"]["rows"][0]["median_s"]
    names = {
        "plain": "plain: `model.loss_function` (transformers `ForCausalLMLoss`: fp32 upcast, cross entropy on "
                 "(B*T, V) rows, sum / tokens)",
        "hardfocus": "hardfocus: `per_sample_nll` (fp32 upcast, cross entropy on the transposed (B, V, T-1) view, "
                     "reduction none) + `StepWeighter.plan` (static+online) + `(coef * losses).sum()`",
        "candidate": "candidate: the same with `per_sample_nll_shifted` (labels shifted, no logits slice; cross "
                     "entropy on (B*T, V) rows, reduction none, `.view(B, T)`)",
    }
    lines = [
        "## The loss head alone",
        "",
        f"Forward + backward from the logits to their gradient, on one batch of real logits ({cfg['batch_size']} x "
        f"{cfg['seq_len']} x {lh['vocab']:,}, {'bf16' if cfg['bf16'] else 'fp32'}, computed once by the model), "
        f"median of {lh['reps']} reps with the variants interleaved, the cost of cloning the logits "
        f"({lh['clone_s'] * 1e3:.0f} ms) subtracted. This is the only computation in which the arms differ: the model's "
        "forward and backward, clipping and AdamW are the same code.",
        "",
        "| loss head | ms | vs plain | share of plain's median step |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {names[k]} | {v * 1e3:.0f} | {(v - lh['seconds']['plain']) * 1e3:+.0f} ms | {v / plain_step:.1%} |"
              for k, v in lh["seconds"].items()]
    lines += ["", f"The candidate's per-sample losses differ from `per_sample_nll`'s by at most "
                  f"{lh['candidate_loss_max_abs_diff']:.2e} nats and its logit gradients by at most "
                  f"{lh['candidate_grad_max_abs_diff']:.2e} (same math, different kernel)."]
    if lh.get("profiles"):
        lines += ["", "Where the time goes: the ops with the most self CPU time in one profiled call (torch.profiler; "
                      "the profiler adds its own overhead, so compare within a column):", "",
                  "| rank | " + " | ".join(f"{k} op (calls): ms" for k in lh["profiles"]) + " |",
                  "|---:|" + "---|" * len(lh["profiles"])]
        for i in range(max(len(v) for v in lh["profiles"].values())):
            cells = []
            for ops in lh["profiles"].values():
                cells.append(f"`{ops[i]['op']}` ({ops[i]['calls']}): {ops[i]['self_ms']:.0f}" if i < len(ops) else "")
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return lines


def reading(report: dict) -> list[str]:
    summary = report["summary"]
    rows = {r["arm"]: r for r in summary["rows"]}
    lh = report["loss_head"]["seconds"]
    plain = rows["plain"]
    tokens = report["config"]["batch_size"] * report["config"]["seq_len"]
    spread = max(plain["round_medians_s"]) / min(plain["round_medians_s"]) - 1
    step = plain["quiet_median_s"] if summary["basis"] == "quiet" else plain["median_s"]
    out = [
        f"- A plain step takes {step:.2f} s here ({tokens:,} tokens, {tokens / step:,.0f} tokens/s, {summary['basis']} "
        f"steps). Over all steps plain's spread by {(plain['q3_s'] - plain['q1_s']) / plain['median_s']:.1%} of the "
        f"median (IQR) and its per-round medians by {spread:.1%}; an arm-to-arm difference well inside that is noise.",
    ]
    for arm in [a for a in ARMS[1:] if a in rows]:
        r = rows[arm]
        out.append(f"- {arm}: {r['verdict_overhead']:+.1%} per step ({(r['verdict_ratio'] - 1) * step * 1e3:+.0f} ms), "
                   f"{'within' if r['meets_target'] else 'over'} the {TARGET_OVERHEAD:.0%} target; all steps "
                   f"{r['overhead']:+.1%}, fastest step {r['min_ratio'] - 1:+.1%}.")
    head = lh["hardfocus"] - lh["plain"]
    material = head / step >= MATERIAL_HEAD_SHARE
    out.append(
        f"- The loss head alone costs {head * 1e3:+.0f} ms more than plain's ({head / step:+.1%} of a plain step), the "
        "same for every weighting (`none` included): `per_sample_nll` slices the logits (`logits[:, :-1]`, whose "
        "backward zero-fills a full-size gradient buffer: the extra `aten::fill_` calls in the profile) and runs the "
        "cross entropy on a transposed (B, V, T-1) view, where plain's loss shifts the labels and uses contiguous "
        "(B*T, V) rows. "
        + ("That is a material share of a step. " if material else "Timed alone, that is small next to a step. ")
        + "`StepWeighter.plan` itself is a few small tensor ops on B losses; the rest of the step (model forward and "
        "backward, clipping, AdamW) is the same code in every arm."
    )
    if CANDIDATE_ARM in rows:
        c, so = rows[CANDIDATE_ARM], rows["static+online"]
        faster = sum(a < b for a, b in zip(c["round_medians_s"], so["round_medians_s"]))
        out.append(
            "- Candidate change (in `training/weighting.py`, not made here): shift the labels instead of slicing the "
            "logits and run the cross entropy on contiguous rows, as transformers' own loss does: `shift = "
            "F.pad(labels[:, 1:], (0, 1), value=-100)`; `F.cross_entropy(logits.float().reshape(-1, V), "
            "shift.reshape(-1), ignore_index=-100, reduction='none').view(B, T)` (same values; padding and -100 labels "
            f"handled alike). Its loss head costs {(lh['candidate'] - lh['plain']) * 1e3:+.0f} ms vs plain's (current: "
            f"{head * 1e3:+.0f} ms); static+online trained with it runs at {c['verdict_ratio']:.3f}x plain vs "
            f"{so['verdict_ratio']:.3f}x with the current code, faster in {faster} of {len(c['round_medians_s'])} "
            f"rounds (fastest steps: {c['min_ratio']:.3f}x vs {so['min_ratio']:.3f}x). Differences of a few percent "
            "are at the edge of this machine's noise; the change makes hardfocus's loss the same computation as "
            "plain's, which leaves the weighting with no loss-side overhead to measure."
        )
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds; each trains every arm once (default 4)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="steps per run discarded (default 1)")
    parser.add_argument("--steps", type=int, default=3, help="steps per run measured (default 3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp32", dest="bf16", action="store_false", help="no bf16 autocast (default: bf16 where supported)")
    parser.add_argument("--no-candidate", dest="candidate", action="store_false",
                        help=f"leave out the {CANDIDATE_ARM} arm (the suggested change)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (default 0: torch's default, one per core). On a machine shared "
                             "with other work, 1 keeps a step from stalling whenever another process takes a core")
    parser.add_argument("--max-wait", type=float, default=120.0,
                        help="before each run, wait up to this many seconds for other processes to leave the CPUs")
    parser.add_argument("--arms", default=",".join(ARMS),
                        help=f"comma-separated arms to run, plain always included (default: all of {', '.join(ARMS)})")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/training_overhead.md")
    parser.add_argument("--quick", action="store_true", help="tiny smoke configuration (2 rounds of 1 + 2 steps, 4 x 64)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup_steps, args.steps, args.batch_size, args.seq_len = 2, 1, 2, 4, 64
        args.max_wait = min(args.max_wait, 5.0)
    if min(args.rounds, args.warmup_steps + 1, args.steps, args.batch_size) < 1 or args.seq_len < 2:
        parser.error("--rounds, --steps and --batch-size must be >= 1, --warmup-steps >= 0, --seq-len >= 2")
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "training_overhead-quick.md" if args.quick
                    else Path("benchmarks/results/training_overhead.md"))
    chosen = {a.strip() for a in args.arms.split(",") if a.strip()} | {"plain"}
    if chosen - set(ARMS):
        parser.error(f"unknown arms {sorted(chosen - set(ARMS))}; choose from {', '.join(ARMS)}")
    args.arms = [a for a in ARMS if a in chosen] + ([CANDIDATE_ARM] if args.candidate and "static+online" in chosen else [])
    return args


def measure(args: argparse.Namespace, command: str) -> dict:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from scoring.model import cpu_has_bf16, resolve_model
    from training.data import TokenDataset

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bf16 and not cpu_has_bf16():
        log.warning("this CPU has no native bf16: running fp32")
        args.bf16 = False
    started = time.perf_counter()
    load_before = load_average()
    model_path = resolve_model(MODEL_SPEC).path
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    n_samples = (args.warmup_steps + args.steps) * args.batch_size
    samples = make_samples(tokenizer, n_samples, args.seq_len, args.seed)
    dataset = TokenDataset(token_table(samples))
    log.info("%d samples of %d tokens; %d rounds of %d arms x (%d + %d) steps", n_samples, args.seq_len, args.rounds,
             len(args.arms), args.warmup_steps, args.steps)
    runs = run_rounds(model_path, dataset, args)
    loss_head = loss_head_timing(model_path, samples, args)
    load_after = load_average()
    cfg = train_config("none", Path("unused"), args)
    other = [r.other_load for r in runs]
    return {
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_path": model_path,
        "n_params": _count_params(model_path),
        "machine": machine_info(),
        "versions": library_versions(),
        "load_before": load_before,
        "load_after": load_after,
        "other_load": {"median": statistics.median(other), "max": max(other), "runs": len(other),
                       "contended_runs": sum(x > quiet_threshold() for x in other),
                       "waited_s": sum(r.waited_s for r in runs)},
        "config": {
            "rounds": args.rounds, "warmup_steps": args.warmup_steps, "steps": args.steps,
            "batch_size": args.batch_size, "seq_len": args.seq_len, "seed": args.seed, "bf16": args.bf16,
            "optim": cfg.optim, "learning_rate": cfg.learning_rate, "lr_scheduler": cfg.lr_scheduler,
            "max_grad_norm": cfg.max_grad_norm, "logging_steps": cfg.logging_steps, "arms": list(args.arms),
            "target_overhead": TARGET_OVERHEAD, "max_wait": args.max_wait, "threads": torch.get_num_threads(),
        },
        "data": {"samples": n_samples, "documents": samples.documents, "groups": samples.groups},
        "summary": summarise(runs, args),
        "loss_head": loss_head,
        "runs": [asdict(r) for r in runs],
        "wall_s": time.perf_counter() - started,
    }


def _count_params(model_path: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    return sum(p.numel() for p in model.parameters())


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    command = shlex.join(["python", *(sys.argv if argv is None else [sys.argv[0], *argv])])
    report = measure(args, command)
    markdown = render_markdown(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    log.info("wrote %s and %s", args.out, args.out.with_suffix(".json"))
    print(markdown)
    return 0 if report["summary"]["checks"]["same_batches_all_runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
