"""Problems found by a third adversarial review, of ``--long-documents windows`` (scoring in windows, ``select --by
document``, eval in windows). Each test fails on the code as reviewed and passes once the problem is fixed."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from scoring import HardfocusError, ScoreConfig, score
from tests.conftest import real_texts, write_jsonl

MAX_TOKENS = 16


def _cfg(inputs, output, model, **kw) -> ScoreConfig:
    return ScoreConfig(inputs=[str(i) for i in inputs], output=str(output), model=model, executor="local",
                       dtype="float32", device="cpu", max_tokens=MAX_TOKENS, rows_per_unit=2, id_column="id",
                       **({"long_documents": "windows"} | kw))


def _select(scores, output, **kw):
    from selection import SelectConfig, select

    return select(SelectConfig(scores=[str(s) for s in scores], output=str(output), report=False, **kw), progress=False)


def _docs(n: int = 6, seed: int = 0) -> list[dict]:
    return [{"id": f"doc{i}", "text": " ".join(real_texts(3, seed=seed + i))} for i in range(n)]


# ---- resume ----------------------------------------------------------------------------------------------------


def test_a_resumed_run_does_not_reuse_a_stampless_windowed_part_that_lost_windows(tmp_path, tiny_model_dir):
    """A part of windows holds more rows than the documents its name spans, and only its stamp says how many. A
    rerun of an unfinished job (scoring/units.py ``reusable_parts``) checks stamps with ``required=False`` although
    the job file says every part of this directory is stamped: a part rewritten by a tool that drops Parquet
    metadata, with a document's trailing windows gone, still counts its documents right (``window == 0`` rows), so
    it is reused. The run exits 0 and its manifest counts the windows that are left: rows lost."""
    write_jsonl(tmp_path / "in" / "d.jsonl", _docs())
    cfg = _cfg([tmp_path / "in"], tmp_path / "scores", tiny_model_dir)
    reference = score(cfg.model_copy(update={"output": str(tmp_path / "reference")}), progress=False).manifest
    score(cfg, progress=False)
    out = tmp_path / "scores"
    parts = sorted(out.glob("part-*.parquet"))
    (out / "manifest.json").unlink()  # the job was killed before its last part: no manifest, no done marker
    for marker in (out / "done").glob("*.json"):
        marker.unlink()
    parts[-1].unlink()
    table = pq.read_table(parts[0])
    last = table["window"].to_numpy()
    keep = np.flatnonzero(~((np.arange(len(last)) == len(last) - 1) & (last > 0)))  # its last document's last window
    assert len(keep) == table.num_rows - 1
    pq.write_table(table.take(keep).replace_schema_metadata(None), parts[0])  # a tool that drops the metadata
    try:
        again = score(cfg, progress=False).manifest
    except HardfocusError as exc:
        assert parts[0].name in str(exc)
        return
    assert again.rows == reference.rows, f"the rerun exits 0 with {reference.rows - again.rows} windows lost"


# ---- bytes -----------------------------------------------------------------------------------------------------


def _text_of_tokens(tok, n: int, seed: int = 0) -> str:
    """A real text whose tokenisation without special tokens is exactly ``n`` tokens."""
    text = " ".join(real_texts(40, seed=seed)).lstrip()
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for _, stop in offsets:
        if len(tok(text[:stop], add_special_tokens=False)["input_ids"]) == n:
            return text[:stop]
    pytest.skip(f"no prefix of the text tokenises to exactly {n} tokens")


def _one_token_tails(tok, n_docs: int = 4) -> list[dict]:
    """Documents whose last window (max_tokens MAX_TOKENS, no BOS, no context) holds one token of its own, so it
    scores nothing (``too_short``), with documents that end at a window boundary."""
    return [{"id": f"doc{i}", "text": _text_of_tokens(tok, MAX_TOKENS * (1 + i % 2) + 1, seed=i)} for i in range(n_docs)]


def test_a_documents_windows_n_bytes_sum_to_its_utf8_size_in_the_scores(tmp_path, tiny_model_dir):
    """README: "the windows of a document partition its text, and their `n_bytes` sum to its UTF-8 size". In the
    part files they do not: ``n_bytes`` is written null wherever a window's status is not ok (scoring/units.py
    ``score_unit`` masks it with ``~ok``), so a document whose last window holds a single token (a ``too_short``
    window: no BOS, no context) has the bytes of that window missing from every sum over its windows."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = _one_token_tails(tok)
    write_jsonl(tmp_path / "in" / "d.jsonl", docs)
    score(_cfg([tmp_path / "in"], tmp_path / "scores", tiny_model_dir), progress=False)
    df = pl.read_parquet(tmp_path / "scores" / "part-*.parquet")
    assert "too_short" in df["status"].to_list()
    sums = dict(df.group_by("document_id").agg(pl.col("n_bytes").sum()).iter_rows())
    assert sums == {d["id"]: len(d["text"].encode()) for d in docs}


def test_excess_by_document_with_another_tokenizer_keeps_a_document_both_scored_whole(tmp_path, tiny_model_dir,
                                                                                    bos_model_dir):
    """``select --by document --score excess`` with a reference of another tokenizer compares bits per byte, and
    drops a document whose two byte counts differ ("reference scored other bytes"). A document whose last window
    holds one token (no BOS, no context: ``too_short``) has that window's bytes left out of its sum (``n_bytes`` is
    null on a window that is not ok), so every such document is dropped, although both models scored all of it
    but the unscored positions the README documents: with 4 documents of which 4 have a one-token tail, nothing is
    left to select."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = _one_token_tails(tok)
    write_jsonl(tmp_path / "in" / "d.jsonl", docs)
    score(_cfg([tmp_path / "in"], tmp_path / "target", tiny_model_dir), progress=False)
    score(_cfg([tmp_path / "in"], tmp_path / "reference", bos_model_dir), progress=False)
    result = _select([tmp_path / "target"], tmp_path / "sel", by="document", score="excess",
                     reference=[str(tmp_path / "reference")], drop_top=0.0, keep=1.0)
    assert "reference scored other bytes" not in result.summary.excluded, result.summary.excluded
    assert result.summary.documents["kept"] == len(docs)


# ---- select --by document ----------------------------------------------------------------------------------------


def test_excess_by_document_follows_its_own_advice_for_windows_of_another_context(tmp_path, tiny_model_dir):
    """``select --score excess`` on windows cut with another ``window_context`` than the reference's is refused with
    "select --by document, which compares whole documents". Following that advice, with a tokenizer that adds no
    BOS (SmolLM2's), the reference's windows of context 0 leave each later window's first token unscored, so every
    multi-window document's token count differs and is dropped as "reference scored other tokens": the advice ends
    in "the selection would keep zero samples". Either the documents are compared, or the first refusal should not
    send the user there (a one-line refusal naming window_context)."""
    write_jsonl(tmp_path / "in" / "d.jsonl", _docs())
    score(_cfg([tmp_path / "in"], tmp_path / "target", tiny_model_dir, window_context=2), progress=False)
    score(_cfg([tmp_path / "in"], tmp_path / "reference", tiny_model_dir, window_context=0), progress=False)
    kw = {"score": "excess", "reference": [str(tmp_path / "reference")], "drop_top": 0.0, "keep": 1.0}
    with pytest.raises(HardfocusError, match="select --by document") as advice:
        _select([tmp_path / "target"], tmp_path / "by-window", **kw)
    try:
        result = _select([tmp_path / "target"], tmp_path / "by-document", by="document", **kw)
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
    docs = _docs(4)
    docs[3]["id"] = docs[0]["id"]
    write_jsonl(tmp_path / "in" / "d.jsonl", docs)
    manifest = score(_cfg([tmp_path / "in"], tmp_path / "scores", tiny_model_dir, on_error="record"),
                     progress=False).manifest
    assert manifest.duplicate_ids and manifest.documents == 4
    try:
        result = _select([tmp_path / "scores"], tmp_path / "sel", by="document", drop_top=0.0, keep=1.0)
    except HardfocusError as exc:
        assert "duplicate" in str(exc) or "repeat" in str(exc)
        return
    assert result.summary.documents["eligible"] == 4, result.summary.documents


def test_windows_of_a_slow_byte_level_tokenizer_count_every_byte_once():
    """A slow tokenizer has no offsets, so a window's ``n_bytes`` is measured by decoding its own tokens
    (scoring/windows.py ``_add_document``). With a byte-level one (ByT5's here; Qwen-1's tiktoken tokenizer is
    another slow byte-level one) a window boundary falls inside a multi-byte character every few windows, the
    decode of each half drops the partial bytes, and the document's windows count far fewer bytes than its text
    has: bits per byte come out too high, silently (in truncate mode only the one cut at the end loses any)."""
    from transformers import ByT5Tokenizer

    from scoring.windows import window_texts

    tok = ByT5Tokenizer()
    assert not tok.is_fast
    text = "Grüße aus Köln, schöne Straße, naïve café 😀. " * 10
    # fixed by refusing: windows need a fast tokenizer's offsets (the job refuses at its start, naming the tokenizer)
    with pytest.raises(HardfocusError, match="needs a fast tokenizer .*ByT5Tokenizer"):
        window_texts(tok, [text], [None], MAX_TOKENS, 2)


# ---- eval ------------------------------------------------------------------------------------------------------


def test_eval_in_windows_does_not_count_scored_documents_as_rows_it_could_not_score(tmp_path, tiny_model_dir):
    """Eval in windows counts a document once (``docs``), but ``rows_not_ok`` ("held-out rows a model cannot score
    (empty, too short)", README) counts windows: every document whose last window holds one token (no BOS, context
    0: a documented unscored position, not a failure) adds one, so eval reports as many held-out rows it could not
    score as there are documents, although it scored every one of them; and two models with other tokenizers
    report different counts for the same held-out set."""
    from pipelines.evaluation import EvalConfig, evaluate

    docs = _one_token_tails(AutoTokenizer.from_pretrained(tiny_model_dir))
    write_jsonl(tmp_path / "held" / "h.jsonl", [{"text": d["text"]} for d in docs])
    cfg = EvalConfig(models=[f"base={tiny_model_dir}"], data=[str(tmp_path / "held")], output=str(tmp_path / "eval"),
                     group_column=None, max_tokens=MAX_TOKENS, dtype="float32", long_documents="windows")
    model = evaluate(cfg, progress=False).models[0]
    assert model.table.filter(pl.col("group") == "(all)")["docs"].item() == len(docs)
    assert model.not_ok == 0, f"{model.not_ok} held-out rows not ok, of {len(docs)} documents all scored"


# ---- training --------------------------------------------------------------------------------------------------


def test_training_on_windows_longer_than_max_seq_len_is_not_silent(tmp_path, bos_model_dir, caplog):
    """Windows exist so that every token of a document is trained on; training cuts each sample at ``max_seq_len``
    (default 512, below scoring's default ``max_tokens`` 1024; demo.toml pairs 512 with 256), so with windows longer
    than that every window loses the tail of its own tokens: never trained on, no refusal and no warning, exit 0
    (the collator warns only about a sample left with no target at all). The README asks for
    ``max_seq_len >= max_tokens`` in prose; nothing checks it, though the selection's scores record max_tokens."""
    import logging

    from training import TrainConfig, train

    write_jsonl(tmp_path / "in" / "d.jsonl", _docs(4))
    score(_cfg([tmp_path / "in"], tmp_path / "scores", bos_model_dir, window_context=2), progress=False)
    _select([tmp_path / "scores"], tmp_path / "sel", drop_top=0.0, keep=1.0)
    cfg = TrainConfig(data=[str(tmp_path / "sel")], output=str(tmp_path / "model"), model=bos_model_dir,
                      max_steps=1, batch_size=4, max_seq_len=MAX_TOKENS // 2, precision="fp32", save_steps=100,
                      logging_steps=1, warmup_ratio=0.0, lr_scheduler="constant")
    caplog.set_level(logging.WARNING)
    try:
        train(cfg, progress=False)
    except HardfocusError as exc:
        assert "max_seq_len" in str(exc)
        return
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "max_seq_len" in r.getMessage()]
    assert warned, "every window was cut to max_seq_len, silently"
