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
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

# run as `python benchmarks/training_overhead.py`: this folder is sys.path[0]
from harness import (
    OtherLoad,
    command_line,
    library_versions,
    load_average,
    machine_info,
    wait_for_quiet,
    write_report,
)
from training_overhead_head import loss_head_timing, per_sample_nll_shifted
from training_overhead_report import (
    ARMS,
    CANDIDATE_ARM,
    TARGET_OVERHEAD,
    Run,
    quiet_threshold,
    render_markdown,
    summarise,
    weighting_of,
)
from transformers import Trainer, TrainerCallback

log = logging.getLogger("training_overhead")

MODEL_SPEC = "smollm2-135m"


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
        self.start, self.meter = 0.0, None
        self.begins: list[float] = []
        self.ends: list[float] = []
        self.other_loads: list[float] = []
        self.logs: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.meter, self.start = OtherLoad(), time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.begins.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.other_loads.append(self.meter.rate())
        self.meter = OtherLoad()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.logs.append({"step": state.global_step, **logs})

    def step_seconds(self) -> list[float]:
        return [float(s) for s in np.diff([self.start, *self.ends])]

    def compute_seconds(self) -> list[float]:
        return [e - b for b, e in zip(self.begins, self.ends)]


def log_every(args: argparse.Namespace) -> int:
    """logging_steps of every arm: twice per run, so one log (where the weighted arms add weight statistics) falls
    inside the timed steps and the first logged loss can be compared between arms."""
    return max(1, (args.warmup_steps + args.steps) // 2)


def train_config(arm: str, output: Path, args: argparse.Namespace):
    from training import TrainConfig

    return TrainConfig(
        data=["unused"], output=str(output), weighting=weighting_of(arm),
        max_steps=args.warmup_steps + args.steps, batch_size=args.batch_size, max_seq_len=args.seq_len,
        seed=args.seed, precision="bf16" if args.bf16 else "fp32", logging_steps=log_every(args),
        batching="random",  # equal-length samples: nothing to group; the plain arm reads the same order
    )


def build_arm(arm: str, model_path: str, dataset, work: Path, args: argparse.Namespace) -> tuple[Trainer, StepClock]:
    from scoring.foundation.tokenizers import pad_token_id
    from training.build import build_trainer, load_base, training_arguments
    from training.collator import WeightedCollator
    from training.stream import TableWindows, TrainingStream

    cfg = train_config(arm, work / arm.replace("+", "_").replace("/", "_"), args)
    targs = training_arguments(
        cfg, bf16=args.bf16, progress=False, with_eval=False, save_strategy="no", report_to="none", disable_tqdm=True,
        # transformers refuses bf16=True on a machine without a bf16 GPU unless told it trains on the CPU
        use_cpu=not torch.cuda.is_available(),
    )
    clock = StepClock()
    if arm == "plain":  # the stream's order, read sequentially: the same batches as the other arms
        model, tokenizer = load_base(model_path)
        collator = WeightedCollator(pad_token_id=pad_token_id(tokenizer), max_seq_len=cfg.max_seq_len)
        stream = TrainingStream(TableWindows(dataset), lambda rows: rows, cfg.batch_size, cfg.shuffle_buffer, cfg.seed,
                                "random", cfg.max_seq_len)
        ordered = [row for batch in itertools.islice(stream.batch_rows(), cfg.max_steps) for row in batch]
        targs.train_sampling_strategy = "sequential"
        trainer = Trainer(
            model=model, args=targs, train_dataset=ordered, data_collator=FingerprintCollator(collator, drop_weight=True),
            processing_class=tokenizer, callbacks=[clock],
        )
    else:
        trainer = build_trainer(cfg, model_path, targs, TableWindows(dataset), extra_callbacks=[clock])
        trainer.train_dataset.collate = FingerprintCollator(trainer.train_dataset.collate, drop_weight=False)
        trainer.data_collator = trainer.train_dataset.collate  # where run_arm reads the fingerprints
    return trainer, clock


def run_arm(arm: str, rnd: int, position: int, model_path: str, dataset, work: Path, args: argparse.Namespace) -> Run:
    t0 = time.perf_counter()
    trainer, clock = build_arm(arm, model_path, dataset, work, args)
    load_s = time.perf_counter() - t0
    waited = wait_for_quiet(args.max_wait, quiet_threshold(torch.get_num_threads()))
    import training.trainer

    current = training.trainer.per_sample_nll
    if arm == CANDIDATE_ARM:
        training.trainer.per_sample_nll = per_sample_nll_shifted  # what WeightedTrainer.compute_loss calls
    try:
        meter, t1 = OtherLoad(), time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t1
        other = meter.rate()
    finally:
        training.trainer.per_sample_nll = current
    losses = [entry["loss"] for entry in clock.logs if "loss" in entry]
    run = Run(
        arm=arm, round=rnd, position=position, step_s=clock.step_seconds(), compute_s=clock.compute_seconds(),
        step_other_load=clock.other_loads,
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
    dataset = token_table(samples)
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
                       "contended_runs": sum(x > quiet_threshold(torch.get_num_threads()) for x in other),
                       "waited_s": sum(r.waited_s for r in runs)},
        "config": {
            "rounds": args.rounds, "warmup_steps": args.warmup_steps, "steps": args.steps,
            "batch_size": args.batch_size, "seq_len": args.seq_len, "seed": args.seed, "bf16": args.bf16,
            "optim": cfg.optim, "learning_rate": cfg.learning_rate, "lr_scheduler": cfg.lr_scheduler,
            "max_grad_norm": cfg.max_grad_norm, "logging_steps": cfg.logging_steps, "arms": list(args.arms),
            "target_overhead": TARGET_OVERHEAD, "max_wait": args.max_wait, "threads": torch.get_num_threads(),
        },
        "data": {"samples": n_samples, "documents": samples.documents, "groups": samples.groups},
        "summary": summarise(runs, args.arms, args.warmup_steps, quiet_threshold(torch.get_num_threads())),
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
    report = measure(args, command_line(argv))
    markdown = render_markdown(report)
    write_report(args.out, report, markdown)
    sys.stdout.write(markdown)
    return 0 if report["summary"]["checks"]["same_batches_all_runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
