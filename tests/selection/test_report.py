"""report.html is one self-contained page: plots embedded, band thresholds drawn, parameters as a table.

Thresholds and band counts are checked against a numpy ranking of the same losses, on the
matplotlib figures the page was rendered from.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

import selection.report as report
from hardfocus.errors import HardfocusError
from selection import SelectConfig, select
from tests.selection.fake_scores import write_scores
from tests.selection.helpers import select_scores

DROP_TOP, KEEP = 0.1, 0.5


class Page(HTMLParser):
    """Every src/href of the page, and the cells of each table by its class."""

    def __init__(self, text: str):
        super().__init__()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [(tag, a, attrs[a]) for a in ("src", "href") if a in attrs]
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("class") or "", [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _expected_thresholds(losses: np.ndarray, ids: list[str]) -> dict[str, float]:
    """numpy MidRanking: highest loss first, ties by id; the boundaries are the lowest loss of each band."""
    order = np.lexsort((np.array(ids), -losses))
    n_drop, n_keep = int(np.floor(len(losses) * DROP_TOP)), int(np.floor(len(losses) * KEEP))
    return {"dropped_min": float(losses[order[:n_drop]].min()), "kept_min": float(losses[order[n_drop : n_drop + n_keep]].min()),
            "n_dropped": n_drop, "n_kept": n_keep}


def _vertical_lines(ax) -> list[float]:
    return sorted(float(line.get_xdata()[0]) for line in ax.get_lines() if len(set(line.get_xdata())) == 1)


@pytest.fixture(params=[False, True], ids=["global", "per_group"])
def selected(request, tmp_path, monkeypatch):
    """A selection of two groups on different loss scales, with the figures its report was drawn from."""
    rng = np.random.default_rng(7)
    groups = rng.choice(["x", "y"], 160).tolist()
    losses = np.where(np.array(groups) == "x", rng.gamma(4, 0.5, 160), 3.0 + rng.gamma(4, 0.5, 160)).astype(np.float32)
    ids = [f"shard.jsonl#{i}" for i in range(160)]
    write_scores(tmp_path / "scores", losses.tolist(), groups)
    figures = {}
    real = report.report_figures
    monkeypatch.setattr(report, "report_figures", lambda *args: figures.update(real(*args)) or figures)
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), drop_top=DROP_TOP, keep=KEEP,
                       per_group=request.param, temperature=0.5)
    select(cfg, progress=False)
    g = np.array(groups)
    if request.param:
        expected = {k: _expected_thresholds(losses[g == k], [i for i, gi in zip(ids, groups) if gi == k]) for k in ("x", "y")}
    else:
        expected = {"all": _expected_thresholds(losses, ids)}
    summary = json.loads((tmp_path / "sel" / "summary.json").read_text())
    return tmp_path / "sel", summary, figures, expected


def test_every_plot_is_embedded(selected):
    out, _, figures, _ = selected
    page = Page((out / "report.html").read_text())
    images = [value for tag, attr, value in page.links if tag == "img"]
    assert len(images) == len(figures) == 3
    assert all(value.startswith("data:") for _, _, value in page.links)  # nothing loaded from beside the page
    for uri in images:
        assert base64.b64decode(uri.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.png"))


def test_the_band_thresholds_are_drawn_where_the_selection_put_them(selected):
    _, summary, figures, expected = selected
    axes = {ax.get_label(): ax for ax in figures["loss_histogram.png"].axes if ax.get_label()}
    assert set(axes) == set(expected) == set(summary["thresholds"])
    for scope, ax in axes.items():
        want = expected[scope]
        assert summary["thresholds"][scope]["dropped_min"] == pytest.approx(want["dropped_min"])
        assert summary["thresholds"][scope]["kept_min"] == pytest.approx(want["kept_min"])
        assert _vertical_lines(ax) == pytest.approx(sorted([want["kept_min"], want["dropped_min"]]))
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert f"dropped ({want['n_dropped']:,})" in legend and f"kept ({want['n_kept']:,})" in legend


def test_bands_do_not_interleave_in_the_histogram(selected):
    """Each panel is one ranking scope: easy, kept and dropped bins follow each other, sharing at most a boundary bin."""
    _, _, figures, expected = selected
    panels = [ax for ax in figures["loss_histogram.png"].axes if ax.get_label()]
    assert len(panels) == len(expected)
    for ax in panels:
        spans = []
        for container in ax.containers:  # stacked in the order easy, kept, dropped
            filled = [i for i, patch in enumerate(container.patches) if patch.get_height() > 0]
            spans.append((min(filled), max(filled)))
        assert len(spans) == 3
        for (_, lower_end), (upper_start, _) in zip(spans, spans[1:]):
            assert lower_end <= upper_start + 1, spans


def test_parameters_and_thresholds_are_tables(selected):
    out, summary, _, _ = selected
    page = Page((out / "report.html").read_text())
    params = {row[0]: row[1] for row in page.tables["parameters"][1:]}
    assert set(params) == set(summary["parameters"])
    for key, value in summary["parameters"].items():
        assert params[key] == (json.dumps(value) if isinstance(value, (list, dict)) else str(value))
    thresholds = {row[0]: row[1:] for row in page.tables["thresholds"][1:]}
    assert set(thresholds) == set(summary["thresholds"])
    for scope, t in summary["thresholds"].items():
        assert [float(v) for v in thresholds[scope]] == pytest.approx([t["dropped_min"], t["kept_min"], t["kept_max"]], abs=1e-4)
    assert "{'" not in (out / "report.html").read_text()  # no Python dict printed into the page


def test_report_refuses_a_selection_that_was_not_made_from_the_scores_it_is_given(tmp_path):
    """`hardfocus report SCORES SELECTED` re-ranks SCORES with SELECTED's parameters and draws SELECTED's kept rows
    beside them, without checking that SELECTED was made from SCORES (its summary names the scores' directories and
    fingerprints): given another scores/ directory it writes a report whose bands and kept rows belong to two different
    datasets, and it writes it over the selection's own report.html, exit 0."""
    from selection.job import build_report
    from tests.selection.fake_scores import write_scores

    write_scores(tmp_path / "A", list(np.linspace(1, 5, 40)))
    write_scores(tmp_path / "B", list(np.linspace(10, 20, 60)), shard="other.jsonl")
    select_scores([tmp_path / "A"], tmp_path / "sel")
    before = (tmp_path / "sel" / "report.html").read_bytes()
    try:
        build_report([str(tmp_path / "B")], str(tmp_path / "sel"))
    except HardfocusError as exc:
        assert "sel" in str(exc)
    assert (tmp_path / "sel" / "report.html").read_bytes() == before, \
        "the selection's report was replaced by one of other scores"
