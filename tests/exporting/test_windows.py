"""Exports of windowed scores (``score --long-documents windows``): a row per window whose text is its slice of the
source text, or ``--by document`` a row per document, checked against the source rows and the decisions."""

from __future__ import annotations

import json

import polars as pl
import pytest

from scoring import HardfocusError
from tests.exporting.helpers import decisions, read_parts, run_export


def _source(selected_windows) -> list[dict]:
    return [json.loads(line) for line in (selected_windows["inputs"] / "docs.jsonl").read_text().splitlines()]


def test_each_window_is_exported_with_its_own_slice_of_the_text(selected_windows, tmp_path):
    result = run_export(selected_windows["by-window"], tmp_path / "out", band="all", shard_rows=10)
    got = read_parts(list((tmp_path / "out").glob("part-*")))
    source = _source(selected_windows)
    decided = decisions(selected_windows["by-window"]).sort("row", "window")
    assert len(got) == decided.height == result.manifest.rows
    assert decided["windows"].max() > 3  # documents of many windows
    for row, d in zip(got, decided.iter_rows(named=True)):
        doc = source[d["row"]]
        assert row["text"] == doc["text"][d["char_start"]:d["char_stop"]]  # never re-tokenised: scoring's offsets
        assert (row["domain"], row["k"]) == (doc["domain"], doc["k"])  # the other columns unchanged
        assert {k: row[k] for k in ("sample_id", "document_id", "window", "windows", "band", "weight")} == \
            {k: d[k] for k in ("sample_id", "document_id", "window", "windows", "band", "weight")}
    for doc_id, windows in pl.DataFrame(got).group_by("document_id", maintain_order=True):  # the windows cover the text
        row = int(doc_id[0].rsplit("#", 1)[1])
        assert "".join(windows.sort("window")["text"]) == source[row]["text"]
    assert set(result.manifest.columns) == {"sample_id", "band", "weight", "score", "loss", "reason", "document_id",
                                            "window", "windows"}


def test_by_document_exports_each_document_once_whole(selected_windows, tmp_path):
    sel = selected_windows["by-document"]
    result = run_export(sel, tmp_path / "out", by="document", shard_rows=4)
    got = read_parts(list((tmp_path / "out").glob("part-*")))
    source = _source(selected_windows)
    decided = decisions(sel)
    kept = decided.filter(pl.col("band") == "kept")
    documents = kept.group_by("row").agg(pl.col("document_id").first(), pl.col("weight").unique(), pl.col("score").unique(),
                                         pl.col("windows").first()).sort("row")
    assert documents["weight"].list.len().max() == 1  # all windows of a kept document share its weight
    assert len(got) == documents.height == result.manifest.bands["kept"] > 0
    for row, d in zip(got, documents.iter_rows(named=True)):
        assert {k: row[k] for k in ("text", "domain", "k")} == source[d["row"]]  # the document whole
        assert (row["sample_id"], row["weight"], row["score"], row["windows"]) == \
            (d["document_id"], d["weight"][0], d["score"][0], d["windows"])
    assert "loss" not in got[0] and "window" not in got[0]  # a document has no loss or window of its own


def test_by_document_needs_a_selection_by_document(selected_windows, selected_rows, tmp_path):
    with pytest.raises(HardfocusError, match="ranked windows .select --by window.*select again with --by document, or "
                                             "export --by window"):
        run_export(selected_windows["by-window"], tmp_path / "a", by="document")
    with pytest.raises(HardfocusError, match="these scores have a row per document already: drop --by document"):
        run_export(selected_rows["selected"], tmp_path / "b", by="document")


def test_a_document_takes_the_band_of_its_ranked_windows():
    """A ``too_short`` tail window is excluded as a row but leaves its document whole; a document none of whose windows
    was ranked is excluded with its first window's reason; windows of one document in two bands are refused."""
    from exporting.rows import documents

    frame = pl.DataFrame({
        "shard": ["s"] * 6, "row": [0, 0, 0, 1, 1, 2], "document_id": ["a", "a", "a", "b", "b", "c"],
        "windows": [3, 3, 3, 2, 2, 1], "window": [0, 1, 2, 0, 1, 0],
        "band": ["kept", "kept", "excluded", "excluded", "excluded", "dropped"],
        "reason": [None, None, "status: too_short", "status: error", "another window of its document is not scored", None],
        "weight": [1.5, 1.5, None, None, None, None], "score": [2.0, 2.0, None, None, None, 4.0],
        "loss": [1.9, 2.1, None, None, None, 4.0],
    })
    docs = documents(frame, "here").select("row", "sample_id", "band", "weight", "reason", "windows").to_dicts()
    assert docs == [
        {"row": 0, "sample_id": "a", "band": "kept", "weight": 1.5, "reason": None, "windows": 3},
        {"row": 1, "sample_id": "b", "band": "excluded", "weight": None, "reason": "status: error", "windows": 2},
        {"row": 2, "sample_id": "c", "band": "dropped", "weight": None, "reason": None, "windows": 1},
    ]
    split = frame.with_columns(band=pl.Series(["kept", "easy", "excluded", "excluded", "excluded", "dropped"]))
    with pytest.raises(HardfocusError, match="windows of document 'a' .here. have different bands"):
        documents(split, "here")
