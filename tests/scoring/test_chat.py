"""Conversations: the response-only mask comes from the rendering, and the scored loss is the model's own
loss with the prompt positions set to -100."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hardfocus.chat import encode_conversation
from hardfocus.contracts.scores import Status, mask_from_spans, spans_from_mask
from hardfocus.errors import HardfocusError
from scoring.config import ScoreConfig
from scoring.job import score
from tests.conftest import CHATML, CHATML_GENERATION, conversations, write_jsonl


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_chat_model_dir):
    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)


def _reference(tokenizer, messages: list[dict], max_tokens: int = 10**6) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and transformers' own assistant mask, from the template with generation markers."""
    out = tokenizer.apply_chat_template(
        messages, chat_template=CHATML_GENERATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return np.asarray(out["input_ids"])[:max_tokens], np.asarray(out["assistant_masks"], dtype=bool)[:max_tokens]


def test_masked_tokens_decode_exactly_to_the_assistant_turns(chat_tokenizer):
    for messages in conversations(30, seed=3):
        messages = [{**m, "content": m["content"].strip() or "ok"} for m in messages]
        enc = encode_conversation(chat_tokenizer, messages, max_tokens=10**6)
        assert enc.status is None and not enc.truncated
        turns = [chat_tokenizer.decode(enc.input_ids[s["start"] : s["stop"]]) for s in spans_from_mask(enc.target)]
        assert turns == [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]


def test_mask_equals_transformers_mask_from_generation_markers(chat_tokenizer):
    for messages in conversations(30, seed=4):  # contents unstripped: tokens may straddle a turn's start
        enc = encode_conversation(chat_tokenizer, messages, max_tokens=10**6)
        ids, assistant = _reference(chat_tokenizer, messages)
        np.testing.assert_array_equal(enc.input_ids, ids)
        np.testing.assert_array_equal(enc.target, assistant)


def _messages_row(i: int, messages: list[dict]) -> dict:
    return {"id": f"c{i}", "topic": "even" if i % 2 else "odd", "messages": messages}


def test_scored_loss_is_the_models_own_loss_on_the_responses(tmp_path, tiny_chat_model_dir, chat_tokenizer):
    convs = conversations(24, seed=5)
    write_jsonl(tmp_path / "in" / "chat.jsonl", [_messages_row(i, m) for i, m in enumerate(convs)])
    pairs = convs[:12]
    (tmp_path / "in2").mkdir()
    pq.write_table(pa.Table.from_pylist(
        [{"prompt": m[-2]["content"], "response": m[-1]["content"], "sys": "Be kind." if i % 2 else None}
         for i, m in enumerate(pairs)]), tmp_path / "in2" / "pairs.parquet")
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir, dtype=torch.float32).eval()
    common = dict(model=tiny_chat_model_dir, dtype="float32", executor="local", token_budget=400, chunk_tokens=13)
    chat = score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "s1"), format="messages",
                             id_column="id", group_column="topic", **common), progress=False)
    pair = score(ScoreConfig(inputs=[str(tmp_path / "in2")], output=str(tmp_path / "s2"), format="prompt_response",
                             system_column="sys", **common), progress=False)
    expected = {"s1": convs, "s2": [([{"role": "system", "content": "Be kind."}] if i % 2 else [])
                                    + [{"role": "user", "content": m[-2]["content"]},
                                       {"role": "assistant", "content": m[-1]["content"]}] for i, m in enumerate(pairs)]}
    for result, out in ((chat, "s1"), (pair, "s2")):
        assert result.manifest.rows_by_status == {"ok": len(expected[out])}
        rows = pl.read_parquet(tmp_path / out / "part-*.parquet").sort("row")
        for row, messages in zip(rows.iter_rows(named=True), expected[out]):
            ids, assistant = _reference(chat_tokenizer, messages)
            labels = np.where(assistant, ids, -100)
            assert row["input_ids"] == ids.tolist()
            assert mask_from_spans(row["loss_spans"], len(ids)).tolist() == assistant.tolist()
            assert row["n_tokens"] == assistant.sum()
            with torch.inference_mode():
                own = float(model(input_ids=torch.from_numpy(ids)[None], labels=torch.from_numpy(labels)[None]).loss)
            assert row["loss"] == pytest.approx(own, abs=1e-5)


def test_long_conversation_keeps_the_system_prompt_and_drops_whole_leading_turns(chat_tokenizer):
    system = {"role": "system", "content": "Answer briefly."}
    turns = [[{"role": "user", "content": f"Question number {k} about the river and the sea?"},
              {"role": "assistant", "content": f"Answer {k}: the river flows to the sea."}] for k in range(5)]
    full = [system] + sum(turns, [])
    last_two = [system] + turns[3] + turns[4]
    budget = len(_reference(chat_tokenizer, last_two)[0])
    enc = encode_conversation(chat_tokenizer, full, max_tokens=budget)
    assert enc.truncated and enc.status is None
    np.testing.assert_array_equal(enc.input_ids, _reference(chat_tokenizer, last_two)[0])
    np.testing.assert_array_equal(enc.target, _reference(chat_tokenizer, last_two)[1])
    # one token fewer: only the last turn is left
    enc = encode_conversation(chat_tokenizer, full, max_tokens=budget - 1)
    np.testing.assert_array_equal(enc.input_ids, _reference(chat_tokenizer, [system] + turns[4])[0])
    # without a system message the template's default one stays in front
    enc = encode_conversation(chat_tokenizer, full[1:], max_tokens=budget)
    assert chat_tokenizer.decode(enc.input_ids).startswith("<|im_start|>system\nYou are a helpful assistant")
    assert enc.truncated


def test_a_turn_too_long_is_cut_and_a_conversation_without_response_tokens_gets_a_status(chat_tokenizer):
    messages = [{"role": "user", "content": "Tell me about rivers."},
                {"role": "assistant", "content": "A river flows from the mountains to the sea. " * 20}]
    n = len(_reference(chat_tokenizer, messages)[0])
    cut = encode_conversation(chat_tokenizer, messages, max_tokens=n - 30)
    ids, assistant = _reference(chat_tokenizer, messages, max_tokens=n - 30)
    assert cut.truncated and cut.status is None
    np.testing.assert_array_equal(cut.input_ids, ids)
    np.testing.assert_array_equal(cut.target, assistant)
    prompt_only = len(_reference(chat_tokenizer, messages[:1])[0])
    too_long = encode_conversation(chat_tokenizer, messages, max_tokens=prompt_only)
    assert too_long.status == Status.PROMPT_TOO_LONG and too_long.truncated
    assert encode_conversation(chat_tokenizer, messages[:1], max_tokens=1000).status == Status.NO_RESPONSE


def test_every_row_is_accounted_for_with_bad_and_unscoreable_conversations(tmp_path, tiny_chat_model_dir):
    good = conversations(3, seed=6)
    rows = [
        {"messages": good[0]},
        {"messages": [{"role": "user", "content": "hello?"}]},  # no response
        {"messages": "not a list"},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": 3}]},
        {"messages": None},
        {"messages": [{"role": "user", "content": "x " * 400}, {"role": "assistant", "content": "y"}]},  # too long
        {"messages": good[1]},
    ]
    write_jsonl(tmp_path / "in" / "c.jsonl", rows)
    cfg = ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=tiny_chat_model_dir,
                      format="messages", max_tokens=120, executor="local")
    result = score(cfg, progress=False)
    status = pl.read_parquet(tmp_path / "out" / "part-*.parquet").sort("row")["status"].to_list()
    assert status[0] == status[7] == "ok"
    assert status[1] == Status.NO_RESPONSE and status[5] == Status.EMPTY and status[6] == Status.PROMPT_TOO_LONG
    assert all(s.startswith("error: ") for s in status[2:5])
    assert result.manifest.rows == len(rows)
    with pytest.raises(HardfocusError, match="row 2"):
        score(cfg.model_copy(update={"output": str(tmp_path / "out2"), "on_error": "stop"}), progress=False)


def test_a_template_that_refuses_a_conversation_gives_that_row_an_error_status(chat_tokenizer):
    strict = CHATML.replace(
        "{% for message in messages %}",
        "{% for message in messages %}{% if message['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}",
    )
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}, {"role": "assistant", "content": "ok"}]
    enc = encode_conversation(chat_tokenizer, messages, max_tokens=100, template=strict)
    assert enc.status.startswith("error: the chat template refused") and "no tools here" in enc.status
    assert encode_conversation(chat_tokenizer, messages, max_tokens=100, template=CHATML).status is None


def test_a_tokenizer_without_template_is_refused_unless_one_is_given(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "in" / "c.jsonl", [{"messages": m} for m in conversations(4, seed=8)])
    cfg = ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=tiny_model_dir,
                      format="messages", executor="local")
    with pytest.raises(HardfocusError, match="--chat-template"):
        score(cfg, progress=False)
    (tmp_path / "chatml.jinja").write_text(CHATML)
    result = score(cfg.model_copy(update={"chat_template": str(tmp_path / "chatml.jinja")}), progress=False)
    assert result.manifest.rows_by_status == {"ok": 4}
    assert result.manifest.chat_template_sha256 is not None


def test_plain_text_scores_keep_their_schema_and_a_missing_column_names_the_flag(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "in" / "t.jsonl", [{"text": "The river flows to the sea."}] * 3)
    score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "out"), model=tiny_model_dir,
                      executor="local"), progress=False)
    part = next((tmp_path / "out").glob("part-*.parquet"))
    assert pq.read_schema(part).names == ["sample_id", "shard", "row", "group", "n_tokens", "loss", "nll_sum",
                                          "truncated", "status", "input_ids", "n_bytes", "source_digest"]
    job = json.loads((tmp_path / "out" / "job.json").read_text())
    assert "format" not in job["identity"]  # identities of plain-text dirs written before conversations still match
    with pytest.raises(HardfocusError, match="--messages-column"):
        score(ScoreConfig(inputs=[str(tmp_path / "in")], output=str(tmp_path / "o2"), model=tiny_model_dir,
                          format="messages", chat_template=CHATML, executor="local"), progress=False)


def test_parquet_messages_read_as_jsonl_does_and_a_wrong_column_type_is_named(tmp_path):
    from hardfocus.readers import check_columns, find_shards, iter_units
    from hardfocus.sample_format import Columns

    convs = conversations(9, seed=9)
    pq.write_table(pa.Table.from_pylist([{"messages": m} for m in convs]), tmp_path / "c.parquet", row_group_size=4)
    write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in convs])
    columns = Columns(format="messages")
    for shard in find_shards([str(tmp_path / "c.parquet"), str(tmp_path / "c.jsonl")]):
        units = list(iter_units(shard, columns, 3))
        assert [(u.start, u.stop) for u in units] == [(0, 3), (3, 6), (6, 9)]
        assert [m for u in units for m in u.block.values] == convs, shard.rel
    pq.write_table(pa.table({"messages": ["a string, not a list"]}), tmp_path / "bad.parquet")
    with pytest.raises(HardfocusError, match="not a list of"):
        check_columns(find_shards([str(tmp_path / "bad.parquet")])[0], columns)
