"""``selected/decisions/``: one decision per scored row, checked against bands computed here independently
(numpy sort by score, ties by sample id), and the label table of ``hardfocus run`` read from it."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from hardfocus.contracts.decisions import DECISIONS_SCHEMA, decision_parts
from hardfocus.errors import HardfocusError
from hardfocus.sample_format import Columns
from pipelines.labels import band_labels
from selection import SelectConfig, select
from selection.job import build_report
from tests.selection.fake_scores import write_scores, write_windowed_scores

N = 60


def _decisions(sel) -> pl.DataFrame:
    return pl.read_parquet(f"{sel}/decisions/part-*.parquet").with_columns(pl.col("band").cast(pl.String))


def _bands(ids: list[str], score: np.ndarray, eligible: np.ndarray, drop_top: float, keep: float) -> dict[str, str]:
    """The bands as the paper's MidRanking defines them, computed apart from selection's code."""
    order = sorted((i for i in range(len(ids)) if eligible[i]), key=lambda i: (-score[i], ids[i]))
    n = len(order)
    n_drop, n_keep = math.floor(n * drop_top), math.floor(n * keep)
    return {ids[i]: "dropped" if k < n_drop else "kept" if k < n_drop + n_keep else "easy" for k, i in enumerate(order)}


def _ifd_scores(tmp_path, ties: bool):
    rng = np.random.default_rng(3)
    losses = rng.uniform(1.0, 4.0, N).round(3)
    ifd = rng.uniform(0.5, 1.2, N).round(3)
    if ties:  # one value straddles both band edges
        ifd[10:40] = 0.9
    statuses = ["ok"] * N
    statuses[5] = "too_short"
    statuses[6] = "error: bad row"
    ifd_col = [float(v) for v in ifd]
    ifd_col[7] = float("nan")
    columns = {"ifd": ifd_col, "nll_sum_unconditioned": [1.0] * N, "n_tokens_unconditioned": [5] * N}
    write_scores(tmp_path / "scores", losses.tolist(), statuses=statuses, columns=columns, rows_per_part=9)
    ids = [f"shard.jsonl#{i}" for i in range(N)]
    eligible = np.array([s == "ok" for s in statuses]) & np.isfinite(np.array(ifd_col)) & (np.array(ifd_col) < 1.0)
    return ids, np.array(ifd_col), eligible, statuses


@pytest.mark.parametrize("ties", [False, True])
def test_decisions_of_an_ifd_selection_with_max_ifd_match_an_independent_ranking(tmp_path, ties):
    ids, ifd, eligible, statuses = _ifd_scores(tmp_path, ties)
    sel = tmp_path / "sel"
    result = select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(sel), score="ifd", max_ifd=1.0,
                                 drop_top=0.2, keep=0.5), progress=False)
    got = _decisions(sel)
    assert got.height == N and got["sample_id"].to_list() == ids  # every scored row, in the scores' order
    assert got["row"].to_list() == list(range(N)) and set(got["shard"]) == {"shard.jsonl"}
    want = _bands(ids, ifd, eligible, 0.2, 0.5)
    decided = dict(zip(got["sample_id"], got["band"]))
    assert {i: b for i, b in decided.items() if b != "excluded"} == want
    reasons = dict(zip(got["sample_id"], got["reason"]))
    assert reasons["shard.jsonl#5"] == "status: too_short" and reasons["shard.jsonl#6"] == "status: error"
    assert reasons["shard.jsonl#7"] == "ifd not finite"
    over = [i for i, v, s in zip(ids, ifd, statuses) if s == "ok" and v >= 1.0]
    assert over and all(reasons[i] == "ifd >= 1 (the prompt does not help)" for i in over)
    # the summary counts are the decisions counted
    assert result.summary.excluded == dict(got.filter(pl.col("band") == "excluded").group_by("reason").len().sort("reason").iter_rows())
    assert result.summary.bands == {b: n for b, n in got.group_by("band").len().iter_rows() if b != "excluded"}
    # score is the ranked IFD; weights only in the kept band, equal to the training parts' by sample id
    ranked = got.filter(pl.col("band") != "excluded")
    np.testing.assert_allclose(ranked["score"].to_numpy(), ifd[[ids.index(i) for i in ranked["sample_id"]]], rtol=1e-6)
    assert got.filter(pl.col("band") != "kept")["weight"].null_count() == N - result.summary.bands["kept"]
    assert got.filter(pl.col("band") == "excluded")["rank"].null_count() == got.filter(pl.col("band") == "excluded").height
    train = pl.read_parquet(f"{sel}/part-*.parquet")
    kept = got.filter(pl.col("band") == "kept").select("sample_id", "shard", "row", "weight")
    assert train.select("sample_id", "shard", "row", "weight").sort("sample_id").equals(kept.sort("sample_id"))

    # the label table of `hardfocus run` reads the decisions: a labelled input row lands in its row's band
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    labels = ["noise" if i % 4 == 0 else None for i in range(N)]
    with open(inputs / "shard.jsonl", "w") as f:
        for i in range(N):
            f.write(json.dumps({"text": f"row {i}", **({"mark": labels[i]} if labels[i] else {})}) + "\n")
    table = band_labels([str(inputs)], Columns(), "mark", str(sel))
    for band in ("dropped", "kept", "easy", "excluded"):
        marked = sum(1 for i in range(N) if labels[i] and decided[ids[i]] == band)
        cell = table.filter((pl.col("band") == band) & (pl.col("label") == "noise"))["rows"].sum()
        assert cell == marked, band
    assert table["rows"].sum() == N


def test_windowed_decisions_carry_each_window_and_its_reason(tmp_path):
    windows = {"a": [(2.0, 5), (3.0, 5)], "b": [(1.0, 5)], "c": [(2.5, 5), (float("nan"), 5), (1.5, 0)],
               "d": [(4.0, 5), (0.5, 5)]}
    statuses = {"c": ["ok", "ok", "too_short"]}
    write_windowed_scores(tmp_path / "scores", windows, statuses=statuses, rows_per_part=3)
    sel = tmp_path / "sel"
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(sel), by="document", drop_top=0.0, keep=0.5),
           progress=False)
    got = _decisions(sel)
    assert got.height == 8 and {"document_id", "window", "windows", "char_start", "char_stop"} <= set(got.columns)
    by_id = {r["sample_id"]: r for r in got.to_dicts()}
    assert by_id["c#w1"]["reason"] == "loss not finite" and by_id["c#w2"]["reason"] == "status: too_short"
    assert by_id["c#w0"]["reason"] == "another window of its document is not scored"
    # by document: a document's windows share band, rank, score and weight
    for doc in ("a", "d"):
        rows = got.filter(pl.col("document_id") == doc)
        assert rows["band"].n_unique() == 1 and rows["weight"].n_unique() == 1 and rows["score"].n_unique() == 1
    # a: mean 2.5, d: 2.25, b: 1.0 -> keep floor(3 * 0.5) = 1 document: a
    assert by_id["a#w0"]["band"] == "kept" and by_id["d#w0"]["band"] == "easy" and by_id["b#w0"]["band"] == "easy"
    assert by_id["a#w1"]["char_start"] == 15 and by_id["a#w1"]["char_stop"] == 30


def test_decisions_are_checked_when_read(tmp_path):
    write_scores(tmp_path / "scores", list(np.linspace(1, 3, 20)), rows_per_part=5)
    sel = tmp_path / "sel"
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(sel)), progress=False)
    parts = decision_parts(str(sel))
    assert [r["part"] for _, r in parts] == [f"part-{i:04d}.parquet" for i in range(4)]
    assert pq.read_schema(parts[0][0]).names[: len(DECISIONS_SCHEMA)] == DECISIONS_SCHEMA.names
    # a report of the selection reads the same bands
    assert build_report([str(tmp_path / "scores")], str(sel)).endswith("report.html")
    part = sel / "decisions" / "part-00002.parquet"
    part.write_bytes(part.read_bytes()[:-30])  # cut short
    with pytest.raises(HardfocusError, match="part-00002.parquet is damaged"):
        decision_parts(str(sel))
    part.unlink()
    with pytest.raises(HardfocusError, match="holds 3 parts where its summary counts 4"):
        decision_parts(str(sel))
