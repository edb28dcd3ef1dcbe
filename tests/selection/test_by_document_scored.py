"""``select --by document`` (and ``--by window``) on windows scored by the tiny model, against an independent
polars/numpy computation from the part files: token-weighted loss, bits per byte, excess against a reference of
the same tokenizer (nats per token) and of another (bits per byte: other windows, the same documents)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import polars as pl
import pytest
from transformers import AutoTokenizer

from scoring import HardfocusError, ScoreConfig, score
from selection import SelectConfig, select
from selection.job import build_report
from tests.conftest import real_texts, write_jsonl
from tests.scoring.helpers import one_token_tails, windowed_documents, windows_config
from tests.selection.helpers import select_without_report
from tests.selection.test_by_document import (
    _check_whole_documents,
    _doc_of,
    _expected_documents,
    _selected,
    _softmax_over_windows,
)
from tests.selection.test_select import _expected_bands


@pytest.fixture(scope="module")
def windowed(tmp_path_factory, tiny_model_dir, tiny_chat_model_dir) -> dict:
    """Real texts (some of one window, some of dozens) scored in windows of 64 tokens by the tiny model, by a
    perturbed copy of it (the same tokenizer) and by the chat model (another tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("windowed")
    texts = [t for t in real_texts(40, seed=11) if t.strip()][:30]
    write_jsonl(root / "in" / "docs.jsonl", [{"text": t, "domain": "ab"[i % 2]} for i, t in enumerate(texts)])
    other = shutil.copytree(tiny_model_dir, root / "other-weights")
    model = AutoModelForCausalLM.from_pretrained(other)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(other)
    dirs = {}
    for name, path in (("scores", tiny_model_dir), ("ref", str(other)), ("ref_tok", tiny_chat_model_dir)):
        score(ScoreConfig(inputs=[str(root / "in")], output=str(root / name), model=path, executor="local",
                          dtype="float32", device="cpu", max_tokens=64, long_documents="windows", group_column="domain",
                          rows_per_unit=8), progress=False)
        dirs[name] = root / name
    return {"root": root, **dirs}


def _parts(d) -> pl.DataFrame:
    return pl.read_parquet(f"{d}/part-*.parquet")


def _doc_sums(d, value: str) -> pl.DataFrame:
    """Per document, from the part files: the sums over its ok windows, and whether all its windows are ok."""
    return _parts(d).group_by("document_id").agg(
        pl.col("nll_sum").filter(pl.col("status") == "ok").sum(), pl.col(value).filter(pl.col("status") == "ok").sum(),
        all_ok=(pl.col("status") == "ok").all(), windows=pl.len())


def _check_real(out, result, doc_score: dict[str, float], parts: pl.DataFrame, drop_top=0.1, keep=0.5, t=1.0) -> None:
    kept, _ = _expected_documents(doc_score, drop_top, keep)
    ok = parts.filter(pl.col("status") == "ok")
    windows = {d: set(g["sample_id"]) for (d,), g in ok.group_by("document_id")}
    got = _selected(out)
    _check_whole_documents(got, windows, kept)
    want = _softmax_over_windows({d: doc_score[d] for d in kept}, {d: len(windows[d]) for d in kept}, t)
    np.testing.assert_allclose(got["weight"].to_numpy(), [want[_doc_of(i)] for i in got["sample_id"]], rtol=1e-4)
    assert result.summary.documents["kept"] == len(kept) and result.summary.documents["eligible"] == len(doc_score)


def test_real_windows_by_document_loss_and_report(windowed):
    parts = _parts(windowed["scores"])
    assert parts["windows"].max() > 5 and parts["windows"].min() == 1 and (parts["status"] == "ok").all()
    sums = _doc_sums(windowed["scores"], "n_tokens")
    doc_loss = dict(zip(sums["document_id"], (sums["nll_sum"] / sums["n_tokens"]).cast(pl.Float32).to_list()))
    out = windowed["root"] / "sel-loss"
    cfg = SelectConfig(scores=[str(windowed["scores"])], output=str(out), by="document", temperature=0.05)
    result = select(cfg, progress=False)
    _check_real(out, result, doc_loss, parts, t=0.05)
    page = (out / "report.html").read_text()
    assert 'alt="score histogram"' in page
    ranked_again = build_report(cfg.scores, str(out), output=str(windowed["root"] / "report"))
    assert ranked_again.endswith("report.html")


def test_real_windows_bpb_by_document(windowed):
    sums = _doc_sums(windowed["scores"], "n_bytes")
    bpb = dict(zip(sums["document_id"], (sums["nll_sum"] / (sums["n_bytes"] * math.log(2))).cast(pl.Float32).to_list()))
    out = windowed["root"] / "sel-bpb"
    result = select(SelectConfig(scores=[str(windowed["scores"])], output=str(out), by="document", score="bpb"),
                    progress=False)
    _check_real(out, result, bpb, _parts(windowed["scores"]))
    assert result.summary.score_units == "bits per byte"


@pytest.mark.parametrize("ref, value, units", [("ref", "n_tokens", "nats per token"), ("ref_tok", "n_bytes", "bits per byte")])
def test_real_windows_excess_by_document(windowed, ref, value, units):
    ours, theirs = _doc_sums(windowed["scores"], value), _doc_sums(windowed[ref], value)
    joined = ours.join(theirs, on="document_id", suffix="_ref")
    assert (joined[value] == joined[f"{value}_ref"]).all()  # the same documents: the same tokens, or bytes
    scale = 1.0 if value == "n_tokens" else 1 / math.log(2)
    excess = (joined["nll_sum"] / joined[value] - joined["nll_sum_ref"] / joined[f"{value}_ref"]) * scale
    want = dict(zip(joined["document_id"], excess.cast(pl.Float32).to_list()))
    if ref == "ref_tok":  # another tokenizer cuts other windows: not the same rows, the same documents
        assert _parts(windowed[ref]).height != _parts(windowed["scores"]).height
    out = windowed["root"] / f"sel-excess-{ref}"
    cfg = SelectConfig(scores=[str(windowed["scores"])], output=str(out), by="document", score="excess",
                       reference=[str(windowed[ref])], temperature=0.02)
    result = select(cfg, progress=False)
    _check_real(out, result, want, _parts(windowed["scores"]), t=0.02)
    assert result.summary.score_units == units and result.summary.excluded == {}


def test_real_windows_by_window_rank_each_window(windowed):
    parts = _parts(windowed["scores"]).sort("sample_id")
    out = windowed["root"] / "sel-window"
    result = select(SelectConfig(scores=[str(windowed["scores"])], output=str(out), keep=0.3), progress=False)
    kept, dropped = _expected_bands(parts["loss"].to_list(), parts["sample_id"].to_list(), 0.1, 0.3)
    got = _selected(out)
    assert set(got["sample_id"]) == set(kept)
    np.testing.assert_allclose(got["loss_rank"].to_numpy(), [kept[i] for i in got["sample_id"]], atol=1e-6)
    docs_kept = {_doc_of(i) for i in kept}
    assert any(len({f"{d}#w{k}" for k in range(n)} - set(kept)) for d, n in
               parts.group_by("document_id").agg(pl.len()).iter_rows() if d in docs_kept)  # windows split apart
    assert result.summary.documents == {
        "scored": 30, "eligible": 30, "kept": len(docs_kept), "dropped": len({_doc_of(i) for i in dropped}),
        "easy": len({_doc_of(i) for i in set(parts["sample_id"]) - set(kept) - dropped})}
    assert "by" not in result.summary.parameters or result.summary.parameters["by"] == "window"


def test_excess_by_window_against_windows_cut_otherwise_is_refused(windowed, tmp_path):
    """Windows are joined on '<document>#w<k>': against a reference cut into other windows (another tokenizer, here;
    or another window size or context) window k holds other text, so by window is refused, by document is not."""
    cfg = SelectConfig(scores=[str(windowed["scores"])], reference=[str(windowed["ref_tok"])], score="excess",
                       output=str(tmp_path / "sel"), report=False)
    with pytest.raises(HardfocusError, match="cut documents into other windows .*select --by document"):
        select(cfg, progress=False)
    assert not (tmp_path / "sel").exists()
    assert select(cfg.model_copy(update={"by": "document"}), progress=False).summary.score_units == "bits per byte"
    same_cut = select(cfg.model_copy(update={"reference": [str(windowed["ref"])], "output": str(tmp_path / "s2")}),
                      progress=False)
    assert same_cut.summary.score_units == "nats per token"


def test_excess_by_document_with_another_tokenizer_keeps_a_document_both_scored_whole(tmp_path, tiny_model_dir,
                                                                                    bos_model_dir):
    """``select --by document --score excess`` with a reference of another tokenizer compares bits per byte, and
    drops a document whose two byte counts differ ("reference scored other bytes"). A document whose last window
    holds one token (no BOS, no context: ``too_short``) has that window's bytes left out of its sum (``n_bytes`` is
    null on a window that is not ok), so every such document is dropped, although both models scored all of it
    but the unscored positions the README documents: with 4 documents of which 4 have a one-token tail, nothing is
    left to select."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = one_token_tails(tok)
    write_jsonl(tmp_path / "in" / "d.jsonl", docs)
    score(windows_config([tmp_path / "in"], tmp_path / "target", tiny_model_dir), progress=False)
    score(windows_config([tmp_path / "in"], tmp_path / "reference", bos_model_dir), progress=False)
    result = select_without_report([tmp_path / "target"], tmp_path / "sel", by="document", score="excess",
                     reference=[str(tmp_path / "reference")], drop_top=0.0, keep=1.0)
    assert "reference scored other bytes" not in result.summary.excluded, result.summary.excluded
    assert result.summary.documents["kept"] == len(docs)


def test_excess_by_document_follows_its_own_advice_for_windows_of_another_context(tmp_path, tiny_model_dir):
    """``select --score excess`` on windows cut with another ``window_context`` than the reference's is refused with
    "select --by document, which compares whole documents". Following that advice, with a tokenizer that adds no
    BOS (SmolLM2's), the reference's windows of context 0 leave each later window's first token unscored, so every
    multi-window document's token count differs and is dropped as "reference scored other tokens": the advice ends
    in "the selection would keep zero samples". Either the documents are compared, or the first refusal should not
    send the user there (a one-line refusal naming window_context)."""
    write_jsonl(tmp_path / "in" / "d.jsonl", windowed_documents())
    score(windows_config([tmp_path / "in"], tmp_path / "target", tiny_model_dir, window_context=2), progress=False)
    score(windows_config([tmp_path / "in"], tmp_path / "reference", tiny_model_dir, window_context=0), progress=False)
    kw = {"score": "excess", "reference": [str(tmp_path / "reference")], "drop_top": 0.0, "keep": 1.0}
    with pytest.raises(HardfocusError, match="select --by document") as advice:
        select_without_report([tmp_path / "target"], tmp_path / "by-window", **kw)
    try:
        result = select_without_report([tmp_path / "target"], tmp_path / "by-document", by="document", **kw)
    except HardfocusError as exc:
        assert "window_context" in str(exc), f"{advice.value} -> {exc}"
        return
    assert result.summary.documents["kept"] == 6


def test_select_by_document_does_not_merge_two_documents_that_share_an_id(tmp_path, tiny_model_dir):
    """Two input rows with the same ``--id-column`` value (scored with ``--on-error record``, which warns and
    counts ``duplicate_ids``) are two documents; ``--by document`` groups windows by ``document_id`` and sums them
    into one document with both texts' NLL, ranked and weighted as one, and counts one document fewer than were
    scored, exit 0. By window every row stays a row; by document the duplicates should be refused (as excess
    refuses them) or kept apart."""
    docs = windowed_documents(4)
    docs[3]["id"] = docs[0]["id"]
    write_jsonl(tmp_path / "in" / "d.jsonl", docs)
    manifest = score(windows_config([tmp_path / "in"], tmp_path / "scores", tiny_model_dir, on_error="record"),
                     progress=False).manifest
    assert manifest.duplicate_ids and manifest.documents == 4
    try:
        result = select_without_report([tmp_path / "scores"], tmp_path / "sel", by="document", drop_top=0.0, keep=1.0)
    except HardfocusError as exc:
        assert "duplicate" in str(exc) or "repeat" in str(exc)
        return
    assert result.summary.documents["eligible"] == 4, result.summary.documents
