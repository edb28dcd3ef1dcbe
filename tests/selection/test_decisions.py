"""``selected/decisions/``: one decision per scored row, checked against bands computed here independently
(numpy sort by score, ties by sample id), and the label table of ``hardfocus run`` read from it."""

from __future__ import annotations

import json
import math
import shutil

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
from tests.selection.helpers import select_without_report

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
    assert [p.part for p in parts] == sorted(p.name for p in (tmp_path / "scores").glob("part-*.parquet"))
    assert [(p.scores, p.rows) for p in parts] == [(0, 5)] * 4
    assert pq.read_schema(parts[0].url).names[: len(DECISIONS_SCHEMA)] == DECISIONS_SCHEMA.names
    # a report of the selection reads the same bands
    assert build_report([str(tmp_path / "scores")], str(sel)).endswith("report.html")
    part = sel / "decisions" / "part-00002.parquet"
    part.write_bytes(part.read_bytes()[:-30])  # cut short
    with pytest.raises(HardfocusError, match="part-00002.parquet cannot be read .*cut short"):
        decision_parts(str(sel))
    part.unlink()
    with pytest.raises(HardfocusError, match="holds 3 parts where its summary counts 4"):
        decision_parts(str(sel))


@pytest.mark.parametrize("case", ["last part all errors", "last part all too_short", "by document, last part too_short"])
def test_a_last_score_part_without_a_ranked_row_is_selected(tmp_path, case):
    """select crashes with ``IndexError: index N out-of-bounds in add.reduceat`` (a traceback, no output) whenever
    the LAST score part holds no ranked row: ``write_selection`` counts the kept rows per part with
    ``np.add.reduceat(band == KEPT, r_bounds[:-1])``, and reduceat refuses an index equal to the array's length (the
    ``np.where`` fix after it only covers empty ranges in the middle). A last part of error / ``too_short`` / empty
    rows is ordinary (a shard of empty documents sorts last, a one-token tail window), and with small parts it is
    frequent: 3 of 40 random small selections in this review hit it. Every such selection is impossible."""
    rng = np.random.default_rng(0)
    if case.startswith("by document"):
        # documents a..d fill parts 0-1; e's only windows are too_short and are the last part's rows
        windows = {d: [(float(rng.uniform(1, 4)), 5), (float(rng.uniform(1, 4)), 5)] for d in "abcd"}
        windows["e"] = [(1.0, 0), (1.0, 0)]
        write_windowed_scores(tmp_path / "scores", windows, statuses={"e": ["too_short", "too_short"]},
                              rows_per_part=4)
        result = select_without_report([tmp_path / "scores"], tmp_path / "sel", by="document", drop_top=0.0, keep=0.5)
        n = 10
    else:
        n = 14
        bad = "error: boom" if case == "last part all errors" else "too_short"
        write_scores(tmp_path / "scores", rng.uniform(1, 4, n).tolist(), statuses=["ok"] * 7 + [bad] * 7,
                     rows_per_part=7)
        result = select_without_report([tmp_path / "scores"], tmp_path / "sel", drop_top=0.1, keep=0.5)
    decided = _decisions(tmp_path / "sel")
    assert decided.height == n and decided.filter(pl.col("band") == "excluded").height == sum(result.summary.excluded.values())


def test_the_advised_overwrite_of_a_selection_made_before_decisions_writes_them(tmp_path):
    """A selection made before decisions/ existed is refused by ``hardfocus report``, ``hardfocus run``'s label table
    and export with "run the same `hardfocus select` again with --overwrite" (hardfocus/contracts/decisions.py
    decision_parts). That advice is a dead end: the selection's identity is unchanged, so StageDir._decide answers
    COMPLETE (checked before ``overwrite``) and select logs "already holds this selection: nothing to do" and writes
    nothing, with or without --overwrite. The user cannot get decisions/ short of deleting the directory by hand;
    ``hardfocus run`` with a label_column fails at its very end on every output made by the previous version."""
    write_scores(tmp_path / "scores", list(np.linspace(1, 3, 20)), rows_per_part=5)
    sel = tmp_path / "sel"
    select_without_report([tmp_path / "scores"], sel)
    # what the previous version left: no decisions/, a summary without decision_parts
    shutil.rmtree(sel / "decisions")
    summary = json.loads((sel / "summary.json").read_text())
    del summary["decision_parts"]
    (sel / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(HardfocusError, match="--overwrite"):
        decision_parts(str(sel))

    select_without_report([tmp_path / "scores"], sel, overwrite=True)  # what the message says to do
    assert len(decision_parts(str(sel))) == 4  # raises: still "records no decisions/"


def _two_selections_over(tmp_path):
    write_scores(tmp_path / "scores", list(np.random.default_rng(1).uniform(1, 4, 20)), rows_per_part=5)
    a, b = tmp_path / "a", tmp_path / "b"
    select_without_report([tmp_path / "scores"], a, drop_top=0.1, keep=0.5)
    select_without_report([tmp_path / "scores"], b, drop_top=0.4, keep=0.2)
    return a, b


def test_a_decisions_part_put_in_another_ones_place_is_refused(tmp_path):
    """The footer record of a decisions part names the score part it decides ("scores": dir index, "part": name), so
    that a part in the wrong place can be told; but decision_parts (hardfocus/contracts/decisions.py) only compares the
    record's ``rows`` with the file. Two parts of the same row count swapped (a copy script, a hand repair) are read
    as valid: every reader (report, the run's label table, export) then gives rows 5-9 the bands of rows 10-14 and
    vice versa, while the part's own record says it belongs elsewhere."""
    a, _ = _two_selections_over(tmp_path)
    one, two = a / "decisions" / "part-00001.parquet", a / "decisions" / "part-00002.parquet"
    tmp = a / "decisions" / "swap"
    one.rename(tmp)
    two.rename(one)
    tmp.rename(two)
    with pytest.raises(HardfocusError, match="part-00001.parquet"):
        decision_parts(str(a))


def test_a_decisions_part_of_another_selection_is_refused(tmp_path):
    """The contract promises foreign decisions are refused in one clear line. A decisions part copied from another
    selection of the same scores (same part, same row count; e.g. a sync of two output directories, or one restored
    from a backup of an earlier run) passes every check of decision_parts: its footer record ({"scores": 0, "part":
    ..., "rows": 5}) is the same for every selection of those scores. The selection then contradicts itself: its
    decisions no longer count to its summary's bands, nor are the kept decisions its training parts' rows, and the
    report, label table and export silently show the other selection's bands for those rows. The record needs
    something of the selection (its identity digest) for decision_parts to compare."""
    a, b = _two_selections_over(tmp_path)
    shutil.copyfile(b / "decisions" / "part-00001.parquet", a / "decisions" / "part-00001.parquet")
    summary = json.loads((a / "summary.json").read_text())
    got = _decisions(a)
    assert {k: v for k, v in got.group_by("band").len().iter_rows() if k != "excluded"} != summary["bands"]
    with pytest.raises(HardfocusError):
        decision_parts(str(a))


@pytest.mark.parametrize("twice", ["ranked", "excluded"])
def test_a_row_decided_twice_is_refused_by_the_write_pass(tmp_path, monkeypatch, twice):
    """writer.write_selection promises "a row in neither (or both) is refused, so decisions/ accounts for each scored
    row", and the summary's counts are the excluded/ranked frames counted. But write_part only checks for a row that
    is both ranked and excluded, or neither: a row ranked twice is written twice into the training part (trained on
    twice) and counted twice in the summary's bands; a row excluded twice is counted twice in the summary's
    ``excluded`` while decisions/ holds it once (with the last reason). The guard is the one thing that would catch a
    future ranking step that duplicates rows (a join on a non-unique key, as excess and by-document use): here a
    duplicate is injected into what ranking returns, and the write pass must refuse it."""
    import selection.job as job

    real = job._rank

    def duplicating(*args, **kwargs):
        excluded, ranked, units, documents = real(*args, **kwargs)
        if twice == "ranked":
            kept = ranked.filter(pl.col("band") == "kept").head(1)
            ranked = pl.concat([ranked, kept]).sort("_row")
        else:
            excluded = pl.concat([excluded, excluded.head(1).with_columns(reason=pl.lit("another reason"))])
        return excluded, ranked, units, documents

    monkeypatch.setattr(job, "_rank", duplicating)
    statuses = ["ok"] * 20
    statuses[3] = "error: x"
    write_scores(tmp_path / "scores", list(np.linspace(1, 3, 20)), statuses=statuses, rows_per_part=5)
    with pytest.raises(HardfocusError, match="a row twice"):
        select_without_report([tmp_path / "scores"], tmp_path / "sel", drop_top=0.1, keep=0.5)
