"""Which score finds which noise? AUC of each injected noise kind against the clean rows, per score.

    python -m benchmarks.score_auc [--docs-per-group 100] [--noise-frac 0.2] [--max-tokens 384] \
        [--model smollm2-135m] [--workdir /tmp/hardfocus-score-auc] [--out benchmarks/results/score_auc.md]

The chat demo corpus (``hardfocus demo-corpus --kind chat``: real human conversations; the injected noise
is ``swapped`` replies, the assistant turns of another training conversation, and ``shuffled`` replies,
each reply's words shuffled) scored once with ``--ifd``, which writes the loss and IFD of every row.
For each noise kind and score: the AUC of "noise vs clean" with the higher score taken as the more
likely noise (0.5 = the score cannot tell them apart; 1 = every noise row above every clean row;
below 0.5 = noise scores *lower*), its Hanley-McNeil standard error, and how many noise rows the
selection keeps for training when it ranks by that score (MidRanking: drop the top ``--drop-top``,
keep the next ``--keep``; for IFD also the rows with IFD >= 1, which ``--score ifd`` drops).

Excess loss needs a reference model; none is trained here (see ``python -m benchmarks.quality --kind text``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.harness import OtherLoad, command_line, machine_info, markdown_table, write_report

log = logging.getLogger("score_auc")

SCORES = ("loss", "ifd")  # higher = more likely noise, for both


@dataclass(frozen=True)
class Settings:
    model: str = "smollm2-135m"
    docs_per_group: int = 100
    noise_frac: float = 0.2
    max_tokens: int = 384  # = the chat demo's
    drop_top: float = 0.1
    keep: float = 0.5
    dtype: str = "auto"


def auc(noise: np.ndarray, clean: np.ndarray) -> float:
    """P(a noise row scores above a clean one), ties counting half: the Mann-Whitney U over n1 * n2."""
    values = np.concatenate([noise, clean])
    ranks = pl.Series(values).rank("average").to_numpy()
    u = ranks[: len(noise)].sum() - len(noise) * (len(noise) + 1) / 2
    return float(u / (len(noise) * len(clean)))


def auc_se(a: float, n_noise: int, n_clean: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC: how far a small noise set lets the figure move."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_noise - 1) * (q1 - a * a) + (n_clean - 1) * (q2 - a * a)) / (n_noise * n_clean)
    return math.sqrt(max(var, 0.0))


def labelled_scores(corpus: Path, scores: Path) -> pl.DataFrame:
    """Every ok row of ``scores`` with its noise kind (null = clean) and ``repeats`` (some assistant reply occurs
    twice: a swapped row whose donor had fewer replies gets them cycled), joined on the conversation id."""
    labels = []
    for path in sorted((corpus / "train").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            replies = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
            labels.append({"id": row["id"], "noise": row.get("noise"), "repeats": len(replies) != len(set(replies))})
    rows = pl.read_parquet(f"{scores}/part-*.parquet", columns=["sample_id", "status", *SCORES])
    return rows.filter(pl.col("status") == "ok").join(pl.DataFrame(labels), left_on="sample_id", right_on="id", how="left")


def noise_sets(rows: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Each noise kind's rows, and where some of them repeat a reply, the kind without those: a repeated reply
    is predictable from its first copy in the context, which lowers the loss and IFD of the row."""
    out = {}
    for kind in sorted(rows["noise"].drop_nulls().unique()):
        noisy = rows.filter(pl.col("noise") == kind)
        out[kind] = noisy
        if "repeats" in noisy.columns and noisy["repeats"].any():
            out[f"{kind}, no repeated reply"] = noisy.filter(~pl.col("repeats"))
    return out


def auc_table(rows: pl.DataFrame) -> list[dict]:
    """Per noise kind and score: AUC (noise vs clean), its standard error, the counts and mean scores."""
    clean = rows.filter(pl.col("noise").is_null())
    out = []
    for kind, noisy in noise_sets(rows).items():
        for score in SCORES:
            x, y = noisy[score].drop_nans().drop_nulls().to_numpy(), clean[score].drop_nans().drop_nulls().to_numpy()
            a = auc(x, y)
            out.append({"noise": kind, "score": score, "auc": a, "se": auc_se(a, len(x), len(y)), "n_noise": len(x),
                        "n_clean": len(y), "mean_noise": float(x.mean()), "mean_clean": float(y.mean())})
    return out


def kept_noise(workdir: Path, scores: Path, rows: pl.DataFrame, s: Settings) -> dict:
    """Per score: noise rows (by kind) in the band ``hardfocus select --score`` keeps, and the summary's exclusions."""
    from selection import SelectConfig, select

    out = {}
    for score in SCORES:
        selected = workdir / f"selected-{score}"
        select(SelectConfig(scores=[str(scores)], output=str(selected), score=score, drop_top=s.drop_top, keep=s.keep,
                            weighting="none", report=False, overwrite=True), progress=False)
        ids = pl.read_parquet(f"{selected}/part-*.parquet", columns=["sample_id"])
        kept = rows.join(ids, on="sample_id", how="semi")
        summary = json.loads((selected / "summary.json").read_text())
        out[score] = {"kept": kept.height, "excluded": summary["excluded"],
                      "noise_kept": {k: kept.filter(pl.col("noise") == k).height
                                     for k in sorted(rows["noise"].drop_nulls().unique())}}
    return out


def run(workdir: Path, s: Settings) -> dict:
    """Build the corpus (once), score it with --ifd (resumes), compute the tables."""
    from pipelines.demo_corpus import build_demo_corpus
    from scoring import ScoreConfig, score

    t0 = time.time()
    corpus, scores = workdir / "corpus", workdir / "scores"
    if not (corpus / "train").exists():
        build_demo_corpus(corpus, docs_per_group=s.docs_per_group, seed=0, heldout_frac=0.2, noise_frac=s.noise_frac,
                          kind="chat")
    t_score = time.time()
    result = score(ScoreConfig(inputs=[str(corpus / "train")], output=str(scores), model=s.model, format="messages",
                               messages_column="messages", id_column="id", group_column="group", ifd=True,
                               max_tokens=s.max_tokens, dtype=s.dtype, executor="local"), progress=False)
    score_seconds = time.time() - t_score
    rows = labelled_scores(corpus, scores)
    return {"settings": s.__dict__, "rows": rows.height, "noise_rows": rows["noise"].drop_nulls().len(),
            "scored_now": result.units_scored > 0,
            "repeats": {str(k): int(v) for k, v in rows.filter(pl.col("repeats")).group_by("noise").len().iter_rows()},
            "auc": auc_table(rows), "selection": kept_noise(workdir, scores, rows, s),
            "ifd_at_least_1": {k or "clean": int(v) for k, v in rows.filter(pl.col("ifd") >= 1).group_by("noise").len().iter_rows()},
            "spearman_loss_ifd": float(rows.select(pl.corr("loss", "ifd", method="spearman")).item()),
            "score_seconds": score_seconds, "wall_seconds": time.time() - t0, "scores_dir": str(scores)}


def markdown(report: dict, command: str) -> str:
    s, sel = report["settings"], report["selection"]
    kinds = sorted({r["noise"] for r in report["auc"] if "," not in r["noise"]})
    return "\n".join([
        "# Which score finds which noise: AUC on the chat demo corpus",
        "",
        f"Command: `{command}`  ",
        f"Scoring ({s['model']}, `--ifd`, max {s['max_tokens']} tokens, dtype {s['dtype']}): "
        + (f"{report['score_seconds'] / 60:.1f} min" if report["scored_now"] else
           "the workdir's scores were complete already (written earlier by the same job), so this run's wall time "
           "does not include scoring" + (f": {report['scored_by']}" if report.get("scored_by") else ""))
        + f"; whole run {report['wall_seconds'] / 60:.1f} min.",
        "",
        f"Corpus: `hardfocus demo-corpus --kind chat --docs-per-group {s['docs_per_group']} --noise-frac "
        f"{s['noise_frac']}`: {report['rows']} scored training conversations, {report['noise_rows']} of them injected "
        "noise. Loss and IFD are of the assistant turns only.",
        "",
        "AUC = P(a noise row scores higher than a clean row), ties half: higher score = more likely noise for both "
        "scores; 0.5 = no signal, < 0.5 = the noise scores lower. ± = Hanley-McNeil standard error.",
        "",
        markdown_table(["noise", "score", "AUC", "noise rows", "clean rows", "mean (noise)", "mean (clean)"], [
            [r["noise"], r["score"], f"{r['auc']:.3f} ± {r['se']:.3f}", r["n_noise"], r["n_clean"],
             f"{r['mean_noise']:.3f}", f"{r['mean_clean']:.3f}"] for r in report["auc"]], "llr"),
        "",
        f"Spearman correlation of loss and IFD over all rows: {report['spearman_loss_ifd']:.3f}. Rows with IFD >= 1 "
        f"(dropped by `--score ifd` by default), by noise kind: {report['ifd_at_least_1']}. Rows repeating an "
        f"assistant reply verbatim, by noise kind: {report['repeats']} (the corpus's swapped rows cycle a donor's "
        "replies when it has fewer than the source; the later copy is predictable from the first).",
        "",
        f"## What selection keeps (MidRanking: drop_top {s['drop_top']}, keep {s['keep']}, global)",
        "",
        markdown_table(["`--score`", "rows kept", *(f"{k} kept" for k in kinds), "excluded"], [
            [score, v["kept"], *(v["noise_kept"].get(k, 0) for k in kinds), v["excluded"] or "none"]
            for score, v in sel.items()], "l" + "r" * (len(kinds) + 1) + "l"),
        "",
        "Excess loss (RHO-LOSS) is not in this table: it needs a reference model, which this benchmark does "
        "not train (on CPU that is a training run of its own); `python -m benchmarks.quality --kind text` has the "
        "reference arm.",
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=Settings.model)
    p.add_argument("--docs-per-group", type=int, default=Settings.docs_per_group)
    p.add_argument("--noise-frac", type=float, default=Settings.noise_frac)
    p.add_argument("--max-tokens", type=int, default=Settings.max_tokens)
    p.add_argument("--dtype", default=Settings.dtype)
    p.add_argument("--scored-by", default=None, help="where the workdir's scores came from, when they were reused")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/hardfocus-score-auc"))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "score_auc.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    meter = OtherLoad()
    s = Settings(model=args.model, docs_per_group=args.docs_per_group, noise_frac=args.noise_frac,
                 max_tokens=args.max_tokens, dtype=args.dtype)
    report = run(args.workdir, s)
    report["machine"] = machine_info() | {"other_load": meter.rate()}
    report["scored_by"] = args.scored_by
    write_report(args.out, report, markdown(report, command_line(argv)))


if __name__ == "__main__":
    main()
