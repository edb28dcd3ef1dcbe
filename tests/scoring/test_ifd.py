"""IFD and bytes: both passes equal the model's own ``labels=`` loss on independently built inputs, and
``n_bytes`` is the UTF-8 size of what was scored."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hardfocus.chat import encode_conversation
from hardfocus.contracts.scores import Status
from hardfocus.errors import HardfocusError
from scoring.config import ScoreConfig
from scoring.job import score
from scoring.output import ScoresDir
from tests.conftest import CHATML, CHATML_GENERATION, conversations, real_texts, write_jsonl


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_chat_model_dir):
    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)


@pytest.fixture(scope="module")
def chat_model(tiny_chat_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, dtype=torch.float32).eval()


def _ids(tokenizer, messages, generation_prompt=False, **kw) -> np.ndarray:
    out = tokenizer.apply_chat_template(messages, chat_template=CHATML_GENERATION, tokenize=True, return_dict=True,
                                        add_generation_prompt=generation_prompt, **kw)
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _own_nll(model, ids: np.ndarray, labels: np.ndarray) -> float:
    """The model's own summed NLL over the labelled positions (its mean loss times their count)."""
    with torch.inference_mode():
        loss = model(input_ids=torch.from_numpy(ids)[None], labels=torch.from_numpy(labels)[None]).loss
    return float(loss) * int((labels[1:] != -100).sum())


def _reference(tokenizer, model, messages, max_tokens: int = 10**6) -> dict:
    """Both sums built from transformers' own assistant mask: the whole conversation with the prompt; each
    assistant turn's tokens alone behind the header that the template's generation prompt adds (the tokens
    between the rendering of the messages before the turn and the turn's first assistant token)."""
    whole = _ids(tokenizer, messages, return_assistant_tokens_mask=True)
    ids = np.asarray(whole["input_ids"])[:max_tokens]
    mask = np.asarray(whole["assistant_masks"], dtype=bool)[:max_tokens]
    conditioned = _own_nll(model, ids, np.where(mask, ids, -100))
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    unconditioned, runs = 0.0, _runs(mask)
    for i, (a, b) in zip(turns[len(turns) - len(runs):], runs):
        # the header as the conversation tokenises it: from the end of the turns before to the first response
        # token (a response starting with whitespace can share a token with the header's newline)
        before = _ids(tokenizer, messages[:i])["input_ids"] if i else []
        assert ids[: len(before)].tolist() == before and len(before) < a
        header = ids[len(before) : a]
        seq = np.concatenate([header, ids[a:b]])
        unconditioned += _own_nll(model, seq, np.concatenate([np.full(len(header), -100), ids[a:b]]))
    return {"ids": ids, "n": int(mask.sum()), "nll": conditioned, "u_nll": unconditioned}


def _with_unicode(convs: list[list[dict]]) -> list[list[dict]]:
    """Some multi-byte characters in the responses, so bytes and characters differ."""
    return [[{**m, "content": m["content"] + (" café ☕ 𝄞" if m["role"] == "assistant" and k % 2 else "")}
             for k, m in enumerate(c)] for c in convs]


def test_both_passes_equal_the_models_own_loss_and_bytes_are_the_responses(tmp_path, tiny_chat_model_dir,
                                                                             chat_tokenizer, chat_model):
    convs = _with_unicode(conversations(16, seed=21))
    long = [{"role": "user", "content": "Tell me about rivers."},
            {"role": "assistant", "content": "A river flows from the mountains to the sea. " * 60}]
    rows = [{"id": f"c{i}", "messages": m} for i, m in enumerate(convs)] + [{"id": "long", "messages": long}]
    write_jsonl(tmp_path / "in" / "c.jsonl", rows)
    max_tokens = 300
    result = score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "s"), model=tiny_chat_model_dir,
                               format="messages", id_column="id", dtype="float32", executor="local", ifd=True,
                               max_tokens=max_tokens, token_budget=500, chunk_tokens=11, rows_per_unit=6),
                   progress=False)
    got = {r["sample_id"]: r for r in pl.read_parquet(tmp_path / "s" / "part-*.parquet").iter_rows(named=True)}
    assert result.manifest.rows == len(rows)
    checked_untruncated = 0
    for row in rows:
        r = got[row["id"]]
        if r["status"] != "ok":
            continue
        assert r["n_tokens_unconditioned"] == r["n_tokens"]
        if r["truncated"] and row["id"] != "long":
            continue  # leading turns dropped: the reference would have to re-implement that
        ref = _reference(chat_tokenizer, chat_model, row["messages"], max_tokens)
        assert r["input_ids"] == ref["ids"].tolist() and r["n_tokens"] == ref["n"]
        assert r["nll_sum"] == pytest.approx(ref["nll"], rel=1e-5, abs=1e-4)
        assert r["nll_sum_unconditioned"] == pytest.approx(ref["u_nll"], rel=1e-5, abs=1e-4)
        assert r["ifd"] == pytest.approx(ref["nll"] / ref["u_nll"], rel=1e-5)
        if not r["truncated"]:
            checked_untruncated += 1
            want = sum(len(m["content"].encode()) for m in row["messages"] if m["role"] == "assistant")
            assert r["n_bytes"] == want
    assert checked_untruncated >= 8
    assert got["long"]["truncated"] and 0 < got["long"]["n_bytes"] < len(long[1]["content"].encode())


def test_prompt_response_pairs_score_the_response_alone_behind_the_header(tmp_path, tiny_chat_model_dir,
                                                                           chat_tokenizer, chat_model):
    pairs = [(m[-2]["content"], m[-1]["content"]) for m in _with_unicode(conversations(8, seed=22))]
    write_jsonl(tmp_path / "in" / "p.jsonl", [{"prompt": p, "response": a} for p, a in pairs])
    score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "s"), model=tiny_chat_model_dir,
                      format="prompt_response", dtype="float32", executor="local", ifd=True), progress=False)
    scores = pl.read_parquet(tmp_path / "s" / "part-*.parquet").sort("row")
    for (prompt, answer), r in zip(pairs, scores.iter_rows(named=True)):
        ref = _reference(chat_tokenizer, chat_model, [{"role": "user", "content": prompt},
                                                      {"role": "assistant", "content": answer}])
        assert r["nll_sum_unconditioned"] == pytest.approx(ref["u_nll"], rel=1e-5, abs=1e-4)
        assert r["ifd"] == pytest.approx((r["nll_sum"] / r["n_tokens"]) / (ref["u_nll"] / ref["n"]), rel=1e-5)
        assert r["n_bytes"] == len(answer.encode())


def test_a_template_without_header_uses_bos_and_without_either_the_row_gets_a_status(chat_tokenizer):
    headless = CHATML.replace("{{ '<|im_start|>assistant\n' }}", "")  # no generation prompt: no header
    assert headless != CHATML
    messages = [{"role": "user", "content": "Where do rivers go?"}, {"role": "assistant", "content": "To the sea."}]
    with_header = encode_conversation(chat_tokenizer, messages, 1000, CHATML, ifd=True)
    [turn] = with_header.ifd_turns
    assert chat_tokenizer.decode(turn.prefix) == "<|im_start|>assistant\n"
    assert chat_tokenizer.decode(with_header.input_ids[turn.start : turn.stop]) == "To the sea.<|im_end|>"
    assert turn.stop - turn.start == with_header.target.sum()
    [turn] = encode_conversation(chat_tokenizer, messages, 1000, headless, ifd=True).ifd_turns
    assert turn.prefix.tolist() == [chat_tokenizer.bos_token_id]
    no_bos = AutoTokenizer.from_pretrained(chat_tokenizer.name_or_path, bos_token=None)
    assert no_bos.bos_token_id is None
    unmatched = encode_conversation(no_bos, messages, 1000, headless, ifd=True)
    assert unmatched.status == Status.IFD_UNMATCHED
    assert encode_conversation(no_bos, messages, 1000, headless).status is None  # the loss alone needs no header


def test_ifd_resumes_by_unit_and_changes_the_job_identity(tmp_path, tiny_chat_model_dir):
    write_jsonl(tmp_path / "in" / "c.jsonl", [{"messages": m} for m in conversations(12, seed=23)])
    cfg = ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "s"), model=tiny_chat_model_dir,
                      format="messages", dtype="float32", executor="local", ifd=True, rows_per_unit=4)
    score(cfg, progress=False)
    before = pl.read_parquet(tmp_path / "s" / "part-*.parquet").sort("row")
    out = ScoresDir(cfg.output)
    out.remove([out.parts()[1], "manifest.json"])
    assert score(cfg, progress=False).units_scored == 1
    after = pl.read_parquet(tmp_path / "s" / "part-*.parquet").sort("row")
    assert after.drop("ifd", "nll_sum_unconditioned").equals(before.drop("ifd", "nll_sum_unconditioned"))
    np.testing.assert_allclose(after["ifd"].to_numpy(), before["ifd"].to_numpy(), rtol=1e-6)
    with pytest.raises(HardfocusError, match=r"differs in: ifd"):
        score(cfg.model_copy(update={"ifd": False}), progress=False)
    with pytest.raises(ValueError, match="ifd needs a prompt"):
        ScoreConfig(inputs=["x"], output="y", ifd=True)


def test_n_bytes_of_text_is_the_utf8_size_of_what_the_kept_tokens_cover(tmp_path, tiny_model_dir):
    texts = real_texts(40, seed=24) + ["naïve café ☕ — 𝄞 " * 3]
    write_jsonl(tmp_path / "in" / "t.jsonl", [{"text": t} for t in texts])
    score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "s"), model=tiny_model_dir,
                      executor="local", max_tokens=64), progress=False)
    scores = pl.read_parquet(tmp_path / "s" / "part-*.parquet").sort("row")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert "ifd" not in scores.columns
    truncated = 0
    for text, r in zip(texts, scores.iter_rows(named=True)):
        if r["status"] != "ok":
            assert r["n_bytes"] is None
        elif not r["truncated"]:
            assert r["n_bytes"] == len(text.encode())
        elif text.isascii():  # byte-level BPE decodes an ASCII prefix back exactly
            truncated += 1
            kept = tokenizer.decode(r["input_ids"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            assert text.startswith(kept) and r["n_bytes"] == len(kept.encode())
    assert truncated >= 3
