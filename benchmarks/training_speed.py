"""Training speed in real tokens per second: ``hardfocus train`` against a stock ``transformers.Trainer``.

    python -m benchmarks.training_speed [--datasets demo,long-tail] [--rounds 1] [--steps 16] [--batch-size 8] \
        [--max-seq-len 512] [--stock-arms random,grouped] [--hardfocus-arms none,static,online] \
        [--batching default,grouped,packed] [--train-arg='--online-window 2' ...] [--cache outputs/bench-training] \
        [--long-tail-rows 1024] [--max-wait 120] [--mem-limit-gb N] [--rebuild-data] \
        [--out benchmarks/results/training_speed.md] [--quick]

Every arm is a whole separate process, run one after another, trained on the same selection of mixed-length
samples with SmolLM2-135M (fp32 master weights, bf16 autocast where the CPU has it natively, else fp32):

stock-random      a stock ``transformers.Trainer`` as a user would write it (``_stock`` below): the rows'
                  ``input_ids`` read from the part files with pyarrow and cut at ``--max-seq-len``, a
                  ``datasets.Dataset``, ``DataCollatorForLanguageModeling(tokenizer, mlm=False)`` (pads to the
                  longest row of the batch; labels = input_ids, padding -100), ``TrainingArguments(
                  train_sampling_strategy="random", bf16, use_cpu=True, per_device_train_batch_size, max_steps,
                  learning_rate=2e-5, report_to="none", save_strategy="no", dataloader_num_workers=0,
                  logging_steps, seed=0)`` and everything else transformers' defaults; ``trainer.train()``, then
                  ``trainer.save_model()`` (hardfocus writes its final model too)
stock-grouped     the same with ``train_sampling_strategy="group_by_length"`` (``LengthGroupedSampler``: the
                  strongest thing a user writes with the stock Trainer)
hardfocus-W[/B]   the real CLI: ``hardfocus train <data> --output <fresh dir> --model smollm2-135m --weighting W
                  --max-steps --batch-size --max-seq-len --precision --save-steps 1000 --logging-steps``, plus
                  ``--batching B`` where ``--batching`` names one (``default``: the flag is not passed) and every
                  ``--train-arg``

Two datasets: ``demo``, the demo's own selection (``hardfocus demo-corpus --noise-frac 0.05``, then
``hardfocus run pipelines/configs/demo.toml --until select``: scored with max_tokens 512, drop 10%, keep 50%,
per group), and ``long-tail``, real text (the demo corpus's documents, tokenised with the model's tokenizer, EOS
between them) cut into consecutive samples whose lengths are drawn lognormal (median ``--long-tail-median``,
10% above ``--long-tail-p90``, clipped to [8, max-seq-len]), in part files with ``input_ids`` and a seeded
``weight`` (a token directory ``hardfocus train`` reads). Both are built once under ``--cache`` and reused.

What each run measures, the same way in every arm: the child process's wall time (start to exit: imports,
loading, training, writing the model); the training loop (``Trainer.train`` from call to return); and, from a
forward pre-hook on the model, every micro-batch it trained on: its rows x width (computed positions) and its
real tokens (the ``attention_mask`` sum; every position of a batch without a mask of the batch's shape, as a
packed row). The hook and the loop's clock are installed by this file in both kinds of child: in the stock child
directly, in the CLI's process through a ``sitecustomize`` on ``PYTHONPATH`` (:func:`install_probe`; the CLI
itself is unchanged). Real tokens/s = real tokens / seconds: over the whole process (the headline) and over the
loop alone. Real share = real tokens / computed positions. Arms alternate in ``--rounds`` rounds, the order
rotated each round; before each run the benchmark waits (up to ``--max-wait`` s) for a quiet machine, and every
run records the CPU other processes took meanwhile.

Targets (the issue's "a benchmark against the strongest baseline"): hardfocus >= stock-grouped and
>= 1.5x stock-random in real tokens/s.

``--quick``: a smoke configuration (2 steps of 4 samples of at most 128 tokens, 1 round, a 64-document demo
corpus scored in-process, 64 long-tail rows), written to a temporary folder unless ``--out`` is given.
Writes Markdown (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    CONTENDED_OTHER_LOAD,
    GB,
    code_version,
    command_line,
    fmt,
    library_versions,
    load_average,
    load_cell,
    machine_info,
    machine_lines,
    markdown_table,
    met,
    run_measured,
    wait_for_quiet,
    write_report,
)

log = logging.getLogger("training_speed")

ROOT = Path(__file__).resolve().parent.parent
MODEL_SPEC = "smollm2-135m"
DEMO_CONFIG = ROOT / "pipelines" / "configs" / "demo.toml"
DATASETS = ("demo", "long-tail")
STOCK_STRATEGY = {"random": "random", "grouped": "group_by_length"}
WEIGHTINGS = ("none", "static", "online", "static+online")
DEFAULT_BATCHING = "default"  # no --batching flag: the CLI's own default
TARGET_VS_GROUPED = 1.0
TARGET_VS_RANDOM = 1.5
PROBE_ENV = "HARDFOCUS_BENCH_PROBE"  # where the probe of a child writes its record
PROBE_OWNER_ENV = "HARDFOCUS_BENCH_PROBE_OWNER"  # set by the first process that installs it: its children do not
Z90 = 1.2815515655446004  # the standard normal's 90% quantile
MIN_SAMPLE_TOKENS = 8
QUICK = dict(steps=2, rounds=1, batch_size=4, max_seq_len=128, logging_steps=1, long_tail_rows=64, demo_docs_per_group=16,
             max_wait=5.0)


# ---- what a batch holds ------------------------------------------------------------------------


def batch_counts(input_ids, attention_mask=None, position_ids=None) -> list[int]:
    """``[rows, width, real tokens, samples]`` of one micro-batch as the model gets it (torch tensors or numpy arrays).

    Computed positions are ``rows * width``. Real tokens: the ``attention_mask`` sum where the batch has a mask of
    its own shape (right- or left-padded rows); otherwise every position (a packed row has no padding). Samples:
    the rows, or, with ``position_ids``, the positions where a sequence starts (0), so a packed row counts each
    sample in it."""
    shape = tuple(input_ids.shape)
    rows, width = (1, shape[0]) if len(shape) == 1 else (int(shape[0]), int(math.prod(shape[1:])))
    if attention_mask is not None and tuple(attention_mask.shape) == shape:
        real = int((attention_mask != 0).sum())
    else:
        real = rows * width
    samples = int((position_ids == 0).sum()) if position_ids is not None else rows
    return [rows, width, real, samples]


def token_totals(batches: Sequence[Sequence[int]]) -> dict:
    """Sums over :func:`batch_counts` records: micro-batches, samples, real tokens, computed positions, real share."""
    computed = sum(r * w for r, w, _, _ in batches)
    real = sum(b[2] for b in batches)
    samples = sum(b[3] for b in batches)
    return {"micro_batches": len(batches), "samples": samples, "real_tokens": real, "computed_positions": computed,
            "real_share": real / computed if computed else None,
            "mean_sample_tokens": real / samples if samples else None}


# ---- the probe: installed in each measured child ---------------------------------------------------


def install_probe(record_path: str | os.PathLike):
    """Wrap ``transformers.Trainer.train`` (every subclass's, as none overrides it): time the call, and count every
    training forward's batch with a forward pre-hook on ``trainer.model``; write the record to ``record_path`` as
    JSON when the call ends (also when it raises). Returns a function that removes the wrapper."""
    from transformers import Trainer

    original = Trainer.train

    def train(self, *args, **kwargs):
        batches: list[list[int]] = []

        def count(module, f_args, f_kwargs):
            if module.training:
                ids = f_kwargs.get("input_ids", f_args[0] if f_args else None)
                if ids is not None:
                    batches.append(batch_counts(ids, f_kwargs.get("attention_mask"), f_kwargs.get("position_ids")))

        hook = self.model.register_forward_pre_hook(count, with_kwargs=True)
        t0, error = time.perf_counter(), None
        try:
            return original(self, *args, **kwargs)
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            loop_s = time.perf_counter() - t0
            hook.remove()
            _write_record(record_path, self, batches, loop_s, error)

    Trainer.train = train

    def remove() -> None:
        Trainer.train = original

    return remove


def _write_record(path, trainer, batches: list[list[int]], loop_s: float, error: str | None) -> None:
    import torch

    a = trainer.args
    record = {
        "loop_s": loop_s, "error": error, "global_step": trainer.state.global_step, "batches": batches,
        "log_history": trainer.state.log_history,
        "trainer": {
            "class": type(trainer).__name__, "collator": type(trainer.data_collator).__name__,
            "train_dataset": type(trainer.train_dataset).__name__,
            "order": getattr(trainer.train_dataset, "order", None),  # hardfocus's TrainingStream: random or grouped
            "optim": str(getattr(a.optim, "value", a.optim)),
            "lr_scheduler": str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type)),
            "learning_rate": a.learning_rate, "warmup_steps": a.warmup_steps, "weight_decay": a.weight_decay,
            "max_grad_norm": a.max_grad_norm, "bf16": a.bf16, "batch_size": a.per_device_train_batch_size,
            "gradient_accumulation_steps": a.gradient_accumulation_steps, "max_steps": a.max_steps, "seed": a.seed,
            "train_sampling_strategy": getattr(a, "train_sampling_strategy", None),
            "dataloader_num_workers": a.dataloader_num_workers, "torch_threads": torch.get_num_threads(),
        },
    }
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(record, default=str))
    tmp.replace(path)


SITECUSTOMIZE = f"""# written by benchmarks/training_speed.py: installs its probe in the measured `hardfocus train` process
import os
import sys

if os.environ.get({PROBE_ENV!r}) and not os.environ.get({PROBE_OWNER_ENV!r}):
    os.environ[{PROBE_OWNER_ENV!r}] = str(os.getpid())  # this process only: not its children (Ray's workers)
    sys.path.append({str(ROOT)!r})
    from benchmarks import training_speed

    training_speed.install_probe(os.environ[{PROBE_ENV!r}])
"""


# ---- the stock child --------------------------------------------------------------------------------


def read_input_ids(data: str | Path, max_seq_len: int) -> list[list[int]]:
    """Every row's ``input_ids`` from the ``part-*.parquet`` files of ``data`` (in name order, as hardfocus lists
    them), cut at ``max_seq_len``."""
    import pyarrow.parquet as pq

    parts = sorted(Path(data).glob("part-*.parquet"))
    if not parts:
        raise SystemExit(f"no part-*.parquet in {data}")
    return [ids[:max_seq_len] for p in parts for ids in pq.read_table(p, columns=["input_ids"]).column("input_ids").to_pylist()]


def stock_child(argv: Sequence[str]) -> int:
    """A stock Trainer run as a user writes it (see the module's docstring); the probe records what it trained."""
    p = argparse.ArgumentParser(prog="training_speed.py _stock")
    p.add_argument("--data", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model-path", required=True)
    p.add_argument("--strategy", choices=sorted(set(STOCK_STRATEGY.values())), required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--max-seq-len", type=int, required=True)
    p.add_argument("--precision", choices=["bf16", "fp32"], required=True)
    p.add_argument("--logging-steps", type=int, default=4)
    p.add_argument("--probe", required=True)
    args = p.parse_args(argv)
    install_probe(args.probe)

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_dataset = datasets.Dataset.from_dict({"input_ids": read_input_ids(args.data, args.max_seq_len)})
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
    training_args = TrainingArguments(
        output_dir=str(Path(args.output) / "checkpoints"),
        train_sampling_strategy=args.strategy,
        bf16=args.precision == "bf16",
        use_cpu=True,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=2e-5,
        logging_steps=args.logging_steps,
        report_to="none",
        save_strategy="no",
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(args.output)
    return 0


# ---- the datasets -------------------------------------------------------------------------------------


def long_tail_lengths(n: int, median: float = 100, p90: float = 400, max_len: int = 512, seed: int = 0,
                      min_len: int = MIN_SAMPLE_TOKENS) -> np.ndarray:
    """``n`` sample lengths drawn lognormal with the given median and 90% quantile, rounded and clipped to
    ``[min_len, max_len]`` (so the share above ``p90`` stays 10% where ``max_len >= p90``, and ``max_len`` is a
    spike: the samples a truncating scorer cuts)."""
    if not 0 < median < p90:
        raise ValueError("need 0 < median < p90")
    sigma = math.log(p90 / median) / Z90
    drawn = np.random.default_rng(seed).lognormal(math.log(median), sigma, n)
    return np.clip(np.rint(drawn), min_len, max_len).astype(np.int64)


def cut_samples(stream: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Consecutive pieces of ``stream`` of the given lengths (the first ``sum(lengths)`` tokens, each once)."""
    ends = np.cumsum(lengths)
    if len(lengths) and ends[-1] > len(stream):
        raise ValueError(f"{len(stream)} tokens cannot make samples of {int(ends[-1])} tokens in all")
    return [stream[e - n : e] for e, n in zip(ends, lengths)]


def write_token_parts(out: Path, samples: Sequence[np.ndarray], weights: np.ndarray, rows_per_part: int = 256) -> int:
    """``out/part-NNNNN.parquet`` with ``sample_id``, ``input_ids`` (list<int32>) and ``weight`` (float32): a token
    directory ``hardfocus train`` takes (kind ``parts``). Returns the parts written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    parts = 0
    for start in range(0, len(samples), rows_per_part):
        chunk = samples[start : start + rows_per_part]
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in chunk])]).astype(np.int32)
        ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(chunk).astype(np.int32)))
        table = pa.table({
            "sample_id": pa.array([f"long-tail#{i}" for i in range(start, start + len(chunk))]),
            "input_ids": ids,
            "weight": pa.array(np.asarray(weights[start : start + len(chunk)], dtype=np.float32)),
        })
        pq.write_table(table, out / f"part-{parts:05d}.parquet")
        parts += 1
    return parts


def long_tail_child(argv: Sequence[str]) -> int:
    """Build the long-tail token directory (in its own process, so the benchmark's stays small)."""
    p = argparse.ArgumentParser(prog="training_speed.py _long-tail")
    for name in ("--out", "--model-path"):
        p.add_argument(name, required=True)
    for name in ("--rows", "--max-len", "--seed"):
        p.add_argument(name, type=int, required=True)
    for name in ("--median", "--p90"):
        p.add_argument(name, type=float, required=True)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    from pipelines.demo_corpus import build_demo_corpus

    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    lengths = long_tail_lengths(args.rows, args.median, args.p90, args.max_len, args.seed)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    for per_group in (150, 500, 2000):  # the text this machine has decides how many documents give enough tokens
        with tempfile.TemporaryDirectory(prefix="hf-long-tail-corpus-") as tmp:
            build_demo_corpus(tmp, docs_per_group=per_group, max_chars=4000, seed=args.seed, heldout_frac=0.0)
            docs = [json.loads(line) for p in sorted(Path(tmp).glob("train/*.jsonl")) for line in p.read_text().splitlines()]
        rng = np.random.default_rng(args.seed)
        texts = [docs[i]["text"] for i in rng.permutation(len(docs))]
        stream = np.asarray([t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in [*ids, eos]],
                            dtype=np.int32)
        if len(stream) >= lengths.sum():
            break
    samples = cut_samples(stream, lengths)
    weights = np.exp(rng.uniform(math.log(0.25), math.log(4.0), args.rows))
    out = Path(args.out)
    parts = write_token_parts(out, samples, weights / weights.mean())
    facts = {"rows": args.rows, "parts": parts, "documents": len(docs), "stream_tokens": int(len(stream)),
             "median": args.median, "p90": args.p90, "max_len": args.max_len, "seed": args.seed,
             "weights": "seeded log-uniform in [0.25, 4], mean 1"}
    (out.parent / "long_tail.json").write_text(json.dumps(facts, indent=1) + "\n")
    return 0


def _run_logged(cmd: list[str], log_path: Path, what: str) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s (log %s)", what, shlex.join(cmd), log_path)
    with open(log_path, "ab") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{what} failed (exit {done.returncode}); the end of {log_path}:\n"
                         + log_path.read_text(errors="replace")[-3000:])


def prepare_demo(cache: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """The demo's selection (``make demo``'s corpus, score and select), built once under ``cache``."""
    quick = args.demo_docs_per_group is not None
    root = cache / (f"demo-{args.demo_docs_per_group}" if quick else "demo")
    selected, corpus = root / "selected", root / "corpus"
    steps = [[str(args.hardfocus), "demo-corpus", str(corpus), "--noise-frac", "0.05",
              *(["--docs-per-group", str(args.demo_docs_per_group)] if quick else [])],
             [str(args.hardfocus), "run", str(DEMO_CONFIG), "--until", "select",
              "--set", f"run.workdir={json.dumps(str(root))}", "--set", f"run.data=[{json.dumps(str(corpus / 'train'))}]",
              "--set", f"run.heldout=[{json.dumps(str(corpus / 'heldout'))}]",
              *(["--set", 'score.executor="local"'] if quick else [])]]
    if args.rebuild_data and root.exists():
        shutil.rmtree(root)
    if (selected / "summary.json").is_file():
        log.info("demo: reusing the selection in %s", selected)
    else:
        if not (corpus / "train").is_dir():
            _run_logged(steps[0], root / "prepare.log", "demo corpus")
        _run_logged(steps[1], root / "prepare.log", "demo score + select")
    summary = json.loads((selected / "summary.json").read_text())
    return selected, {"built_by": [shlex.join(s) for s in steps], "bands": summary.get("bands"),
                      "parameters": summary.get("parameters")}


def prepare_long_tail(cache: Path, args: argparse.Namespace, model_path: str) -> tuple[Path, dict]:
    root = cache / (f"long-tail-{args.long_tail_rows}rows-m{args.long_tail_median:g}-p{args.long_tail_p90:g}"
                    f"-max{args.max_seq_len}-s{args.seed}")
    parts = root / "parts"
    if args.rebuild_data and root.exists():
        shutil.rmtree(root)
    if (root / "long_tail.json").is_file():
        log.info("long-tail: reusing %s", parts)
    else:
        if root.exists():
            shutil.rmtree(root)  # a build cut short
        cmd = [sys.executable, "-m", "benchmarks.training_speed", "_long-tail", "--out", str(parts), "--model-path", model_path,
               "--rows", str(args.long_tail_rows), "--max-len", str(args.max_seq_len), "--seed", str(args.seed),
               "--median", str(args.long_tail_median), "--p90", str(args.long_tail_p90)]
        _run_logged(cmd, cache / "long-tail-prepare.log", "long-tail token directory")
    return parts, json.loads((root / "long_tail.json").read_text())


def length_facts(data: Path, max_seq_len: int) -> dict:
    """The rows' lengths as training sees them (cut at ``max_seq_len``)."""
    lengths = np.asarray([len(x) for x in read_input_ids(data, max_seq_len)])
    q = np.quantile(lengths, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"rows": int(len(lengths)), "tokens": int(lengths.sum()), "mean": float(lengths.mean()),
            "min": int(lengths.min()), "max": int(lengths.max()),
            "quantiles": {k: float(v) for k, v in zip(("p10", "p25", "p50", "p75", "p90"), q)},
            "share_over_400": float((lengths > 400).mean()), "share_at_max": float((lengths == max_seq_len).mean())}


# ---- the arms -------------------------------------------------------------------------------------------


def arm_names(args: argparse.Namespace) -> list[str]:
    stock = [f"stock-{s}" for s in args.stock_arms]
    hardfocus = [f"hardfocus-{w}" + ("" if b == DEFAULT_BATCHING else f"/{b}")
                 for w in args.hardfocus_arms for b in args.batching]
    return stock + hardfocus


def parse_arm(arm: str) -> tuple[str, str, str | None]:
    """(kind, stock strategy or weighting, batching or None) of an arm name."""
    kind, _, rest = arm.partition("-")
    what, _, batching = rest.partition("/")
    return kind, what, batching or None


def arm_command(arm: str, data: Path, output: Path, model_path: str, probe: Path, args: argparse.Namespace
                ) -> tuple[list[str], list[str]]:
    """(the command as run, the command as a user types it: without the probe's environment)."""
    kind, what, batching = parse_arm(arm)
    if kind == "stock":
        cmd = [sys.executable, "-m", "benchmarks.training_speed", "_stock", "--data", str(data), "--output", str(output),
               "--model-path", model_path, "--strategy", STOCK_STRATEGY[what], "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len),
               "--precision", args.precision, "--logging-steps", str(args.logging_steps), "--probe", str(probe)]
        return cmd, cmd
    user = [str(args.hardfocus), "train", str(data), "--output", str(output), "--model", MODEL_SPEC, "--weighting", what,
            "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len),
            "--precision", args.precision, "--save-steps", "1000", "--logging-steps", str(args.logging_steps),
            *(["--batching", batching] if batching else []), *args.train_args]
    pythonpath = os.pathsep.join(p for p in (str(args.probe_dir), os.environ.get("PYTHONPATH", "")) if p)
    return ["env", f"PYTHONPATH={pythonpath}", f"{PROBE_ENV}={probe}", *user], user


def run_arm(arm: str, dataset: str, data: Path, rnd: int, position: int, model_path: str, work: Path,
            args: argparse.Namespace) -> dict:
    name = f"{dataset}-r{rnd}-{arm.replace('/', '_').replace('+', '_')}"
    output, probe, log_path = work / name, work / f"{name}.probe.json", args.log_dir / f"{name}.log"
    cmd, user = arm_command(arm, data, output, model_path, probe, args)
    waited = wait_for_quiet(args.max_wait, CONTENDED_OTHER_LOAD)
    log.info("%s round %d: %s", dataset, rnd + 1, arm)
    measured = run_measured(cmd, log_path, args.mem_limit_gb * GB)
    kind, what, batching = parse_arm(arm)
    run = {"dataset": dataset, "arm": arm, "kind": kind, "what": what, "batching": batching, "round": rnd,
           "position": position, "command": shlex.join(user), "returncode": measured["returncode"],
           "oom": measured["oom"], "process_s": measured["seconds"], "cpu_s": measured["cpu_seconds"],
           "peak_rss_gb": measured["peak_rss_gb"], "other_load": measured["other_load"], "waited_s": waited,
           "log": str(log_path)}
    record = json.loads(probe.read_text()) if probe.is_file() else None
    manifest = output / "train_manifest.json"
    if kind == "hardfocus" and manifest.is_file():
        m = json.loads(manifest.read_text())
        run.update(manifest_wall_s=m.get("wall_seconds"), manifest_steps=m.get("steps"), train_rows=m.get("train_rows"))
    if record is not None:
        history = record["log_history"]
        run.update(token_totals(record["batches"]))
        run.update(loop_s=record["loop_s"], steps=record["global_step"], batches=record["batches"], trainer=record["trainer"],
                   probe_error=record["error"], losses=[h["loss"] for h in history if "loss" in h],
                   train_runtime_s=next((h["train_runtime"] for h in history if "train_runtime" in h), None))
    run["ok"] = bool(measured["returncode"] == 0 and record is not None and not record["error"]
                     and record["global_step"] == args.steps)
    if not run["ok"]:
        run["log_tail"] = measured["log_tail"]
        log.warning("%s %s failed (exit %s); see %s", dataset, arm, measured["returncode"], log_path)
    else:
        log.info("  %.1f s process, %.1f s loop, %d real tokens of %d computed (%.0f%%): %.0f real tok/s (process), %.0f (loop)",
                 run["process_s"], run["loop_s"], run["real_tokens"], run["computed_positions"], 100 * run["real_share"],
                 run["real_tokens"] / run["process_s"], run["real_tokens"] / run["loop_s"])
    shutil.rmtree(output, ignore_errors=True)  # the model: 0.54 GB per run
    return run


# ---- the summary ------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def _share(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def summarise(runs: list[dict], arms: list[str], datasets: list[str]) -> dict:
    """Per dataset and arm: medians over the arm's good runs, tokens/s and the ratios to the stock arms; the verdict."""
    out: dict = {}
    for dataset in datasets:
        rows = {}
        for arm in arms:
            mine = [r for r in runs if r["dataset"] == dataset and r["arm"] == arm]
            good = [r for r in mine if r["ok"]]
            rows[arm] = {
                "runs": len(mine), "ok_runs": len(good),
                "process_s": _median([r["process_s"] for r in good]), "loop_s": _median([r["loop_s"] for r in good]),
                "manifest_wall_s": _median([r.get("manifest_wall_s") for r in good]),
                "real_tokens": _median([r["real_tokens"] for r in good]),
                "computed_positions": _median([r["computed_positions"] for r in good]),
                "samples": _median([r["samples"] for r in good]),
                "real_share": _median([r["real_share"] for r in good]),
                "mean_sample_tokens": _median([r["mean_sample_tokens"] for r in good]),
                "tok_s_process": _median([r["real_tokens"] / r["process_s"] for r in good]),
                "tok_s_loop": _median([r["real_tokens"] / r["loop_s"] for r in good]),
                "peak_rss_gb": max((r["peak_rss_gb"] for r in good), default=None),
                "other_load_max": max((r["other_load"] for r in mine), default=None),
            }
        for row in rows.values():
            for basis in ("process", "loop"):
                for base in ("stock-random", "stock-grouped"):
                    ref = rows.get(base)
                    row[f"{basis}_vs_{base}"] = _share(row[f"tok_s_{basis}"], ref[f"tok_s_{basis}"] if ref else None)
        verdict = {}
        for arm, row in rows.items():
            if not arm.startswith("hardfocus-"):
                continue
            verdict[arm] = {
                basis: {
                    "vs_grouped": _met(row[f"{basis}_vs_stock-grouped"], TARGET_VS_GROUPED),
                    "vs_random": _met(row[f"{basis}_vs_stock-random"], TARGET_VS_RANDOM),
                }
                for basis in ("process", "loop")
            }
        out[dataset] = {"arms": rows, "verdict": verdict}
    return out


def _met(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


# ---- the report ----------------------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    cfg, summary = report["config"], report["summary"]
    lines = [
        "# Training speed: real tokens per second, `hardfocus train` vs a stock `transformers.Trainer`",
        "",
        f"Command: `{report['command']}`  ",
        f"Date: {report['date']}  ",
        f"Code: {report['code_version']}  ",
        f"Model: SmolLM2-135M ({report['model_path']})  ",
        f"Wall time of the whole benchmark: {report['wall_s'] / 60:.1f} min",
        "",
        "## Headline",
        "",
        f"Real (non-padding) tokens trained per second over each arm's whole process (start to exit: imports, loading, "
        f"{cfg['steps']} optimiser steps of {cfg['batch_size']} samples of at most {cfg['max_seq_len']} tokens, writing the "
        "model), median over rounds; in brackets the same over the training loop alone (`Trainer.train`). Targets: "
        f"hardfocus >= stock-grouped ({TARGET_VS_GROUPED:g}x) and >= {TARGET_VS_RANDOM:g}x stock-random.",
        "",
    ]
    for dataset, s in summary.items():
        rows = s["arms"]
        lines.append(f"**{dataset}**: stock-random {fmt(rows.get('stock-random', {}).get('tok_s_process'), '.0f')} real tok/s "
                     f"({fmt(rows.get('stock-random', {}).get('tok_s_loop'), '.0f')} loop), stock-grouped "
                     f"{fmt(rows.get('stock-grouped', {}).get('tok_s_process'), '.0f')} "
                     f"({fmt(rows.get('stock-grouped', {}).get('tok_s_loop'), '.0f')} loop)")
        lines.append("")
        for arm, v in s["verdict"].items():
            row = rows[arm]
            lines.append(
                f"- `{arm}`: {fmt(row['tok_s_process'], '.0f')} real tok/s ({fmt(row['tok_s_loop'], '.0f')} loop): "
                f"{_x(row['process_vs_stock-grouped'])} stock-grouped {met(v['process']['vs_grouped'])}, "
                f"{_x(row['process_vs_stock-random'])} stock-random {met(v['process']['vs_random'])} "
                f"(loop: {_x(row['loop_vs_stock-grouped'])} {met(v['loop']['vs_grouped'])}, "
                f"{_x(row['loop_vs_stock-random'])} {met(v['loop']['vs_random'])})")
        lines.append("")
    if report["quick"]:
        lines += ["This is a `--quick` smoke run: its figures say the benchmark works, not how fast anything is.", ""]
    lines += ["## Results", ""]
    header = ["arm", "runs ok", "samples", "real tokens", "computed positions", "real share", "tokens/sample",
              "process s", "loop s", "real tok/s (process)", "vs stock-random", "vs stock-grouped",
              "real tok/s (loop)", "vs stock-random", "vs stock-grouped", "peak RSS GB", "max other load"]
    for dataset, s in summary.items():
        lines += [f"### {dataset}", ""]
        table = []
        for arm, r in s["arms"].items():
            table.append([f"`{arm}`", f"{r['ok_runs']}/{r['runs']}", fmt(r["samples"], ".0f"), fmt(r["real_tokens"], ",.0f"),
                          fmt(r["computed_positions"], ",.0f"), fmt(r["real_share"], ".1%"),
                          fmt(r["mean_sample_tokens"], ".0f"), fmt(r["process_s"], ".1f"), fmt(r["loop_s"], ".1f"),
                          fmt(r["tok_s_process"], ".0f"), _x(r["process_vs_stock-random"]), _x(r["process_vs_stock-grouped"]),
                          fmt(r["tok_s_loop"], ".0f"), _x(r["loop_vs_stock-random"]), _x(r["loop_vs_stock-grouped"]),
                          fmt(r["peak_rss_gb"], ".2f"), load_cell(r["other_load_max"])])
        lines += [markdown_table(header, table, "lr"), ""]
    lines += ["Per run (round, position in its round, the whole process and the loop, hardfocus's own `wall_seconds` "
              "from `train_manifest.json`: loading, training and writing the model, without the imports):", ""]
    per_run = [[r["dataset"], f"`{r['arm']}`", r["round"] + 1, r["position"] + 1, "yes" if r["ok"] else "**no**",
                fmt(r["process_s"], ".1f"), fmt(r.get("loop_s"), ".1f"), fmt(r.get("manifest_wall_s"), ".1f"),
                fmt(r.get("real_tokens"), ",.0f"), fmt(r.get("real_share"), ".1%"),
                ", ".join(f"{x:.3f}" for x in r.get("losses") or []) or "-", load_cell(r["other_load"]),
                fmt(r["waited_s"], ".0f")]
               for r in report["runs"]]
    lines += [markdown_table(["dataset", "arm", "round", "pos", "ok", "process s", "loop s", "manifest wall s",
                              "real tokens", "real share", "logged losses", "other load", "waited s"], per_run, "llr"), ""]
    lines += ["## Data", ""]
    for dataset, d in report["data"].items():
        f = d["lengths"]
        q = f["quantiles"]
        lines.append(f"- **{dataset}** (`{d['path']}`): {f['rows']} rows, {f['tokens']:,} tokens after the cut at "
                     f"{cfg['max_seq_len']}; length mean {f['mean']:.0f}, min {f['min']}, p10 {q['p10']:.0f}, p25 {q['p25']:.0f}, "
                     f"median {q['p50']:.0f}, p75 {q['p75']:.0f}, p90 {q['p90']:.0f}, max {f['max']}; "
                     f"{f['share_over_400']:.1%} over 400 tokens, {f['share_at_max']:.1%} at {cfg['max_seq_len']}.")
        if dataset == "demo":
            lines.append(f"  Built by `{'` then `'.join(d['built'].get('built_by', []))}`; bands {d['built'].get('bands')}.")
        else:
            b = d["built"]
            lines.append(f"  Real text: {b.get('documents')} demo-corpus training documents, tokenised with the model's "
                         f"tokenizer, EOS between them ({b.get('stream_tokens'):,} tokens), cut into consecutive samples of "
                         f"lognormal lengths (median {b.get('median'):g}, 10% above {b.get('p90'):g}, clipped to "
                         f"[{MIN_SAMPLE_TOKENS}, {b.get('max_len')}], seed {b.get('seed')}); weights {b.get('weights')}.")
    lines += ["", "## Configuration", ""]
    lines.append(f"- {cfg['steps']} optimiser steps x {cfg['batch_size']} samples (so {cfg['steps'] * cfg['batch_size']} samples "
                 f"per run; no gradient accumulation), `--max-seq-len {cfg['max_seq_len']}`, precision {cfg['precision']} "
                 f"(fp32 master weights; bf16 autocast only where the CPU has AVX512-BF16/AMX), logging every "
                 f"{cfg['logging_steps']} steps, {cfg['rounds']} round(s), arm order rotated by one each round.")
    lines.append(f"- Arms: {', '.join(f'`{a}`' for a in cfg['arms'])}; extra `hardfocus train` arguments: "
                 f"{'`' + shlex.join(cfg['train_args']) + '`' if cfg['train_args'] else 'none'}; the CLI "
                 f"{'has a' if cfg['cli_has_batching'] else 'has no'} `--batching` flag.")
    trainers = {}
    for r in report["runs"]:
        if r.get("trainer") and r["arm"] not in trainers:
            trainers[r["arm"]] = r["trainer"]
    for arm, t in trainers.items():
        data = (f"{t['train_dataset']} ({t['order']} order)" if t.get("order")
                else f"{t.get('train_dataset', 'a dataset')}, `train_sampling_strategy={t['train_sampling_strategy']!r}`")
        lines.append(f"- `{arm}` as it trained: {t['class']} + {t['collator']} over {data}, optim {t['optim']}, lr "
                     f"{t['learning_rate']:g} {t['lr_scheduler']} ({t['warmup_steps']} warm-up steps), weight decay "
                     f"{t['weight_decay']:g}, max_grad_norm {t['max_grad_norm']:g}, bf16 {t['bf16']}, seed {t['seed']}, "
                     f"torch threads {t['torch_threads']}.")
    commands = {}
    for r in report["runs"]:
        commands.setdefault(r["arm"], r["command"])
    lines += ["", "Commands of the first round (the hardfocus ones run with the probe's `PYTHONPATH` and "
              f"`{PROBE_ENV}` in their environment):", ""]
    lines += [f"- `{arm}`: `{c}`" for arm, c in commands.items()]
    m = report["machine"]
    other = report["other_load"]
    lines += ["", "## Machine", "", *machine_lines(m, report["versions"]),
              f"- Memory: {fmt(m.get('memtotal_gb'), '.1f')} GB, {fmt(m.get('memavailable_gb'), '.1f')} GB available at the end.",
              f"- 1-minute load average: {report['load_before']:.2f} before, {report['load_after']:.2f} after.",
              f"- Other load (CPU-seconds per second other processes took while a run's process ran): median "
              f"{fmt(other['median'], '.2f')}, max {fmt(other['max'], '.2f')}; {other['contended_runs']} of {other['runs']} runs "
              f"above {CONTENDED_OTHER_LOAD}, where absolute seconds are not reliable. Waited {other['waited_s']:.0f} s in all "
              f"for a quiet machine before runs (up to {cfg['max_wait']:g} s each).",
              "", "## How it is measured", "",
              "- Process seconds: `harness.run_measured`, wall clock from the child's start to its exit (peak RSS from `wait4`; "
              "it includes the pages the benchmark's own process shared before `exec`).",
              "- Loop seconds and the batches: a wrapper of `transformers.Trainer.train` and a forward pre-hook on the model "
              "(`install_probe`), the same code in every arm; in the `hardfocus train` process it is installed by a "
              "`sitecustomize.py` on `PYTHONPATH` (no change to the CLI). Real tokens: the `attention_mask` sum of each "
              "training forward's batch (every position of a batch without a mask of its shape: a packed row); computed "
              "positions: rows x width of each batch (the padded batch the model computes).",
              "- Ratios: an arm's median real tokens/s over the stock arm's, each over the runs of one dataset. Every arm "
              "consumes the same number of samples (steps x batch size); which samples a sampler draws differs between "
              "arms (`tokens/sample` in the table): `LengthGroupedSampler` sorts runs of min(50, rows / (4 x batch size)) "
              "batches' rows longest first and serves them in that order, so a run shorter than an epoch trains "
              "stock-grouped on the longest rows of its first runs.",
              ""]
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return fmt(value, ".2f") + "x" if value is not None else "n/a"


# ---- main -------------------------------------------------------------------------------------------------------


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: demo, long-tail")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; each runs every arm once, order rotated (default 1)")
    parser.add_argument("--steps", type=int, default=16, help="optimiser steps per run (default 16)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--logging-steps", type=int, default=4)
    parser.add_argument("--stock-arms", default="random,grouped", help="stock Trainer arms: random, grouped")
    parser.add_argument("--hardfocus-arms", default="none,static,online",
                        help=f"hardfocus --weighting values, comma-separated, of {', '.join(WEIGHTINGS)}")
    parser.add_argument("--batching", default=DEFAULT_BATCHING,
                        help="hardfocus --batching values, comma-separated; each weighting runs with each "
                             f"('{DEFAULT_BATCHING}': the flag not passed; arm names hardfocus-W/B otherwise)")
    parser.add_argument("--train-arg", dest="train_args", action="append", default=[],
                        help="extra arguments for every hardfocus train arm, split like a shell does "
                             "(repeatable; write it --train-arg='--online-window 2')")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="auto: bf16 where the CPU has it natively (hardfocus.models.cpu_has_bf16), else fp32")
    parser.add_argument("--cache", type=Path, default=ROOT / "outputs" / "bench-training",
                        help="where the datasets are built once and reused, and the runs' logs kept")
    parser.add_argument("--rebuild-data", action="store_true", help="build the datasets again")
    parser.add_argument("--long-tail-rows", type=int, default=1024)
    parser.add_argument("--long-tail-median", type=float, default=100.0)
    parser.add_argument("--long-tail-p90", type=float, default=400.0, help="10%% of the lengths lie above it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the long-tail data")
    parser.add_argument("--demo-docs-per-group", type=int, default=None,
                        help="a smaller demo corpus (scored in-process); default: the demo's own")
    parser.add_argument("--max-wait", type=float, default=120.0,
                        help="before each run, wait up to this many seconds for other processes to leave the CPUs")
    parser.add_argument("--mem-limit-gb", type=float, default=None, help="kill a run past this RSS (default 90%% of available)")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/training_speed.md")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 steps x 4 samples x <= 128 tokens, 1 round, small data, a temporary report")
    args = parser.parse_args(argv)
    if args.quick:  # the quick values, except where given on the command line
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    args.datasets, args.stock_arms = _csv(args.datasets), _csv(args.stock_arms)
    args.hardfocus_arms, args.batching = _csv(args.hardfocus_arms), _csv(args.batching) or [DEFAULT_BATCHING]
    args.train_args = [a for chunk in args.train_args for a in shlex.split(chunk)]
    if set(args.datasets) - set(DATASETS) or not args.datasets:
        parser.error(f"--datasets: choose from {', '.join(DATASETS)}")
    if set(args.stock_arms) - set(STOCK_STRATEGY):
        parser.error(f"--stock-arms: choose from {', '.join(STOCK_STRATEGY)}")
    if set(args.hardfocus_arms) - set(WEIGHTINGS):
        parser.error(f"--hardfocus-arms: choose from {', '.join(WEIGHTINGS)}")
    if min(args.rounds, args.steps, args.batch_size, args.logging_steps, args.long_tail_rows) < 1 or args.max_seq_len < 2:
        parser.error("--rounds, --steps, --batch-size, --logging-steps and --long-tail-rows must be >= 1, --max-seq-len >= 2")
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "training_speed-quick.md" if args.quick
                    else ROOT / "benchmarks" / "results" / "training_speed.md")
    hardfocus = Path(sys.executable).with_name("hardfocus")
    args.hardfocus = hardfocus if hardfocus.is_file() else Path(shutil.which("hardfocus") or "hardfocus")
    return args


def cli_has_batching(hardfocus: Path) -> bool:
    done = subprocess.run([str(hardfocus), "train", "--help"], capture_output=True, text=True, cwd=ROOT)
    return "--batching" in done.stdout


def measure(args: argparse.Namespace, command: str) -> dict:
    from hardfocus.models import cpu_has_bf16, resolve_model

    started, load_before = time.perf_counter(), load_average()
    if args.precision == "auto":
        args.precision = "bf16" if cpu_has_bf16() else "fp32"
    has_batching = cli_has_batching(args.hardfocus)
    if not has_batching and any(b != DEFAULT_BATCHING for b in args.batching):
        raise SystemExit(f"`hardfocus train` has no --batching flag here; run with --batching {DEFAULT_BATCHING}")
    if args.mem_limit_gb is None:
        avail = next((int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemAvailable:")), 16 * 2**30)
        args.mem_limit_gb = 0.9 * avail / GB
    model_path = resolve_model(MODEL_SPEC).path
    args.cache.mkdir(parents=True, exist_ok=True)
    args.log_dir = args.cache / "logs" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    arms = arm_names(args)
    data, runs = {}, []
    with tempfile.TemporaryDirectory(prefix="hf-training-speed-") as tmp:
        work = Path(tmp)
        args.probe_dir = work / "probe"
        args.probe_dir.mkdir()
        (args.probe_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        for dataset in args.datasets:
            path, built = (prepare_demo(args.cache, args) if dataset == "demo"
                           else prepare_long_tail(args.cache, args, model_path))
            data[dataset] = {"path": str(path), "built": built, "lengths": length_facts(path, args.max_seq_len)}
            for rnd in range(args.rounds):
                shift = rnd % len(arms)
                order = arms[shift:] + arms[:shift]
                log.info("%s round %d of %d: %s", dataset, rnd + 1, args.rounds, " -> ".join(order))
                for position, arm in enumerate(order):
                    runs.append(run_arm(arm, dataset, path, rnd, position, model_path, work, args))
    other = [r["other_load"] for r in runs]
    return {
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "quick": args.quick,
        "model_path": model_path,
        "machine": machine_info(),
        "versions": library_versions(("torch", "transformers", "datasets", "numpy", "hardfocus")),
        "load_before": load_before,
        "load_after": load_average(),
        "other_load": {"median": _median(other), "max": max(other, default=None), "runs": len(other),
                       "contended_runs": sum(x > CONTENDED_OTHER_LOAD for x in other),
                       "waited_s": sum(r["waited_s"] for r in runs)},
        "config": {
            "datasets": args.datasets, "rounds": args.rounds, "steps": args.steps, "batch_size": args.batch_size,
            "max_seq_len": args.max_seq_len, "logging_steps": args.logging_steps, "precision": args.precision,
            "arms": arms, "train_args": args.train_args, "batching": args.batching, "cli_has_batching": has_batching,
            "max_wait": args.max_wait, "mem_limit_gb": args.mem_limit_gb, "cache": str(args.cache),
            "log_dir": str(args.log_dir), "targets": {"vs_grouped": TARGET_VS_GROUPED, "vs_random": TARGET_VS_RANDOM},
        },
        "data": data,
        "summary": summarise(runs, arms, args.datasets),
        "runs": runs,
        "wall_s": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_stock":
        return stock_child(argv[1:])
    if argv and argv[0] == "_long-tail":
        return long_tail_child(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    report = json.loads(json.dumps(measure(args, command_line(argv)), default=str))  # rendered as its JSON reads back
    markdown = render_markdown(report)
    write_report(args.out, report, markdown)
    sys.stdout.write(markdown)
    return 0 if all(r["ok"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
