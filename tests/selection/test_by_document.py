"""``select --by document`` on fake windowed scores (exact ties, statuses, references) against an independent
numpy computation: documents banded whole by their token-weighted score, weights following the document,
exclusions counted in windows. Windows scored by the tiny model: test_by_document_scored.py."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from scoring import HardfocusError
from selection import SelectConfig, SelectionSummary, select
from selection.by_document import SIBLING
from selection.job import selection_identity, summary_text
from selection.scores import open_scores
from tests.selection.fake_scores import write_scores, write_windowed_scores
from tests.selection.test_select import _expected_bands


def _selected(out) -> pl.DataFrame:
    return pl.read_parquet(f"{out}/part-*.parquet").sort("sample_id")


def _doc_of(sample_id: str) -> str:
    return sample_id.rsplit("#w", 1)[0]


def _expected_documents(scores: dict[str, float], drop_top: float, keep: float) -> tuple[dict[str, float], set[str]]:
    """numpy: documents by score descending, ties by document id; kept doc -> its loss_rank, and the dropped."""
    ids = sorted(scores)
    return _expected_bands([scores[i] for i in ids], ids, drop_top, keep)


def _softmax_over_windows(doc_score: dict[str, float], windows_of: dict[str, int], temperature: float) -> dict:
    """Each kept document's window weight: exp(s_d / T), normalised to mean 1 over the kept windows."""
    s = np.array([doc_score[d] for d in doc_score], dtype=np.float64)
    n = np.array([windows_of[d] for d in doc_score], dtype=np.float64)
    e = np.exp((s - s.max()) / temperature)
    return dict(zip(doc_score, e * n.sum() / (e * n).sum()))


def _check_whole_documents(got: pl.DataFrame, eligible_windows: dict[str, set[str]], kept: dict[str, float]) -> None:
    """The kept windows are exactly every eligible window of the kept documents, each with its document's rank."""
    want = set().union(*(eligible_windows[d] for d in kept))
    assert set(got["sample_id"]) == want
    ranks = dict(zip(got["sample_id"], got["loss_rank"]))
    np.testing.assert_allclose([ranks[i] for i in sorted(want)], [kept[_doc_of(i)] for i in sorted(want)], atol=1e-6)


def _random_documents(n: int, seed: int) -> dict[str, list[tuple[float, int]]]:
    rng = np.random.default_rng(seed)
    docs = {}
    for d in rng.permutation(n):
        k = int(rng.integers(1, 6))
        docs[f"doc{d:03d}"] = [(float(np.round(rng.gamma(4, 0.7), 3)), int(rng.integers(5, 64))) for _ in range(k)]
    return docs


def _token_weighted(docs: dict[str, list[tuple[float, int]]]) -> dict[str, float]:
    return {d: float(np.float32(sum(x * t for x, t in w) / sum(t for _, t in w))) for d, w in docs.items()}


def test_documents_are_banded_whole_by_token_weighted_loss_ties_by_document_id(tmp_path):
    docs = _random_documents(60, seed=1)
    # six documents of one score, placed across the end of the kept band (66 documents: 6 dropped, 26 kept; 29
    # random ones above them): tie0..tie2 are kept, tie3..tie5 are not, by document id, whatever their order
    above = sorted(_token_weighted(docs).values(), reverse=True)
    x = (above[28] + above[29]) / 2
    docs |= {f"tie{i}": [(x + 1, 10), (x - 1, 10)] for i in (5, 2, 4, 1, 3, 0)}
    write_windowed_scores(tmp_path / "scores", docs, rows_per_part=7)  # parts split documents: summed across them
    doc_loss = _token_weighted(docs)
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), by="document", drop_top=0.1,
                       keep=0.4, temperature=0.7)
    result = select(cfg, progress=False)
    got = _selected(tmp_path / "sel")

    kept, dropped = _expected_documents(doc_loss, 0.1, 0.4)
    assert {d for d in kept if d.startswith("tie")} == {"tie0", "tie1", "tie2"} and len(kept) == 26
    windows = {d: {f"{d}#w{k}" for k in range(len(w))} for d, w in docs.items()}
    _check_whole_documents(got, windows, kept)
    own = [docs[_doc_of(i)][int(i.rsplit("#w", 1)[1])][0] for i in got["sample_id"]]
    np.testing.assert_array_equal(got["loss"].to_numpy(), np.float32(own))  # each window keeps its own loss
    s = result.summary
    assert s.documents == {"scored": 66, "eligible": 66, "dropped": len(dropped), "kept": len(kept),
                           "easy": 66 - len(kept) - len(dropped)}
    assert s.bands["kept"] == sum(len(docs[d]) for d in kept) and s.eligible == s.rows == sum(map(len, docs.values()))
    assert s.thresholds["all"].kept_max == pytest.approx(max(doc_loss[d] for d in kept))
    assert s.parameters["by"] == "document" and "eligible documents" in summary_text(s, cfg.output)

    # weights: a softmax over the kept documents' scores, expanded to their windows, mean 1 over the windows
    want = _softmax_over_windows({d: doc_loss[d] for d in kept}, {d: len(docs[d]) for d in kept}, 0.7)
    weights = dict(zip(got["sample_id"], got["weight"].to_numpy()))
    np.testing.assert_allclose([weights[i] for i in got["sample_id"]], [want[_doc_of(i)] for i in got["sample_id"]],
                               rtol=1e-5)
    assert got["weight"].mean() == pytest.approx(1.0, rel=1e-5)
    per_doc = got.with_columns(doc=pl.col("sample_id").str.replace(r"#w\d+$", "")).group_by("doc")
    assert per_doc.agg(pl.col("weight").n_unique())["weight"].max() == 1


def test_per_group_bands_documents_within_each_group(tmp_path):
    docs = _random_documents(50, seed=2)
    groups = {d: ("code" if i % 3 == 0 else "web") for i, d in enumerate(sorted(docs))}
    write_windowed_scores(tmp_path / "scores", docs, groups=groups, rows_per_part=9)
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), by="document", per_group=True,
                       drop_top=0.2, keep=0.5, temperature=0.5)
    result = select(cfg, progress=False)
    got = _selected(tmp_path / "sel")
    doc_loss = _token_weighted(docs)
    windows = {d: {f"{d}#w{k}" for k in range(len(w))} for d, w in docs.items()}
    for group in ("code", "web"):
        mine = {d: v for d, v in doc_loss.items() if groups[d] == group}
        kept, _ = _expected_documents(mine, 0.2, 0.5)
        rows = got.filter(pl.col("group") == group)
        _check_whole_documents(rows, windows, kept)
        want = _softmax_over_windows({d: mine[d] for d in kept}, {d: len(docs[d]) for d in kept}, 0.5)
        np.testing.assert_allclose(rows["weight"].to_numpy(), [want[_doc_of(i)] for i in rows["sample_id"]], rtol=1e-5)
        assert result.summary.groups[group].kept == sum(len(docs[d]) for d in kept)


def test_an_unscored_window_excludes_its_document_a_too_short_tail_does_not(tmp_path):
    docs = {
        "a": [(3.0, 20), (9.0, 20), (3.5, 20)],  # its middle window errored: all of a goes
        "b": [(2.0, 30), (float("nan"), 30)],  # a non-finite loss: all of b goes
        "c": [(4.0, 10), (6.0, 30), (0.0, 0)],  # a one-token tail: too_short, c stays with its two windows
        "d": [(0.0, 0)],  # empty text: its one window
        "e": [(1.0, 40), (5.0, 8)],
        "f": [(2.5, 12)],
    }
    statuses = {"a": ["ok", "error: non-finite loss", "ok"], "c": ["ok", "ok", "too_short"], "d": ["empty"]}
    write_windowed_scores(tmp_path / "scores", docs, statuses=statuses, rows_per_part=2)
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), by="document", drop_top=0.0,
                       keep=1.0, weighting="none")
    s = select(cfg, progress=False).summary
    assert s.excluded == {"status: error": 1, "loss not finite": 1, SIBLING: 3, "status: too_short": 1,
                          "status: empty": 1}
    assert s.eligible == 5 and s.eligible + sum(s.excluded.values()) == s.rows == 12
    assert s.documents == {"scored": 6, "eligible": 3, "kept": 3}
    got = _selected(tmp_path / "sel")
    assert set(got["sample_id"]) == {"c#w0", "c#w1", "e#w0", "e#w1", "f#w0"}
    # c ranks by its two scored windows: (4*10 + 6*30) / 40 = 5.5, above e's (40 + 40) / 48 and f's 2.5
    assert dict(zip(got["sample_id"], got["loss_rank"]))["c#w1"] == 0.0
    assert s.thresholds["all"].kept_max == pytest.approx(5.5)


def test_excess_by_document_joins_the_reference_on_document_id_and_counts_what_differs(tmp_path):
    docs = _random_documents(30, seed=4)
    rng = np.random.default_rng(4)
    ref = {d: [(x * float(rng.uniform(0.5, 1.1)), t) for x, t in w] for d, w in docs.items()}
    names = sorted(docs)
    missing, errored, other_tokens = names[3], names[4], names[5]
    ref[f"elsewhere-{missing}"] = ref.pop(missing)
    ref[other_tokens] = [(x, t + 1) for x, t in ref[other_tokens]]
    statuses = {errored: ["error: boom"] + ["ok"] * (len(ref[errored]) - 1)}
    write_windowed_scores(tmp_path / "scores", docs)
    write_windowed_scores(tmp_path / "ref", ref, statuses=statuses, rows_per_part=5)
    ours, theirs = _token_weighted(docs), _token_weighted(ref)
    # one tokenizer: each side's mean over the tokens it scored, even where their counts differ (other windows)
    want = {d: float(np.float32(ours[d] - theirs[d])) for d in docs if d not in (missing, errored)}
    cfg = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"), by="document", score="excess",
                       reference=[str(tmp_path / "ref")], temperature=0.3)
    s = select(cfg, progress=False).summary
    kept, _ = _expected_documents(want, 0.1, 0.5)
    got = _selected(tmp_path / "sel")
    _check_whole_documents(got, {d: {f"{d}#w{k}" for k in range(len(w))} for d, w in docs.items()}, kept)
    want_w = _softmax_over_windows({d: want[d] for d in kept}, {d: len(docs[d]) for d in kept}, 0.3)
    np.testing.assert_allclose(got["weight"].to_numpy(), [want_w[_doc_of(i)] for i in got["sample_id"]], rtol=1e-4)
    assert s.excluded == {"reference: no document with this document_id": len(docs[missing]),
                          "reference: a window of its document is not scored": len(docs[errored])}
    assert s.score_units == "nats per token" and s.eligible + sum(s.excluded.values()) == s.rows

    # a truncated reference (a row per document, sample_id = the document's id) joins the same way
    flat_ids = [d for d in names if d != missing] + ["x"]
    flat = {d: (sum(x * t for x, t in ref[d]), sum(t for _, t in ref[d])) for d in flat_ids[:-1]} | {"x": (5.0, 5)}
    write_scores(tmp_path / "flat", [flat[d][0] / flat[d][1] for d in flat_ids], ids=flat_ids,
                 columns={"nll_sum": [flat[d][0] for d in flat_ids], "n_tokens": [flat[d][1] for d in flat_ids]})
    s2 = select(cfg.model_copy(update={"reference": [str(tmp_path / "flat")], "output": str(tmp_path / "sel2")}),
                progress=False).summary
    assert s2.excluded == {"reference: no document with this document_id": len(docs[missing])}
    want[errored] = float(np.float32(ours[errored] - flat[errored][0] / flat[errored][1]))  # scored whole there
    kept, _ = _expected_documents(want, 0.1, 0.5)
    _check_whole_documents(_selected(tmp_path / "sel2"), {d: {f"{d}#w{k}" for k in range(len(w))} for d, w in docs.items()},
                           kept)


def test_refusals_and_identity(tmp_path):
    write_scores(tmp_path / "truncated", [1.0, 2.0, 3.0])
    cfg = SelectConfig(scores=[str(tmp_path / "truncated")], output=str(tmp_path / "o"), by="document")
    with pytest.raises(HardfocusError, match=r"--by document ranks the documents of windowed scores.*--by window"):
        select(cfg, progress=False)
    with pytest.raises(ValueError, match="score ifd cannot rank by document"):
        SelectConfig(scores=["s"], output="o", score="ifd", by="document")
    docs = _random_documents(20, seed=3)
    write_windowed_scores(tmp_path / "scores", docs)
    # by window (the default) keeps the identity selections had before the field existed
    window = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "sel"))
    parts = open_scores(window.scores)
    assert selection_identity(window, parts, None)["parameters"] == window.model_dump(
        exclude={"scores", "reference", "output", "overwrite", "report", "ray_address", "by"})
    assert selection_identity(window.model_copy(update={"by": "document"}), parts, None)["parameters"]["by"] == "document"
    made = select(window, progress=False).summary
    assert select(window, progress=False).skipped
    old = {k: v for k, v in made.model_dump().items() if k != "documents"}  # a summary of before windows
    assert SelectionSummary.model_validate(old).documents is None
    with pytest.raises(HardfocusError, match=r"differs in: parameters\.by"):
        select(window.model_copy(update={"by": "document"}), progress=False)
    assert not (tmp_path / "o").exists()
