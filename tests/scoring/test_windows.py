"""--long-documents windows: every token of a document scored once, each window exactly as the model scores it.

Each check is against an independent computation: the tokenizer's own tokenisation of the whole document, the
model's own ``labels=`` loss on each window (the context's labels -100), the document's NLL summed by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scoring import HardfocusError, ScoreConfig, score
from scoring.windows import encode_long, window_texts
from tests.conftest import real_texts, write_jsonl
from tests.docs import blocks, page, section
from tests.scoring.helpers import WINDOW_TOKENS, one_token_tails, windowed_documents, windows_config

MAX_TOKENS = 48


def text_of_tokens(tok, n: int, seed: int = 0) -> str:
    """A real text whose tokenisation (special tokens included) is exactly ``n`` tokens."""
    text = " ".join(real_texts(40, seed=seed)).lstrip()
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    specials = len(tok("a")["input_ids"]) - len(tok("a", add_special_tokens=False)["input_ids"])
    for end in sorted({stop for _, stop in offsets}):
        if text[:end].strip() and len(tok(text[:end])["input_ids"]) == n:
            return text[:end]
        if len(tok(text[:end])["input_ids"]) > n + specials + 2:
            break
    pytest.skip(f"no prefix of the text tokenises to exactly {n} tokens")


def documents(tok) -> list[str]:
    """Documents of every edge length: exactly max_tokens, one more, one token, empty, and long ones."""
    long = [" ".join(real_texts(12, seed=s)) for s in (1, 2)]
    return [text_of_tokens(tok, MAX_TOKENS), text_of_tokens(tok, MAX_TOKENS + 1), "a",
            "", *long, long[0][:700]]


def doc_windows(w, d: int) -> list[int]:
    return [k for k in range(len(w.doc)) if w.doc[k] == d]


@pytest.mark.parametrize("model", ["tiny", "bos"])
@pytest.mark.parametrize("context", [0, 5])
def test_windows_cover_the_documents_tokens_once(model, context, tiny_model_dir, bos_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir if model == "tiny" else bos_model_dir)
    texts = documents(tok)
    w = window_texts(tok, texts, [None] * len(texts), MAX_TOKENS, context)
    bos = 1 if model == "bos" else 0
    for d, text in enumerate(texts):
        ks = doc_windows(w, d)
        assert [w.window[k] for k in ks] == list(range(len(ks))) and {w.windows[k] for k in ks} == {len(ks)}
        if not text:
            assert [w.status[k] for k in ks] == ["empty"]
            continue
        whole = tok(text)["input_ids"]
        own = [w.input_ids[ks[0]]] + [w.input_ids[k][w.prefix_tokens[k]:] for k in ks[1:]]
        assert np.concatenate(own).tolist() == whole  # every token once, in order
        assert all(len(w.input_ids[k]) <= MAX_TOKENS for k in ks)
        later = MAX_TOKENS - bos - context  # tokens each window after the first holds of its own
        assert len(ks) == 1 + max(0, -(-(len(whole) - MAX_TOKENS) // later))
        for k in ks[1:]:  # a later window: BOS, then the context (the document's tokens just before), then its own
            seq, lead = w.input_ids[k].tolist(), w.prefix_tokens[k]
            assert lead == bos + context and seq[:bos] == whole[:bos]
            start = len(np.concatenate(own[: ks.index(k)]))
            assert seq[bos:lead] == whole[start - context : start]
        bounds = [(w.char_start[k], w.char_stop[k]) for k in ks]  # the windows partition the text
        assert bounds[0][0] == 0 and bounds[-1][1] == len(text)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert sum(w.n_bytes[k] for k in ks) == len(text.encode())
    one_token = doc_windows(w, 2)
    assert [w.status[k] for k in one_token] == [None if bos else "too_short"]  # with BOS, one token is predictable
    assert len(doc_windows(w, 0)) == 1 and len(doc_windows(w, 1)) == 2  # exactly max_tokens; one more


class Recording:
    """A tokenizer that records the longest text it was given."""

    def __init__(self, tok):
        self.tok, self.longest, self.is_fast = tok, 0, True

    def __call__(self, text, **kwargs):
        self.longest = max(self.longest, len(text))
        return self.tok(text, **kwargs)


def test_a_long_text_is_tokenised_in_pieces_exactly_as_whole(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "\n\n".join(real_texts(150, seed=5))
    recording = Recording(tok)
    ids, starts = encode_long(recording, text, piece=3000, overlap=300)
    assert recording.longest <= 3000 + 300 < len(text) / 10  # pieces, never the whole text
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert ids.tolist() == enc["input_ids"]
    assert starts.tolist() == [s for s, _ in enc["offset_mapping"]]
    glued = text[:5000] + "x" * 9000 + text[5000:9000]  # a 9,000-character word: no safe cut, tokenised whole
    assert encode_long(tok, glued, piece=3000, overlap=300)[0].tolist() == tok(glued, add_special_tokens=False)["input_ids"]


def write_corpus(root: Path, tok, n_long: int = 6) -> list[str]:
    texts = documents(tok) + [" ".join(real_texts(6, seed=20 + i)) for i in range(n_long)]
    write_jsonl(root / "in" / "docs.jsonl", [{"text": t, "id": f"doc{i}"} for i, t in enumerate(texts)])
    return texts


def score_windows(root: Path, model: str, out: str = "scores", **kw) -> pl.DataFrame:
    cfg = ScoreConfig(inputs=[str(root / "in")], output=str(root / out), model=model, dtype="float32", id_column="id",
                      max_tokens=MAX_TOKENS, long_documents="windows", rows_per_unit=3, **({"executor": "local"} | kw))
    result = score(cfg, progress=False)
    assert result.manifest.long_documents == "windows" and result.manifest.window_context == kw.get("window_context", 0)
    return pl.read_parquet(root / out / "part-*.parquet").sort("document_id", "window")


@pytest.mark.parametrize(("model", "context"), [("tiny", 0), ("bos", 6)])
def test_each_window_scores_as_the_models_own_loss(model, context, tiny_model_dir, bos_model_dir, tmp_path, monkeypatch):
    path = tiny_model_dir if model == "tiny" else bos_model_dir
    tok = AutoTokenizer.from_pretrained(path)
    texts = write_corpus(tmp_path, tok)
    df = score_windows(tmp_path, path, window_context=context)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ok = df.filter(pl.col("status") == "ok")
    nll_by_doc: dict[str, float] = {}
    with torch.inference_mode():
        for row in ok.iter_rows(named=True):
            ids = torch.tensor([row["input_ids"]])
            labels = ids.clone()
            labels[0, : row["prefix_tokens"]] = -100  # the BOS and the context are read, not scored
            theirs = float(lm(input_ids=ids, labels=labels).loss)
            assert row["loss"] == pytest.approx(theirs, abs=1e-4)
            assert row["n_tokens"] == len(row["input_ids"]) - max(row["prefix_tokens"], 1)
            nll_by_doc[row["document_id"]] = nll_by_doc.get(row["document_id"], 0.0) + theirs * row["n_tokens"]
    assert df["sample_id"].to_list() == [f"{d}#w{k}" for d, k in zip(df["document_id"], df["window"])]
    # every token of every document scored once: all but the document's first, and with no BOS or context the first
    # of each later window
    for i, text in enumerate(texts):
        windows = df.filter(pl.col("document_id") == f"doc{i}")
        n = len(tok(text)["input_ids"])
        unscored = 1 + (len(windows) - 1 if (model == "tiny" and context == 0) else 0)
        assert windows.filter(pl.col("status") == "ok")["n_tokens"].sum() == (max(n - unscored, 0) if text else 0)
    # the README's polars recipe, verbatim: a document's token-weighted loss from its windows
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(readme_recipe(), "docs/scoring.md", "exec"), ns)  # noqa: S102 - the docs' own code
    docs = ns["documents"]
    assert sorted(docs["document_id"]) == sorted(nll_by_doc)
    for row in docs.iter_rows(named=True):
        assert row["loss"] == pytest.approx(nll_by_doc[row["document_id"]] / row["tokens"], abs=1e-4)
        size = len(texts[int(row["document_id"].removeprefix("doc"))].encode())  # the whole text's bytes
        assert row["bpb"] == pytest.approx(nll_by_doc[row["document_id"]] / (size * np.log(2)), rel=1e-4)


def readme_recipe() -> str:
    """The polars recipe of docs/scoring.md's "Long documents: windows" (before its own subsections)."""
    text = section(page("scoring.md"), "## Long documents: windows")
    (code,) = blocks(text[: text.index("\n### ")], "python")
    return code


def test_windows_are_part_of_the_scores_identity(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = write_corpus(tmp_path, tok, n_long=1)
    cfg = ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "scores"), model=tiny_model_dir,
                      executor="local", dtype="float32", max_tokens=MAX_TOKENS, rows_per_unit=3)
    truncated = score(cfg, progress=False).manifest
    assert truncated.rows == truncated.documents == len(texts) and truncated.long_documents == "truncate"
    with pytest.raises(HardfocusError, match="long_documents"):
        score(cfg.model_copy(update={"long_documents": "windows"}), progress=False)
    windowed = score(cfg.model_copy(update={"long_documents": "windows", "overwrite": True}), progress=False).manifest
    assert windowed.documents == len(texts) < windowed.rows
    markers = [json.loads(p.read_text()) for p in (tmp_path / "scores" / "done").glob("*.json")]
    assert [m["rows"] for m in markers] == [len(texts)]  # the shard's input rows
    assert [m["counts"]["documents"] for m in markers] == [len(texts)]
    assert [m["counts"]["rows"] for m in markers] == [windowed.rows]
    assert score(cfg.model_copy(update={"long_documents": "windows"}), progress=False).skipped


@pytest.mark.parametrize(
    ("settings", "match"),
    [({"long_documents": "windows", "format": "messages"}, "is for format text"),
     ({"window_context": 4}, "read only with long_documents windows"),
     ({"long_documents": "windows", "window_context": MAX_TOKENS - 1}, "at most max_tokens - 2")],
)
def test_window_settings_that_cannot_work_are_refused(settings, match):
    with pytest.raises(ValueError, match=match):
        ScoreConfig(inputs=["x"], output="y", max_tokens=MAX_TOKENS, **settings)


def test_sigkill_mid_job_then_rerun_scores_every_window_once(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    write_corpus(tmp_path, tok, n_long=30)
    reference = score_windows(tmp_path, tiny_model_dir, out="reference", window_context=3)
    out = tmp_path / "scores"
    args = [sys.executable, "-m", "pipelines.cli", "-q", "score", str(tmp_path / "in"), "-o", str(out), "--model",
            tiny_model_dir, "--executor", "local", "--dtype", "float32", "--id-column", "id", "--max-tokens",
            str(MAX_TOKENS), "--long-documents", "windows", "--window-context", "3", "--rows-per-unit", "1"]
    for _attempt in range(3):  # on a loaded machine the run may finish before it is killed: then try again
        proc = subprocess.Popen(args, env=os.environ | {"PYTHONPATH": os.getcwd()}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 240
        while len(list(out.glob("part-*.parquet"))) < 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not (out / "manifest.json").exists():
            break
        shutil.rmtree(out)
    assert not (out / "manifest.json").exists(), "the run always finished before the kill"
    killed_parts = len(list(out.glob("part-*.parquet")))
    assert killed_parts >= 3
    result = score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(out), model=tiny_model_dir, executor="local",
                               dtype="float32", id_column="id", max_tokens=MAX_TOKENS, long_documents="windows",
                               window_context=3, rows_per_unit=1), progress=False)
    assert result.manifest.runs[-1].units_reused >= killed_parts - 1  # the parts written before the kill are kept
    again = pl.read_parquet(out / "part-*.parquet").sort("document_id", "window")
    assert again["sample_id"].n_unique() == again.height == reference.height
    columns = ["sample_id", "document_id", "window", "windows", "prefix_tokens", "char_start", "char_stop", "n_tokens",
               "n_bytes", "status", "input_ids"]
    assert again.select(columns).equals(reference.select(columns))
    np.testing.assert_allclose(again["loss"].fill_null(-1).to_numpy(), reference["loss"].fill_null(-1).to_numpy(),
                               atol=1e-5)


@pytest.mark.ray
def test_ray_scores_the_windows_the_local_executor_scores(tiny_model_dir, tmp_path, local_ray):
    write_corpus(tmp_path, AutoTokenizer.from_pretrained(tiny_model_dir), n_long=2)
    local = score_windows(tmp_path, tiny_model_dir, out="local", window_context=2)
    on_ray = score_windows(tmp_path, tiny_model_dir, out="ray", window_context=2, executor="ray")
    columns = ["sample_id", "document_id", "window", "prefix_tokens", "char_start", "n_tokens", "status", "input_ids"]
    assert on_ray.select(columns).equals(local.select(columns))
    np.testing.assert_allclose(on_ray["loss"].fill_null(-1).to_numpy(), local["loss"].fill_null(-1).to_numpy(), atol=1e-5)


def test_eval_in_windows_judges_whole_documents(tiny_model_dir, tmp_path):
    """Held-out documents far longer than max_tokens: eval in windows counts each document once and its loss over
    every scored token; truncation judges only the prefixes."""
    from pipelines.evaluation import EvalConfig, evaluate

    texts = [" ".join(real_texts(4, seed=40 + i)) for i in range(3)]
    write_jsonl(tmp_path / "held" / "h.jsonl", [{"text": t} for t in texts])
    cfg = EvalConfig(models=[f"base={tiny_model_dir}"], data=[str(tmp_path / "held")], output=str(tmp_path / "eval"),
                     group_column=None, max_tokens=MAX_TOKENS, dtype="float32", long_documents="windows",
                     window_context=4)
    overall = evaluate(cfg, progress=False).models[0].table.filter(pl.col("group") == "(all)").row(0, named=True)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    nll, tokens, doc_losses = 0.0, 0, []
    with torch.inference_mode():  # each document's NLL over all its tokens, window by window, from the tokenizer
        for text in texts:
            ids, doc_nll, doc_tokens = tok(text)["input_ids"], 0.0, 0
            own = MAX_TOKENS - 4
            starts = [0, *range(MAX_TOKENS, len(ids), own)]
            for k, start in enumerate(starts):
                lead = 0 if k == 0 else 4
                seq = ids[start - lead : (MAX_TOKENS if k == 0 else start + own)]
                labels = torch.tensor([seq])
                labels[0, :lead] = -100
                n = len(seq) - max(lead, 1)
                doc_nll += float(lm(input_ids=torch.tensor([seq]), labels=labels).loss) * n
                doc_tokens += n
            nll, tokens = nll + doc_nll, tokens + doc_tokens
            doc_losses.append(doc_nll / doc_tokens)
    assert overall["docs"] == 3 and overall["tokens"] == tokens == sum(len(tok(t)["input_ids"]) - 1 for t in texts)
    assert overall["loss"] == pytest.approx(nll / tokens, abs=1e-4)
    assert overall["mean_loss"] == pytest.approx(np.mean(doc_losses), abs=1e-4)
    prefixes = evaluate(cfg.model_copy(update={"long_documents": "truncate", "window_context": 0}), progress=False)
    assert prefixes.models[0].table.filter(pl.col("group") == "(all)")["tokens"].item() == 3 * (MAX_TOKENS - 1)


def test_a_windowed_part_cut_to_fewer_windows_is_found(tiny_model_dir, tmp_path):
    """A part of windows holds more rows than the documents its name spans: its stamp records how many, so a part
    rewritten with fewer windows (a valid Parquet file) is refused by selection and scored again by a rerun."""
    import pyarrow.parquet as pq

    from selection import SelectConfig, select

    write_corpus(tmp_path, AutoTokenizer.from_pretrained(tiny_model_dir), n_long=2)
    before = score_windows(tmp_path, tiny_model_dir)
    part = max((tmp_path / "scores").glob("part-*.parquet"), key=lambda p: pq.read_metadata(p).num_rows)
    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows // 2), part)  # the stamp (schema metadata) travels along
    selection = SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "selected"), report=False)
    with pytest.raises(HardfocusError, match=f"{part.name} holds \d+ rows where its stamp says"):
        select(selection, progress=False)
    after = score_windows(tmp_path, tiny_model_dir)
    assert after.select("sample_id", "n_tokens", "input_ids").equals(before.select("sample_id", "n_tokens", "input_ids"))
    assert select(selection, progress=False).summary.rows == before.height


def test_training_on_selected_windows_computes_each_windows_scored_loss(tiny_model_dir, bos_model_dir, tmp_path):
    """A window read after its context trains on its own tokens only: the trainer's per-sample loss of each selected
    window (BOS + context + own tokens, the context's labels -100) is the loss scoring gave it."""
    from selection import SelectConfig, select
    from training.collator import WeightedCollator
    from training.data import TokenDataset, load_training_data
    from training.weighting import per_sample_nll

    write_corpus(tmp_path, AutoTokenizer.from_pretrained(bos_model_dir), n_long=2)
    scores = score_windows(tmp_path, bos_model_dir, window_context=6)
    select(SelectConfig(scores=[str(tmp_path / "scores")], output=str(tmp_path / "selected"), keep=0.9, drop_top=0.0,
                        report=False), progress=False)
    data = load_training_data([str(tmp_path / "selected")])
    dataset = TokenDataset(data.table)
    rows = [dataset[i] for i in range(len(dataset))]
    assert len(rows) > 20 and any(r["loss_spans"] for r in rows)  # later windows carry their spans
    batch = WeightedCollator(pad_token_id=0, max_seq_len=MAX_TOKENS)(rows)
    lm = AutoModelForCausalLM.from_pretrained(bos_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses, n_tokens = per_sample_nll(logits, batch["labels"])
    scored = dict(zip(scores["sample_id"], zip(scores["loss"], scores["n_tokens"])))
    for sample_id, loss, count in zip(data.table["sample_id"].to_pylist(), losses.tolist(), n_tokens.tolist()):
        assert (count, loss) == (scored[sample_id][1], pytest.approx(scored[sample_id][0], abs=1e-4))


def test_a_resumed_run_does_not_reuse_a_stampless_windowed_part_that_lost_windows(tmp_path, tiny_model_dir):
    """A part of windows holds more rows than the documents its name spans, and only its stamp says how many. A
    rerun of an unfinished job (scoring/units.py ``reusable_parts``) checks stamps with ``required=False`` although
    the job file says every part of this directory is stamped: a part rewritten by a tool that drops Parquet
    metadata, with a document's trailing windows gone, still counts its documents right (``window == 0`` rows), so
    it is reused. The run exits 0 and its manifest counts the windows that are left: rows lost."""
    write_jsonl(tmp_path / "in" / "d.jsonl", windowed_documents())
    cfg = windows_config([tmp_path / "in"], tmp_path / "scores", tiny_model_dir)
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


def test_a_documents_windows_n_bytes_sum_to_its_utf8_size_in_the_scores(tmp_path, tiny_model_dir):
    """README: "the windows of a document partition its text, and their `n_bytes` sum to its UTF-8 size". In the
    part files they do not: ``n_bytes`` is written null wherever a window's status is not ok (scoring/units.py
    ``score_unit`` masks it with ``~ok``), so a document whose last window holds a single token (a ``too_short``
    window: no BOS, no context) has the bytes of that window missing from every sum over its windows."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = one_token_tails(tok)
    write_jsonl(tmp_path / "in" / "d.jsonl", docs)
    score(windows_config([tmp_path / "in"], tmp_path / "scores", tiny_model_dir), progress=False)
    df = pl.read_parquet(tmp_path / "scores" / "part-*.parquet")
    assert "too_short" in df["status"].to_list()
    sums = dict(df.group_by("document_id").agg(pl.col("n_bytes").sum()).iter_rows())
    assert sums == {d["id"]: len(d["text"].encode()) for d in docs}


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
        window_texts(tok, [text], [None], WINDOW_TOKENS, 2)
