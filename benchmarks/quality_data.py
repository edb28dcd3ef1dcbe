"""What the quality benchmark's arms train on: the demo corpus, its base-model scores, each band's ``selected/``
(MidRanking on another score as large as the loss band's), RHO-LOSS's reference split and model, uniform samples,
and how much injected noise each training set holds. ``s`` is a ``quality.Settings``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq


def build_data(workdir: Path, s, ranked_by: set[tuple[str, bool]], corpus: Path | None = None) -> dict:
    """Corpus (unless given), base-model scores of the training split, and each band's selected/ dir, keyed
    (band, weighted, score, per_group), for the (score, per_group) pairs in ``ranked_by`` (scores loss, ifd,
    excess); with excess, the reference model and its scores first. The global loss bands are always built:
    their size is every arm's."""
    from pipelines.demo_corpus import build_demo_corpus
    from scoring import ScoreConfig, score
    from selection import SelectConfig, select

    scored_by = {name for name, _ in ranked_by}
    if corpus is None:
        corpus = workdir / "corpus"
        if not (corpus / "train").exists():
            build_demo_corpus(corpus, docs_per_group=s.docs_per_group, seed=0, heldout_frac=0.2, noise_frac=s.noise_frac,
                              kind=s.kind)
            if "excess" in scored_by:
                carve_reference_split(corpus, s.reference_frac, seed=0)
    if "excess" in scored_by and not (corpus / "reference").exists():
        raise ValueError(f"the excess-loss arm needs a clean reference split in {corpus / 'reference'}: use a fresh workdir")
    scores = workdir / "scores"
    score(ScoreConfig(inputs=[str(corpus / "train")], output=str(scores), model=s.model, group_column="group",
                      max_tokens=s.seq_len, executor="local", dtype=s.score_dtype, overwrite=True,
                      ifd="ifd" in scored_by, **sample_format(s)), progress=False)
    bands = {}
    for band, drop in (("hardest", 0.0), ("midrank", s.drop_top)):
        for weighted in (False, True):
            out = workdir / f"selected-{band}-{'irdro' if weighted else 'unweighted'}"
            select(SelectConfig(scores=[str(scores)], output=str(out), drop_top=drop, keep=s.keep,
                                weighting="irdro" if weighted else "none", temperature=s.temperature,
                                report=False, overwrite=True), progress=False)
            bands[(band, weighted, "loss", False)] = out
    kept = selection_summary(bands[("midrank", False, "loss", False)])["bands"]["kept"]
    reference = train_reference(workdir, corpus, s) if "excess" in scored_by else None
    for name, per_group in sorted(ranked_by - {("loss", False)}):
        extra = {"reference": [reference["scores"]]} if name == "excess" else {}
        out = workdir / f"selected-midrank-{name}{'-per-group' if per_group else ''}"
        bands[("midrank", False, name, per_group)] = select_same_size(scores, out, name, kept, s, per_group=per_group,
                                                                      **extra)
    if reference:  # nats per token when the reference kept the tokenizer (it does: a fine-tune), else bits per byte
        excess_band = next(v for k, v in bands.items() if k[2] == "excess")
        reference["units"] = selection_summary(excess_band)["score_units"]
    return {"corpus": corpus, "scores": scores, "bands": bands, "reference": reference}


def selection_summary(selected: Path) -> dict:
    return json.loads((selected / "summary.json").read_text())


def select_same_size(scores: Path, out: Path, score_name: str, kept: int, s, **extra) -> Path:
    """MidRanking on another score (or per group), its kept band as large as the loss band's (the same training-set
    size): a score that excludes rows (IFD >= 1, no reference row) ranks fewer, so ``keep`` is rescaled to them;
    per-group rounding can still leave it a few rows off, which the report states."""
    from selection import SelectConfig, select

    def run(keep: float) -> dict:
        select(SelectConfig(scores=[str(scores)], output=str(out), score=score_name, drop_top=s.drop_top, keep=keep,
                            weighting="none", report=False, overwrite=True, **extra), progress=False)
        return selection_summary(out)

    summary = run(s.keep)
    if summary["bands"]["kept"] != kept:
        run(min(1 - s.drop_top, (kept + 0.5) / summary["eligible"]))
    return out


def carve_reference_split(corpus: Path, frac: float, seed: int) -> None:
    """Move ``frac`` of each group's clean training rows to ``reference/``: RHO-LOSS's holdout set, drawn from the
    training distribution but never trained on by the arms, and apart from the held-out evaluation split."""
    import random

    for path in sorted((corpus / "train").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        clean = [i for i, r in enumerate(rows) if r.get("noise") is None]
        picked = set(random.Random(f"{seed}-reference-{path.name}").sample(clean, int(len(clean) * frac)))
        (corpus / "reference").mkdir(exist_ok=True)
        (corpus / "reference" / path.name).write_text("".join(json.dumps(rows[i]) + "\n" for i in sorted(picked)))
        path.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i not in picked))


def train_reference(workdir: Path, corpus: Path, s) -> dict:
    """RHO-LOSS's irreducible-loss model: the base model trained ``reference_steps`` steps on the reference split,
    then its scores of the training split (what ``select --score excess --reference`` subtracts)."""
    from scoring import HardfocusError, ScoreConfig, score
    from training import TrainConfig, train

    split_scores, model, ref_scores = workdir / "reference-split-scores", workdir / "reference-model", workdir / "reference-scores"
    common = {"group_column": "group", "max_tokens": s.seq_len, "executor": "local", "dtype": s.score_dtype,
              "overwrite": True, **sample_format(s)}
    score(ScoreConfig(inputs=[str(corpus / "reference")], output=str(split_scores), model=s.model, **common), progress=False)
    cfg = TrainConfig(data=[str(split_scores)], output=str(model), model=s.model, weighting="none",
                      max_steps=s.reference_steps, batch_size=s.batch_size, max_seq_len=s.seq_len,
                      learning_rate=s.learning_rate, lr_scheduler="cosine", warmup_ratio=0.1, seed=0,
                      precision=s.precision, logging_steps=max(1, s.reference_steps // 4), save_steps=10**6)
    try:
        train(cfg, progress=False)
    except HardfocusError:
        train(cfg.model_copy(update={"overwrite": True}), progress=False)
    shutil.rmtree(model / "checkpoints", ignore_errors=True)
    score(ScoreConfig(inputs=[str(corpus / "train")], output=str(ref_scores), model=str(model), **common), progress=False)
    rows = pl.read_parquet(f"{split_scores}/part-*.parquet", columns=["status"]).filter(pl.col("status") == "ok").height
    return {"model": str(model), "scores": str(ref_scores), "split_rows": rows, "steps": s.reference_steps}


def sample_format(s) -> dict:
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


def heldout_tokens(corpus: Path, model_path: str, s, out: Path) -> Path:
    """The held-out split tokenised once (conversations with their response spans), for the Trainer's eval loss."""
    from hardfocus.kinds import TOKENS
    from hardfocus.sample_format import SampleFormat
    from hardfocus.stagedir import Opening, StageDir
    from hardfocus.tokenizers import load_tokenizer
    from training.raw_shards import tokenize_shards

    fmt = SampleFormat(**{k: v for k, v in sample_format(s).items() if k != "id_column"})
    identity = {"heldout": str(corpus), "model": model_path, "seq_len": s.seq_len}
    tokens = StageDir(str(out), TOKENS)
    with tokens.locked():
        if tokens.open(identity, overwrite=True) is not Opening.COMPLETE:
            with tokens.staged(identity) as stage:
                tokenize_shards(str(corpus / "heldout"), stage, identity, load_tokenizer(model_path),
                                fmt.columns(None, "group"), s.seq_len)
    return out
