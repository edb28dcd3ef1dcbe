"""Quality benchmark: does hard-sample reweighting improve the model? The paper's comparison, reproduced.

    python benchmarks/quality.py [--kind text|chat] [--steps 20] [--seeds 0,1,2] [--batch-size 8] [--seq-len 256] \
        [--eval-every 5] [--noise-frac 0.05] [--workdir /tmp/hardfocus-quality] [--out benchmarks/results/quality.md]

``--kind chat`` runs the same arms on instruction data: the chat demo corpus (``hardfocus demo-corpus
--kind chat``: real human conversations, held out by conversation, injected noise = replies swapped
between conversations or word-shuffled), a ``messages`` format scored, trained and evaluated on the
assistant turns only. Its default output is ``benchmarks/results/quality-chat.md``.

One run:
1. the demo corpus (``hardfocus demo-corpus``: four groups, 20% held out by source file, 5% injected
   noise in the training split only, marked in ``noise``; the held-out split is clean);
2. the training split scored once with the base model (the scoring stage, in-process);
3. six arms, each trained for the same number of optimiser steps with the same batch size, sequence
   length, learning-rate schedule and seeds (the training stage, in-process):
   ERM (a uniform random sample, unweighted), Hardest (the highest-loss band, nothing dropped),
   MidRanking (drop the top band, keep the next, unweighted), MidRanking + static IR-DRO,
   Online IR-DRO (on the uniform sample), MidRanking + static+online IR-DRO;
   every arm's training set has the same size (the kept band's);
4. held-out loss every ``--eval-every`` steps (the Trainer's eval: mean per-document loss), and at the end
   loss and perplexity per group for the base model and every trained model (the eval stage, fp32).
Metrics per arm, as mean +- std over seeds: held-out loss and perplexity per group and their macro
average, the share of injected noise in the arm's training set (rows and static weight).
Writes Markdown (``--out``), the raw JSON beside it and ``quality_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("quality")


@dataclass(frozen=True)
class Arm:
    name: str
    band: str  # uniform | hardest | midrank
    weighting: str  # TrainConfig.weighting
    static_weights: bool  # whether the selected/ carries IR-DRO weights (else weight 1)


ARMS = [
    Arm("ERM", "uniform", "none", False),
    Arm("Hardest", "hardest", "none", False),
    Arm("MidRanking", "midrank", "none", False),
    Arm("MidRanking + static IR-DRO", "midrank", "static", True),
    Arm("Online IR-DRO", "uniform", "online", False),
    Arm("MidRanking + static+online IR-DRO", "midrank", "static+online", True),
]


@dataclass(frozen=True)
class Settings:
    model: str = "smollm2-135m"
    kind: str = "text"  # text | chat
    steps: int = 20
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 8
    seq_len: int = 256
    learning_rate: float = 5e-5
    eval_every: int = 5
    drop_top: float = 0.1
    keep: float = 0.5
    temperature: float = 1.0
    docs_per_group: int = 150
    noise_frac: float = 0.05
    score_dtype: str = "auto"
    eval_dtype: str = "auto"  # bf16 where native: 19 models x the held-out split
    precision: str = "auto"


def build_data(workdir: Path, s: Settings, corpus: Path | None = None) -> dict:
    """Corpus (unless given), base-model scores of the training split, and each band's selected/ dir."""
    from pipelines.demo_corpus import build_demo_corpus
    from scoring import ScoreConfig, score
    from selection import SelectConfig, select

    if corpus is None:
        corpus = workdir / "corpus"
        if not (corpus / "train").exists():
            build_demo_corpus(corpus, docs_per_group=s.docs_per_group, seed=0, heldout_frac=0.2, noise_frac=s.noise_frac,
                              kind=s.kind)
    scores = workdir / "scores"
    score(ScoreConfig(inputs=[str(corpus / "train")], output=str(scores), model=s.model, group_column="group",
                      max_tokens=s.seq_len, executor="local", dtype=s.score_dtype, overwrite=True, **sample_format(s)),
          progress=False)
    bands = {}
    for band, drop in (("hardest", 0.0), ("midrank", s.drop_top)):
        for weighted in (False, True):
            out = workdir / f"selected-{band}-{'irdro' if weighted else 'unweighted'}"
            select(SelectConfig(scores=[str(scores)], output=str(out), drop_top=drop, keep=s.keep,
                                weighting="irdro" if weighted else "none", temperature=s.temperature,
                                report=False, overwrite=True), progress=False)
            bands[(band, weighted)] = out
    return {"corpus": corpus, "scores": scores, "bands": bands}


def sample_format(s: Settings) -> dict:
    """The stages' sample-format keys: plain text, or conversations with stable ids."""
    return {} if s.kind == "text" else {"format": "messages", "messages_column": "messages", "id_column": "id"}


def uniform_sample(scores: Path, n: int, seed: int, out: Path) -> Path:
    """``n`` rows drawn uniformly (without replacement) from every scored-ok row, weight 1."""
    columns = ["sample_id", "group", "status", "input_ids"]
    spans = "loss_spans" in pq.read_schema(next(scores.glob("part-*.parquet"))).names
    rows = pl.read_parquet(f"{scores}/part-*.parquet", columns=columns + (["loss_spans"] if spans else []))
    rows = rows.filter(pl.col("status") == "ok").sort("sample_id")
    picked = rows.sample(n=n, seed=seed, shuffle=True)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "sample_id": picked["sample_id"].to_arrow(), "group": picked["group"].to_arrow(),
        "weight": pa.array(np.ones(picked.height, np.float32)),
        "input_ids": picked["input_ids"].to_arrow().cast(pa.list_(pa.int32())),
        **({"loss_spans": picked["loss_spans"].to_arrow()} if spans else {}),
    }), out / "part-00000.parquet")
    return out


def noise_labels(corpus: Path) -> pl.DataFrame:
    """sample_id -> noise kind (null = clean) for the training split, ids as scoring makes them."""
    frames = []
    for path in sorted((corpus / "train").glob("*.jsonl")):
        df = pl.read_ndjson(path, schema={"id": pl.String, "group": pl.String, "noise": pl.String})
        sample_id = pl.col("id") if df["id"].null_count() == 0 else pl.lit(f"{path.name}#") + pl.col("row").cast(pl.String)
        frames.append(df.with_row_index("row").select(sample_id.alias("sample_id"), "noise"))
    return pl.concat(frames)


def noise_share(train_dir: Path, labels: pl.DataFrame) -> dict:
    rows = pl.read_parquet(f"{train_dir}/part-*.parquet", columns=["sample_id", "weight"]).join(labels, on="sample_id", how="left")
    noisy = rows.filter(pl.col("noise").is_not_null())
    return {"rows": rows.height, "noise_rows": noisy.height, "noise_row_share": noisy.height / rows.height,
            "noise_weight_share": float(noisy["weight"].sum() / rows["weight"].sum())}


def heldout_tokens(corpus: Path, model_path: str, s: Settings, out: Path) -> Path:
    """The held-out split tokenised once (conversations with their response spans), for the Trainer's eval loss."""
    from pipelines.train import tokenize_shards
    from scoring.config import SampleFormat
    from scoring.model import load_tokenizer

    fmt = SampleFormat(**{k: v for k, v in sample_format(s).items() if k != "id_column"})
    tokenize_shards(str(corpus / "heldout"), out, {"heldout": str(corpus)}, load_tokenizer(model_path),
                    fmt.columns(None, "group"), s.seq_len)
    return out


def run_quality(workdir: Path, s: Settings, corpus: Path | None = None) -> dict:
    from pipelines.evaluate import evaluate
    from pipelines.train import run_train
    from scoring import HardfocusError
    from scoring.model import resolve_model
    from training import TrainConfig
    from training.config import EvalConfig

    t0 = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    data = build_data(workdir, s, corpus)
    labels = noise_labels(data["corpus"])
    kept = json.loads((data["bands"][("midrank", False)] / "summary.json").read_text())["bands"]["kept"]
    model_path = resolve_model(s.model).path
    heldout = heldout_tokens(data["corpus"], model_path, s, workdir / "heldout-tokens")
    runs = []
    for seed in s.seeds:
        uniform = uniform_sample(data["scores"], kept, seed, workdir / f"uniform-{seed}")
        for arm in ARMS:
            train_dir = uniform if arm.band == "uniform" else data["bands"][(arm.band, arm.static_weights)]
            out = workdir / "models" / f"{_slug(arm.name)}-seed{seed}"
            log.info("arm %s, seed %d", arm.name, seed)
            cfg = TrainConfig(
                data=[str(train_dir)], output=str(out), model=s.model, weighting=arm.weighting, temperature=s.temperature,
                max_steps=s.steps, batch_size=s.batch_size, max_seq_len=s.seq_len, learning_rate=s.learning_rate,
                lr_scheduler="cosine", warmup_ratio=0.1, seed=seed, precision=s.precision, logging_steps=s.eval_every,
                save_steps=10**6, eval_data=[str(heldout)], eval_steps=s.eval_every,
            )
            try:  # an arm this workdir already finished with these settings is reused: a rerun resumes the benchmark
                result = run_train(cfg, progress=False)
            except HardfocusError:  # other settings there: replace them
                result = run_train(cfg.model_copy(update={"overwrite": True}), progress=False)
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # 1.5 GB per arm (optimizer state); the model stays
            history = [json.loads(line) for line in open(result.log_file)]
            curve = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
            runs.append({"arm": arm.name, "seed": seed, "model": str(out), "curve": curve,
                         "train_data": str(train_dir), "noise": noise_share(train_dir, labels)})
    models = [f"base={s.model}"] + [f"{_slug(r['arm'])}-seed{r['seed']}={r['model']}" for r in runs]
    fmt = {k: v for k, v in sample_format(s).items() if k != "id_column"}
    evals = evaluate(EvalConfig(models=models, data=[str(data["corpus"] / "heldout")], output=str(workdir / "eval"),
                                max_tokens=s.seq_len, dtype=s.eval_dtype, **fmt), progress=False)
    tables = {e.name: {r["group"]: {"loss": r["loss"], "perplexity": r["perplexity"]} for r in e.table.iter_rows(named=True)}
              for e in evals}
    base_curve = _base_eval_loss(model_path, heldout, s)
    for r in runs:
        r["heldout"] = tables[f"{_slug(r['arm'])}-seed{r['seed']}"]
        r["curve"] = [(0, base_curve)] + r["curve"]
    return {"settings": s.__dict__ | {"seeds": list(s.seeds)}, "kept_rows": kept, "base": tables["base"], "runs": runs,
            "wall_seconds": time.time() - t0}


def _base_eval_loss(model_path: str, heldout: Path, s: Settings) -> float:
    """The Trainer's eval loss of the untrained model: the curves' step 0."""
    from training import TrainConfig
    from training.build import build_trainer, training_arguments
    from training.data import TokenDataset, load_training_data

    cfg = TrainConfig(data=[str(heldout)], output=str(heldout.parent / "base-eval"), max_seq_len=s.seq_len,
                      batch_size=s.batch_size, precision=s.precision)
    bf16 = s.precision == "bf16" or (s.precision == "auto" and _cpu_bf16())
    args = training_arguments(cfg, bf16=bf16, progress=False, with_eval=True)
    trainer = build_trainer(cfg, model_path, args, train_dataset=None,
                            eval_dataset=TokenDataset(load_training_data([str(heldout)]).table))
    return float(trainer.evaluate()["eval_loss"])


def _cpu_bf16() -> bool:
    from scoring.model import cpu_has_bf16

    return cpu_has_bf16()


def _slug(name: str) -> str:
    return name.lower().replace(" + ", "-").replace("+", "-").replace(" ", "-")


# ---- report ---------------------------------------------------------------------------------------


def summarise(report: dict) -> list[dict]:
    """Per arm: mean and std over seeds of macro loss/ppl, per-group ppl and the noise shares."""
    out = []
    groups = [g for g in report["base"] if not g.startswith("(")]
    for arm in ARMS:
        runs = [r for r in report["runs"] if r["arm"] == arm.name]
        if not runs:
            continue

        def stat(values):
            v = np.asarray(values, dtype=float)
            return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

        row = {"arm": arm.name, "seeds": len(runs)}
        row["macro_loss"] = stat([r["heldout"]["(macro)"]["loss"] for r in runs])
        row["macro_ppl"] = stat([float(np.exp(r["heldout"]["(macro)"]["loss"])) for r in runs])
        row["all_loss"] = stat([r["heldout"]["(all)"]["loss"] for r in runs])
        for g in groups:
            row[f"ppl:{g}"] = stat([r["heldout"][g]["perplexity"] for r in runs])
        row["noise_rows"] = stat([r["noise"]["noise_rows"] for r in runs])
        row["noise_weight_share"] = stat([r["noise"]["noise_weight_share"] for r in runs])
        out.append(row)
    return out


def plot_curves(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for arm in ARMS:
        runs = [r for r in report["runs"] if r["arm"] == arm.name]
        if not runs:
            continue
        steps = [p[0] for p in runs[0]["curve"]]
        losses = np.array([[p[1] for p in r["curve"]] for r in runs])
        mean = losses.mean(0)
        ax.plot(steps, mean, marker="o", label=arm.name)
        if len(runs) > 1:
            std = losses.std(0, ddof=1)
            ax.fill_between(steps, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("held-out loss (mean per-document NLL, nats)")
    ax.set_title("Held-out loss against steps (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict, rows: list[dict], command: str, plot_name: str) -> str:
    s = report["settings"]
    base = report["base"]
    groups = [g for g in base if not g.startswith("(")]

    def pm(x, digits=4):
        return f"{x[0]:.{digits}f} ± {x[1]:.{digits}f}"

    chat = s.get("kind") == "chat"
    corpus = (
        f"chat demo corpus (real human conversations from chitchat-dataset, {s['docs_per_group']} per theme group, 20% "
        f"held out by conversation, {s['noise_frac']:.0%} injected noise in the training split only: replies swapped "
        "between conversations or word-shuffled); loss, training and evaluation on the assistant turns only"
        if chat else
        f"demo corpus ({s['docs_per_group']} documents per group, 20% held out by source file, "
        f"{s['noise_frac']:.0%} injected noise in the training split only)"
    )
    lines = [
        "# Quality benchmark" + (" (instruction data)" if chat else "") + ": hard-sample selection and IR-DRO vs ERM",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.now(UTC).isoformat(timespec='minutes')}; wall time {report['wall_seconds'] / 60:.1f} min.",
        "",
        "## Configuration",
        "",
        f"- Base model {s['model']}; {corpus}.",
        f"- Every arm: {s['steps']} optimiser steps x batch {s['batch_size']} x up to {s['seq_len']} tokens, learning rate "
        f"{s['learning_rate']:g} (cosine, 10% warm-up), precision {s['precision']}, seeds {s['seeds']}; training sets of "
        f"{report['kept_rows']} rows each (the kept band's size). Bands: drop_top {s['drop_top']}, keep {s['keep']}; "
        f"IR-DRO temperature {s['temperature']}.",
        f"- Final evaluation: the held-out split scored by each model in {s['eval_dtype']}; curves: the Trainer's eval loss "
        "(mean per-document loss over the held-out split) every "
        f"{s['eval_every']} steps.",
        "",
        "## Results (mean ± std over seeds)",
        "",
        "| arm | macro loss | macro ppl | " + " | ".join(f"ppl {g}" for g in groups) + " | noise rows trained on | noise weight share |",
        "|---|---:|---:|" + "---:|" * len(groups) + "---:|---:|",
        f"| base model | {base['(macro)']['loss']:.4f} | {np.exp(base['(macro)']['loss']):.3f} | "
        + " | ".join(f"{base[g]['perplexity']:.3f}" for g in groups) + " | | |",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {pm(r['macro_loss'])} | {pm(r['macro_ppl'], 3)} | "
            + " | ".join(pm(r[f"ppl:{g}"], 3) for g in groups)
            + f" | {r['noise_rows'][0]:.1f} | {r['noise_weight_share'][0]:.2%} |"
        )
    lines += ["", f"![held-out loss against steps]({plot_name})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=["text", "chat"], default="text")
    p.add_argument("--noise-frac", type=float, default=Settings.noise_frac)
    p.add_argument("--docs-per-group", type=int, default=Settings.docs_per_group)
    p.add_argument("--steps", type=int, default=Settings.steps)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=Settings.batch_size)
    p.add_argument("--seq-len", type=int, default=Settings.seq_len)
    p.add_argument("--eval-every", type=int, default=Settings.eval_every)
    p.add_argument("--learning-rate", type=float, default=Settings.learning_rate)
    p.add_argument("--model", default=Settings.model)
    p.add_argument("--workdir", type=Path, default=None, help="default /tmp/hardfocus-quality[-chat]")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results/quality[-chat].md")
    args = p.parse_args(argv)
    suffix = "" if args.kind == "text" else f"-{args.kind}"
    args.workdir = args.workdir or Path(f"/tmp/hardfocus-quality{suffix}")
    args.out = args.out or Path(__file__).parent / "results" / f"quality{suffix}.md"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    s = Settings(model=args.model, kind=args.kind, noise_frac=args.noise_frac, docs_per_group=args.docs_per_group,
                 steps=args.steps, seeds=tuple(int(x) for x in args.seeds.split(",")),
                 batch_size=args.batch_size, seq_len=args.seq_len, eval_every=args.eval_every,
                 learning_rate=args.learning_rate)
    report = run_quality(args.workdir, s)
    rows = summarise(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_name = args.out.stem + "_curves.png"
    plot_curves(report, args.out.parent / plot_name)
    command = "python benchmarks/quality.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(markdown(report, rows, command.strip(), plot_name))
    args.out.with_suffix(".json").write_text(json.dumps({"report": report, "summary": rows}, indent=2, default=str))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
