"""``report.html`` with its plots as PNG files beside it: the loss distribution, bands, weights, groups."""

from __future__ import annotations

import html
import posixpath

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from fsspec.core import url_to_fs  # noqa: E402

from selection.bands import DROPPED, EASY, KEPT  # noqa: E402

BAND_COLOURS = {DROPPED: "#d62728", KEPT: "#2ca02c", EASY: "#7f7f7f"}
REPORT_FILE = "report.html"


def write_report(out_url: str, ranked: pl.DataFrame, kept: pl.DataFrame | None, summary: dict | None, title: str) -> str:
    """Write report.html and its PNGs into ``out_url``; returns the report's path.

    ``ranked`` holds ``loss``, ``group`` and, after a selection, ``band``; ``kept`` holds ``loss``,
    ``weight`` and ``group`` of the selected rows; ``summary`` is the selection summary (or None).
    """
    fs, out = url_to_fs(out_url)
    fs.makedirs(out, exist_ok=True)
    figures = {"loss_histogram.png": _loss_histogram(ranked, summary)}
    if kept is not None and kept.height:
        figures["weight_vs_loss.png"] = _weight_curve(kept, summary)
    figures["loss_by_group.png"] = _group_boxes(ranked)
    for name, fig in figures.items():
        with fs.open(posixpath.join(out, name), "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    page = _html(title, ranked, summary, list(figures))
    path = posixpath.join(out, REPORT_FILE)
    with fs.open(path, "wb") as f:
        f.write(page.encode())
    return path


def _loss_histogram(ranked: pl.DataFrame, summary: dict | None):
    fig, ax = plt.subplots(figsize=(9, 4.2))
    losses = ranked["loss"].to_numpy()
    bins = np.linspace(np.quantile(losses, 0.0005), np.quantile(losses, 0.9995) + 1e-9, 80)
    if "band" in ranked.columns:
        stacks = [ranked.filter(pl.col("band") == b)["loss"].to_numpy() for b in (EASY, KEPT, DROPPED)]
        ax.hist(stacks, bins=bins, stacked=True, color=[BAND_COLOURS[b] for b in (EASY, KEPT, DROPPED)],
                label=[f"{b} ({len(s):,})" for b, s in zip((EASY, KEPT, DROPPED), stacks)])
        scopes = (summary or {}).get("thresholds", {})
        if len(scopes) == 1:  # one global ranking: its band boundaries are lines on this histogram
            t = next(iter(scopes.values()))
            for key, label, style in (("dropped_min", "dropped from", "--"), ("kept_min", "kept from", ":")):
                if t.get(key) is not None:
                    ax.axvline(t[key], color="black", linestyle=style, linewidth=1, label=f"{label} {t[key]:.3f}")
        ax.legend()
    else:
        ax.hist(losses, bins=bins, color="#1f77b4")
    ax.set_xlabel("per-sample mean token loss (nats)")
    ax.set_ylabel("samples")
    ax.set_title("Loss distribution" + (" and MidRanking bands" if "band" in ranked.columns else ""))
    return fig


def _weight_curve(kept: pl.DataFrame, summary: dict | None, max_points: int = 4000):
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for group, part in kept.select("group", "loss", "weight").sort("loss").group_by("group", maintain_order=True):
        step = max(1, part.height // max_points)  # a curve needs a few thousand points, not millions
        ax.plot(part["loss"][::step].to_numpy(), part["weight"][::step].to_numpy(), marker=".", markersize=2,
                linewidth=1, label=str(group[0]))
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    params = (summary or {}).get("parameters", {})
    ax.set_title(f"IR-DRO weight vs loss (temperature {params.get('temperature')}, weighting {params.get('weighting')})")
    ax.set_xlabel("loss (nats)")
    ax.set_ylabel("weight (mean 1)")
    if kept["group"].n_unique() > 1:
        ax.legend(fontsize=8)
    return fig


def _group_boxes(ranked: pl.DataFrame):
    """Box plot per group from quantiles computed by polars (no per-point work in matplotlib)."""
    stats = (
        ranked.group_by("group")
        .agg(
            med=pl.col("loss").median(), q1=pl.col("loss").quantile(0.25), q3=pl.col("loss").quantile(0.75),
            whislo=pl.col("loss").quantile(0.01), whishi=pl.col("loss").quantile(0.99),
        )
        .with_columns(pl.col("group").cast(pl.String))
        .sort("group")
    )
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.45 * max(stats.height, 2)))
    boxes = [{"label": r.pop("group"), "fliers": [], **r} for r in stats.to_dicts()]
    ax.bxp(boxes, orientation="horizontal", showfliers=False)
    ax.set_xlabel("loss (nats); whiskers at the 1st and 99th percentiles")
    ax.set_title("Loss by group")
    return fig


def _html(title: str, ranked: pl.DataFrame, summary: dict | None, images: list[str]) -> str:
    rows = _group_table(ranked, summary)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
    facts = ""
    if summary:
        w = summary["weights"]
        facts = (
            f"<p>{summary['eligible']:,} eligible of {summary['rows']:,} rows; excluded: "
            f"{html.escape(', '.join(f'{k} {v:,}' for k, v in summary['excluded'].items()) or 'none')}. "
            f"Bands: {', '.join(f'{k} {v:,}' for k, v in summary['bands'].items())}. "
            f"Weights: min {w['min']:.3f}, mean {w['mean']:.3f}, max {w['max']:.3f}, "
            f"effective sample size {w['effective_sample_size']:,.0f}.</p>"
            f"<p>Parameters: <code>{html.escape(str(summary['parameters']))}</code></p>"
        )
    imgs = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in images)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{facts}<h2>Groups</h2><table><tr>{head}</tr>{body}</table>{imgs}</body></html>"
    )


def _group_table(ranked: pl.DataFrame, summary: dict | None) -> list[list]:
    if summary:
        header = ["group", "rows", "dropped", "kept", "easy", "mean loss", "mean loss kept", "total weight"]
        rows = [
            [g, c["eligible"], _share(c["dropped"], c["eligible"]), _share(c["kept"], c["eligible"]),
             _share(c["easy"], c["eligible"]), f"{c['mean_loss']:.4f}",
             "" if c["mean_loss_kept"] is None else f"{c['mean_loss_kept']:.4f}", f"{c['total_weight']:,.1f}"]
            for g, c in summary["groups"].items()
        ]
        return [header, *rows]
    per = ranked.with_columns(pl.col("group").cast(pl.String)).group_by("group").agg(
        pl.len().alias("rows"), pl.col("loss").mean().alias("mean"), pl.col("loss").median().alias("median"),
        pl.col("loss").quantile(0.9).alias("p90"),
    ).sort("group")
    return [["group", "rows", "mean loss", "median loss", "p90 loss"]] + [
        [r["group"], r["rows"], f"{r['mean']:.4f}", f"{r['median']:.4f}", f"{r['p90']:.4f}"] for r in per.to_dicts()
    ]


def _share(n: int, total: int) -> str:
    return f"{n:,} ({n / total:.0%})" if total else "0"
