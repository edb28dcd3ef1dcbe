"""The report's plots of a score other than the loss: its distribution by band, and it against the loss.

Ranking by IFD, bits per byte or excess loss puts the band boundaries in that score's units, so they
are drawn on its own histogram; the scatter shows how far the chosen score reorders the loss ranking.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from selection.bands import DROPPED, EASY, KEPT  # noqa: E402
from selection.score_terms import SCORE_COLUMN  # noqa: E402

BAND_COLOURS = {DROPPED: "#d62728", KEPT: "#2ca02c", EASY: "#7f7f7f"}  # every plot of the report draws bands so
MAX_POINTS = 20_000  # a scatter of millions of points says no more than a sample of them


def ranks_by_loss(summary: dict | None) -> bool:
    """Whether the selection (if any) ranked by each row's loss, so loss thresholds belong on the loss histogram
    (by document they are documents' losses, drawn on the score histogram)."""
    summary = summary or {}
    return summary.get("score", "loss") == "loss" and summary.get("parameters", {}).get("by", "window") == "window"


def score_figures(ranked: pl.DataFrame, summary: dict | None) -> dict:
    """``score_histogram.png`` and ``score_vs_loss.png`` when ``ranked`` was ranked by a score; else none."""
    if SCORE_COLUMN not in ranked.columns or ranked.height == 0:
        return {}
    name = f"{summary.get('score', SCORE_COLUMN)} ({summary.get('score_units', '')})" if summary else SCORE_COLUMN
    if summary and summary.get("parameters", {}).get("by") == "document":
        name = f"document {name}"
    return {"score_histogram.png": _histogram(ranked, summary or {}, name), "score_vs_loss.png": _scatter(ranked, name)}


def _histogram(ranked: pl.DataFrame, summary: dict, name: str):
    fig, ax = plt.subplots(figsize=(9, 4.2))
    values = ranked[SCORE_COLUMN].to_numpy()
    bins = np.linspace(np.quantile(values, 0.0005), np.quantile(values, 0.9995) + 1e-9, 80)
    order = [b for b in (EASY, KEPT, DROPPED) if "band" in ranked.columns]
    if order:
        stacks = [ranked.filter(pl.col("band") == b)[SCORE_COLUMN].to_numpy() for b in order]
        ax.hist(stacks, bins=bins, stacked=True, color=[BAND_COLOURS[b] for b in order],
                label=[f"{b} ({len(s):,})" for b, s in zip(order, stacks)])
    else:
        ax.hist(values, bins=bins)
    scopes = summary.get("thresholds", {})
    if len(scopes) == 1:
        t = next(iter(scopes.values()))
        for key, label, style in (("dropped_min", "dropped from", "--"), ("kept_min", "kept from", ":")):
            if t.get(key) is not None:
                ax.axvline(t[key], color="black", linestyle=style, linewidth=1, label=f"{label} {t[key]:.3f}")
    if order:
        ax.legend()
    ax.set_xlabel(name)
    ax.set_ylabel("samples")
    ax.set_title(f"Ranked by {name}: distribution and MidRanking bands")
    return fig


def _scatter(ranked: pl.DataFrame, name: str):
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sample = ranked.sample(MAX_POINTS, seed=0) if ranked.height > MAX_POINTS else ranked
    bands = [b for b in (EASY, KEPT, DROPPED) if "band" in sample.columns] or [None]
    for band in bands:
        rows = sample if band is None else sample.filter(pl.col("band") == band)
        ax.scatter(rows["loss"].to_numpy(), rows[SCORE_COLUMN].to_numpy(), s=4, alpha=0.5,
                   color=BAND_COLOURS.get(band, "#1f77b4"), label=band)
    if bands != [None]:
        ax.legend(markerscale=3)
    ax.set_xlabel("loss (nats per token)")
    ax.set_ylabel(name)
    shown = f" ({sample.height:,} of {ranked.height:,} rows)" if sample.height < ranked.height else ""
    ax.set_title(f"{name} against the loss{shown}")
    return fig
