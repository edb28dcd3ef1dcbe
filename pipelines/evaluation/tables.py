"""Held-out loss and perplexity per group from a model's scores, and the table that compares the models.

Perplexity is the corpus-level one, ``exp(sum of token NLLs / tokens)`` per group; ``mean_loss`` is the mean of
the per-sample losses (the quantity selection ranks). ``macro`` averages the groups' token-level losses with equal
weight, so a large group does not drown a small one.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from hardfocus.contracts.scores import DOCUMENT_ID, SCORES_SCHEMA, Status, open_scores_dir
from hardfocus.errors import HardfocusError
from hardfocus.parts import read_part
from hardfocus.storage import prefetched

ALL = "(all)"
MACRO = "(macro)"


@dataclass
class ModelEval:
    name: str
    model: str
    scores: str
    table: pl.DataFrame  # group, docs, tokens, loss, perplexity, mean_loss; plus (all) and (macro) rows
    not_ok: int  # held-out rows the model could not score (empty, too short, ...): counted, not averaged

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "scores": self.scores,
            "rows_not_ok": self.not_ok,
            "groups": {r["group"]: {k: v for k, v in r.items() if k != "group"} for r in self.table.iter_rows(named=True)},
        }


def group_perplexity(scores: str) -> tuple[pl.DataFrame, int]:
    """Per-group docs, tokens, token-level loss, perplexity and mean sample loss of ``ok`` rows, and the rows not ok;
    on windowed scores a sample is a document (:func:`_documents`), so ``mean_loss`` is the mean document loss and
    the count not ok is of documents."""
    opened = open_scores_dir(scores)  # every part through the verified reader
    windowed = opened.manifest.long_documents == "windows"
    columns = ["group", "status", "n_tokens", "nll_sum", "loss", *([DOCUMENT_ID] if windowed else [])]
    tables = list(prefetched(lambda item: read_part(*item, columns), opened.parts))
    schema = pa.schema([SCORES_SCHEMA.field(c) for c in columns])
    scan = pl.from_arrow(pa.concat_tables(tables) if tables else schema.empty_table()).lazy()
    if windowed:
        ok, not_ok = _documents(scan)
    else:
        ok = scan.filter(pl.col("status") == Status.OK.value).with_columns(pl.col("group").fill_null("(none)"))
        not_ok = scan.filter(pl.col("status") != Status.OK.value).select(pl.len()).collect().item()
    aggs = [
        pl.len().alias("docs"),
        pl.col("n_tokens").cast(pl.Int64).sum().alias("tokens"),
        (pl.col("nll_sum").sum() / pl.col("n_tokens").cast(pl.Int64).sum()).alias("loss"),
        pl.col("loss").cast(pl.Float64).mean().alias("mean_loss"),
    ]
    per_group = ok.group_by("group").agg(aggs).sort("group").collect()
    if per_group.height == 0:
        statuses = scan.group_by("status").len().sort("status").collect().rows()
        raise HardfocusError(
            f"no held-out row could be scored (rows by status: {dict(statuses) or 'none'}): give held-out data the "
            "model can score (a larger max_tokens, text that is not empty)"
        )
    overall = ok.select(aggs).collect().with_columns(pl.lit(ALL).alias("group")).select(per_group.columns)
    macro = pl.DataFrame(
        {
            "group": [MACRO],
            "docs": [int(per_group["docs"].sum())],
            "tokens": [int(per_group["tokens"].sum())],
            "loss": [float(per_group["loss"].mean())],
            "mean_loss": [float(per_group["mean_loss"].mean())],
        },
        schema=per_group.schema,
    )
    table = pl.concat([per_group, overall, macro]).with_columns(pl.col("loss").exp().alias("perplexity"))
    return table.select("group", "docs", "tokens", "loss", "perplexity", "mean_loss"), not_ok


def _documents(scan: pl.LazyFrame) -> tuple[pl.LazyFrame, int]:
    """Windows: a sample is a document, its scored windows summed; a document with a window that could not be scored
    (other than a ``too_short`` one, whose token is a documented unscored position) is left out whole and counted,
    like a document with no scored token, so no model is judged on part of a document."""
    ok = pl.col("status") == Status.OK.value
    docs = scan.group_by(DOCUMENT_ID).agg(
        pl.col("group").first().fill_null("(none)"),
        pl.col("nll_sum").filter(ok).sum(),
        pl.col("n_tokens").filter(ok).cast(pl.Int64).sum(),
        scored=ok.any(),
        whole=pl.col("status").is_in([Status.OK.value, Status.TOO_SHORT.value]).all(),
    ).collect()
    good = docs.filter(pl.col("scored") & pl.col("whole")).with_columns(loss=pl.col("nll_sum") / pl.col("n_tokens"))
    return good.lazy(), docs.height - good.height


def comparison_table(evals: list[ModelEval]) -> str:
    """A plain-text table: one row per group, loss and perplexity per model, and the change vs the first."""
    groups = evals[0].table["group"].to_list()
    header = ["group", "docs"] + [f"{e.name} loss / ppl" for e in evals]
    if len(evals) > 1:
        header += [f"{e.name} vs {evals[0].name}" for e in evals[1:]]
    rows = []
    for g in groups:
        cells = [g]
        by_model = [e.table.filter(pl.col("group") == g).row(0, named=True) for e in evals]
        cells.append(f"{by_model[0]['docs']:,}")
        cells += [f"{r['loss']:.4f} / {r['perplexity']:.2f}" for r in by_model]
        cells += [f"{(r['perplexity'] / by_model[0]['perplexity'] - 1) * 100:+.1f}% ppl" for r in by_model[1:]]
        rows.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def load_evaluation(payload: dict) -> list[ModelEval]:
    """The per-model tables of an ``eval.json``."""
    out = []
    for m in payload["models"]:
        rows = [{"group": g, **v} for g, v in m["groups"].items()]
        table = pl.DataFrame(rows).select("group", "docs", "tokens", "loss", "perplexity", "mean_loss")
        out.append(ModelEval(name=m["name"], model=m["model"], scores=m["scores"], table=table, not_ok=m["rows_not_ok"]))
    return out
