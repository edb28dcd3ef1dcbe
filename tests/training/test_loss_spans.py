"""Instruction data: training's loss covers the ``loss_spans`` targets only, checked against direct computations."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from hardfocus.contracts.scores import LOSS_SPANS_TYPE, mask_from_spans, spans_from_mask
from scoring import HardfocusError
from tests.selection.fake_scores import write_scores
from tests.stamps import rewrite_part
from tests.training.helpers import mixed_length_sequences, small_config, write_selected
from training import train
from training.collator import WeightedCollator
from training.data import TokenDataset, load_training_data
from training.weighting import per_sample_nll


def response_spans(seqs: list[list[int]], seed: int = 0, plain_every: int = 5) -> list[list[dict] | None]:
    """Conversation-like targets: one or two response turns at the end of a sample; every 5th is plain text."""
    rng = np.random.default_rng(seed)
    out = []
    for i, seq in enumerate(seqs):
        if plain_every and i % plain_every == plain_every - 1:
            out.append(None)
            continue
        n = len(seq)
        mask = np.zeros(n, dtype=bool)
        mask[int(rng.integers(n // 2, n)) :] = True  # the last response
        if n >= 8:
            lo = int(rng.integers(1, n // 2 - 1))
            mask[lo : lo + int(rng.integers(1, n // 2 - lo))] = True  # an earlier response
        out.append(spans_from_mask(mask))
    return out


def masked_labels(seq, spans) -> torch.Tensor:
    """The labels ``model(labels=...)`` needs for this sample's loss: token ids at the targets, -100 elsewhere."""
    ids = np.asarray(seq, dtype=np.int64)
    return torch.from_numpy(np.where(mask_from_spans(spans, len(ids)), ids, -100))


def with_spans(directory: str | Path, spans: list) -> str:
    """Add a ``loss_spans`` column to every row of a one-part directory (rows in order)."""
    part = Path(directory) / "part-00000.parquet"
    t = pq.read_table(part)
    rewrite_part(part, t.append_column(pa.field("loss_spans", LOSS_SPANS_TYPE), pa.array(spans, LOSS_SPANS_TYPE)))
    return str(directory)


def test_labels_are_the_tokens_at_the_span_positions_and_minus_100_elsewhere():
    seqs = mixed_length_sequences(10, vocab=290, seed=7)
    spans = response_spans(seqs)
    rows = [{"input_ids": s, "weight": 0.5 + i / 10, "loss_spans": sp} for i, (s, sp) in enumerate(zip(seqs, spans))]
    batch = WeightedCollator(pad_token_id=0, max_seq_len=512)(rows)
    longest = max(map(len, seqs))
    for i, (seq, sp) in enumerate(zip(seqs, spans)):
        expected = np.full(longest, -100)
        if sp is None:
            expected[1 : len(seq)] = seq[1:]
        else:
            for s in sp:
                expected[s["start"] : s["stop"]] = seq[s["start"] : s["stop"]]
        assert batch["labels"][i].tolist() == expected.tolist()
        assert batch["attention_mask"][i].sum() == len(seq)
    assert (batch["labels"] != -100).sum() < (batch["attention_mask"].sum() - len(seqs))  # the spans do mask


def test_spans_are_clipped_at_max_seq_len_and_a_sample_without_targets_has_loss_0(tiny_model_dir, caplog):
    seq = list(range(3, 23))  # 20 tokens
    rows = [
        {"input_ids": seq, "loss_spans": [{"start": 2, "stop": 4}, {"start": 8, "stop": 15}]},  # cut inside the 2nd span
        {"input_ids": seq, "loss_spans": [{"start": 12, "stop": 20}]},  # every target beyond the cut
        {"input_ids": seq[:6], "loss_spans": None},
    ]
    collator = WeightedCollator(pad_token_id=0, max_seq_len=10)
    with caplog.at_level(logging.WARNING, logger="training.collator"):
        batch = collator(rows)
    assert batch["input_ids"].shape == (3, 10)
    assert batch["labels"][0].tolist() == [-100, -100, 5, 6, -100, -100, -100, -100, 11, 12]
    assert (batch["labels"][1] == -100).all()
    assert batch["labels"][2].tolist() == [-100, 4, 5, 6, 7, 8, -100, -100, -100, -100]
    assert collator.samples_without_targets == 1
    assert "1 of 3 samples in a batch have no target token within max_seq_len=10" in caplog.text

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    losses, n_tokens = per_sample_nll(logits, batch["labels"])
    assert n_tokens.tolist() == [4, 0, 5]
    assert torch.isfinite(losses).all() and losses[1] == 0
    (grad,) = torch.autograd.grad(losses[1], logits)
    assert (grad == 0).all()  # no gradient from the sample without targets
    own = model(input_ids=batch["input_ids"][:1], labels=batch["labels"][:1]).loss
    assert float(losses[0].detach()) == pytest.approx(float(own.detach()), abs=1e-5)


def test_padded_per_sample_loss_equals_each_samples_own_masked_model_loss(tiny_model_dir):
    """The honest check: per_sample_nll on the padded batch == model(ids, labels=masked).loss, sample by sample."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    seqs = mixed_length_sequences(10, vocab=290, seed=8)
    spans = response_spans(seqs, seed=1)
    batch = WeightedCollator(pad_token_id=0, max_seq_len=512)([{"input_ids": s, "loss_spans": sp} for s, sp in zip(seqs, spans)])
    assert len(set(map(len, seqs))) > 5
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses, n_tokens = per_sample_nll(logits, batch["labels"])
        differs = 0
        for i, (seq, sp) in enumerate(zip(seqs, spans)):
            ids, labels = torch.tensor([seq]), masked_labels(seq, sp).unsqueeze(0)
            assert n_tokens[i] == int((labels != -100).sum())
            own = float(model(input_ids=ids, labels=labels).loss)
            assert abs(float(losses[i]) - own) < 1e-5
            differs += abs(own - float(model(input_ids=ids, labels=ids).loss)) > 1e-3
    assert differs >= 6  # the masked loss is not the whole-sample loss: the check can fail


# --- data loading -----------------------------------------------------------------------------------


def test_selected_scores_and_token_dirs_yield_their_spans(tmp_path):
    seqs = mixed_length_sequences(12, vocab=290, seed=9)
    spans = response_spans(seqs, seed=2)
    chat = with_spans(write_selected(tmp_path / "chat", seqs), spans)
    plain = write_selected(tmp_path / "plain", seqs[:3])  # the schema from before conversations
    scores = write_scores(tmp_path / "scores", [1.0] * 10, statuses=["ok"] * 8 + ["empty", "ok"], rows_per_part=20)
    part = next(scores.glob("part-*.parquet"))  # one part: the last token of each row is its target
    score_ids = pq.read_table(part)["input_ids"].to_pylist()
    score_spans = [[{"start": len(s) - 1, "stop": len(s)}] for s in score_ids]
    t = pq.read_table(part)
    rewrite_part(part, t.append_column(pa.field("loss_spans", LOSS_SPANS_TYPE), pa.array(score_spans, LOSS_SPANS_TYPE)))
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    pq.write_table(pa.table({"input_ids": pa.array(seqs[:2], pa.list_(pa.int64())),
                             "loss_spans": pa.array(spans[:2], pa.list_(pa.struct([("start", pa.int64()), ("stop", pa.int64())])))}),
                   tokens / "part-00000.parquet")

    data = load_training_data([chat, plain, str(scores), str(tokens)])
    assert data.kinds == {chat: "selected", plain: "selected", str(scores): "scores", str(tokens): "tokens"}
    assert data.table.schema.field("loss_spans").type == LOSS_SPANS_TYPE
    ok = [i for i in range(10) if i != 8]
    expected = spans + [None] * 3 + [score_spans[i] for i in ok] + spans[:2]
    assert data.table.column("loss_spans").to_pylist() == expected
    dataset = TokenDataset(data.table)
    assert [dataset[i]["loss_spans"] for i in range(len(dataset))] == expected
    assert [dataset[i]["input_ids"].tolist() for i in range(len(dataset))] == seqs + seqs[:3] + [score_ids[i] for i in ok] + seqs[:2]
    # a plain-text source alone: a column of nulls, and None per row
    plain_data = load_training_data([plain])
    assert plain_data.table.column("loss_spans").null_count == 3
    assert TokenDataset(plain_data.table)[0]["loss_spans"] is None
    assert TokenDataset(plain_data.table.drop_columns(["loss_spans"]))[0]["loss_spans"] is None  # an older table


@pytest.mark.parametrize(
    ("spans", "message"),
    [
        ([], "select no target token"),
        ([{"start": 0, "stop": 1}], "select no target token"),  # token 0 is never a target
        ([{"start": 50, "stop": 60}], "select no target token"),  # beyond the sample
        ([{"start": -1, "stop": 3}], "0 <= start <= stop"),
        ([{"start": 4, "stop": 2}], "0 <= start <= stop"),
        ([{"start": None, "stop": 2}], "null start or stop"),
    ],
)
def test_spans_without_targets_or_malformed_are_refused_when_loading(tmp_path, spans, message):
    seqs = mixed_length_sequences(3, vocab=290, seed=10)
    sel = with_spans(write_selected(tmp_path / "sel", seqs), [[{"start": 1, "stop": 3}], spans, None])
    with pytest.raises(HardfocusError, match=message):
        load_training_data([sel])


# --- a training run ---------------------------------------------------------------------------------


def _direct(model, seqs, spans, weights) -> tuple[float, float]:
    """Mean and weighted mean of the per-sample masked losses, each sample on its own."""
    with torch.no_grad():
        losses = np.array(
            [float(model(input_ids=torch.tensor([s]), labels=masked_labels(s, sp).unsqueeze(0)).loss) for s, sp in zip(seqs, spans)]
        )
    return float(losses.mean()), float((np.asarray(weights) * losses).mean())


def test_a_weighted_training_run_logs_the_masked_losses(tiny_model_dir, tmp_path):
    """Full-batch static-weighted SGD steps: each step's logged loss and weighted_loss equal a direct masked
    computation with the parameters the step started from (the base model, then checkpoints 1 and 2).

    The responses use 10 token ids, the prompts all 290: trained on the responses only, the model learns them
    and its masked loss falls well below the whole-sample loss, which the log would show if masking were lost.
    """
    seqs = mixed_length_sequences(8, vocab=290, seed=11)
    spans = response_spans(seqs, seed=3, plain_every=0)
    rng = np.random.default_rng(5)
    for seq, sp in zip(seqs, spans):
        for span in sp:
            seq[span["start"] : span["stop"]] = rng.integers(3, 13, span["stop"] - span["start"]).tolist()
    weights = np.linspace(0.3, 1.7, 8).tolist()
    data = with_spans(write_selected(tmp_path / "sel", seqs, weights=weights), spans)
    cfg = small_config(
        [data], tmp_path / "out", weighting="static", batch_size=8, max_steps=3, optim="sgd", learning_rate=0.5,
        save_steps=1, save_total_limit=5, eval_data=[data], eval_steps=3, keep_checkpoints=True, model=tiny_model_dir,
    )
    train(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in records if "loss" in r}
    evals = [r for r in records if "eval_loss" in r]
    assert sorted(steps) == [1, 2, 3] and len(evals) == 1

    starts = [tiny_model_dir] + [str(tmp_path / "out" / "checkpoints" / f"checkpoint-{k}") for k in (1, 2)]
    for step, start in zip((1, 2, 3), starts):
        model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32).eval()
        mean, weighted = _direct(model, seqs, spans, weights)
        assert steps[step]["loss"] == pytest.approx(mean, rel=1e-5, abs=1e-6)
        assert steps[step]["weighted_loss"] == pytest.approx(weighted, rel=1e-5, abs=1e-6)
    final = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    assert evals[0]["eval_loss"] == pytest.approx(_direct(final, seqs, spans, weights)[0], rel=1e-5)
    assert steps[3]["loss"] < steps[1]["loss"] - 0.5  # it trains
    assert _direct(model, seqs, [None] * 8, weights)[0] > steps[3]["loss"] + 0.5  # unmasked, step 3 would log this


# --- Ray Data reads the column ----------------------------------------------------------------------


@pytest.mark.ray
def test_ray_dataset_batches_carry_the_spans(tmp_path, local_ray):
    """training_dataset (the Ray Train input) streamed as a worker does (ShardWindows, TrainingStream) gives each
    row the labels of the single-process path; a plain-text selected/ read together with a conversation one gets
    null spans."""
    from training.ray_train import ShardWindows, training_dataset
    from training.stream import TrainingStream

    seqs = mixed_length_sequences(14, vocab=290, seed=12)
    spans = response_spans(seqs, seed=4)
    chat = with_spans(write_selected(tmp_path / "chat", seqs[:10], weights=np.linspace(0.5, 1.5, 10).tolist()), spans[:10])
    plain = write_selected(tmp_path / "plain", seqs[10:])
    collator = WeightedCollator(pad_token_id=0, max_seq_len=24)
    dataset = TokenDataset(load_training_data([chat, plain]).table)
    expected = {}
    for i in range(len(dataset)):
        one = collator([dataset[i]])
        expected[tuple(dataset[i]["input_ids"][:24].tolist())] = (one["labels"][0].tolist(), float(one["weight"][0]))

    ds = training_dataset([chat, plain])
    got = {}
    stream = TrainingStream(ShardWindows(ds), collator, batch_size=5, shuffle_buffer=10, seed=0, order="grouped",
                            max_seq_len=24)
    for batch in itertools.islice(stream, 3):  # 14 rows: windows of 10 and 4, batches of 5, 5 and 4
        for ids, mask, labels, weight in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["weight"]):
            n = int(mask.sum())
            got[tuple(ids[:n].tolist())] = (labels[:n].tolist(), float(weight))
    assert got == expected and len(got) == 14
