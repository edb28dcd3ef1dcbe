"""``report.html``, one self-contained file: the loss distribution, bands, weights, groups.

The plots are embedded as base64 PNG data URIs, so the page keeps them when it is copied or mailed
alone. With one ranking scope the histogram is stacked by band with the two band boundaries drawn;
with per-group ranking each group gets its own panel and boundaries (one histogram over all groups
would interleave bands whose boundaries differ from group to group).

Text from the data (group names, paths, titles) reaches no parser: the figures are made and drawn with
mathtext and TeX off (:func:`literal_text`; a group named ``x $a$ y`` would otherwise be parsed as math, and a
name that is not valid math would fail the selection), and the page escapes every such text.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import posixpath

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from fsspec.core import url_to_fs  # noqa: E402

from hardfocus.storage import commit_bytes  # noqa: E402
from selection.bands import DROPPED, EASY, KEPT  # noqa: E402
from selection.report_scores import BAND_COLOURS, ranks_by_loss, score_figures  # noqa: E402

REPORT_FILE = "report.html"
MAX_GROUP_PANELS = 24  # per-group histograms drawn; every group's thresholds are in the page's table
# (summary key, legend label, line style) of the band boundaries drawn on a histogram
BOUNDARIES = (("dropped_min", "dropped from", "--"), ("kept_min", "kept from", ":"))


def write_report(out_url: str, ranked: pl.DataFrame, kept: pl.DataFrame | None, summary: dict | None, title: str) -> str:
    """Write report.html, its plots embedded, into ``out_url``; returns the report's path.

    ``ranked`` holds ``loss``, ``group`` and, after a selection, ``band``; ``kept`` holds ``loss``,
    ``weight`` and ``group`` of the selected rows; ``summary`` is the selection summary (or None).
    """
    fs, out = url_to_fs(out_url)
    fs.makedirs(out, exist_ok=True)
    with literal_text():  # texts made and drawn (tick labels are made when drawn) as plain text
        figures = report_figures(ranked, kept, summary)
        images = {}
        for name, fig in figures.items():
            images[name] = _png_data_uri(fig)
            plt.close(fig)
    page = _html(title, ranked, summary, images)
    path = posixpath.join(out, REPORT_FILE)
    commit_bytes(fs, path, page.encode())  # whole or not at all: a report being replaced is never half of two
    return path


def literal_text():
    """matplotlib settings under which every text is drawn as written: no mathtext (``$...$``), no TeX.

    A Text takes ``text.parse_math`` when it is made, so figures must be made, and drawn (tick labels and
    legends are made then too), inside it."""
    return matplotlib.rc_context({"text.parse_math": False, "text.usetex": False})


def report_figures(ranked: pl.DataFrame, kept: pl.DataFrame | None, summary: dict | None) -> dict:
    """The report's matplotlib figures by name (the caller closes them, and draws them under :func:`literal_text`)."""
    with literal_text():
        figures = {"loss_histogram.png": _loss_histogram(ranked, summary)}
        if kept is not None and kept.height:
            figures["weight_vs_loss.png"] = _weight_curve(kept, summary)
        figures["loss_by_group.png"] = _group_boxes(ranked)
        figures.update(score_figures(ranked, summary))  # ranked by IFD, bpb or excess: that score, and it vs the loss
    return figures


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _loss_histogram(ranked: pl.DataFrame, summary: dict | None):
    # thresholds of another score are not loss values: they go on that score's histogram (report_scores)
    scopes = (summary or {}).get("thresholds", {}) if ranks_by_loss(summary) else {}
    if "band" in ranked.columns and len(scopes) > 1:
        return _per_group_histograms(ranked, scopes)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    if "band" in ranked.columns:
        # one global ranking: its band boundaries are lines on this histogram
        _band_histogram(ax, ranked, next(iter(scopes.values())) if scopes else {}, n_bins=80)
        ax.set_label(next(iter(scopes), "all"))
    else:
        losses = ranked["loss"].to_numpy()
        ax.hist(losses, bins=_bins(losses, 80), color="#1f77b4")
    ax.set_xlabel("per-sample mean token loss (nats)")
    ax.set_ylabel("samples")
    ax.set_title("Loss distribution" + (" and MidRanking bands" if "band" in ranked.columns else ""))
    return fig


def _per_group_histograms(ranked: pl.DataFrame, scopes: dict):
    """One panel per group (the first MAX_GROUP_PANELS by name), stacked by band, its own boundaries drawn."""
    groups = sorted(scopes)[:MAX_GROUP_PANELS]
    ncols = 2
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(10, 0.6 + 2.6 * nrows), squeeze=False)
    by_group = ranked.with_columns(pl.col("group").cast(pl.String))
    for ax, group in zip(axes.flat, groups):
        _band_histogram(ax, by_group.filter(pl.col("group") == group), scopes[group], n_bins=40, fontsize=7)
        ax.set_title(group, fontsize=9)
        ax.set_label(group)  # which scope this panel shows (read back by the tests)
    for ax in axes.flat[len(groups):]:
        ax.set_axis_off()
    shown = "" if len(groups) == len(scopes) else f" (first {len(groups)} of {len(scopes)} groups)"
    fig.suptitle(f"Loss distribution and MidRanking bands per group, each ranked on its own{shown}")
    fig.supxlabel("per-sample mean token loss (nats)")
    fig.supylabel("samples")
    fig.tight_layout()
    return fig


def _band_histogram(ax, rows: pl.DataFrame, thresholds: dict, n_bins: int, fontsize: float | None = None) -> None:
    """Histogram of ``rows`` stacked by band, with the scope's band boundaries as vertical lines."""
    losses = rows["loss"].to_numpy()
    stacks = [rows.filter(pl.col("band") == b)["loss"].to_numpy() for b in (EASY, KEPT, DROPPED)]
    ax.hist(stacks, bins=_bins(losses, n_bins), stacked=True, color=[BAND_COLOURS[b] for b in (EASY, KEPT, DROPPED)],
            label=[f"{b} ({len(s):,})" for b, s in zip((EASY, KEPT, DROPPED), stacks)])
    for key, label, style in BOUNDARIES:
        if thresholds.get(key) is not None:
            ax.axvline(thresholds[key], color="black", linestyle=style, linewidth=1, label=f"{label} {thresholds[key]:.3f}")
    ax.legend(fontsize=fontsize)


def _bins(losses: np.ndarray, n: int) -> np.ndarray:
    if losses.size == 0:
        return np.linspace(0.0, 1.0, n)
    return np.linspace(np.quantile(losses, 0.0005), np.quantile(losses, 0.9995) + 1e-9, n)


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


def _table(rows: list[list], css_class: str) -> str:
    """An HTML table: the first row is the header; every cell is escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table class='{css_class}'><tr>{head}</tr>{body}</table>"


def _parameter_rows(parameters: dict) -> list[list]:
    return [["parameter", "value"]] + [
        [k, v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)] for k, v in parameters.items()
    ]


def _threshold_rows(thresholds: dict) -> list[list]:
    def fmt(v):
        return "" if v is None else f"{v:.4f}"

    return [["scope", "dropped: loss ≥", "kept: loss from", "kept: loss to"]] + [
        [scope, fmt(t["dropped_min"]), fmt(t["kept_min"]), fmt(t["kept_max"])] for scope, t in thresholds.items()
    ]


def _html(title: str, ranked: pl.DataFrame, summary: dict | None, images: dict[str, str]) -> str:
    """The page; ``images`` maps each plot's name to its data URI."""
    groups = _table(_group_table(ranked, summary), "groups")
    facts = ""
    if summary:
        w = summary["weights"]
        facts = (
            f"<p>{summary['eligible']:,} eligible of {summary['rows']:,} rows; excluded: "
            f"{html.escape(', '.join(f'{k} {v:,}' for k, v in summary['excluded'].items()) or 'none')}. "
            f"Bands: {html.escape(', '.join(f'{k} {v:,}' for k, v in summary['bands'].items()))}. "
            f"Weights: min {w['min']:.3f}, mean {w['mean']:.3f}, max {w['max']:.3f}, "
            f"effective sample size {w['effective_sample_size']:,.0f}.</p>"
            f"<h2>Parameters</h2>{_table(_parameter_rows(summary['parameters']), 'parameters')}"
            f"<h2>Band thresholds</h2>{_table(_threshold_rows(summary['thresholds']), 'thresholds')}"
        )
    imgs = "".join(
        f'<p><img src="{uri}" alt="{html.escape(name.removesuffix(".png").replace("_", " "))}"></p>'
        for name, uri in images.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}table.parameters td{text-align:left}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{facts}<h2>Groups</h2>{groups}{imgs}</body></html>"
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
